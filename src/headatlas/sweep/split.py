"""One model's map split across machines: contiguous layer ranges as Ray tasks (the sweep's
engine), each reading only its layers plus the shared side (embeddings, unembedding, norms,
block 0) and saving every finished layer to the results folder's partial store; then this
process assembles the same final files a one-process map writes.

A task whose worker dies is retried by Ray and resumes after the layers it saved; the final
assembly computes nothing that a task finished (it reads each layer once to check its hash).
The results folder must be one path every worker can reach (a shared filesystem on a real
cluster)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from headatlas.errors import HeadAtlasError
from headatlas.scoring.options import MapOptions
from headatlas.store import MapResults
from headatlas.sweep.engine import LOCAL, RayEngine
from headatlas.sweep.task import HUB_ENV, TaskResult


@dataclass(frozen=True)
class LayerJob:
    """One share of a split map, picklable (paths absolute)."""

    spec: str
    """The model as :func:`headatlas.map_heads` accepts it (not an in-memory model)."""
    out: str
    options: MapOptions
    relations: tuple[str, ...] | None
    relation_files: tuple[str, ...]
    layers: tuple[int, ...]
    env: dict[str, str] = field(default_factory=dict)


def layer_task(job: LayerJob) -> TaskResult:
    """Map ``job.layers`` of ``job.spec`` into the partial store; a :class:`HeadAtlasError`
    comes back as a failed result, anything else is raised so the engine retries the task."""
    from headatlas import map_heads

    os.environ.update(job.env)
    t0 = time.time()
    try:
        part = map_heads(
            job.spec,
            relations=list(job.relations) if job.relations is not None else None,
            relation_files=list(job.relation_files),
            options=job.options,
            out=job.out,
            progress=False,
            log=lambda msg: None,
            layers=job.layers,
        )
    except HeadAtlasError as exc:
        return TaskResult(job.spec, "failed", seconds=time.time() - t0, error=str(exc))
    return TaskResult(
        job.spec,
        "mapped",
        directory=str(part.directory),
        seconds=time.time() - t0,
        layers_computed=int(part.manifest["timings"]["layers_computed"]),
        cache_key=str(part.manifest["cache_key"]),
    )


def layer_ranges(n_layers: int, n_tasks: int) -> list[tuple[int, ...]]:
    """``n_layers`` split into at most ``n_tasks`` contiguous, near-equal ranges."""
    n_tasks = max(1, min(n_tasks, n_layers))
    size, extra = divmod(n_layers, n_tasks)
    out, start = [], 0
    for t in range(n_tasks):
        stop = start + size + (1 if t < extra else 0)
        out.append(tuple(range(start, stop)))
        start = stop
    return out


def map_split(
    model: str,
    relations: Sequence[str] | None = None,
    relation_files: Sequence[str | Path] = (),
    options: MapOptions | None = None,
    out: str | Path = "atlas",
    ray_address: str = LOCAL,
    tasks: int | None = None,
    retries: int = 3,
    num_cpus: int | None = None,
    progress: bool = True,
) -> tuple[MapResults, list[TaskResult]]:
    """Map ``model`` with its layers spread over Ray tasks (``tasks`` ranges; default one per
    cluster CPU), then assemble the final files here. Returns the results (equal to a
    one-process map's) and each task's result."""
    from headatlas import map_heads
    from headatlas.circuits import ModelCircuits

    options = options or MapOptions()
    n_layers = ModelCircuits.load(model).cfg.n_layers
    engine = RayEngine(ray_address, retries, 1.0, num_cpus)
    try:
        ranges = layer_ranges(n_layers, tasks or int(engine.cpus))
        env = {k: os.environ[k] for k in HUB_ENV if k in os.environ}
        jobs = [
            LayerJob(
                model,
                str(Path(out).resolve()),
                options,
                tuple(relations) if relations is not None else None,
                tuple(str(Path(f).resolve()) for f in relation_files),
                layers,
                env,
            )
            for layers in ranges
        ]
        done = [result for _, result in engine.run(jobs, task=layer_task)]
    finally:
        engine.close()
    failed = [r.error for r in done if r.status == "failed"]
    if failed:
        raise HeadAtlasError(f"a share of the split map of {model} failed: {failed[0]}")
    results = map_heads(
        model, relations, relation_files, options=options, out=out, progress=progress
    )
    return results, done
