"""`headatlas validate`: check the static map against inference (dynamic scores, ablation)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from headatlas.cli.common import (
    add_method_args,
    add_model_source_args,
    add_relation_file_args,
    calibrated_recipe,
    check_out,
    open_circuits,
    options_from_args,
)
from headatlas.cli.dataclass_args import add_dataclass_args, dataclass_from_args
from headatlas.validate.options import ALL_EXPERIMENTS, EXPERIMENTS, ValidationOptions


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `headatlas validate`."""
    p = sub.add_parser(
        "validate",
        help="check the static map at inference: dynamic-score correlation and head ablation",
        description=(
            "Run the model with forward hooks and compare with the static map (computed first, "
            "or reused from OUT): correlative (static vs dynamic scores, with and without "
            "context), multi-token (the same for multi-token sources) and causal (accuracy after "
            "ablating each relation's top heads vs random heads and control relations). "
            "Results go to OUT/<model-slug>/validation/."
        ),
    )
    p.add_argument(
        "model",
        metavar="MODEL",
        help="packaged name (smollm2, gemma3-270m), folder, .gguf file or hub id",
    )
    p.add_argument(
        "--relations",
        nargs="+",
        metavar="NAME",
        help="built-in relations or categories (default: all)",
    )
    add_relation_file_args(p)
    p.add_argument(
        "--experiment",
        action="append",
        choices=ALL_EXPERIMENTS,
        help="experiment to run (repeatable; default: correlative, causal, multi-token; qk, "
        "the QK circuit's static vs dynamic scores, only when named)",
    )
    p.add_argument(
        "--out",
        default="atlas",
        help="results folder, as for `headatlas map`: the map is reused from (or written to) "
        "OUT/<model-slug>/ and validation goes to OUT/<model-slug>/validation/ (default: atlas)",
    )
    add_dataclass_args(p.add_argument_group("experiment switches"), ValidationOptions)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_source_args(p)
    add_method_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the experiments and print the tables."""
    from headatlas.validate.run import validate

    options = dataclass_from_args(ValidationOptions, args)
    experiments = args.experiment or list(EXPERIMENTS)
    circuits = open_circuits(args)
    check_out(args, circuits)
    map_options = options_from_args(args, calibrated_recipe(args, circuits))
    res = validate(
        circuits,
        relations=args.relations,
        relation_files=args.relations_file,
        experiments=experiments,
        out=args.out,
        map_options=map_options,
        options=options,
        progress=not args.quiet,
    )
    _print(res)
    print(f"results in {res.directory}", file=sys.stderr)
    return 0


def _print(res: Any) -> None:
    from headatlas.report.validation_tables import (
        causal_markdown,
        correlation_markdown,
        qk_markdown,
    )

    if res.correlative is not None:
        print(correlation_markdown(res.correlative, "static vs dynamic scores"))
    if res.multi_token is not None and len(res.multi_token):
        print(correlation_markdown(res.multi_token, "multi-token sources"))
    if res.causal is not None:
        print(causal_markdown(res.causal, "ablating relation heads"))
    if res.qk is not None:
        print(qk_markdown(res.qk, "QK duplicate-token score, static vs dynamic"))
