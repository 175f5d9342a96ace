"""`headatlas diff A B`: heads that gained or lost each relation from map A to map B, and how
every score moved, as a table and a figure."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from headatlas.errors import OptionError, OutputFormatError

if TYPE_CHECKING:
    from headatlas.compare import MapDiff

MAX_LISTED = 6
"""Gained / lost heads printed per relation (the table file holds all)."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `headatlas diff`."""
    p = sub.add_parser(
        "diff",
        help="compare two maps of one architecture (e.g. two checkpoints) head by head",
    )
    p.add_argument("a", type=Path, metavar="A", help="results folder of the earlier map")
    p.add_argument("b", type=Path, metavar="B", help="results folder of the later map")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="score at which a head implements a relation (default: A's threshold)",
    )
    p.add_argument(
        "--table",
        type=Path,
        default=None,
        help="write every (relation, layer, head) with both scores to .csv or .parquet",
    )
    p.add_argument(
        "--figure",
        type=Path,
        default=None,
        help="figure file (.png/.svg/.pdf; default: B/diff-vs-<A>.png)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the per-relation summary; write the figure (and the head table if asked)."""
    from headatlas.compare import diff_maps
    from headatlas.report.diff_figure import plot_diff
    from headatlas.store import load_results, model_slug

    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise OptionError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if args.table is not None and args.table.suffix.lower() not in (".csv", ".parquet"):
        raise OutputFormatError(f"cannot write {args.table}: use a .csv or .parquet name")
    a, b = load_results(args.a), load_results(args.b)
    diff = diff_maps(a, b, args.threshold)
    print(summary_text(diff))
    figure = args.figure or b.directory / f"diff-vs-{model_slug(a.display_name)}.png"
    plot_diff(diff, figure)
    print(f"figure: {figure}")
    if args.table is not None:
        from headatlas.store import write_parquet_atomic, write_text_atomic

        if args.table.suffix.lower() == ".csv":
            write_text_atomic(diff.heads.to_csv(index=False), args.table)
        else:
            write_parquet_atomic(diff.heads, args.table)
        print(f"table: {args.table}")
    return 0


def _listed(names: str) -> str:
    heads = names.split()
    more = f" +{len(heads) - MAX_LISTED}" if len(heads) > MAX_LISTED else ""
    return " ".join(heads[:MAX_LISTED]) + more


def summary_text(diff: MapDiff) -> str:
    """Per relation: heads A -> B, best score A -> B, gained and lost heads."""
    lines = [
        f"{diff.a} -> {diff.b} (a head implements a relation at score >= {diff.threshold:g})",
        f"  {'relation':<22} {'heads':>9} {'best':>11} {'mean Δ':>7}  gained / lost",
    ]
    for r in diff.summary().itertuples():
        lines.append(
            f"  {r.relation:<22} {r.heads_a:>4}→{r.heads_b:<4} {r.max_a:.2f}→{r.max_b:.2f} "
            f"{r.mean_delta:>+7.3f}  +[{_listed(r.gained)}] -[{_listed(r.lost)}]"
        )
    for side, names in (("A", diff.only_in_a), ("B", diff.only_in_b)):
        if names:
            lines.append(f"only in {side} (not compared): {', '.join(names)}")
    return "\n".join(lines)
