"""Labels from the static QK scores, only where the reading predicts inference.

A static QK score is used to label heads only when its agreement with inference was measured
on this model (by ``calibrate``, recorded in ``calibration.json``) and reaches its target:
duplicate-token r >= :data:`DUPLICATE_TARGET` over heads; class preference mean r >=
:data:`CLASS_TARGET` over classes, and then only the classes whose own r reaches it. Where a
reading misses its target, or was never measured, the outputs say so and no label comes from it.

The agreement of a map's reading is a plain dict (the manifest's ``qk.agreement``)::

    {"measured": bool, "source": "calibration.json" | None,
     "duplicate_token": {"reading": "context/offsets", "r": 0.94 | None, "target": 0.8,
                         "reaches_target": bool},
     "class_preference": {"mean_r": 0.74 | None, "target": 0.7, "reaches_target": bool,
                          "classes": [names whose r reaches the target]}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from headatlas.store import MapResults

QK_SECTION = "qk"
"""The key of calibrate's QK record in calibration.json."""

DUPLICATE_TARGET = 0.8
"""The r over heads a static duplicate-token reading must reach before heads are labelled by it."""
CLASS_TARGET = 0.7
"""The mean r over classes a static key-preference reading must reach to label heads by it."""
DUPLICATE_LABEL = {"dup_score": 0.9, "dup_mass": 0.3}
"""Static duplicate-token score (per column: the rank share, the attention share) from which a
head is labelled a duplicate-token head."""
CLASS_LABEL_AUC = 0.7
"""Static class AUC from which a head is labelled as preferring the class's keys (beating
every random class of equal size too: p = 1/(1 + draws))."""


DUPLICATE_COLUMNS = ("dup_score", "dup_mass")
"""The static duplicate-token scores of qk_scores.parquet: the rank and the attention share."""


def reading_name(inputs: str, rotary: str, score: str = "dup_score") -> str:
    """``<inputs>/<rotary>`` (``/mass`` for dup_mass), as ``validate --experiment qk`` names a
    reading."""
    return f"{inputs}/{rotary}" + ("/mass" if score == "dup_mass" else "")


def read_qk_calibration(directory: str | Path) -> dict[str, Any] | None:
    """calibrate's QK record in ``directory/calibration.json`` (a model's results folder), or
    None when there is no calibration, it has no QK record, or it cannot be read."""
    try:
        data = json.loads((Path(directory) / "calibration.json").read_text())
    except (OSError, ValueError):
        return None
    section = data.get(QK_SECTION) if isinstance(data, dict) else None
    return section if isinstance(section, dict) and section.get("supported") else None


def unmeasured(reading: str, score: str = "dup_score") -> dict[str, Any]:
    """The agreement of a reading no calibration measured: nothing is labelled by it."""
    return {
        "measured": False,
        "source": None,
        "duplicate_token": {
            "reading": reading,
            "column": score,
            "r": None,
            "target": DUPLICATE_TARGET,
            "reaches_target": False,
        },
        "class_preference": {
            "mean_r": None,
            "target": CLASS_TARGET,
            "reaches_target": False,
            "classes": [],
        },
    }


def agreement_of(qk_record: dict[str, Any] | None, inputs: str, rotary: str) -> dict[str, Any]:
    """The agreement of the reading (``inputs``, ``rotary``, and the duplicate-token column
    calibrate chose) from calibrate's QK record
    (:func:`headatlas.validate.qk_calibration.qk_record`; None: not measured)."""
    score = str((qk_record or {}).get("score", "dup_score"))
    reading = reading_name(inputs, rotary, score)
    out = unmeasured(reading, score)
    if not qk_record or not qk_record.get("readings"):
        return out
    out["measured"], out["source"] = True, "calibration.json"
    for row in qk_record["readings"]:
        name = reading_name(row["inputs"], row["rotary"], row.get("score", "dup_score"))
        if name == reading and row.get("r") is not None:
            r = float(row["r"])
            out["duplicate_token"].update(r=r, reaches_target=r >= DUPLICATE_TARGET)
    classes = qk_record.get("classes") or {}
    if classes.get("reading") == reading_name(inputs, rotary) and classes.get("mean_r") is not None:
        mean_r = float(classes["mean_r"])
        ok = mean_r >= CLASS_TARGET
        named = [
            c["class"] for c in classes.get("per_class", []) if (c.get("r") or 0) >= CLASS_TARGET
        ]
        out["class_preference"].update(
            mean_r=mean_r, reaches_target=ok, classes=named if ok else []
        )
    return out


