"""What a head reads (QK) for the atlas's head pages, beside what it writes (OV).

Read from ``qk_scores.parquet`` (``headatlas map --qk``, docs/qk.md) when the map has it:

- ``dup_score``: the duplicate-token score (thousandths per head);
- ``salient_keys`` / ``salient_queries``: token ids, decoded with the model's tokenizer when it
  can be opened from the manifest's local source (else shown as ``#id``);
- any other numeric column (class-preference AUCs and their null, when the map writes them) is
  shown as it is named; a column whose name holds ``null`` or ends in ``_p`` / ``_z`` /
  ``p_value`` rides beside the column whose name it extends.

Each reading carries whether it is validated on this model: its Pearson r against inference
and the issue-23 target (duplicate-token r >= 0.8; class preference mean r >= 0.7), from the
map's ``validation/qk.csv`` / ``qk_classes.csv`` (``headatlas validate --experiment qk``) when
present, else from the measurements of docs/qk.md for the packaged models; a reading with
neither is marked as not validated here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from headatlas.scoring.qk_labels import CLASS_TARGET, DUPLICATE_TARGET
from headatlas.store import QK_COLUMNS, MapResults

QK_VALIDATION = Path("validation") / "qk.csv"
"""Per reading (inputs, rotary): r of the duplicate-token score (``validate --experiment qk``)."""
QK_CLASSES = Path("validation") / "qk_classes.csv"
"""Per class: r of the key preference, read the best duplicate-token way."""

MAX_QK_TOKENS = 8
"""Salient keys and queries shown per head."""

MEASURED: dict[str, dict[str, Any]] = {
    "smollm2": {
        "dup": {
            ("recipe", "none"): 0.785,
            ("recipe", "offsets"): 0.806,
            ("recipe", "slow"): 0.809,
            ("context", "none"): 0.726,
            ("context", "offsets"): 0.943,
            ("context", "slow"): 0.849,
        },
        "classes": {("context", "offsets"): 0.743},
        "per_class": {
            ("context", "offsets"): {
                "first_names": 0.681,
                "countries": 0.809,
                "cities": 0.759,
                "adjectives": 0.835,
                "verbs": 0.872,
                "numbers": 0.811,
                "function_words": 0.857,
                "punctuation": 0.872,
                "start": 0.194,
            }
        },
    },
    "gemma3-270m": {
        "dup": {
            ("recipe", "none"): 0.727,
            ("recipe", "offsets"): 0.780,
            ("recipe", "slow"): 0.757,
            ("context", "none"): 0.673,
            ("context", "offsets"): 0.744,
            ("context", "slow"): 0.709,
        },
        "classes": {("recipe", "offsets"): 0.08},
    },
}
"""r against inference measured for the packaged models (docs/qk.md, ``benchmarks/qk.py
--context``; weights-only readings with the mlp0 embedding): per (inputs, rotary)."""

_COMPANION_ENDINGS = ("_p", "_z", "p_value", "_pvalue")

Decoder = Callable[[Sequence[int]], list[str]]


def _is_companion(name: str) -> bool:
    return "null" in name or name.endswith(_COMPANION_ENDINGS)


CLASS_LISTS = {
    "class_auc": "",
    "class_null_mean": "_null_mean",
    "class_null_max": "_null_max",
    "class_p_value": "_p_value",
    "class_z": "_z",
}
"""The map's per-class list columns (in the order of ``classes``) and the suffix each gets
as a column of its own: ``auc_<class>`` with its null, p-value and z as companions."""


def class_columns(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the list-valued class-preference columns (``classes``, ``class_auc``,
    ``class_null_*``, ``class_p_value``, ``class_z``) spread into one numeric column per class
    and statistic (``auc_countries``, ``auc_countries_null_max``, ...), which
    :func:`extra_columns` groups; a table without them is returned as it is."""
    if "classes" not in table.columns or "class_auc" not in table.columns or table.empty:
        return table
    names = [str(c) for c in _first_list(table["classes"])]
    spread: dict[str, list[float]] = {}
    for column, suffix in CLASS_LISTS.items():
        if column not in table.columns:
            continue
        for j, name in enumerate(names):
            spread[f"auc_{name}{suffix}"] = [_item(v, j) for v in table[column].tolist()]
    out = table.drop(columns=[c for c in ("classes", *CLASS_LISTS) if c in table.columns])
    return pd.concat([out.reset_index(drop=True), pd.DataFrame(spread)], axis=1)


def _first_list(values: pd.Series) -> list[Any]:
    for v in values.tolist():
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            return list(v)
    return []


def _item(value: Any, j: int) -> float:
    try:
        return float(list(value)[j])
    except (TypeError, IndexError, ValueError):
        return float("nan")


