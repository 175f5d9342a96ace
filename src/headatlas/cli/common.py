"""Options shared by several subcommands (model source, method switches)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from headatlas.circuits import ModelCircuits
from headatlas.cli.dataclass_args import add_dataclass_args, given_values
from headatlas.errors import OptionError
from headatlas.scoring.options import PRESET_OPTIONS, MapOptions
from headatlas.scoring.recipe import PRESETS, Recipe


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


def check_out(args: argparse.Namespace, circuits: ModelCircuits) -> None:
    """Create ``--out``'s results folder for this model now, so an unusable output path (a
    file on the path, a full disk) is named before the model runs."""
    if getattr(args, "out", None) is not None:
        from headatlas.store import results_folder

        results_folder(args.out, str(circuits.source.name))


def calibrated_recipe(args: argparse.Namespace, circuits: ModelCircuits) -> Recipe | None:
    """The recipe ``calibrate`` recorded under ``--out`` for this model, when
    ``--preset calibrated`` asks for it (else None)."""
    if getattr(args, "preset", None) != "calibrated":
        return None
    if getattr(args, "out", None) is None:
        raise OptionError("--preset calibrated needs --out DIR: the folder `calibrate` wrote to")
    from headatlas.store import model_slug
    from headatlas.validate.calibrate import read_calibration

    return read_calibration(Path(args.out) / model_slug(str(circuits.source.name)))


def add_relation_file_args(p: argparse.ArgumentParser) -> None:
    """--relations-file (repeatable; the old spelling --relation-file still works)."""
    p.add_argument(
        "--relations-file",
        action="append",
        default=[],
        metavar="PATH",
        help="a relation file (JSON, JSONL or CSV); repeatable",
    )
    p.add_argument(
        "--relation-file", action=_Deprecated, dest="relations_file", help=argparse.SUPPRESS
    )


class _Deprecated(argparse._AppendAction):
    """An old spelling of a repeatable switch: appends as the new one does, with a note."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        print(
            f"note: {option_string} is deprecated, use --{self.dest.replace('_', '-')}",
            file=sys.stderr,
        )
        super().__call__(parser, namespace, values, option_string)


def add_method_args(p: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """--preset, every recipe switch, and every field of MapOptions (``only`` these) as a
    switch, built from the dataclasses and their docstrings."""
    g = p.add_argument_group("method switches (all recorded in the manifest)")
    g.add_argument(
        "--preset",
        "--recipe",
        dest="preset",
        default="default",
        choices=[*PRESETS, "calibrated"],
        help="the recipe the switches start from: default (this project's), maps (the MAPS "
        "authors' exact formula: MLP0, no norm, no bias, k by vocabulary) or calibrated (the "
        "winner of `headatlas calibrate` stored under --out); a switch given on the command "
        "line wins over the preset",
    )
    add_dataclass_args(g, Recipe)
    g.add_argument(
        "--effective-embedding",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--no-effective-embedding is --embedding none (kept for old command lines)",
    )
    add_dataclass_args(g, MapOptions, only=only)


def calibrated_qk(args: argparse.Namespace, circuits: ModelCircuits) -> dict[str, Any]:
    """The QK reading (``qk_rotary``, ``qk_context``) ``calibrate`` recorded under ``--out``
    for this model, when ``--preset calibrated`` asks for it (else empty)."""
    if getattr(args, "preset", None) != "calibrated":
        return {}
    from headatlas.store import model_slug
    from headatlas.validate.qk_calibration import calibrated_qk_fields

    return calibrated_qk_fields(Path(args.out) / model_slug(str(circuits.source.name)))


def options_from_args(
    args: argparse.Namespace, recipe: Recipe | None = None, qk: Mapping[str, Any] | None = None
) -> MapOptions:
    """MapOptions from parsed arguments (MapOptions checks the values): the preset's (``recipe``
    for "calibrated"; ``qk``: the calibrated QK fields), with every switch given on the
    command line over it."""
    preset = getattr(args, "preset", "default")
    if preset == "calibrated" and recipe is None:
        raise OptionError(
            "--preset calibrated needs a calibration: run `headatlas calibrate MODEL --out DIR`"
        )
    base = recipe if preset == "calibrated" and recipe is not None else PRESETS[preset]
    switches = given_values(Recipe, args)
    if getattr(args, "effective_embedding", None) is False:
        if switches.get("embedding", "none") != "none":
            raise OptionError(
                f"--no-effective-embedding is --embedding none: drop one of it and "
                f"--embedding {switches['embedding']}"
            )
        switches["embedding"] = "none"
    return MapOptions(
        **{
            **PRESET_OPTIONS.get(preset, {}),
            **(qk or {}),
            **given_values(MapOptions, args),
            "recipe": Recipe.from_dict({**base.as_dict(), **switches}),
        }
    )
