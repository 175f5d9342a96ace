"""`headatlas report`: the interactive atlas, one self-contained HTML file."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `headatlas report`."""
    p = sub.add_parser(
        "report",
        help="write the interactive atlas (one offline HTML file) of one or more results folders",
        description=(
            "One HTML page with every head of each model (up to 6, as tabs): hover for scores, "
            "click to pin, filter by category, recolour by a relation's score."
        ),
    )
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="results folder(s)")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output .html file (default: DIR/atlas.html in the first DIR)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the atlas and print where it went."""
    from headatlas.report.atlas_html import write_atlas_html
    from headatlas.report.grid_axes import panel_grid
    from headatlas.store import load_results

    panel_grid(len(args.dirs))  # rejects more than six before anything is read
    out = args.out if args.out is not None else args.dirs[0] / "atlas.html"
    results = [load_results(d) for d in args.dirs]
    print(write_atlas_html(results, out))
    return 0
