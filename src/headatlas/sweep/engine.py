"""Where sweep tasks run: a Ray cluster (local, or one already running), or, without Ray, one
after another in this process. Both yield each task's result as it finishes."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from headatlas.errors import OptionError
from headatlas.sweep.task import TaskResult, map_task

LOCAL = "local"
OFF = "off"
RAY_TIMEOUT_ENV = "HEADATLAS_RAY_TIMEOUT"
DEFAULT_RAY_TIMEOUT = 10.0
"""Seconds to wait for a Ray cluster's address to answer before giving up."""


def ray_timeout(seconds: float | None = None) -> float:
    """``seconds``, else ``$HEADATLAS_RAY_TIMEOUT``, else 10."""
    if seconds is None:
        raw = os.environ.get(RAY_TIMEOUT_ENV, "")
        try:
            seconds = float(raw) if raw.strip() else DEFAULT_RAY_TIMEOUT
        except ValueError as exc:
            raise OptionError(
                f"{RAY_TIMEOUT_ENV}={raw!r} is not a number of seconds: set it to e.g. 10"
            ) from exc
    if not seconds > 0:
        raise OptionError(f"the Ray timeout must be > 0 seconds, got {seconds!r}")
    return float(seconds)


def check_reachable(address: str, timeout: float) -> None:
    """Refuse a Ray ``host:port`` (or ``ray://host:port``) address that does not accept a
    connection within ``timeout`` seconds (Ray itself retries for minutes)."""
    client = address.startswith("ray://")
    rest = address[len("ray://") :] if client else address
    host, sep, port_text = rest.rpartition(":")
    if not sep:
        host, port_text = rest, "10001" if client else "6379"
    try:
        port = int(port_text)
    except ValueError as exc:
        raise OptionError(
            f"Ray address '{address}' has no valid port: use HOST:PORT, local, auto or off"
        ) from exc
    try:
        socket.create_connection((host.strip("[]"), port), timeout=timeout).close()
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise OptionError(
            f"cannot reach the Ray cluster at '{address}' within {timeout:g} s ({why}): check "
            f"the address, start one with `ray start --head`, or use --ray local "
            f"(--ray-timeout sets the wait)"
        ) from exc


def ray_available() -> bool:
    """Whether the optional ``ray`` extra is installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


class InProcessEngine:
    """Tasks one after another in this process; an unexpected error retries the task."""

    def __init__(self, retries: int, reason: str):
        self.retries = retries
        self.reason = reason

    def describe(self) -> str:
        """One line for the terminal."""
        return f"one process, maps one after another ({self.reason})"

    def run(
        self, jobs: Sequence[Any], task: Callable[[Any], TaskResult] = map_task
    ) -> Iterator[tuple[Any, TaskResult]]:
        """Yield (job, result) per job, in order (``task``: what runs a job, a map by default)."""
        for job in jobs:
            for attempt in range(self.retries + 1):
                try:
                    result = task(job)
                    break
                except Exception as exc:  # anything not a HeadAtlasError may heal on a retry
                    result = TaskResult(job.spec, "failed", error=_one_line(exc))
                    if attempt == self.retries:
                        break
            yield job, result

    def close(self) -> None:
        """Nothing to release."""


class RayEngine:
    """Each map a Ray task; a task whose worker dies or that raises is retried by Ray."""

    def __init__(
        self,
        address: str,
        retries: int,
        cpus_per_task: float = 1.0,
        num_cpus: int | None = None,
        join_timeout: float | None = None,
    ):
        import ray

        self.ray = ray
        self.retries = retries
        self.cpus_per_task = cpus_per_task
        self.started = False
        if ray.is_initialized():
            pass  # a cluster this process already joined (a notebook, a test): use it
        elif address == LOCAL:
            # Ask for loopback. Ray (2.60) still advertises the node's own address and listens
            # on every interface; its token authentication (on by default) guards the ports.
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                _node_ip_address="127.0.0.1",
                log_to_driver=False,
                configure_logging=False,
            )
            self.started = True
        else:
            if address != "auto":
                check_reachable(address, ray_timeout(join_timeout))
            try:
                ray.init(address=address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise OptionError(
                    f"cannot join the Ray cluster at '{address}' ({_one_line(exc)}): start one "
                    "with `ray start --head`, or use --ray local"
                ) from exc
            self.started = True
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < cpus_per_task:
            raise OptionError(
                f"the Ray cluster has {cpus:g} CPUs, fewer than --cpus-per-task "
                f"{cpus_per_task:g}: lower --cpus-per-task"
            )
        self.cpus = cpus

    def describe(self) -> str:
        """One line for the terminal."""
        where = "local Ray cluster" if self.started else "Ray cluster"
        return (
            f"{where}, {self.cpus:g} CPUs, {self.cpus_per_task:g} per map "
            f"(up to {int(self.cpus // self.cpus_per_task)} at once)"
        )

    def run(
        self, jobs: Sequence[Any], task: Callable[[Any], TaskResult] = map_task
    ) -> Iterator[tuple[Any, TaskResult]]:
        """Submit every job; yield (job, result) as each finishes (``task``: what runs a job,
        a map by default)."""
        ray = self.ray
        remote = ray.remote(task).options(
            num_cpus=self.cpus_per_task,
            max_retries=self.retries,
            retry_exceptions=True,
        )
        by_ref: dict[Any, Any] = {remote.remote(job): job for job in jobs}
        pending = list(by_ref)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
                for ref in done:
                    job = by_ref[ref]
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        cause = getattr(exc, "cause", None) or exc
                        result = TaskResult(job.spec, "failed", error=_one_line(cause))
                    yield job, result
        finally:
            for ref in pending:  # interrupted: stop what is still queued or running
                ray.cancel(ref, force=True)

    def close(self) -> None:
        """Leave a cluster this engine started."""
        if self.started:
            self.ray.shutdown()


def make_engine(
    ray_address: str,
    retries: int,
    cpus_per_task: float = 1.0,
    num_cpus: int | None = None,
    join_timeout: float | None = None,
) -> tuple[InProcessEngine | RayEngine, str | None]:
    """The engine for ``--ray`` (``local``, ``auto``, an address, or ``off``), and a note to
    print when Ray was wanted but is not installed. ``join_timeout``: seconds an address may
    take to answer (see :func:`ray_timeout`)."""
    if ray_address == OFF:
        return InProcessEngine(retries, "--ray off"), None
    if not ray_available():
        note = (
            "ray is not installed: running the maps one after another in this process "
            "(pip install 'headatlas[ray]' to run them on a Ray cluster)"
        )
        return InProcessEngine(retries, "ray not installed"), note
    if num_cpus is None and ray_address == LOCAL:
        num_cpus = os.cpu_count() or 1
    return RayEngine(ray_address, retries, cpus_per_task, num_cpus, join_timeout), None
