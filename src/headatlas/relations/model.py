"""The relation record: a named list of (source, target) word pairs."""

from __future__ import annotations

from dataclasses import dataclass

ALGORITHMIC = "Algorithmic"
KNOWLEDGE = "Knowledge"
LINGUISTIC = "Linguistic"
TRANSLATION = "Translation"
CUSTOM = "Custom"

#: The categories of the built-in relations, in display order.
BUILTIN_CATEGORIES: tuple[str, ...] = (ALGORITHMIC, KNOWLEDGE, LINGUISTIC, TRANSLATION)


@dataclass(frozen=True)
class Relation:
    """A relation given by example pairs, e.g. ``("France", "Paris")`` for country_capital.

    Attributes:
        name: Unique slug, e.g. ``"country_capital"``.
        category: ``"Algorithmic"``, ``"Knowledge"``, ``"Linguistic"``, ``"Translation"``
            or ``"Custom"`` for user files.
        description: One line saying what maps to what.
        provenance: Where the facts came from (authored, generated from a package, user file).
        pairs: The (source, target) words, without leading spaces.
        prompt_templates: Few-shot prompts with a ``<X>`` slot for the source, ending where
            the model's next token should be the target.
        copying: True when every target equals its source (copying relations).
    """

    name: str
    category: str
    description: str
    provenance: str
    pairs: tuple[tuple[str, str], ...]
    prompt_templates: tuple[str, ...] = ()
    copying: bool = False

    def __len__(self) -> int:
        return len(self.pairs)
