"""One line in words per head, built from its scores and evidence (no language model).

"Copies names (0.88 top-1); maps countries to capitals (0.80 top-30): France → Paris ✓, Peru
→ Lima ✗ (rank 31)" — the relations a head implements (score ≥ the map's threshold), best first, each
with a few of its evidence pairs, then what it suppresses. Built-in relations get a verb
phrase; a user relation is read from its name ("X to Y" → "maps X to Y").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MAX_RELATIONS = 3
"""Relations (and suppressions) named in one line; the rest are counted."""

MAX_PAIRS = 3
"""Evidence pairs quoted per relation: right ones first, then one wrong one if any."""

PHRASES: dict[str, str] = {
    "copying": "copies tokens",
    "name_copying": "copies names",
    "word_first_letter": "maps words to their first letter",
    "word_last_letter": "maps words to their last letter",
    "year_following": "maps years to the next year",
    "country_capital": "maps countries to capitals",
    "country_language": "maps countries to languages",
    "object_superclass": "maps objects to their class",
    "product_company": "maps products to their company",
    "occupation_location": "maps occupations to workplaces",
    "adjective_antonym": "maps adjectives to antonyms",
    "adjective_comparative": "maps adjectives to comparatives",
    "adjective_superlative": "maps adjectives to superlatives",
    "verb_past_tense": "maps verbs to their past tense",
    "noun_pronoun": "maps nouns to pronouns",
    "word_synonym": "maps words to synonyms",
    "word_homophone": "maps words to homophones",
    "word_compound": "maps words to compounds",
    "english_french": "translates English to French",
    "english_spanish": "translates English to Spanish",
}
"""Verb phrase of each built-in relation."""


@dataclass(frozen=True)
class RelationReading:
    """One head's scores on one relation, with its null baseline when the map has one."""

    relation: str
    score: float
    """Relation score in [0, 1] (NaN: not scored)."""
    suppression: float = math.nan
    """Suppression score in [0, 1] (NaN: not scored)."""
    class_level: bool = False
    """True when the relation's null is high: any head boosting its targets scores too."""
    k: int | None = None
    """The score's k (share of pairs whose target is in the head's top k), when known."""


@dataclass(frozen=True)
class EvidencePair:
    """One (source, target) pair of a relation as a head reads it."""

    relation: str
    source: str
    target: str
    correct: bool
    """True when the target is in the head's top k for the source."""
    target_rank: int
    """1-based rank of the target among the head's predicted tokens."""
    kind: str = "relation"
    """``relation`` (boosted tokens) or ``suppression`` (suppressed tokens)."""


def relation_phrase(relation: str) -> str:
    """The verb phrase of a relation: built-in ones by name, others from their words."""
    if relation in PHRASES:
        return PHRASES[relation]
    words = relation.replace("_", " ").strip()
    if " to " in f" {words} ":
        return f"maps {words}"
    return f"implements {words}" if words else "implements an unnamed relation"


def shown_token(token: str) -> str:
    """A token as written in a sentence: surrounding spaces dropped, blank ones quoted."""
    text = token.strip()
    return text if text else repr(token)


def _score(x: float) -> str:
    return f"{x:.2f}"


def _pairs(pairs: Sequence[EvidencePair]) -> str:
    wrong = [p for p in pairs if not p.correct][:1]
    right = [p for p in pairs if p.correct][: MAX_PAIRS - len(wrong)]
    parts = [f"{shown_token(p.source)} → {shown_token(p.target)} ✓" for p in right]
    parts += [
        f"{shown_token(p.source)} → {shown_token(p.target)} ✗ (rank {p.target_rank})" for p in wrong
    ]
    return ", ".join(parts)


def _clause(reading: RelationReading, value: float, pairs: Sequence[EvidencePair]) -> str:
    numbers = [_score(value) + (f" top-{reading.k}" if reading.k else "")]
    if reading.class_level:
        numbers.append("class-level")
    text = f"({', '.join(numbers)})"
    quoted = _pairs(pairs)
    return f"{text}: {quoted}" if quoted else text


def head_line(
    readings: Sequence[RelationReading],
    evidence: Sequence[EvidencePair] = (),
    threshold: float = 0.15,
) -> str:
    """One sentence on what a head does, from its scores per relation and its evidence pairs.

    Relations scoring at least ``threshold`` are named best first, each with its score and k,
    "class-level" when its null is high, and up to three evidence pairs (a wrong one among them
    when there is one); suppressions at least ``threshold`` follow. A head with none says which
    relation came closest. (The p-value stays in the score table: with a few permutations it
    is the same floor on nearly every labelled head.)
    """
    scored = [r for r in readings if math.isfinite(r.score)]
    if not scored:
        return "No relation scores."
    by_relation: dict[tuple[str, str], list[EvidencePair]] = {}
    for pair in evidence:
        by_relation.setdefault((pair.relation, pair.kind), []).append(pair)

    hits = sorted((r for r in scored if r.score >= threshold), key=lambda r: -r.score)
    supp = sorted(
        (r for r in readings if math.isfinite(r.suppression) and r.suppression >= threshold),
        key=lambda r: -r.suppression,
    )
    clauses = [
        f"{relation_phrase(r.relation)} "
        + _clause(r, r.score, by_relation.get((r.relation, "relation"), []))
        for r in hits[:MAX_RELATIONS]
    ]
    if len(hits) > MAX_RELATIONS:
        n = len(hits) - MAX_RELATIONS
        clauses.append(f"and {n} more relation{'s' if n > 1 else ''}")
    if supp:
        named = [
            f"{r.relation.replace('_', ' ')} "
            + _clause(r, r.suppression, by_relation.get((r.relation, "suppression"), []))
            for r in supp[:MAX_RELATIONS]
        ]
        more = f" and {len(supp) - MAX_RELATIONS} more" if len(supp) > MAX_RELATIONS else ""
        clauses.append("suppresses " + "; ".join(named) + more)
    if not clauses:
        best = max(scored, key=lambda r: r.score)
        return (
            f"No relation reaches {_score(threshold)} "
            f"(closest: {best.relation.replace('_', ' ')} {_score(best.score)})."
        )
    line = "; ".join(clauses)
    return line[0].upper() + line[1:] + "."
