"""Choosing relations by name, category and file (what the CLI's options map to)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from headatlas.errors import RelationFileError
from headatlas.relations.builtin import BUILTIN_BY_CATEGORY, BUILTIN_NAMES, builtin_relations
from headatlas.relations.files import load_relation_file
from headatlas.relations.model import Relation


def resolve_relations(
    names: Sequence[str] | None, files: Sequence[str | Path] = ()
) -> list[Relation]:
    """Built-in relations named in ``names`` followed by the relations in ``files``.

    ``names=None`` selects all 20 built-ins (files are added after them); ``names=[]``
    selects none, so only the files are used. A name may also be a category
    (``"Knowledge"``, case-insensitive), selecting all its relations. A relation selected
    twice (or a file named like a built-in) is an error.
    """
    selected = builtin_relations(None if names is None else _expand(names))
    selected += [load_relation_file(path) for path in files]
    seen: set[str] = set()
    for relation in selected:
        if relation.name in seen:
            raise RelationFileError(
                f"relation '{relation.name}' is selected twice; drop the duplicate name or "
                "rename the relation file (names must be unique)"
            )
        seen.add(relation.name)
    return selected


def _expand(names: Sequence[str]) -> list[str]:
    categories = {category.lower(): members for category, members in BUILTIN_BY_CATEGORY.items()}
    expanded: list[str] = []
    for name in names:
        if name in BUILTIN_NAMES:
            expanded.append(name)
        elif name.lower() in categories:
            expanded.extend(categories[name.lower()])
        else:
            raise RelationFileError(
                f"unknown relation '{name}'; built-in relations are: {', '.join(BUILTIN_NAMES)}; "
                f"categories are: {', '.join(BUILTIN_BY_CATEGORY)}"
            )
    return expanded
