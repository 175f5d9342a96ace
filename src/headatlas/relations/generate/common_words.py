"""copying, word_first_letter and word_last_letter from wordfreq's most frequent English words."""

from __future__ import annotations

from headatlas.relations.generate.datafile import generated_provenance, leaked_pairs, render, write

# Frequent but unwanted in a dataset (profanity, names that wordfreq lower-cases).
_EXCLUDE = frozenset(
    ("shit", "fuck", "fucking", "damn", "ass", "sex", "porn", "dick", "bitch", "john", "york")
) | {"american", "god"}

COPYING_TEMPLATES = (
    " river -> river; pencil -> pencil; <X> ->",
    " Repeat the word. river: river. pencil: pencil. <X>:",
)
FIRST_LETTER_TEMPLATES = (
    " pencil -> p; garden -> g; <X> ->",
    " The first letter of pencil is p. The first letter of garden is g. The first letter of <X> is",
)
LAST_LETTER_TEMPLATES = (
    " pencil -> l; garden -> n; <X> ->",
    " The last letter of pencil is l. The last letter of garden is n. The last letter of <X> is",
)


def common_words(n: int, min_len: int) -> list[str]:
    """The ``n`` most frequent lower-case ASCII alphabetic English words of ``min_len``+ letters."""
    import wordfreq

    words = []
    for word in wordfreq.top_n_list("en", 5000):
        plain = word.isascii() and word.isalpha() and word.islower()
        if plain and len(word) >= min_len and word not in _EXCLUDE:
            words.append(word)
        if len(words) == n:
            break
    return words


def _pairs(words: list[str], target: str, templates: tuple[str, ...]) -> list[tuple[str, str]]:
    pairs = [(w, w if target == "self" else w[0] if target == "first" else w[-1]) for w in words]
    leaked = set(leaked_pairs(pairs, templates))
    return [p for p in pairs if p not in leaked]


def build() -> dict[str, str]:
    """The three data files, keyed by relation name."""
    provenance = generated_provenance(
        "common_words", "wordfreq", "code Apache-2.0, word data CC-BY-SA-4.0"
    )
    letters = common_words(160, 4)
    return {
        "copying": render(
            name="copying",
            category="Algorithmic",
            description="a common English word maps to itself",
            provenance=provenance,
            prompt_templates=COPYING_TEMPLATES,
            pairs=_pairs(common_words(220, 3), "self", COPYING_TEMPLATES),
            copying=True,
        ),
        "word_first_letter": render(
            name="word_first_letter",
            category="Algorithmic",
            description="a common English word maps to its first letter",
            provenance=provenance,
            prompt_templates=FIRST_LETTER_TEMPLATES,
            pairs=_pairs(letters, "first", FIRST_LETTER_TEMPLATES),
        ),
        "word_last_letter": render(
            name="word_last_letter",
            category="Algorithmic",
            description="a common English word maps to its last letter",
            provenance=provenance,
            prompt_templates=LAST_LETTER_TEMPLATES,
            pairs=_pairs(letters, "last", LAST_LETTER_TEMPLATES),
        ),
    }


def main() -> None:
    """Rewrite the data files."""
    write(build())


if __name__ == "__main__":
    main()