def verdict_lines(agreement: dict[str, Any]) -> list[str]:
    """What the agreement means for labels, one line per score (for the CLI and captions)."""
    dup, cls = agreement["duplicate_token"], agreement["class_preference"]
    if not agreement.get("measured"):
        return [
            f"QK reading {dup['reading']}: agreement with inference not measured on this "
            "model (run `headatlas calibrate`): no head is labelled by it"
        ]
    lines = []
    if dup["r"] is None:
        lines.append(f"duplicate-token ({dup['reading']}): not measured: no labels")
    elif dup["reaches_target"]:
        lines.append(
            f"duplicate-token ({dup['reading']}): r = {dup['r']:.2f} against inference "
            f"(target {dup['target']}): used for labels"
        )
    else:
        lines.append(
            f"duplicate-token ({dup['reading']}): r = {dup['r']:.2f} against inference, "
            f"below the {dup['target']} target: no head is labelled by it"
        )
    if cls["mean_r"] is None:
        lines.append("class preference: not measured for this reading: no labels")
    elif cls["reaches_target"]:
        lines.append(
            f"class preference: mean r = {cls['mean_r']:.2f} (target {cls['target']}): "
            f"labels from {', '.join(cls['classes']) or 'no class'}"
        )
    else:
        lines.append(
            f"class preference: mean r = {cls['mean_r']:.2f}, below the "
            f"{cls['target']} target: no head is labelled by it"
        )
    return lines


def qk_labels(table: pd.DataFrame, agreement: dict[str, Any]) -> pd.DataFrame:
    """What each head reads, as a short label from the scores whose reading reaches its target
    (empty where none does): layer, head, reads. ``table``: qk_scores.parquet."""
    dup_ok = bool(agreement["duplicate_token"]["reaches_target"])
    column = agreement["duplicate_token"].get("column", "dup_score")
    cls = agreement["class_preference"]
    allowed = set(cls["classes"]) if cls["reaches_target"] else set()
    has_classes = "classes" in table.columns
    reads = []
    for row in table.itertuples(index=False):
        parts = []
        if dup_ok and getattr(row, column) >= DUPLICATE_LABEL[column]:
            parts.append("duplicate-token")
        names = list(row.classes) if has_classes else []
        for j, name in enumerate(names):
            if name not in allowed:
                continue
            auc, p = float(row.class_auc[j]), float(row.class_p_value[j])
            if auc >= CLASS_LABEL_AUC and float(row.class_null_max[j]) < auc:
                parts.append(f"{name.replace('_', ' ')} keys (AUC {auc:.2f}, p {p:.3g})")
        reads.append("; ".join(parts))
    return pd.DataFrame({"layer": table["layer"], "head": table["head"], "reads": reads})


def head_function(reads: str, writes: str, agreement: dict[str, Any]) -> str:
    """A head's whole function in one row: what it reads (QK, a label only from a reading that
    reaches its target) and what it writes (OV)."""
    if reads:
        left = f"reads {reads}"
    elif (
        agreement["duplicate_token"]["reaches_target"]
        or agreement["class_preference"]["reaches_target"]
    ):
        left = "reads nothing distinctive"
    else:
        left = "reads: not labelled (the QK reading does not reach its target on this model)"
    return f"{left} · writes {writes or 'nothing labelled'}"


def map_agreement(results: MapResults) -> dict[str, Any] | None:
    """The agreement a map's manifest records for its QK reading (None: no QK scores; an
    unmeasured agreement for maps from before it was recorded)."""
    section = results.manifest.get("qk")
    if not isinstance(section, dict):
        return None
    if isinstance(section.get("agreement"), dict):
        return dict(section["agreement"])
    options = section.get("options", {})
    return unmeasured(reading_name(options.get("inputs", "recipe"), options.get("rotary", "?")))


def qk_summary(results: MapResults) -> list[str]:
    """The QK lines of a map's summary: the reading's agreement with inference, what it means
    for labels, and the heads labelled (none from a reading below its target)."""
    agreement = map_agreement(results)
    table = results.qk()
    if agreement is None or table is None:
        return []
    lines = ["", "QK (where heads attend):", *(f"  {v}" for v in verdict_lines(agreement))]
    labels = qk_labels(table, agreement)
    named = labels[labels["reads"] != ""]
    if len(named):
        lines.append(f"  heads labelled by what they read: {len(named)}")
        lines += [f"    L{r.layer}H{r.head}: {r.reads}" for r in named.head(10).itertuples()]
    return lines
