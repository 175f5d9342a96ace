"""``calibrate``'s QK step: choose the static QK reading by its agreement with inference.

Every reading (inputs: the recipe's x̃ or in context; rotary: none, offsets, slow) is scored
against the dynamic duplicate-token score (:func:`headatlas.validate.qk.validate_qk`); the one
with the highest r wins, as the embedding mode is chosen for OV, and the key preference per
token class is measured for it. The record (:func:`qk_record`) goes into
``calibration.json`` under ``qk``; ``map --preset calibrated`` maps with the winning reading
(:func:`calibrated_qk_fields`), and every ``map --qk`` beside it records the agreement of its
reading, which decides whether heads are labelled by it (:mod:`headatlas.scoring.qk_labels`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from headatlas.circuits import ModelCircuits
from headatlas.errors import UnsupportedArchitecture
from headatlas.scoring.qk import QKOptions
from headatlas.scoring.qk_labels import (
    CLASS_TARGET,
    DUPLICATE_TARGET,
    read_qk_calibration,
    reading_name,
)
from headatlas.scoring.recipe import Recipe
from headatlas.validate.qk import QKValidation, validate_qk


def calibrate_qk(
    circuits: ModelCircuits,
    hf_model: Any,
    recipe: Recipe,
    options: QKOptions | None = None,
    classes: bool = True,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Measure every static QK reading through ``recipe`` (the calibrated one) against
    inference and return the record for calibration.json (:func:`qk_record`); a model whose
    QK circuit is not read gets ``{"supported": False, "why": ...}``."""
    t0 = time.perf_counter()
    say("calibrate: QK readings (duplicate-token score, static vs dynamic)")
    try:
        v = validate_qk(circuits, hf_model, recipe, options, classes=classes)
    except UnsupportedArchitecture as exc:
        return {"supported": False, "why": str(exc)}
    record = qk_record(v)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    best = record["duplicate_token"]
    say(
        f"calibrate: QK reading {best['reading']} (r = {best['r']:.3f}"
        f"{'' if best['reaches_target'] else f', below the {DUPLICATE_TARGET} target'})"
    )
    return record


def qk_record(v: QKValidation) -> dict[str, Any]:
    """The QK record of a validation: the chosen reading (``rotary``, ``context``), r of every
    reading, and the class preference measured with the chosen one."""
    b = v.best
    reading = reading_name(b["inputs"], b["rotary"], b["score"])
    readings = [
        {k: _plain(val) for k, val in row.items()} for row in v.correlations.to_dict("records")
    ]
    best_row = next(
        r for r in readings if reading_name(r["inputs"], r["rotary"], r["score"]) == reading
    )
    record: dict[str, Any] = {
        "supported": True,
        "rotary": b["rotary"],
        "context": b["inputs"] == "context",
        "score": b["score"],
        "criterion": "highest Pearson r over heads between the static and the dynamic "
        "duplicate-token score",
        "duplicate_token": {
            "reading": reading,
            "r": best_row["r"],
            "low": best_row["low"],
            "high": best_row["high"],
            "target": DUPLICATE_TARGET,
            "reaches_target": bool(b["reaches_target"]),
        },
        "readings": readings,
    }
    if v.classes is not None and len(v.classes):
        mean_r = float(v.classes["r"].mean())
        record["classes"] = {
            "reading": reading_name(b["inputs"], b["rotary"]),
            "mean_r": mean_r,
            "target": CLASS_TARGET,
            "reaches_target": mean_r >= CLASS_TARGET,
            "per_class": [
                {k: _plain(val) for k, val in row.items()} for row in v.classes.to_dict("records")
            ],
        }
    return record


def calibrated_qk_fields(directory: str | Path) -> dict[str, Any]:
    """The MapOptions fields of the calibrated QK reading (``qk_rotary``, ``qk_context``), empty
    when ``directory`` has no QK calibration."""
    record = read_qk_calibration(directory)
    if record is None:
        return {}
    return {"qk_rotary": str(record["rotary"]), "qk_context": bool(record["context"])}


def _plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN to None."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
