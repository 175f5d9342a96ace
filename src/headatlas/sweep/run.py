"""``run_sweep``: map many models (or checkpoints of one) as tasks, into one store.

Plan (skip maps the ledger lists as finished for the same request) → run the rest on the
engine (Ray, or in-process) → record each result the moment it arrives → write the combined
dataset. An interrupted or partly failed sweep keeps every finished map; a re-run picks up the
rest.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from headatlas.errors import OptionError
from headatlas.scoring.options import MapOptions
from headatlas.store import model_slug
from headatlas.sweep.engine import LOCAL, make_engine
from headatlas.sweep.ledger import Ledger, request_key, write_combined
from headatlas.sweep.spec import SweepEntry
from headatlas.sweep.task import HUB_ENV, MapJob


@dataclass
class EntryOutcome:
    """How one map of the sweep ended."""

    entry: SweepEntry
    status: str
    """``mapped``, ``reused`` (found finished in the store by its task), ``skipped`` (the
    ledger already held it; no task ran) or ``failed``."""
    directory: str | None = None
    attempts: int = 0
    seconds: float = 0.0
    layers_computed: int | None = None
    error: str | None = None


@dataclass
class SweepReport:
    """Every entry's outcome, the engine used and the sweep's wall time."""

    out: Path
    engine: str
    outcomes: list[EntryOutcome] = field(default_factory=list)
    wall_s: float = 0.0
    combined: tuple[Path, Path] | None = None

    @property
    def failed(self) -> list[EntryOutcome]:
        """Entries that did not finish (after retries)."""
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def finished(self) -> list[tuple[SweepEntry, str]]:
        """(entry, results folder) of every finished map, in sweep order."""
        return [(o.entry, o.directory) for o in self.outcomes if o.directory and not o.error]

    def summary_text(self) -> str:
        """One line per entry and a closing total, as plain text."""
        lines = [f"sweep of {len(self.outcomes)} maps on {self.engine}"]
        for o in self.outcomes:
            extra = f", {o.attempts} attempts" if o.attempts > 1 else ""
            where = o.error if o.error else o.directory
            lines.append(f"  {o.status:<8} {o.entry.spec}  ({o.seconds:.1f} s{extra})  {where}")
        counts = {s: sum(o.status == s for o in self.outcomes) for s in _STATUSES}
        done = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        lines.append(f"{done} in {self.wall_s:.1f} s wall time")
        if self.combined:
            lines.append(f"combined dataset: {self.combined[0]}, {self.combined[1]}")
        return "\n".join(lines)


_STATUSES = ("mapped", "reused", "skipped", "failed")


def run_sweep(
    entries: Sequence[SweepEntry],
    out: str | Path = "atlas",
    options: MapOptions | None = None,
    relations: Sequence[str] | None = None,
    relation_files: Sequence[str | Path] = (),
    ray: str = LOCAL,
    retries: int = 2,
    cpus_per_task: float = 1.0,
    num_cpus: int | None = None,
    progress: bool = True,
    log: Callable[[str], Any] | None = None,
    ray_timeout: float | None = None,
) -> SweepReport:
    """Map every entry into ``out`` (one folder per model, plus ``out/sweep/``).

    ``ray``: ``local`` (start a local cluster, loopback only), ``auto`` (join the running one),
    a cluster address, or ``off`` (one process). Without the ``ray`` package the maps run in
    this process. A task whose worker dies, or that raises anything but a
    :class:`~headatlas.errors.HeadAtlasError`, is retried up to ``retries`` times; a map that
    still fails is reported, and the others finish. ``out`` must be reachable from every node
    (a local cluster, or a shared filesystem).
    """
    options = options or MapOptions()
    say = log or (lambda msg: print(msg, file=sys.stderr))
    if retries < 0:
        raise OptionError(f"--retries must be 0 or more, got {retries}")
    if cpus_per_task <= 0:
        raise OptionError(f"--cpus-per-task must be positive, got {cpus_per_task}")
    _refuse_shared_folders(entries)
    t0 = time.perf_counter()
    out = Path(out).resolve()
    ledger = Ledger(out)
    files = tuple(str(Path(f).resolve()) for f in relation_files)
    request = request_key(options, relations, files)
    run_id = uuid.uuid4().hex[:12]
    env = {k: os.environ[k] for k in HUB_ENV if k in os.environ}

    outcomes: dict[str, EntryOutcome] = {}
    jobs = []
    for entry in entries:
        directory = ledger.finished(entry.spec, request)
        if directory is not None:
            outcomes[entry.spec] = EntryOutcome(entry, "skipped", directory)
            continue
        jobs.append(
            MapJob(
                entry.spec,
                str(out),
                options,
                tuple(relations) if relations is not None else None,
                files,
                str(ledger.events),
                run_id,
                env,
            )
        )
    by_spec = {e.spec: e for e in entries}
    report = SweepReport(out, "nothing to run")
    if jobs:
        engine, note = make_engine(ray, retries, cpus_per_task, num_cpus, ray_timeout)
        if note:
            say(note)
        report.engine = engine.describe()
        say(f"sweep: {len(jobs)} maps to run on {report.engine}; {len(outcomes)} already done")
        bar = _Progress(len(entries), len(outcomes), progress)
        try:
            for job, result in engine.run(jobs):
                attempts = ledger.attempts(run_id).get(job.spec, 1)
                outcome = EntryOutcome(
                    by_spec[job.spec],
                    result.status,
                    result.directory,
                    attempts,
                    result.seconds,
                    result.layers_computed,
                    result.error,
                )
                outcomes[job.spec] = outcome
                ledger.record(
                    job.spec,
                    status=result.status,
                    directory=result.directory,
                    request=request,
                    cache_key=result.cache_key,
                    attempts=attempts,
                    seconds=round(result.seconds, 3),
                    error=result.error,
                    step=by_spec[job.spec].step,
                )
                bar.advance(outcome)
        finally:
            bar.close()
            engine.close()
            report.outcomes = [outcomes[e.spec] for e in entries if e.spec in outcomes]
            report.combined = write_combined(out, report.finished)
    else:
        report.outcomes = [outcomes[e.spec] for e in entries]
        report.combined = write_combined(out, report.finished)
    report.wall_s = time.perf_counter() - t0
    return report


def _refuse_shared_folders(entries: Sequence[SweepEntry]) -> None:
    """Two maps whose results would land in one folder (``/a/model`` and ``/b/model``) would
    overwrite each other: refuse before anything runs."""
    seen: dict[str, str] = {}
    for entry in entries:
        slug = model_slug(entry.spec)
        if slug in seen:
            raise OptionError(
                f"'{seen[slug]}' and '{entry.spec}' would both write OUT/{slug}/: rename one "
                "folder, or sweep them into different --out stores"
            )
        seen[slug] = entry.spec


class _Progress:
    """Maps finished out of the sweep's total: a bar on a terminal, else one line per map."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.enabled = total, done, enabled
        self.bar: Any = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc="sweep", unit="map")

    def advance(self, o: EntryOutcome) -> None:
        self.done += 1
        if not self.enabled:
            return
        retry = f", {o.attempts} attempts" if o.attempts > 1 else ""
        text = f"[{self.done}/{self.total}] {o.status} {o.entry.spec} ({o.seconds:.1f} s{retry})"
        if o.error:
            text += f": {o.error}"
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
            self.bar.update(1)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
