"""Synthetic results folders for report tests: written through store's writers, no model needed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

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

CHROMIUM = "/usr/bin/chromium"
"""The Chromium the browser tests drive (Debian's package)."""


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
    evidence: bool = False,
    null: bool = False,
    class_level: Sequence[str] = (),
) -> Path:
    """Write a results folder for ``n_layers`` × ``n_heads`` heads with random scores.

    Scores are mostly small with a long tail, so every label tends to appear on big grids.
    ``salient``/``descriptions`` add the optional tables; ``tokens`` are the salient tokens
    used (cycled), so tests can plant hostile strings; ``skipped`` relations appear in the
    manifest as skipped and have no scores. ``evidence`` writes ``evidence.parquet`` (pairs of
    every head scoring ≥ 0.3, built from ``tokens``), ``null`` adds the null columns to the
    scores and ``class_level`` names relations the manifest flags. Returns the folder.
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
    if null:
        null_max = rng.uniform(0, 0.2, len(scores))
        scores["null_mean"] = null_max / 3
        scores["null_max"] = null_max
        scores["p_value"] = np.where(scores["score"] > null_max, 0.01, 0.5)
        scores["z"] = (scores["score"] - null_max / 3) / 0.02
    directory = Path(tmp_path) / model_slug(name)
    if evidence:
        write_parquet_atomic(_evidence(scores, tokens), directory / "evidence.parquet")
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
        **({"relations_class_level": list(class_level)} if class_level else {}),
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


def _evidence(scores: pd.DataFrame, tokens: Sequence[str]) -> pd.DataFrame:
    """Evidence rows shaped as the map writes them: per (head, relation) scoring ≥ 0.3, three
    right pairs and two wrong ones (kind relation), and two suppression pairs when the
    suppression score is ≥ 0.3. Sources and targets are ``tokens`` with a pair number."""
    rows = []
    for row in scores.itertuples(index=False):
        for kind, value in (("relation", row.score), ("suppression", row.suppression_score)):
            if value < 0.3:
                continue
            n = 5 if kind == "relation" else 2
            for j in range(n):
                token = tokens[(row.layer + row.head + j) % len(tokens)]
                correct = j < 3 if kind == "relation" else True
                rows.append(
                    {
                        "model": row.model,
                        "layer": row.layer,
                        "head": row.head,
                        "relation": row.relation,
                        "source": f"{token}{j}",
                        "target": f"T{j}{token}",
                        "correct": correct,
                        "target_rank": 1 + j if correct else 40 + j,
                        "top_tokens": [f"T{j}{token}" if correct else "top", "b", "c"],
                        "kind": kind,
                    }
                )
    columns = [
        "model", "layer", "head", "relation", "source", "target", "correct", "target_rank",
        "top_tokens", "kind",
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def make_dynamic(directory: Path, relations: Sequence[str], n_layers: int, n_heads: int) -> Path:
    """Write ``validation/correlative_heads.csv`` as ``validate`` does: two templates per
    relation; the dynamic score of head i is (i mod 10) / 10 without context and half of
    that with context in template 0, the same plus 0.1 in template 1 (means: +0.05)."""
    rows = []
    for relation in relations:
        for template in (0, 1):
            for layer in range(n_layers):
                for head in range(n_heads):
                    base = ((layer * n_heads + head) % 10) / 10 + 0.1 * template
                    rows.append(
                        {
                            "relation": relation,
                            "template": f"t{template}",
                            "layer": layer,
                            "head": head,
                            "static_score": 0.0,
                            "dynamic_with_context": base / 2,
                            "dynamic_without_context": base,
                            "static_suppression_score": 0.0,
                            "dynamic_suppression_with_context": 0.0,
                            "dynamic_suppression_without_context": 0.0,
                        }
                    )
    path = Path(directory) / "validation" / "correlative_heads.csv"
    write_text_atomic(pd.DataFrame(rows).to_csv(index=False), path)
    return path


def make_validation(
    directory: Path,
    relations: Sequence[tuple[str, str]] = DEFAULT_RELATIONS,
    seed: int = 0,
    extra: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Write ``directory/validation/summary.json`` shaped as ``headatlas validate`` writes it.

    Every relation gets correlative (relation and suppression), multi-token and causal results
    with random values; the second relation has null r values (a constant side) and no
    control, the third a skipped ablation. ``extra`` relations are validated but not mapped.
    Returns the summary written.
    """
    rng = np.random.default_rng(seed)

    def correlation(nulls: bool) -> dict[str, Any]:
        r1, r2 = (None, None) if nulls else (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)))
        return {
            "r_without_context": r1,
            "p_without_context": None if nulls else float(10 ** rng.uniform(-8, 0)),
            "r_with_context": r2,
            "p_with_context": None if nulls else float(10 ** rng.uniform(-8, 0)),
            "max_static_score": float(rng.uniform(0, 1)),
            "n_prompts": int(rng.integers(10, 80)),
        }

    per_relation: dict[str, Any] = {}
    for i, (relation, category) in enumerate([*relations, *extra]):
        base = float(rng.uniform(0.3, 1.0))
        after = float(rng.uniform(0, base))
        random_mean, random_sd = float(rng.uniform(after, base)), float(rng.uniform(0, 0.1))
        controls = "" if i == 1 else f"{relations[-1][0]};{relations[0][0]}"
        control_base = None if i == 1 else float(rng.uniform(0.3, 1.0))
        control_after = None if control_base is None else control_base - 0.05
        causal: dict[str, Any] = {
            "category": category,
            "n_prompts": 40,
            "m": 8,
            "base_accuracy": base,
            "accuracy_relation_heads": after,
            "accuracy_random_mean": random_mean,
            "accuracy_random_sd": random_sd,
            "drop_relation_heads": base - after,
            "drop_random_mean": base - random_mean,
            "controls": controls,
            "control_base_accuracy": control_base,
            "control_accuracy_after": control_after,
            "control_drop_mean": None if control_base is None else 0.05,
            "skipped": "",
        }
        if i == 2:
            causal.update(
                {k: None for k in causal if k not in ("category", "n_prompts", "m", "controls")}
            )
            causal.update(skipped="base accuracy is 0", base_accuracy=0.0, controls="")
        per_relation[relation] = {
            "category": category,
            "correlative": {"relation": correlation(i == 1), "suppression": correlation(i == 1)},
            "multi_token": {"relation": correlation(False), "suppression": correlation(False)},
            "causal": causal,
        }
    summary = {
        "model": "toy",
        "experiments": ["correlative", "multi-token", "causal"],
        "options": {"max_prompts": 40, "seed": seed},
        "means": {"correlative_relation_mean_r_without_context": 0.5},
        "relations": per_relation,
        "skipped": {"multi-token: <b>few</b>": "fewer than 10 multi-token pairs"},
        "timings": {"correlative_s": 1.0},
    }
    write_json_atomic(summary, Path(directory) / "validation" / "summary.json")
    return summary


