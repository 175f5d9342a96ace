"""`headatlas info MODEL`: load a model's circuits from its weights and print its summary."""

from __future__ import annotations

import argparse
import json

from headatlas.cli.common import add_model_source_args, open_circuits


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `headatlas info`."""
    p = sub.add_parser("info", help="read a model's weights and print its shape and adapter")
    p.add_argument("model", nargs="?", default="smollm2", help="model (default: smollm2)")
    add_model_source_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the model summary and one layer's OV factor shapes."""
    circuits = open_circuits(args)
    summary = circuits.summary()
    layer = circuits.layer(0)
    summary["layer0"] = {
        "W_V": list(layer.W_V.shape),
        "W_O": list(layer.W_O.shape),
        "b_V": layer.b_V is not None,
        "b_O": layer.b_O is not None,
    }
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        if key == "notes":
            for note in value:
                print(f"{'note':<{width}}  {note}")
            continue
        print(f"{key:<{width}}  {value}")
    return 0
