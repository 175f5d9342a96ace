"""`headatlas calibrate MODEL`: choose the recipe by static-vs-dynamic correlation."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from headatlas.cli.common import (
    add_method_args,
    add_model_source_args,
    check_out,
    open_circuits,
    options_from_args,
)
from headatlas.cli.dataclass_args import add_dataclass_args, given_values
from headatlas.validate.calibrate import CALIBRATION_OPTIONS, CANDIDATES
from headatlas.validate.options import ValidationOptions

CALIBRATE_SWITCHES = ("dynamic_readout", "templates", "max_prompts", "batch_size")
"""The ValidationOptions fields the correlative run of ``calibrate`` takes."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `headatlas calibrate`."""
    p = sub.add_parser(
        "calibrate",
        help="compare recipes (how a head's input is formed and read) against inference",
        description=(
            "One correlative run (dynamic scores computed once), a static map under every "
            "candidate recipe, and a table of mean r per recipe (relation and suppression "
            "scores, without and with context, per template, 95%% bootstrap intervals over "
            "heads). The winner is recorded in OUT/<model-slug>/calibration.json; "
            "`headatlas map MODEL --preset calibrated --out OUT` uses it."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="packaged name, folder, .gguf or hub id")
    p.add_argument("--relations", nargs="+", metavar="NAME", help="relations (default: all)")
    p.add_argument(
        "--candidates",
        nargs="+",
        choices=list(CANDIDATES),
        default=list(CANDIDATES),
        help="recipes to compare (default: all)",
    )
    p.add_argument("--out", default="atlas", help="results folder (default: atlas)")
    add_dataclass_args(
        p.add_argument_group("correlative switches (as for `headatlas validate`)"),
        ValidationOptions,
        only=CALIBRATE_SWITCHES,
        defaults=CALIBRATION_OPTIONS,
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws (default 1000)")
    p.add_argument(
        "--skip-qk",
        action="store_true",
        help="do not choose the static QK reading (rotary mode, inputs; docs/qk.md)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_source_args(p)
    add_method_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Calibrate and print the table."""
    from headatlas.report.validation_tables import calibration_markdown
    from headatlas.validate.calibrate import calibrate

    options = dataclasses.replace(CALIBRATION_OPTIONS, **given_values(ValidationOptions, args))
    circuits = open_circuits(args)
    check_out(args, circuits)
    res = calibrate(
        circuits,
        relations=args.relations,
        out=args.out,
        candidates={name: CANDIDATES[name] for name in args.candidates},
        map_options=options_from_args(args),
        options=options,
        n_boot=args.bootstrap,
        progress=not args.quiet,
        qk=not args.skip_qk,
    )
    print(calibration_markdown(res, f"recipes for {circuits.source.display_name()}"))
    print(f"results in {res.directory}", file=sys.stderr)
    return 0
