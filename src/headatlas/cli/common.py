"""Options shared by several subcommands (model source, method switches)."""

from __future__ import annotations

import argparse

from headatlas.circuits import ModelCircuits
from headatlas.cli.dataclass_args import add_dataclass_args, dataclass_from_args
from headatlas.scoring.options import MapOptions


def add_model_source_args(p: argparse.ArgumentParser) -> None:
    """--allow-pickle and --revision."""
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load pickle *.bin weights (can run arbitrary code; only for trusted files)",
    )
    p.add_argument(
        "--revision",
        default=None,
        help="hub revision (branch, tag or commit); the same as MODEL@REVISION",
    )


def open_circuits(args: argparse.Namespace) -> ModelCircuits:
    """Open the model named on the command line."""
    return ModelCircuits.load(args.model, allow_pickle=args.allow_pickle, revision=args.revision)


def add_method_args(p: argparse.ArgumentParser) -> None:
    """Every field of MapOptions as a switch (built from the dataclass and its docstrings)."""
    g = p.add_argument_group("method switches (all recorded in the manifest)")
    add_dataclass_args(g, MapOptions)


def options_from_args(args: argparse.Namespace) -> MapOptions:
    """MapOptions from parsed arguments (MapOptions checks the values)."""
    options: MapOptions = dataclass_from_args(MapOptions, args)
    return options
