"""`headatlas figure`: static figures (PNG, SVG, PDF) of one or more results folders."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from headatlas.errors import ResultsError


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `headatlas figure`."""
    p = sub.add_parser(
        "figure",
        help="draw the category atlas, a per-category series, or one relation's heatmap",
        description=(
            "Without options: one panel per results folder (up to 6) with every head coloured "
            "by its label. --per-category: one model split into a panel per category. "
            "--relation NAME: one model's scores and suppression scores on a relation."
        ),
    )
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="results folder(s)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument(
        "--per-category",
        action="store_true",
        help="one model: an 'All Categories' panel, then one panel per category",
    )
    kind.add_argument(
        "--relation", metavar="NAME", help="one model: heatmaps of a relation's scores"
    )
    kind.add_argument(
        "--patterns",
        action="store_true",
        help="per model: the share of heads per layer whose description (from `headatlas "
        "describe`) found a pattern, i.e. is not 'Unclear' (MAPS section 5)",
    )
    p.add_argument(
        "--style",
        choices=("cells", "dots"),
        default="cells",
        help="category figures: a grid of cells (default) or one dot per head on layer × head axes",
    )
    p.add_argument(
        "--caption", default=None, help="category figures: a line of text under the panels"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output file; .png, .svg or .pdf picks the format "
        "(default: DIR/figures/<kind>.png in the first DIR)",
    )
    p.set_defaults(func=run)


def default_out(directory: Path, args: argparse.Namespace) -> Path:
    """DIR/figures/<kind>.png for the figure ``args`` asks for."""
    if args.relation is not None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "-", args.relation).strip("-.") or "relation"
        name = f"relation-{slug}"
    elif args.per_category:
        name = "category-series"
    elif getattr(args, "patterns", False):
        name = "pattern-shares"
    else:
        name = "category-atlas"
    if getattr(args, "style", "cells") == "dots" and args.relation is None:
        name += "-dots"
    return directory / "figures" / f"{name}.png"


def run(args: argparse.Namespace) -> int:
    """Draw the requested figure and print where it went."""
    from headatlas.report.category_figure import plot_category_atlas, plot_category_series
    from headatlas.report.grid_axes import check_output, panel_grid
    from headatlas.report.relation_figure import plot_relation
    from headatlas.store import load_results

    single = args.per_category or args.relation is not None
    if single and len(args.dirs) != 1:
        option = "--per-category" if args.per_category else "--relation"
        raise ResultsError(
            f"{option} draws one model: pass one results folder, not {len(args.dirs)}"
        )
    panel_grid(len(args.dirs))  # rejects more than six before anything is read
    out = check_output(args.out) if args.out is not None else default_out(args.dirs[0], args)
    if args.patterns:  # needs only the manifests and descriptions, not the scores
        from headatlas.report.pattern_figure import plot_pattern_shares

        plot_pattern_shares(args.dirs, out)
        print(out)
        return 0
    results = [load_results(d) for d in args.dirs]
    if args.relation is not None:
        plot_relation(results[0], args.relation, out)
    elif args.per_category:
        plot_category_series(results[0], out, args.style, args.caption)
    else:
        plot_category_atlas(results, out, args.style, args.caption)
    print(out)
    return 0
