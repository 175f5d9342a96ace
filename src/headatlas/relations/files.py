"""User relation files: JSON (list or object), JSONL and CSV.

Formats::

    pairs.json   [["France", "Paris"], ["Japan", "Tokyo"]]
    rel.json     {"name": "capitals", "category": "Knowledge", "description": "...",
                  "pairs": [["France", "Paris"]], "prompt_templates": ["..."], "copying": false}
    pairs.jsonl  ["France", "Paris"]            (one pair per line, or)
                 {"source": "France", "target": "Paris"}
    pairs.csv    source,target                  (header row; extra columns are ignored)
                 France,Paris
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from headatlas.errors import RelationFileError
from headatlas.relations.model import CUSTOM, Relation
from headatlas.relations.schema import parse_pair, parse_pairs, relation_from_mapping

SUFFIXES = (".json", ".jsonl", ".csv")


def load_relation_file(path: str | Path) -> Relation:
    """Read a user relation file; name defaults to the file stem, category to ``"Custom"``."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise RelationFileError(f"relation file {path} {what}; check the path")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise RelationFileError(
            f"relation file {path} has unknown extension '{path.suffix}'; use .json, .jsonl or .csv"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RelationFileError(
            f"relation file {path} is unreadable ({exc}); save it as UTF-8"
        ) from exc
    if not text.strip():
        raise RelationFileError(f"relation file {path} is empty; add [source, target] pairs")
    provenance = f"user file {path}"
    if suffix == ".json":
        return _from_json(text, path, provenance)
    pairs = _jsonl_pairs(text, path) if suffix == ".jsonl" else _csv_pairs(text, path)
    if not pairs:
        raise RelationFileError(f"relation file {path} has no pairs; add [source, target] pairs")
    return Relation(
        name=path.stem,
        category=CUSTOM,
        description=f"user relation from {path.name}",
        provenance=provenance,
        pairs=pairs,
    )


def _from_json(text: str, path: Path, provenance: str) -> Relation:
    where = f"relation file {path}"
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RelationFileError(
            f"{where}: line {exc.lineno}: malformed JSON ({exc.msg}); fix the syntax there"
        ) from exc
    if isinstance(payload, list):
        return Relation(
            name=path.stem,
            category=CUSTOM,
            description=f"user relation from {path.name}",
            provenance=provenance,
            pairs=parse_pairs(payload, where),
        )
    if isinstance(payload, dict):
        return relation_from_mapping(
            payload, where, default_name=path.stem, default_provenance=provenance
        )
    raise RelationFileError(
        f"{where}: top level must be a list of pairs or an object with 'pairs', "
        f"not {type(payload).__name__}"
    )


def _jsonl_pairs(text: str, path: Path) -> tuple[tuple[str, str], ...]:
    pairs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"relation file {path}: line {lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RelationFileError(
                f"{where}: malformed JSON ({exc.msg}); each line must be one pair"
            ) from exc
        pairs.append(parse_pair(item, where))
    return tuple(pairs)


def _csv_pairs(text: str, path: Path) -> tuple[tuple[str, str], ...]:
    reader = csv.reader(io.StringIO(text))
    header = [cell.strip().lower() for cell in next(reader, [])]
    if "source" not in header or "target" not in header:
        raise RelationFileError(
            f"relation file {path}: line 1: CSV header must name 'source' and 'target' columns "
            "(e.g. source,target)"
        )
    i_source, i_target = header.index("source"), header.index("target")
    pairs = []
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        where = f"relation file {path}: line {reader.line_num}"
        if len(row) <= max(i_source, i_target):
            raise RelationFileError(f"{where}: row has {len(row)} columns; need source and target")
        pairs.append(parse_pair([row[i_source], row[i_target]], where))
    return tuple(pairs)
