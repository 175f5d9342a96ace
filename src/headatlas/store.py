"""Results on disk: one folder per model holding parquet tables and a JSON manifest.

Layout of ``OUT/<model-slug>/``::

    manifest.json        model (name, display_name, source, fingerprint, architecture, shape),
                         options, relations (name, category, n_pairs, k, skipped reason),
                         package versions, timings
    scores.parquet       model, layer, head, relation, category, k, n_pairs, score,
                         suppression_score
    categories.parquet   layer, head, label, categories, n_relations, relations
    salient.parquet      salient operations (``headatlas salient --all``)
    qk_scores.parquet    static QK scores per head (``headatlas map --qk``, docs/qk.md)
    descriptions.jsonl   LLM descriptions of heads (``headatlas describe``)
    validation/          inference-time checks (``headatlas validate``)

Every write goes to a temporary file in the same folder and is renamed into place, so a file is
either the old version or the new one, never half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from headatlas.errors import ResultsError

MANIFEST = "manifest.json"
SCORES = "scores.parquet"
CATEGORIES = "categories.parquet"
SALIENT = "salient.parquet"
QK_SCORES = "qk_scores.parquet"
QK_COLUMNS = ("model", "layer", "head", "dup_score", "salient_keys", "salient_queries")
"""Columns of qk_scores.parquet (salient_*: token ids, best first)."""
DESCRIPTIONS = "descriptions.jsonl"
SCORE_COLUMNS = (
    "model",
    "layer",
    "head",
    "relation",
    "category",
    "k",
    "n_pairs",
    "score",
    "suppression_score",
)
"""Columns of scores.parquet."""


def model_slug(name: str) -> str:
    """A file-system-safe folder name for a model name, hub id or path, one per source: a
    local path keeps its last part and gains a hash of its full resolved path, so
    ``runs/a/final`` and ``runs/b/final`` never share a results folder."""
    base = name.rstrip("/\\")
    if os.path.exists(name):
        where = str(Path(name).expanduser().resolve())
        tag = hashlib.sha256(where.encode()).hexdigest()[:8]
        last = re.split(r"[/\\]", base)[-1] or "model"
        base = f"{last}-{tag}"
    else:
        base = base.replace("/", "--")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.")
    return slug or "model"


def results_folder(out: str | Path, name: str) -> Path:
    """``out/<model-slug>/``, created now, so an unusable output path is named before any
    work is done."""
    directory = Path(out) / model_slug(name)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ResultsError(
            f"cannot create the results folder {directory} ({exc.strerror or exc}): choose a "
            "writable --out folder"
        ) from exc
    return directory


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ResultsError(
            f"cannot write {path} ({exc.strerror or exc}): choose a writable output folder"
        ) from exc
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(obj: Any, path: Path) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with _atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    """Write a DataFrame as parquet, atomically."""
    with _atomic_path(Path(path)) as tmp:
        df.to_parquet(tmp, index=False)


def write_text_atomic(text: str, path: Path) -> None:
    """Write a text file atomically."""
    with _atomic_path(Path(path)) as tmp:
        tmp.write_text(text)


def read_manifest(directory: Path) -> dict[str, Any]:
    """The manifest of a results folder, or a ResultsError saying what is missing."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ResultsError(
            f"results folder {directory} does not exist: run `headatlas map` first, "
            "or pass the folder that holds manifest.json"
        )
    if not path.is_file():
        raise ResultsError(
            f"{directory} holds no {MANIFEST}: pass a model's results folder "
            "(OUT/<model-slug>/ as written by `headatlas map`)"
        )
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path} is not valid JSON ({exc}): re-run `headatlas map`") from exc
    return data


def read_table(path: Path, columns: Sequence[str] = ()) -> pd.DataFrame:
    """A parquet results file, or a ResultsError naming it when it is unreadable or lacks
    ``columns`` (a file cut short, overwritten or from another tool)."""
    path = Path(path)
    try:
        df = pd.read_parquet(path)
    except FileNotFoundError as exc:
        raise ResultsError(f"{path} does not exist: re-run the command that writes it") from exc
    except Exception as exc:  # pyarrow raises many types for a damaged file
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ResultsError(
            f"{path} is unreadable ({first}): delete it and re-run the command that wrote it"
        ) from exc
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ResultsError(
            f"{path} lacks column(s) {', '.join(missing)}: delete it and re-run the command "
            "that wrote it"
        )
    return df


@dataclass
class MapResults:
    """The map of one model: scores per (layer, head, relation) and a label per head."""

    directory: Path
    manifest: dict[str, Any]
    scores: pd.DataFrame
    categories: pd.DataFrame

    @property
    def display_name(self) -> str:
        """The model's name for titles."""
        model = self.manifest.get("model", {})
        return str(model.get("display_name") or model.get("name") or self.directory.name)

    @property
    def n_layers(self) -> int:
        """Number of layers of the model."""
        return int(self.manifest["model"]["n_layers"])

    @property
    def n_heads(self) -> int:
        """Number of query heads per layer."""
        return int(self.manifest["model"]["n_heads"])

    def salient(self) -> pd.DataFrame | None:
        """Salient operations stored beside the map, if any."""
        path = self.directory / SALIENT
        return read_table(path) if path.is_file() else None

    def qk(self) -> pd.DataFrame | None:
        """Static QK scores stored beside the map (``map --qk``), if any."""
        path = self.directory / QK_SCORES
        return read_table(path, QK_COLUMNS) if path.is_file() else None

    def descriptions(self) -> list[dict[str, Any]]:
        """LLM descriptions stored beside the map (may be empty)."""
        path = self.directory / DESCRIPTIONS
        if not path.is_file():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a hard kill; re-run describe
                continue
        return records


def load_results(directory: str | Path) -> MapResults:
    """Read a results folder written by ``headatlas map``."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    missing = [n for n in (SCORES, CATEGORIES) if not (directory / n).is_file()]
    if missing:
        raise ResultsError(
            f"{directory} lacks {', '.join(missing)}: the map did not finish; "
            "re-run `headatlas map` (finished layers are reused)"
        )
    return MapResults(
        directory=directory,
        manifest=manifest,
        scores=read_table(directory / SCORES, SCORE_COLUMNS),
        categories=read_table(directory / CATEGORIES, ("layer", "head", "label")),
    )
