"""The null (issue 20): each relation scored with its targets permuted among its own pairs, by
the same kernel in the same pass; its columns in scores.parquet, the label rule that needs the
null beaten, class-level relations, and the paper's rule under ``--preset maps``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny_models import gpt2_tokenizer, save_tiny, tiny_model

from headatlas.circuits import ModelCircuits
from headatlas.cli.common import add_method_args, options_from_args
from headatlas.errors import OptionError
from headatlas.scoring.categories import categorize_heads
from headatlas.scoring.mapping import map_heads
from headatlas.scoring.null import (
    NULL_COLUMNS,
    class_level_relations,
    null_statistics,
    permuted_targets,
)
from headatlas.scoring.options import MapOptions

SOURCES = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "was", "on", "with"]
SOURCES += ["he", "as", "at", "by", "this", "had", "not", "are", "but", "from", "or", "have"]
SOURCES += ["an", "they", "which", "one", "you", "were", "her", "all", "she", "there"]
TARGETS = SOURCES[1:] + SOURCES[:1]  # each word -> the next one


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    save_tiny(tiny_model("gpt2"), folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


def _relation_file(path: Path, targets: list[str]) -> Path:
    path.write_text("source,target\n" + "".join(f"{s},{t}\n" for s, t in zip(SOURCES, targets)))
    return path


def test_permutations_are_seeded_permutations_of_the_relations_own_targets() -> None:
    targets = list(range(40))
    a = permuted_targets(targets, 0, "country_capital", 0)
    assert sorted(a) == targets and a != targets
    assert a == permuted_targets(targets, 0, "country_capital", 0)  # deterministic
    assert a != permuted_targets(targets, 0, "country_capital", 1)
    assert a != permuted_targets(targets, 1, "country_capital", 0)
    assert a != permuted_targets(targets, 0, "name_copying", 0)


def test_null_statistics_p_value_and_z() -> None:
    f64 = torch.float64  # as the map's scores
    score = torch.tensor([[0.5, 0.2, 0.0]], dtype=f64)
    null = torch.tensor([[[0.1, 0.2, 0.3], [0.2, 0.2, 0.2], [0.0, 0.0, 0.0]]], dtype=f64)
    n_pairs = torch.tensor([100, 10, 40])
    s = null_statistics(score, null, n_pairs)
    assert torch.allclose(s["null_mean"], torch.tensor([[0.2, 0.2, 0.0]], dtype=torch.float64))
    assert s["null_max"].tolist() == [[0.3, 0.2, 0.0]]
    # (1 + #null >= score) / (1 + 3)
    assert s["p_value"].tolist() == [[0.25, 1.0, 1.0]]
    std = torch.tensor([0.1, 0.2, 0.3], dtype=f64).std(correction=0).item()
    assert s["z"][0, 0].item() == pytest.approx(0.3 / std)
    assert abs(s["z"][0, 1].item()) < 1e-12  # a null that never moved: std floored
    assert s["z"][0, 2].item() == 0.0


def _table(score: float, null_max: float, p: float) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "layer": [0, 0],
            "head": [0, 1],
            "relation": ["noun_pronoun", "country_capital"],
            "category": ["Linguistic", "Knowledge"],
            "score": [score, 0.9],
            "suppression_score": [0.0, 0.0],
            "null_mean": [null_max, 0.0],
            "null_max": [null_max, 0.01],
            "p_value": [p, 0.25],
            "z": [0.0, 50.0],
        }
    )


def test_label_rules() -> None:
    tied = _table(0.20, 0.20, 1.0)  # a head scoring what shuffled targets score
    assert categorize_heads(tied, 0.15, rule="null")["label"].tolist() == [
        "Unclassified",
        "Knowledge",
    ]
    assert categorize_heads(tied, 0.15, rule="paper")["label"].tolist() == [
        "Linguistic",
        "Knowledge",
    ]
    beats = _table(0.39, 0.21, 0.25)
    assert categorize_heads(beats, 0.15, rule="null")["label"].tolist()[0] == "Linguistic"
    assert categorize_heads(beats, 0.15, rule="p-value", alpha=0.2)["label"].tolist() == [
        "Unclassified",
        "Unclassified",
    ]
    # A table without the null (an older map) is labelled by the threshold alone.
    old = tied.drop(columns=list(NULL_COLUMNS))
    assert categorize_heads(old, 0.15)["label"].tolist()[0] == "Linguistic"
    assert class_level_relations(tied, 0.15) == ["noun_pronoun"]
    assert class_level_relations(old, 0.15) == []


def test_options_of_the_null_check_themselves() -> None:
    with pytest.raises(OptionError, match="--null-permutations >= 1, or --label-rule paper"):
        MapOptions(null_permutations=0)
    with pytest.raises(OptionError, match="--null-permutations >= 19"):
        MapOptions(label_rule="p-value")
    with pytest.raises(OptionError, match="label_rule"):
        MapOptions(label_rule="strict")
    with pytest.raises(OptionError, match="null_permutations"):
        MapOptions(null_permutations=-1)
    MapOptions(label_rule="p-value", null_permutations=19)
    MapOptions(null_permutations=0, label_rule="paper")
    # Relabelling only: the rule is not part of what scores depend on.
    assert MapOptions().scoring_key() == MapOptions(label_rule="paper").scoring_key()
    assert MapOptions().scoring_key() != MapOptions(null_seed=1).scoring_key()


def test_preset_maps_keeps_the_papers_rule() -> None:
    assert MapOptions.preset("maps").label_rule == "paper"
    assert MapOptions.preset("default").label_rule == "null"
    p = argparse.ArgumentParser()
    add_method_args(p)
    assert options_from_args(p.parse_args(["--preset", "maps"])).label_rule == "paper"
    assert options_from_args(p.parse_args([])).label_rule == "null"
    given = p.parse_args(
        ["--preset", "maps", "--label-rule", "p-value", "--null-permutations", "19"]
    )
    assert options_from_args(given).label_rule == "p-value"


def test_null_is_the_score_of_the_permuted_pairs_and_leaves_scores_alone(
    folder: Path, tmp_path: Path
) -> None:
    real = _relation_file(tmp_path / "nextword.csv", TARGETS)
    # Permutation 0 of nextword's targets, as a relation of its own.
    shuffled = permuted_targets(TARGETS, 7, "nextword", 0)
    other = _relation_file(tmp_path / "shuffled.csv", shuffled)
    files = [real, other]
    circuits = ModelCircuits.load(folder)
    opts = MapOptions(k=5000, null_permutations=1, null_seed=7, threshold=0.0)
    res = map_heads(circuits, [], files, options=opts, out=tmp_path / "out", progress=False)
    s = res.scores.set_index(["layer", "head", "relation"])
    real_rows = s.xs("nextword", level="relation")
    shuffled_rows = s.xs("shuffled", level="relation")
    # One permutation: its mean and max are the shuffled relation's score, head by head.
    assert (real_rows["null_max"] == shuffled_rows["score"]).all()
    assert (real_rows["null_mean"] == shuffled_rows["score"]).all()
    assert shuffled_rows["score"].gt(0).any()  # the test compares something
    assert res.scores["p_value"].isin([0.5, 1.0]).all()
    # The real scores are exactly those of a map without the null.
    plain = map_heads(
        ModelCircuits.load(folder),
        [],
        files,
        options=MapOptions(k=5000, null_permutations=0, label_rule="paper", threshold=0.0),
        progress=False,
    )
    cols = ["layer", "head", "relation", "score", "suppression_score"]
    pd.testing.assert_frame_equal(res.scores[cols], plain.scores[cols])
    assert plain.scores[list(NULL_COLUMNS)].isna().all().all()
    # The manifest records the null and the rule; labels follow the rule.
    m = res.manifest
    assert m["null"]["permutations"] == 1 and m["null"]["label_rule"] == "null"
    assert m["null"]["seed"] == 7 and m["options"]["label_rule"] == "null"
    assert isinstance(m["relations_class_level"], list)
    assert "null_s" in m["timings"]
    beaten = res.scores[res.scores["score"] > res.scores["null_max"]]
    n_rel = res.categories.set_index(["layer", "head"])["n_relations"]
    for (layer, head), group in res.scores.groupby(["layer", "head"]):
        expected = int((group["score"] > group["null_max"]).sum())
        assert n_rel.loc[(layer, head)] == expected
    assert len(beaten) < len(res.scores)  # threshold 0 alone would label every cell


def test_class_level_relations_are_in_the_manifest(folder: Path, tmp_path: Path) -> None:
    # Every target the same token: the shuffled pairs are the real pairs, so the null equals
    # the score and a head promoting " the" is class-level by construction.
    rel = tmp_path / "to_the.csv"
    rel.write_text("source,target\n" + "".join(f"{s},the\n" for s in SOURCES))
    res = map_heads(
        ModelCircuits.load(folder),
        [],
        [rel],
        options=MapOptions(k=5000, threshold=0.05),
        progress=False,
    )
    s = res.scores
    assert (s["null_max"] == s["score"]).all()
    assert s["score"].max() >= 0.05  # some head ranks " the" in its top 5000
    assert res.manifest["relations_class_level"] == ["to_the"]
    assert (res.categories["label"] == "Unclassified").all()


def test_class_level_relations_in_captions_and_atlas(tmp_path: Path) -> None:
    from report_fixtures import make_results

    from headatlas.report.atlas_html import atlas_data
    from headatlas.report.category_figure import plot_category_atlas, plot_category_series
    from headatlas.report.relation_figure import plot_relation
    from headatlas.store import MANIFEST, load_results, read_manifest, write_json_atomic

    folder = make_results(tmp_path, 3, 2)
    manifest = read_manifest(folder)
    plain = load_results(folder)
    assert atlas_data(plain)["class_level"] == []
    assert plot_category_atlas([plain]).get_supxlabel() == ""
    write_json_atomic(
        {**manifest, "relations_class_level": ["country to capital"]}, folder / MANIFEST
    )
    res = load_results(folder)
    assert "class-level" in plot_relation(res, "country to capital").get_suptitle()
    assert "class-level" not in plot_relation(res, "name copying").get_suptitle()
    for fig in (plot_category_atlas([res]), plot_category_series(res)):
        assert "country to capital" in fig.get_supxlabel()
    assert atlas_data(res)["class_level"] == ["country to capital"]


def test_null_hits_equal_the_kernels_relation_decision(folder: Path) -> None:
    from headatlas.scoring.kernel.layout import PairLayout
    from headatlas.scoring.kernel.pairs import pair_ranks
    from headatlas.scoring.null import null_hits, null_plan
    from headatlas.scoring.plan import RelationPairs
    from headatlas.scoring.recipe import SourceInputs
    from headatlas.scoring.relation_scores import candidate_orders, head_readouts

    circuits = ModelCircuits.load(folder)
    gen = torch.Generator().manual_seed(0)
    V = circuits.cfg.vocab_size
    sources = torch.randperm(V, generator=gen)[:300].tolist()
    targets = torch.randint(0, 400, (300,), generator=gen).tolist()  # few targets: some hits
    rels = [
        RelationPairs("a", "X", 5000, sources[:200], targets[:200]),
        RelationPairs("b", "Y", 1, sources[100:], targets[100:]),
    ]
    plan = null_plan(rels, 3, 0)
    opts = MapOptions()
    readout = opts.recipe.bind(circuits, torch.device("cpu"), torch.float32)
    inputs = SourceInputs(opts.recipe, circuits, plan.source_ids, None)
    layout = PairLayout(plan.pair_rows, plan.pair_targets, len(plan.source_ids), V, k=plan.pair_k)
    heads = head_readouts(circuits.layer(1), inputs.layer(1), readout)
    hits = 0
    for (Z, B), order in zip(heads, candidate_orders(heads), strict=True):
        up, _ = pair_ranks(Z, B, layout, order=order)
        got = null_hits(Z, B, layout, order)
        assert torch.equal(got, up < plan.pair_k)
        assert torch.equal(null_hits(Z, B, layout, None), got)  # full rows only
        hits += int(got.sum())
    assert hits > 0
