"""Synthetic results folders for report tests: written through store's writers, no model needed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from headatlas.scoring.categories import categorize_heads
from headatlas.store import (
    CATEGORIES,
    DESCRIPTIONS,
    MANIFEST,
    SALIENT,
    SCORES,
    model_slug,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)

DEFAULT_RELATIONS: tuple[tuple[str, str], ...] = (
    ("name copying", "Algorithmic"),
    ("word to first letter", "Algorithmic"),
    ("country to capital", "Knowledge"),
    ("work to location", "Knowledge"),
    ("adj to comparative", "Linguistic"),
    ("verb to past tense", "Linguistic"),
    ("english to french", "Translation"),
)
"""(relation, category) pairs used when a test does not name its own."""


def make_results(
    tmp_path: Path,
    n_layers: int,
    n_heads: int,
    relations: Sequence[tuple[str, str]] = DEFAULT_RELATIONS,
    name: str = "toy/model",
    seed: int = 0,
    display_name: str | None = None,
    salient: bool = False,
    descriptions: bool = False,
    tokens: Sequence[str] = ("the", " Paris", "ing"),
    skipped: Sequence[str] = (),
) -> Path:
    """Write a results folder for ``n_layers`` × ``n_heads`` heads with random scores.

    Scores are mostly small with a long tail, so every label tends to appear on big grids.
    ``salient``/``descriptions`` add the optional tables; ``tokens`` are the salient tokens
    used (cycled), so tests can plant hostile strings; ``skipped`` relations appear in the
    manifest as skipped and have no scores. Returns the folder.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            for relation, category in relations:
                score = float(np.clip(rng.beta(0.3, 5.0), 0, 1))
                suppression = float(np.clip(rng.beta(0.3, 6.0), 0, 1))
                rows.append((name, layer, head, relation, category, 30, 100, score, suppression))
    scores = pd.DataFrame(
        rows,
        columns=[
            "model", "layer", "head", "relation", "category", "k", "n_pairs", "score",
            "suppression_score",
        ],
    )  # fmt: skip
    directory = Path(tmp_path) / model_slug(name)
    write_parquet_atomic(scores, directory / SCORES)
    write_parquet_atomic(categorize_heads(scores), directory / CATEGORIES)
    manifest = {
        "model": {
            "name": name,
            "display_name": display_name or name.split("/")[-1],
            "source": "synthetic",
            "fingerprint": f"seed-{seed}",
            "architecture": "toy",
            "n_layers": n_layers,
            "n_heads": n_heads,
            "n_kv_heads": n_heads,
            "d_model": 64,
            "d_head": 16,
            "vocab_size": 1000,
        },
        "options": {"k": 30, "threshold": 0.15},
        "relations": [
            {"name": r, "category": c, "n_pairs": 100, "k": 30, "skipped": None}
            for r, c in relations
        ]
        + [
            {"name": r, "category": "Translation", "n_pairs": 0, "k": 30, "skipped": "no pairs"}
            for r in skipped
        ],
        "versions": {"headatlas": "test"},
        "timings": {"total_s": 0.0},
    }
    write_json_atomic(manifest, directory / MANIFEST)
    if salient:
        salient_rows = []
        for layer in range(n_layers):
            for head in range(n_heads):
                for rank in range(3):
                    token = tokens[(layer + head + rank) % len(tokens)]
                    salient_rows.append(
                        {
                            "layer": layer,
                            "head": head,
                            "rank": rank,
                            "token_id": rank,
                            "token": token,
                            "sigma": float(3 - rank),
                            "mappings": [token.upper(), f"{token}s", "<b>x</b>"],
                        }
                    )
        write_parquet_atomic(pd.DataFrame(salient_rows), directory / SALIENT)
    if descriptions:
        lines = [
            json.dumps(
                {
                    "layer": layer,
                    "head": head,
                    "status": "ok" if (layer + head) % 5 else "failed",
                    "description": f"Head L{layer}H{head} maps {tokens[0]} to related tokens.",
                    "inputs": [],
                    "pattern": "copying",
                    "model": "test-llm",
                }
            )
            for layer in range(n_layers)
            for head in range(n_heads)
        ]
        write_text_atomic("\n".join(lines) + "\n", directory / DESCRIPTIONS)
    return directory
