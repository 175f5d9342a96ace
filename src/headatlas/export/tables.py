"""The tables of a results folder that travel, read and checked through ``store``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from headatlas.store import CATEGORIES, QK_SCORES, SALIENT, SCORE_COLUMNS, SCORES, read_table


@dataclass(frozen=True)
class TableSpec:
    """One exportable table: its file beside the map, what a row is, the columns it must have."""

    name: str
    file: str
    row: str
    required: tuple[str, ...]


TABLES = (
    TableSpec("scores", SCORES, "one (layer, head, relation)", SCORE_COLUMNS),
    TableSpec("categories", CATEGORIES, "one head and its label", ("layer", "head", "label")),
    TableSpec(
        "evidence",
        "evidence.parquet",
        "one (head, relation, source) pair the head gets right or wrong",
        ("layer", "head", "relation", "source", "target"),
    ),
    TableSpec(
        "salient",
        SALIENT,
        "one salient token of a head and the tokens the head maps it to",
        ("layer", "head", "token", "sigma"),
    ),
    TableSpec("qk", QK_SCORES, "one head's static QK scores (docs/qk.md)", ("layer", "head")),
)
"""Every table a map may hold, in the order the card lists them; absent ones are skipped."""

COLUMN_DOCS = {
    "model": "the model's name as given to `headatlas map`",
    "layer": "layer index (0-based)",
    "head": "query-head index within the layer (0-based)",
    "relation": "relation name (see the relations table of the card)",
    "category": "relation category (Algorithmic, Knowledge, Linguistic, Translation)",
    "k": "top-k of the MAPS relation score",
    "n_pairs": "pairs of the relation scored",
    "score": "MAPS relation score: share of pairs whose target is in the head's top-k",
    "suppression_score": "the same for the head's most suppressed tokens",
    "null_mean": "mean score under shuffled targets (null baseline)",
    "null_max": "largest score under shuffled targets",
    "p_value": "empirical p-value of the score against the null",
    "z": "z-score of the score against the null",
    "label": "head label from its categories",
    "categories": "categories whose relations the head implements",
    "n_relations": "number of relations the head implements",
    "relations": "relations the head implements",
    "source": "source token of the pair",
    "target": "target token of the pair",
    "correct": "whether the target is in the head's top-k",
    "target_rank": "rank of the target among the head's outputs (0 = top)",
    "top_tokens": "the head's top output tokens for the source",
    "kind": "why the row is kept (a right pair, or a sample of wrong ones)",
    "rank": "rank of the salient token (0 = most amplified)",
    "token_id": "vocabulary id of the salient token",
    "token": "the salient token",
    "sigma": "amplification |x W_V W_O| / |x|",
    "mappings": "tokens the head maps the salient token to",
    "mapping_ids": "vocabulary ids of the mappings",
    "matched_relations": "relations whose pairs the mappings match",
    "token_relations": "per mapping, the relations it matches",
}
"""What each known column means, for the dataset card."""


def present_tables(directory: Path) -> dict[str, pd.DataFrame]:
    """Every table of :data:`TABLES` present in ``directory``, read and checked (a damaged file
    is a ResultsError naming it)."""
    found: dict[str, pd.DataFrame] = {}
    for spec in TABLES:
        path = directory / spec.file
        if path.is_file():
            found[spec.name] = read_table(path, spec.required)
    return found


def spec_of(name: str) -> TableSpec:
    """The spec of table ``name``."""
    return next(s for s in TABLES if s.name == name)
