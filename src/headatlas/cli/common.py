"""Options shared by several subcommands (model source, method switches)."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from headatlas.circuits import ModelCircuits
from headatlas.cli.dataclass_args import add_dataclass_args, dataclass_from_args
from headatlas.errors import OptionError
from headatlas.scoring.options import MapOptions, preset_fields
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
    from headatlas.store import model_slug
    from headatlas.validate.calibrate import read_calibration

    return read_calibration(Path(args.out) / model_slug(str(circuits.source.name)))


def add_method_args(p: argparse.ArgumentParser) -> None:
    """Every field of MapOptions as a switch (built from the dataclass and its docstrings)."""
    g = p.add_argument_group("method switches (all recorded in the manifest)")
    g.add_argument(
        "--preset",
        "--recipe",
        dest="preset",
        default="default",
        choices=[*PRESETS, "calibrated"],
        help="the recipe the switches start from: default (this project's), maps (the MAPS "
        "authors' exact formula: MLP0, no norm, no bias, k by vocabulary) or calibrated (the "
        "winner of `headatlas calibrate` stored under --out); a recipe switch given with a "
        "value other than its default wins over the preset",
    )
    add_dataclass_args(g, MapOptions)


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
    """MapOptions from parsed arguments (MapOptions checks the values). A preset other than
    ``default`` (``recipe`` for "calibrated") sets every recipe switch left at its default;
    ``qk``: the calibrated QK fields, set the same way."""
    options: MapOptions = dataclass_from_args(MapOptions, args)
    preset = getattr(args, "preset", "default")
    if preset == "default":
        return options
    if preset == "calibrated" and recipe is None:
        raise OptionError(
            "--preset calibrated needs a calibration: run `headatlas calibrate MODEL --out DIR`"
        )
    base = recipe if preset == "calibrated" and recipe is not None else PRESETS[preset]
    defaults = MapOptions()
    changes = {
        name: value
        for name, value in {**preset_fields(preset, base), **(qk or {})}.items()
        if getattr(options, name) == getattr(defaults, name)
    }
    return dataclasses.replace(options, **changes)
