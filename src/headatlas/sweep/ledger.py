"""The sweep's own records in the store, beside the per-model folders::

OUT/sweep/sweep.json          one entry per map: status, folder, attempts, seconds, error,
                              and the request it answered (so a re-run skips it)
OUT/sweep/events.jsonl        task starts and ends, appended by the tasks themselves
OUT/sweep/scores.parquet      every finished map's scores, one dataset
OUT/sweep/categories.parquet  every finished map's head labels, one dataset
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from headatlas.errors import HeadAtlasError
from headatlas.scoring.options import MapOptions
from headatlas.store import (
    CATEGORIES,
    SCORES,
    MapResults,
    check_files,
    load_results,
    read_manifest,
    write_json_atomic,
    write_parquet_atomic,
)
from headatlas.sweep.spec import SweepEntry

SWEEP_DIR = "sweep"
LEDGER = "sweep.json"
EVENTS = "events.jsonl"
ENTRY_COLUMNS = ["entry", "display", "revision", "step", "n_layers", "n_heads", "relative_depth"]
"""Columns the combined tables add to each model's own."""


def request_key(
    options: MapOptions, relations: Sequence[str] | None, relation_files: Sequence[str]
) -> str:
    """Hash of what a map was asked for, besides the model (options, relations and the
    contents of relation files)."""
    h = hashlib.sha256()
    opts = options.legacy_dict()  # the layout of earlier ledgers, so their maps are skipped
    opts.pop("device", None)
    h.update(json.dumps(opts, sort_keys=True, default=str).encode())
    h.update(json.dumps(sorted(relations) if relations is not None else None).encode())
    for f in relation_files:
        h.update(Path(f).read_bytes())
    return h.hexdigest()[:16]


def read_ledger(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of a ledger file, spec -> record; entries of the wrong shape are left out,
    and a file that is not a ledger (unreadable, cut short, another tool's) gives none: every
    map is then checked again (map_heads reuses finished maps)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        return {}
    return {str(k): dict(v) for k, v in entries.items() if isinstance(v, dict)}


class Ledger:
    """``OUT/sweep/sweep.json``: what the sweeps into this store have mapped."""

    def __init__(self, out: Path):
        self.folder = Path(out) / SWEEP_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / LEDGER
        self.events = self.folder / EVENTS
        self.entries: dict[str, dict[str, Any]] = {}
        self.entries = read_ledger(self.path)

    def finished(self, spec: str, request: str) -> str | None:
        """The results folder of ``spec`` when a map for the same request is still there."""
        rec = self.entries.get(spec)
        if not rec or rec.get("status") not in ("mapped", "reused", "skipped"):
            return None
        if rec.get("request") != request or not isinstance(rec.get("directory"), str):
            return None
        directory = Path(rec["directory"])
        try:
            manifest = read_manifest(directory)
        except HeadAtlasError:
            return None
        if manifest.get("cache_key") != rec.get("cache_key"):
            return None
        if not (directory / SCORES).is_file() or not (directory / CATEGORIES).is_file():
            return None
        try:
            if not check_files(directory, manifest, require=[SCORES, CATEGORIES]):
                return None  # an old manifest: its task maps again (and reuses what matches)
        except HeadAtlasError:
            return None
        return str(directory)

    def record(self, spec: str, **fields: Any) -> None:
        """Update one entry and write the ledger (atomically)."""
        self.entries[spec] = {**self.entries.get(spec, {}), **fields}
        write_json_atomic({"entries": self.entries}, self.path)

    def attempts(self, run_id: str) -> dict[str, int]:
        """Task starts per entry in run ``run_id``, from the event log."""
        counts: dict[str, int] = {}
        if not self.events.is_file():
            return counts
        for line in self.events.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("run") == run_id and event.get("event") == "start":
                counts[event["spec"]] = counts.get(event["spec"], 0) + 1
        return counts


def _with_entry(df: pd.DataFrame, entry: SweepEntry, results: MapResults) -> pd.DataFrame:
    n_layers = results.n_layers
    out = df.copy()
    out.insert(0, "entry", entry.spec)
    out.insert(1, "display", results.display_name)
    out["revision"] = entry.revision
    out["step"] = pd.array([entry.step] * len(out), dtype="Int64")
    out["n_layers"] = n_layers
    out["n_heads"] = results.n_heads
    out["relative_depth"] = out["layer"] / max(n_layers - 1, 1)
    return out


def write_combined(
    out: Path, finished: Sequence[tuple[SweepEntry, str]]
) -> tuple[Path, Path] | None:
    """Write the combined scores and categories of ``finished`` (entry, folder) pairs, in
    sweep order; None when nothing finished."""
    scores, categories = [], []
    for entry, directory in finished:
        results = load_results(directory)
        scores.append(_with_entry(results.scores, entry, results))
        categories.append(_with_entry(results.categories, entry, results))
    if not scores:
        return None
    folder = Path(out) / SWEEP_DIR
    paths = folder / SCORES, folder / CATEGORIES
    write_parquet_atomic(pd.concat(scores, ignore_index=True), paths[0])
    write_parquet_atomic(pd.concat(categories, ignore_index=True), paths[1])
    return paths