def launch_chromium() -> Iterator[Any]:
    """Body of a module-scoped ``browser`` fixture: a headless Chromium through Playwright.

    Skips (printing why) when Playwright is missing or Chromium cannot be launched.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - depends on the environment
        reason = f"playwright is not installed ({exc})"
        print(reason)
        pytest.skip(reason)
    manager = sync_playwright().start()
    try:
        chromium = manager.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-background-networking"]
        )
    except Exception as exc:  # pragma: no cover - depends on the environment
        manager.stop()
        reason = f"Chromium could not be launched from {CHROMIUM}: {exc}".splitlines()[0]
        print(reason)
        pytest.skip(reason)
    yield chromium
    chromium.close()
    manager.stop()


class AtlasPage:
    """An opened atlas with the requests it made, the dialogs it raised and its JS errors."""

    def __init__(self, browser: Any, path: Path, fragment: str = "") -> None:
        self.page = browser.new_page(viewport={"width": 1500, "height": 1000})
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.url = path.resolve().as_uri()
        start = time.perf_counter()
        self.page.goto(self.url + fragment)
        self.page.wait_for_selector("body[data-ready='1']")
        self.load_s = time.perf_counter() - start

    def cell(self, model: int, layer: int, head: int, n_heads: int) -> Any:
        """The grid cell of one head in model tab ``model``."""
        return self.page.locator(f"#model-{model} .cell[data-i='{layer * n_heads + head}']")

    def background(self, locator: Any) -> str:
        """Computed background colour of an element."""
        return str(locator.evaluate("e => getComputedStyle(e).backgroundColor"))

    def offline_requests(self) -> list[str]:
        """Requests other than the page itself and data: URLs (should be none)."""
        return [u for u in self.requests if u != self.url and not u.startswith("data:")]

    def close(self) -> None:
        """Close the tab, asserting it raised no JS error and opened no dialog."""
        assert self.errors == [], self.errors
        assert self.dialogs == [], f"a dialog opened: {self.dialogs}"
        self.page.close()


def page_score(x: float) -> str:
    """How the atlas writes a score: stored in thousandths, shown with three decimals."""
    return f"{round(x * 1000) / 1000:.3f}"
