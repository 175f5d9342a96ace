"""headatlas.stats (correlations, bootstrap intervals, the validation summaries) and the
Markdown tables built from them, on small synthetic scores."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from headatlas.report.validation_tables import calibration_markdown, correlation_markdown
from headatlas.stats import (
    CORRELATION_COLUMNS,
    bootstrap_draws,
    compare_recipes,
    correlate,
    interval,
    pearson,
    pearson_p,
    pearson_rows,
    pearson_with_interval,
    static_matrix,
)
from headatlas.validate.dynamic import DynamicScores

L, H = 3, 4


def test_the_three_pearsons_agree_where_both_sides_vary() -> None:
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(2, 50))
    r, p = pearson_p(x, y)
    assert r == pytest.approx(pearson(x, y), abs=1e-12)
    assert r == pytest.approx(pearson_rows(x[None], y[None])[0], abs=1e-12)
    assert 0 < p < 1


def test_a_constant_side_is_nan_or_zero_as_documented() -> None:
    x, flat = np.arange(5.0), np.ones(5)
    assert np.isnan(pearson_p(x, flat)).all() and np.isnan(pearson_p(flat, x)).all()
    assert np.isnan(pearson_p(x[:2], x[:2])).all()  # fewer than 3 points
    assert np.isnan(pearson(x, flat)) and np.isnan(pearson(flat, x))
    # rows: a constant static side carries no signal (0), a constant dynamic side is no data
    assert pearson_rows(flat[None], x[None])[0] == 0.0
    assert np.isnan(pearson_rows(x[None], flat[None])[0])


def test_interval_and_draws() -> None:
    assert interval(np.arange(101.0)) == (2.5, 97.5)
    assert interval(np.array([np.nan, 1.0, np.inf, 1.0])) == (1.0, 1.0)
    assert np.isnan(interval(np.array([np.nan]))).all()
    draws = bootstrap_draws(7, 20, seed=3)
    assert draws.shape == (20, 7) and draws.min() >= 0 and draws.max() < 7
    assert (draws == bootstrap_draws(7, 20, seed=3)).all()


def test_pearson_with_interval_brackets_r() -> None:
    a = np.arange(20.0)
    c = pearson_with_interval(a, a + np.random.default_rng(0).normal(0, 5, 20), n_boot=200)
    assert c.low <= c.r <= c.high and c.n == 20


def _scores(static: np.ndarray, relation: str = "rel") -> pd.DataFrame:
    layer, head = np.divmod(np.arange(L * H), H)
    return pd.DataFrame(
        {"layer": layer, "head": head, "relation": relation, "k": 5,
         "score": static.ravel(), "suppression_score": static.ravel()[::-1].copy()}
    )  # fmt: skip


def _dynamic(values: np.ndarray, template: str, relation: str = "rel") -> DynamicScores:
    v = values.reshape(L, H)
    return DynamicScores(relation, template, 8, v, v, v[::-1], v[::-1])


def test_static_matrix_round_trips_a_scores_table() -> None:
    s = np.random.default_rng(2).random((L, H))
    score, sup = static_matrix(_scores(s), "rel", L, H)
    assert (score == s).all() and (sup.ravel() == s.ravel()[::-1]).all()
    assert (static_matrix(_scores(s), "other", L, H)[0] == 0).all()


def test_correlate_rows() -> None:
    s = np.random.default_rng(3).random((L, H))
    rows = correlate("rel", "cat", 5, s, s, [_dynamic(s, "a"), _dynamic(2 * s, "b")])
    assert [r["score"] for r in rows] == ["relation", "suppression"]
    assert list(rows[0]) == CORRELATION_COLUMNS
    assert rows[0]["n_templates"] == 2 and rows[0]["n_prompts"] == 16
    assert rows[0]["r_with_context"] > 0.5
    md = correlation_markdown(pd.DataFrame(rows), "t")
    assert md.startswith("# t\n") and "| rel | cat | relation |" in md


def test_compare_recipes_ranks_the_recipe_that_matches() -> None:
    rng = np.random.default_rng(4)
    truth = rng.random(L * H)
    dyn = [_dynamic(truth, "a"), _dynamic(truth, "b"), _dynamic(np.zeros(L * H), "a", "flat")]
    maps = {
        "exact": pd.concat([_scores(truth), _scores(truth, "flat")]),
        "constant": pd.concat([_scores(np.full(L * H, 0.5)), _scores(truth, "flat")]),
    }
    table, per_template, per_relation = compare_recipes(maps, dyn, L, H, n_boot=50)
    t = table.set_index("recipe")
    assert t.loc["exact", "relation_with_context_mean_r"] == pytest.approx(1.0)
    assert t.loc["exact", "relation_with_context_ci_low"] == pytest.approx(1.0)
    assert t.loc["constant", "relation_with_context_mean_r"] == 0.0
    # the relation whose dynamic scores are constant is left out of every mean
    assert (table["relation_with_context_n_relations"] == 1).all()
    assert set(per_template["template"]) == {"a", "b"}
    assert list(per_relation["relation"]) == ["rel", "rel"]

    class Res:
        winner = "exact"

    res = Res()
    res.table = table.assign(label=["x", "y"])  # type: ignore[attr-defined]
    res.per_template = per_template  # type: ignore[attr-defined]
    md = calibration_markdown(res, "recipes")  # type: ignore[arg-type]
    assert "Winner: **exact**" in md and "| exact | x | 1.00 [1.00, 1.00]" in md
