"""`headatlas export`: a results folder as a Hugging Face dataset folder or HeadVis's layout."""

from __future__ import annotations

import argparse

from headatlas.cli.dataclass_args import add_dataclass_args, dataclass_from_args
from headatlas.export.options import ExportOptions


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `headatlas export`."""
    p = sub.add_parser(
        "export",
        help="write a map as a Hugging Face dataset folder (or HeadVis's data/ layout)",
        description=(
            "Write the map in DIR to OUT: by default one parquet per table present (scores, "
            "categories, evidence, salient, qk), the manifest and a dataset card, loadable with "
            "datasets.load_dataset(OUT, 'scores') and ready for `hf upload USER/NAME OUT "
            "--repo-type dataset`; with --format headvis, HeadVis's OUT/data/ tree."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="a model's results folder (OUT/<model-slug>/)")
    p.add_argument("out", metavar="OUT", help="the folder to write (new or empty)")
    add_dataclass_args(p.add_argument_group("export switches"), ExportOptions)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export one results folder."""
    from headatlas.export import export_map

    options: ExportOptions = dataclass_from_args(ExportOptions, args)
    written = export_map(args.dir, args.out, options)
    print(f"exported {args.dir} as {options.format} to {written}")
    return 0
