"""One line in words per head, from scores and evidence (no language model)."""

from __future__ import annotations

import math

from headatlas.relations.builtin import BUILTIN_NAMES
from headatlas.report.head_words import (
    PHRASES,
    EvidencePair,
    RelationReading,
    head_line,
    relation_phrase,
)


def _pair(relation: str, source: str, target: str, ok: bool, rank: int = 1) -> EvidencePair:
    return EvidencePair(relation, source, target, correct=ok, target_rank=rank)


def test_labelled_head_names_its_relations_best_first_with_evidence() -> None:
    readings = [
        RelationReading("country_capital", 0.80, 0.01, k=30),
        RelationReading("name_copying", 0.88, 0.02, k=1),
        RelationReading("copying", 0.05, 0.0),
    ]
    evidence = [
        _pair("country_capital", " France", " Paris", True),
        _pair("country_capital", " Japan", " Tokyo", True),
        _pair("country_capital", " Italy", " Rome", True),
        _pair("country_capital", " Peru", " Lima", False, 7),
        _pair("name_copying", " Anna", " Anna", True),
    ]
    line = head_line(readings, evidence, threshold=0.15)
    assert line == (
        "Copies names (0.88 top-1): Anna → Anna ✓; maps countries to capitals (0.80 top-30): "
        "France → Paris ✓, Japan → Tokyo ✓, Peru → Lima ✗ (rank 7)."
    )


def test_class_level_and_suppression() -> None:
    readings = [
        RelationReading("noun_pronoun", 0.61, 0.0, class_level=True),
        RelationReading("copying", 0.3, 0.0),
        RelationReading("word_synonym", 0.0, 0.45),
    ]
    evidence = [
        EvidencePair("word_synonym", " big", " large", True, 1, kind="suppression"),
        _pair("word_synonym", " big", " huge", False, 900),  # a relation pair: not quoted
    ]
    line = head_line(readings, evidence)
    assert line == (
        "Maps nouns to pronouns (0.61, class-level); copies tokens (0.30); "
        "suppresses word synonym (0.45): big → large ✓."
    )


def test_unlabelled_and_unscored_heads() -> None:
    readings = [RelationReading("copying", 0.08), RelationReading("word_compound", 0.02)]
    assert head_line(readings, threshold=0.15) == (
        "No relation reaches 0.15 (closest: copying 0.08)."
    )
    assert head_line([RelationReading("copying", math.nan)]) == "No relation scores."
    assert head_line([]) == "No relation scores."


def test_many_relations_are_counted_and_threshold_is_the_maps() -> None:
    readings = [RelationReading(f"r{k}", 0.5 + k / 100) for k in range(5)]
    line = head_line(readings, threshold=0.5)
    assert line.startswith("Implements r4 (0.54); implements r3 (0.53); implements r2 (0.52)")
    assert line.endswith("; and 2 more relations.")
    assert head_line(readings[:4], threshold=0.5).endswith("; and 1 more relation.")
    assert head_line(readings, threshold=0.6).startswith("No relation reaches 0.60")


def test_every_builtin_relation_has_a_phrase_and_user_relations_read_from_their_name() -> None:
    assert set(BUILTIN_NAMES) <= set(PHRASES)
    assert relation_phrase("city to country") == "maps city to country"
    assert relation_phrase("rhymes_with") == "implements rhymes with"
    assert relation_phrase("__") == "implements an unnamed relation"


def test_blank_tokens_are_quoted() -> None:
    readings = [RelationReading("copying", 0.9)]
    line = head_line(readings, [_pair("copying", " ", "\n", True)])
    assert line == "Copies tokens (0.90): ' ' → '\\n' ✓."
