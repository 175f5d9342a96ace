"""The 20 built-in relations, read from the JSON files in ``relations/data/``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from importlib import resources

from headatlas.errors import RelationFileError
from headatlas.relations.model import (
    ALGORITHMIC,
    KNOWLEDGE,
    LINGUISTIC,
    TRANSLATION,
    Relation,
)
from headatlas.relations.schema import relation_from_mapping

#: Built-in relation names by category, in display order.
BUILTIN_BY_CATEGORY: dict[str, tuple[str, ...]] = {
    ALGORITHMIC: (
        "copying",
        "name_copying",
        "word_first_letter",
        "word_last_letter",
        "year_following",
    ),
    KNOWLEDGE: (
        "country_capital",
        "country_language",
        "object_superclass",
        "product_company",
        "occupation_location",
    ),
    LINGUISTIC: (
        "adjective_antonym",
        "adjective_comparative",
        "adjective_superlative",
        "verb_past_tense",
        "noun_pronoun",
        "word_synonym",
        "word_homophone",
        "word_compound",
    ),
    TRANSLATION: ("english_french", "english_spanish"),
}

#: The 20 built-in relation names, in category order.
BUILTIN_NAMES: tuple[str, ...] = tuple(n for names in BUILTIN_BY_CATEGORY.values() for n in names)


def builtin_relations(names: Sequence[str] | None = None) -> list[Relation]:
    """The built-in relations called ``names`` (all 20 when None), in the order given."""
    wanted = BUILTIN_NAMES if names is None else tuple(names)
    for name in wanted:
        if name not in BUILTIN_NAMES:
            raise RelationFileError(
                f"unknown relation '{name}'; built-in relations are: {', '.join(BUILTIN_NAMES)}"
            )
    return [_load_builtin(name) for name in wanted]


@cache
def _load_builtin(name: str) -> Relation:
    resource = resources.files("headatlas.relations") / "data" / f"{name}.json"
    where = f"built-in relation file data/{name}.json"
    try:
        payload = json.loads(resource.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RelationFileError(f"{where} is unreadable ({exc}); reinstall headatlas") from exc
    return relation_from_mapping(
        payload, where, default_name=name, default_provenance="built into headatlas"
    )
