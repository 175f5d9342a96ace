"""One sweep task: map one model into the shared store through the public ``map_heads`` API.

Runs in a Ray worker (or in the driver's process without Ray). It opens and streams only its
own model's weights, and writes its own results folder; ``map_heads`` saves every finished
layer, so a task retried after its worker died resumes from the layers already saved.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headatlas.errors import HeadAtlasError
from headatlas.scoring.options import MapOptions

HUB_ENV = (
    "HF_HUB_CACHE",
    "HF_HOME",
    "HF_HUB_OFFLINE",
    "HF_TOKEN",
    "HF_ENDPOINT",
    "HEADATLAS_HUB_TIMEOUT",
)
"""Environment variables a task takes from the driver (where the hub cache is, offline or not)."""


@dataclass(frozen=True)
class MapJob:
    """Everything a task needs, picklable (paths absolute)."""

    spec: str
    """``MODEL[@REVISION]`` as :func:`headatlas.map_heads` accepts it."""
    out: str
    """The store: results go to ``out/<model-slug>/``."""
    options: MapOptions
    relations: tuple[str, ...] | None
    relation_files: tuple[str, ...]
    events: str
    """The sweep's append-only event log (one JSON line per task start and end)."""
    run_id: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskResult:
    """What one task reports back."""

    spec: str
    status: str
    """``mapped``, ``reused`` (an identical finished map was in the store) or ``failed``."""
    directory: str | None = None
    seconds: float = 0.0
    layers_computed: int | None = None
    cache_key: str | None = None
    error: str | None = None


def log_event(path: str | Path, event: dict[str, Any]) -> None:
    """Append one JSON line (a single short ``write`` in append mode: lines never interleave)."""
    line = json.dumps(event, separators=(",", ":")) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def map_task(job: MapJob) -> TaskResult:
    """Map ``job.spec``; a :class:`HeadAtlasError` (bad input, will not heal on a retry) comes
    back as a failed result, anything else is raised so the engine retries the task."""
    from headatlas import map_heads
    from headatlas.store import MANIFEST

    os.environ.update(job.env)
    base = {"run": job.run_id, "spec": job.spec, "pid": os.getpid(), "host": socket.gethostname()}
    log_event(job.events, {**base, "event": "start", "time": time.time()})
    t0 = time.time()
    try:
        results = map_heads(
            job.spec,
            relations=list(job.relations) if job.relations is not None else None,
            relation_files=list(job.relation_files),
            options=job.options,
            out=job.out,
            progress=False,
            log=lambda msg: None,
        )
    except HeadAtlasError as exc:
        log_event(job.events, {**base, "event": "failed", "error": str(exc)})
        return TaskResult(job.spec, "failed", seconds=time.time() - t0, error=str(exc))
    manifest_written = (results.directory / MANIFEST).stat().st_mtime
    status = "mapped" if manifest_written >= t0 - 1e-3 else "reused"
    layers = results.manifest.get("timings", {}).get("layers_computed")
    log_event(job.events, {**base, "event": "done", "status": status, "layers_computed": layers})
    return TaskResult(
        job.spec,
        status,
        directory=str(results.directory),
        seconds=time.time() - t0,
        layers_computed=layers if status == "mapped" else 0,
        cache_key=results.manifest.get("cache_key"),
    )