def extra_columns(table: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """Numeric columns beyond :data:`QK_COLUMNS` as (column, its companion columns): a companion
    (``null`` in its name, or ending in ``_p``/``_z``/``p_value``) joins the longest other column
    its name starts with; one without such a column stands alone."""
    numeric = [
        str(c)
        for c in table.columns
        if c not in QK_COLUMNS and pd.api.types.is_numeric_dtype(table[c])
    ]
    bases = [c for c in numeric if not _is_companion(c)]
    groups: dict[str, list[str]] = {c: [] for c in bases}
    for c in numeric:
        if c in groups:
            continue
        owners = [b for b in bases if c.startswith(b)]
        if owners:
            groups[max(owners, key=len)].append(c)
        else:
            groups[c] = []
    return list(groups.items())


def _per_cell(table: pd.DataFrame, column: str, results: MapResults) -> list[int]:
    out = np.full(results.n_layers * results.n_heads, np.nan)
    cell = (table["layer"].astype(int) * results.n_heads + table["head"].astype(int)).to_numpy()
    out[cell] = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
    return np.where(np.isfinite(out), np.round(out * 1000), -1).astype(int).tolist()  # type: ignore[no-any-return]


def _ids(value: Any) -> list[int]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [int(v) for v in list(value)[:MAX_QK_TOKENS]]


def tokenizer_decoder(results: MapResults) -> Decoder | None:
    """Token ids -> strings with the model's tokenizer, when the manifest's source is a local
    file or folder that still exists; None otherwise (never reaches the network)."""
    source = results.manifest.get("model", {}).get("source", {})
    path = source.get("path") if isinstance(source, dict) else None
    if not isinstance(path, str) or not Path(path).exists():
        return None
    try:
        from headatlas.weights import open_source

        tok = open_source(path).tokenizer()
    except Exception:  # any failure only costs the decoded strings
        return None
    if tok is None:
        return None
    return lambda ids: [str(tok.decode([i])) for i in ids]


def _reading(results: MapResults) -> tuple[str, str]:
    """(inputs, rotary) of the map's QK reading (the defaults when the manifest lacks them)."""
    options = results.manifest.get("qk", {}).get("options", {})
    if not isinstance(options, dict):
        options = {}
    return str(options.get("inputs", "recipe")), str(options.get("rotary", "offsets"))


def _embedding(results: MapResults) -> str:
    return str(results.manifest.get("options", {}).get("embedding", "mlp0"))


def qk_checks(results: MapResults) -> dict[str, dict[str, Any]]:
    """Per reading ("dup", "classes"): r, target, ok (None: not measured) and where r is from;
    ``classes`` also carries ``per_class`` {class: r} when known (a class column is validated
    when the mean and its own class reach the target)."""
    inputs, rotary = _reading(results)
    checks: dict[str, dict[str, Any]] = {
        "dup": {"r": None, "target": DUPLICATE_TARGET, "ok": None, "source": ""},
        "classes": {"r": None, "target": CLASS_TARGET, "ok": None, "source": "", "per_class": {}},
    }
    measured, per_class = _measured_here(results, inputs, rotary)
    for key, value in measured.items():
        r, source = value
        checks[key].update(r=round(r, 3), ok=bool(r >= checks[key]["target"]), source=source)
    checks["classes"]["per_class"] = {k: round(v, 3) for k, v in per_class.items()}
    return checks


def _measured_here(
    results: MapResults, inputs: str, rotary: str
) -> tuple[dict[str, tuple[float, str]], dict[str, float]]:
    out: dict[str, tuple[float, str]] = {}
    per_class: dict[str, float] = {}
    try:
        table = pd.read_csv(results.directory / QK_VALIDATION)
        rows = table[(table["inputs"] == inputs) & (table["rotary"] == rotary)]
        if len(rows) and math.isfinite(float(rows["r"].iloc[0])):
            out["dup"] = (float(rows["r"].iloc[0]), "validate --experiment qk")
        best = table.loc[table["r"].fillna(-1).idxmax()]
        classes = pd.read_csv(results.directory / QK_CLASSES)
        if (best["inputs"], best["rotary"]) == (inputs, rotary) and len(classes):
            out["classes"] = (float(classes["r"].mean()), "validate --experiment qk")
            per_class = {str(c): float(r) for c, r in zip(classes["class"], classes["r"])}
    except (OSError, ValueError, KeyError, UnicodeDecodeError):
        pass
    name = str(results.manifest.get("model", {}).get("name", ""))
    known = MEASURED.get(name)
    # the packaged measurements read weights-only inputs through mlp0 (the context inputs do
    # not depend on the embedding mode)
    if known is not None and (inputs == "context" or _embedding(results) == "mlp0"):
        for key in ("dup", "classes"):
            r = known[key].get((inputs, rotary))
            if key not in out and r is not None:
                out[key] = (float(r), "docs/qk.md")
                if key == "classes":
                    per_class = dict(known.get("per_class", {}).get((inputs, rotary), {}))
    return out, per_class


def qk_data(results: MapResults, decode: Decoder | None = None) -> dict[str, Any] | None:
    """The QK side of every head page, or None when the map has no ``qk_scores.parquet``.

    ``dup``: duplicate-token score per head (thousandths, −1 none); ``keys`` / ``queries``: per
    head index its salient tokens; ``extra``: [[column, values, [[companion, values], ...]],
    ...]; ``reading``: inputs and rotary; ``checks``: see :func:`qk_checks`.
    """
    table = results.qk()
    if table is None:
        return None
    ok = table["layer"].between(0, results.n_layers - 1) & table["head"].between(
        0, results.n_heads - 1
    )
    table = class_columns(table[ok].reset_index(drop=True))
    decoder = decode if decode is not None else tokenizer_decoder(results)
    keys: dict[str, list[str]] = {}
    queries: dict[str, list[str]] = {}
    index = (table["layer"].astype(int) * results.n_heads + table["head"].astype(int)).tolist()
    for sink, column in ((keys, "salient_keys"), (queries, "salient_queries")):
        for i, value in zip(index, table[column].tolist()):
            ids = _ids(value)
            if ids:
                sink[str(i)] = decoder(ids) if decoder else [f"#{t}" for t in ids]
    inputs, rotary = _reading(results)
    return {
        "reading": {"inputs": inputs, "rotary": rotary},
        "dup": _per_cell(table, "dup_score", results),
        "keys": keys,
        "queries": queries,
        "extra": [
            [c, _per_cell(table, c, results), [[x, _per_cell(table, x, results)] for x in comp]]
            for c, comp in extra_columns(table)
        ],
        "checks": qk_checks(results),
    }
