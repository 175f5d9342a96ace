"""`headatlas sweep SPEC...`: map many models or checkpoints as tasks (on Ray when installed)
into one store, then draw the cross-model views."""

from __future__ import annotations

import argparse
from pathlib import Path

from headatlas.cli.common import add_method_args, options_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `headatlas sweep`."""
    p = sub.add_parser(
        "sweep",
        help="map many models or hub revisions as tasks on a Ray cluster, into one store",
        description=(
            "Each MODEL[@REVISION] is one map, run as a Ray task that streams only its own "
            "weights. Results: OUT/<model-slug>/ per map, plus OUT/sweep/ (ledger, combined "
            "scores.parquet and categories.parquet, cross-model figures, atlas.html). Failed "
            "tasks are retried and reported; a re-run skips finished maps."
        ),
    )
    p.add_argument(
        "spec",
        nargs="+",
        metavar="SPEC",
        help="MODEL[@REVISION] (packaged name, folder, .gguf or hub id), or a spec file "
        "(.txt: one a line; .json/.toml: models = [...])",
    )
    p.add_argument("--out", default="atlas", help="the store (default: atlas)")
    p.add_argument(
        "--ray",
        default="local",
        metavar="local|auto|ADDRESS|off",
        help="local: start a Ray cluster on this machine (loopback only; default); auto: join "
        "the running one; ADDRESS: join that cluster; off: run the maps in this process",
    )
    p.add_argument(
        "--ray-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long a Ray ADDRESS may take to answer before the sweep stops with an error "
        "(default: $HEADATLAS_RAY_TIMEOUT or 10)",
    )
    p.add_argument(
        "--cpus", type=int, default=None, help="CPUs of a local cluster (default: all cores)"
    )
    p.add_argument(
        "--cpus-per-task", type=float, default=1.0, help="CPUs each map holds (default 1)"
    )
    p.add_argument(
        "--retries", type=int, default=2, help="retries of a task that failed (default 2)"
    )
    p.add_argument(
        "--relations", nargs="*", default=None, metavar="NAME", help="as for `headatlas map`"
    )
    p.add_argument(
        "--relations-file", action="append", default=[], metavar="PATH", help="as for map"
    )
    p.add_argument("--no-views", action="store_true", help="skip the cross-model figures/atlas")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    add_method_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the sweep, print its outcome; exit 1 when a map failed."""
    from headatlas.sweep import run_sweep, sweep_entries

    options = options_from_args(args)
    report = run_sweep(
        sweep_entries(args.spec),
        out=Path(args.out),
        options=options,
        relations=args.relations,
        relation_files=args.relations_file,
        ray=args.ray,
        retries=args.retries,
        cpus_per_task=args.cpus_per_task,
        num_cpus=args.cpus,
        progress=not args.quiet,
        ray_timeout=args.ray_timeout,
    )
    print(report.summary_text())
    if not args.no_views and report.finished:
        from headatlas.report.sweep_views import write_sweep_views

        folders = {e.spec: d for e, d in report.finished}
        written = write_sweep_views(report.out / "sweep", folders, options.threshold)
        print("views: " + ", ".join(str(p) for p in written))
    return 1 if report.failed else 0
