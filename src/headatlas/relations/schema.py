"""Turning decoded JSON/CSV values into validated pairs and :class:`Relation` records.

Every error raised here is a :class:`RelationFileError` whose message starts with ``where``
(a file name, optionally with a line), so callers only supply the location.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from headatlas.errors import RelationFileError
from headatlas.relations.model import CUSTOM, Relation

PAIR_HINT = 'write each pair as ["source", "target"] or {"source": ..., "target": ...}'


def parse_pair(item: Any, where: str) -> tuple[str, str]:
    """One ``[source, target]`` list or ``{"source", "target"}`` object as a stripped pair."""
    if isinstance(item, Mapping):
        if "source" not in item or "target" not in item:
            raise RelationFileError(
                f"{where}: object without 'source' and 'target' keys; {PAIR_HINT}"
            )
        members = [item["source"], item["target"]]
    elif isinstance(item, list | tuple) and len(item) == 2:
        members = list(item)
    else:
        raise RelationFileError(f"{where}: {_short(item)} is not a pair; {PAIR_HINT}")
    words = []
    for member in members:
        if not isinstance(member, str):
            raise RelationFileError(
                f'{where}: pair member {_short(member)} is not a string; quote it, e.g. "1999"'
            )
        if not member.strip():
            raise RelationFileError(
                f"{where}: pair has an empty member; give both source and target"
            )
        words.append(member.strip())
    return words[0], words[1]


def parse_pairs(items: Any, where: str) -> tuple[tuple[str, str], ...]:
    """A JSON list of pairs; each error names the pair's 1-based index."""
    if not isinstance(items, list):
        raise RelationFileError(f"{where}: 'pairs' must be a list; {PAIR_HINT}")
    pairs = tuple(parse_pair(item, f"{where}: pair {i}") for i, item in enumerate(items, 1))
    if not pairs:
        raise RelationFileError(f"{where}: no pairs; add at least one [source, target] pair")
    return pairs


def relation_from_mapping(
    obj: Mapping[str, Any], where: str, *, default_name: str, default_provenance: str
) -> Relation:
    """A relation from a JSON object with ``pairs`` and optional metadata keys."""
    if "pairs" not in obj:
        raise RelationFileError(
            f"{where}: JSON object has no 'pairs' key; add \"pairs\": [[s, t], ...]"
        )
    pairs = parse_pairs(obj["pairs"], where)
    name = _optional_str(obj, "name", where) or default_name
    category = _optional_str(obj, "category", where) or CUSTOM
    description = _optional_str(obj, "description", where) or f"user relation {name}"
    provenance = _optional_str(obj, "provenance", where) or default_provenance
    templates = obj.get("prompt_templates", [])
    if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
        raise RelationFileError(f"{where}: 'prompt_templates' must be a list of strings")
    copying = obj.get("copying", False)
    if not isinstance(copying, bool):
        raise RelationFileError(f"{where}: 'copying' must be true or false")
    return Relation(
        name=name,
        category=category,
        description=description,
        provenance=provenance,
        pairs=pairs,
        prompt_templates=tuple(templates),
        copying=copying,
    )


def _optional_str(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise RelationFileError(f"{where}: '{key}' must be a string")
    return value.strip() or None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
