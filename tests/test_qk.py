"""The QK circuit: proven against Hugging Face's attention patterns on a tiny model of every
family, the fast static scores against the plain per-head reference (float64, same ranks), the
dynamic duplicate-token score and the correlation on real forward passes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import TINY_MODELS, tiny_model, token_batches

from headatlas.circuits import ModelCircuits
from headatlas.errors import OptionError
from headatlas.qk_circuits import layer_type, read_qk
from headatlas.scoring.qk import (
    QKOptions,
    duplicate_scores,
    head_logits,
    qk_scores,
    sample_tokens,
)
from headatlas.scoring.qk_reference import head_logits_reference
from headatlas.scoring.recipe import Recipe, embedding_of
from headatlas.stats import pearson_with_interval
from headatlas.validate.qk import dynamic_duplicate_scores, repeated_sequences

VARIANTS = list(TINY_MODELS)


def _eager_attentions(model: Any, ids: torch.Tensor) -> Any:
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            return model(input_ids=ids, output_hidden_states=True, output_attentions=True)
    finally:
        model.set_attn_implementation(before)


@pytest.mark.parametrize("name", VARIANTS)
def test_qk_reading_reproduces_the_models_attention(name: str) -> None:
    """Queries, keys, biases, QK-norms, rotary (partial too), scale, soft-cap and GQA groups:
    the pattern softmax(cap(scale · rot(q)·rot(k))) under the causal (and sliding) mask equals
    the model's own attention at every layer."""
    model = tiny_model(name)
    c = ModelCircuits.load(model)
    ids = token_batches(c.cfg.vocab_size)[0][:, :12]
    out = _eager_attentions(model, ids)
    T = ids.shape[1]
    pos = torch.arange(T)
    for layer in range(c.cfg.n_layers):
        qk = read_qk(c, layer)
        X = out.hidden_states[layer][0]
        q = qk.rotary.rotate(qk.queries(X), pos)
        k = qk.rotary.rotate(qk.keys(X), pos)
        logits = qk.cap(q @ k.transpose(1, 2) * qk.scale)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        window = c.raw_config.get("sliding_window")
        if window and layer_type(c, layer) == "sliding_attention":
            mask &= ~torch.ones(T, T, dtype=torch.bool).tril(-window)
        pattern = logits.masked_fill(~mask, float("-inf")).softmax(-1)
        err = (pattern - out.attentions[layer][0]).abs().max().item()
        assert err < 1e-5, f"{name} layer {layer}: attention differs by {err:.3g}"


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("rotary", ["none", "offsets", "slow"])
def test_fast_logits_equal_the_plain_reference(name: str, rotary: str) -> None:
    c = ModelCircuits.load(tiny_model(name))
    options = QKOptions(rotary=rotary, max_offset=12, n_tokens=48, top_k=3)
    ids = sample_tokens(c, options.n_tokens, 0)
    X = embedding_of(c, c.embed(ids), "residual").double()
    for layer in range(c.cfg.n_layers):
        fast = head_logits(read_qk(c, layer).to(torch.float64), X, X, options)
        for head in range(c.cfg.n_heads):
            ref = head_logits_reference(c, layer, head, X, options)
            assert torch.allclose(fast[head], ref, rtol=1e-9, atol=1e-9), (name, layer, head)
            assert torch.equal(fast[head].argsort(-1), ref.argsort(-1)), (name, layer, head)
        ref_all = torch.stack([head_logits_reference(c, layer, h, X, options)
                               for h in range(c.cfg.n_heads)])  # fmt: skip
        assert torch.equal(duplicate_scores(fast, 3), duplicate_scores(ref_all, 3))


def test_rotary_key_map_is_the_mean_over_offsets() -> None:
    """q · map(k) equals the mean over δ of rot_{n+δ}(q) · rot_n(k), at any key position n."""
    qk = read_qk(ModelCircuits.load(tiny_model("phi")), 0).to(torch.float64)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 16, generator=g, dtype=torch.float64), torch.randn(5, 16, generator=g,
                                                                              dtype=torch.float64)  # fmt: skip
    offsets = torch.arange(1, 9)
    mapped = qk.rotary.apply_key_map(k, qk.rotary.key_map(offsets))
    n = 7
    want = torch.stack([
        (qk.rotary.rotate(q, torch.full((5,), n + d)) * qk.rotary.rotate(k, torch.full((5,), n))).sum(-1)
        for d in offsets
    ]).mean(0)  # fmt: skip
    assert torch.allclose((q * mapped).sum(-1), want, atol=1e-12)
    assert qk.rotary.rot_dims == 8  # Phi's partial rotary: half of d_head 16


def test_duplicate_scores_count_the_diagonal_rank() -> None:
    logits = torch.tensor([[[3.0, 1.0, 0.0], [5.0, 4.0, 0.0], [9.0, 8.0, 1.0]]])
    assert duplicate_scores(logits, 1).tolist() == [1 / 3]
    assert duplicate_scores(logits, 2).tolist() == [2 / 3]
    assert duplicate_scores(logits, 3).tolist() == [1.0]


def test_duplicate_mass_is_the_softmax_share_against_the_context() -> None:
    from headatlas.scoring.qk import duplicate_mass

    logits = torch.tensor(
        [[[3.0, 1.0, 0.0], [5.0, 4.0, 0.0], [9.0, 8.0, 1.0]]], dtype=torch.float64
    )
    want = []
    for i in range(3):
        off = [logits[0, i, j].exp() for j in range(3) if j != i]
        d = logits[0, i, i].exp()
        want.append(d / (d + 40 * sum(off) / 2))
    assert duplicate_mass(logits, 40).item() == pytest.approx(float(sum(want) / 3))
    big = logits * 300  # log space: no overflow
    assert 0 <= duplicate_mass(big, 40).item() <= 1


@pytest.mark.parametrize("name", ["llama-mha-bias", "qwen3", "gemma3"])
def test_qk_scores_one_row_per_head_with_salient_tokens(name: str) -> None:
    """Salient keys are the argmax of q̄ · map(k) over the vocabulary, salient queries of
    q · k̄ (folded into one [d, H] product without QK-norm, per token with it)."""
    from headatlas.scoring.qk import key_weights

    c = ModelCircuits.load(tiny_model(name))
    df = qk_scores(c, QKOptions(n_tokens=64, n_salient=4), Recipe())
    assert len(df) == c.cfg.n_layers * c.cfg.n_heads
    assert df.dup_score.between(0, 1).all()
    assert all(len(k) == 4 and len(q) == 4 for k, q in zip(df.salient_keys, df.salient_queries))
    qk = read_qk(c, 1)
    ids = sample_tokens(c, 64, 0)
    X = embedding_of(c, c.embed(ids), "mlp0")
    E = embedding_of(c, c.embed(torch.arange(c.cfg.vocab_size)), "mlp0")
    w = key_weights(qk, QKOptions())
    assert w is not None
    k_all = qk.rotary.apply_key_map(qk.keys(E), w)
    k_mean = qk.rotary.apply_key_map(qk.keys(X), w).mean(1)
    q_all, q_mean = qk.queries(E), qk.queries(X).mean(1)
    row = df[(df["layer"] == 1) & (df["head"] == 2)].iloc[0]
    assert list(row.salient_keys) == (k_all[2] @ q_mean[2]).topk(4).indices.tolist()
    assert list(row.salient_queries) == (q_all[2] @ k_mean[2]).topk(4).indices.tolist()


def test_context_inputs_run_the_model() -> None:
    model = tiny_model("llama-gqa")
    c = ModelCircuits.load(model)
    df = qk_scores(c, QKOptions(inputs="context", n_tokens=32, top_k=2), hf_model=model,
                   salient=False, start=2)  # fmt: skip
    assert len(df) == c.cfg.n_layers * c.cfg.n_heads
    assert df.salient_keys.map(len).eq(0).all()


def test_dynamic_duplicate_score_is_the_attention_to_the_first_copy() -> None:
    model = tiny_model("gpt2")
    c = ModelCircuits.load(model)
    before = model.config._attn_implementation
    scores = dynamic_duplicate_scores(model, c, n_seqs=3, length=5, seed=1, batch=2, start=7)
    assert model.config._attn_implementation == before
    ids, first = repeated_sequences(c, 3, 5, 1, start=7)
    assert first == 1 and (ids[:, 0] == 7).all()
    assert torch.equal(ids[:, first : first + 5], ids[:, first + 5 :])
    att = _eager_attentions(model, ids).attentions
    for layer in range(c.cfg.n_layers):
        want = np.mean([[att[layer][b, :, first + 5 + i, first + i].numpy() for i in range(5)]
                        for b in range(3)], axis=(0, 1))  # fmt: skip
        assert np.allclose(scores[layer], want, atol=1e-6)


def test_pearson_with_interval() -> None:
    a = np.arange(20.0)
    c = pearson_with_interval(a, 2 * a + 1, n_boot=50)
    assert c.r == pytest.approx(1.0) and c.low == pytest.approx(1.0) and c.n == 20
    noisy = pearson_with_interval(a, a + np.random.default_rng(0).normal(0, 5, 20), n_boot=200)
    assert noisy.low < noisy.r < noisy.high


@pytest.mark.parametrize(
    "bad", [{"rotary": "fixed"}, {"inputs": "hub"}, {"top_k": 0}, {"n_tokens": 4, "top_k": 5}]
)
def test_bad_qk_options_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(OptionError):
        QKOptions(**bad)


def test_map_writes_qk_scores_when_asked(tmp_path: Path) -> None:
    """``headatlas map --qk`` writes qk_scores.parquet and a manifest section; the OV map's
    cache key is the same with or without it."""
    from tiny_models import gpt2_tokenizer, save_tiny

    from headatlas.cli.main import main
    from headatlas.scoring.options import MapOptions
    from headatlas.store import load_results, model_slug

    folder = save_tiny(tiny_model("gpt2"), tmp_path / "gpt2")
    gpt2_tokenizer().save_pretrained(folder)
    out = tmp_path / "out"
    assert main(["map", str(folder), "--out", str(out), "--relations", "copying", "--quiet"]) == 0
    plain = load_results(out / model_slug(str(folder)))
    assert plain.qk() is None and "qk" not in plain.manifest
    args = ["map", str(folder), "--out", str(out), "--relations", "copying", "--quiet", "--qk",
            "--qk-rotary", "offsets"]  # fmt: skip
    assert main(args) == 0
    res = load_results(out / model_slug(str(folder)))
    table = res.qk()
    assert table is not None and len(table) == 2 * 4
    assert table.dup_score.between(0, 1).all() and table.salient_keys.map(len).eq(10).all()
    row = table.iloc[5]
    assert {"countries", "punctuation", "start"} <= set(row.classes)
    for col in ("class_auc", "class_null_mean", "class_null_max", "class_p_value", "class_z"):
        assert len(row[col]) == len(row.classes), col
    assert all(0 <= v <= 1 for v in row.class_auc) and all(0 < p <= 1 for p in row.class_p_value)
    assert res.manifest["qk"]["options"]["rotary"] == "offsets"
    assert res.manifest["qk"]["rows"] == len(table) and res.manifest["options"]["qk"] is True
    assert MapOptions(qk=True).scoring_key() == MapOptions().scoring_key()
    from headatlas.errors import ResultsError
    from headatlas.report.qk_figure import plot_qk_grid, qk_grid

    grid = qk_grid(res)
    assert grid.shape == (4, 2) and np.isfinite(grid).all()
    assert grid[3, 1] == table[(table["layer"] == 1) & (table["head"] == 3)].dup_score.iloc[0]
    plot_qk_grid([res], tmp_path / "qk.png")
    assert (tmp_path / "qk.png").stat().st_size > 1000
    assert main([*args, "--qk-context"]) == 0
    ctx = load_results(out / model_slug(str(folder)))
    assert ctx.manifest["qk"]["options"]["inputs"] == "context"
    assert MapOptions(qk_context=True).scoring_key() == MapOptions().scoring_key()
    (res.directory / "qk_scores.parquet").unlink()
    with pytest.raises(ResultsError, match="--qk"):
        qk_grid(load_results(res.directory))


def test_validate_qk_correlates_every_reading(tmp_path: Path, capsys: Any) -> None:
    """``headatlas validate --experiment qk`` prints r per reading and stores the tables."""
    from tiny_models import gpt2_tokenizer, save_tiny

    from headatlas.cli.main import main
    from headatlas.store import model_slug

    folder = save_tiny(tiny_model("gpt2"), tmp_path / "gpt2")
    gpt2_tokenizer().save_pretrained(folder)
    out = tmp_path / "out"
    args = ["validate", str(folder), "--out", str(out), "--relations", "copying",
            "--experiment", "qk", "--quiet"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| recipe | slow |" in printed and "| context | none |" in printed
    assert "Best reading:" in printed and "| start | 1 |" in printed
    assert "Mean r over classes" in printed
    d = out / model_slug(str(folder)) / "validation"
    import json

    import pandas as pd

    table = pd.read_csv(d / "qk.csv")
    assert len(table) == 12 and table["n_heads"].eq(8).all()
    heads = pd.read_csv(d / "qk_heads.csv")
    assert len(heads) == 8 and {"dynamic", "recipe/slow", "context/offsets"} <= set(heads.columns)
    classes = pd.read_csv(d / "qk_classes.csv")
    assert {"first_names", "countries", "punctuation", "start"} <= set(classes["class"])
    assert (
        classes["static_mean"].between(0, 1).all() and classes["dynamic_mean"].between(0, 1).all()
    )
    summary = json.loads((d / "summary.json").read_text())
    assert summary["experiments"] == ["qk"]
    assert summary["runs"]["qk"]["means"]["duplicate_token_best"]["rotary"] in (
        "none",
        "offsets",
        "slow",
    )


def test_mann_whitney_counts_wins_and_half_ties() -> None:
    from headatlas.scoring.qk_classes import mann_whitney

    a = torch.tensor([[3.0, 1.0]])
    b = torch.tensor([[1.0, 2.0, 0.0]])
    # 3 beats all three; 1 beats 0, ties 1 -> (3 + 1 + 0.5) / 6
    assert mann_whitney(a, b).tolist() == [pytest.approx(4.5 / 6)]
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 7, generator=g), torch.randn(4, 9, generator=g)
    brute = (a[:, :, None] > b[:, None, :]).double().mean((1, 2))
    assert torch.allclose(mann_whitney(a, b), brute)


def test_token_classes_and_static_class_auc() -> None:
    from tiny_models import gpt2_tokenizer

    from headatlas.scoring.qk_classes import class_auc, token_classes

    c = ModelCircuits.load(tiny_model("gpt2"), tokenizer=gpt2_tokenizer())
    classes = token_classes(c, max_size=16)
    tok = gpt2_tokenizer()
    assert classes["start"] == [tok.bos_token_id]
    assert tok.encode(" Paris")[0] in classes["cities"] and len(classes["countries"]) == 16
    assert tok.encode(" the")[0] in classes["function_words"]
    assert tok.encode(",")[0] in classes["punctuation"]
    ids = sample_tokens(c, 32, 0)
    X = c.embed(ids)
    Xc = c.embed(torch.tensor(classes["cities"]))
    qk = read_qk(c, 0)
    auc = class_auc(qk, X, Xc, X, QKOptions())
    logits_c = head_logits(qk, X, Xc, QKOptions())
    logits_r = head_logits(qk, X, X, QKOptions())
    brute = (logits_c[:, :, :, None] > logits_r[:, :, None, :]).double().mean((2, 3)).mean(1)
    assert torch.allclose(auc, brute) and auc.shape == (c.cfg.n_heads,)


@pytest.mark.parametrize("mode", ["forward", "context"])
def test_salient_tokens_under_recipes_that_run_the_model(mode: str) -> None:
    """Salient keys and queries read the vocabulary's weights-only x̃ (``residual``) when the
    recipe's own mode runs the model (``map --embedding context --qk`` once failed here)."""
    from headatlas.scoring.qk import salient_tokens

    c = ModelCircuits.load(tiny_model("llama-gqa"))
    qk = read_qk(c, 1)
    X = embedding_of(c, c.embed(sample_tokens(c, 32, 0)), "residual")
    cache: dict[str, torch.Tensor] = {}
    keys, queries = salient_tokens(c, qk, X, Recipe(embedding=mode), QKOptions(n_salient=3), cache)
    assert list(cache) == ["residual"]
    assert all(len(k) == 3 for k in keys) and all(len(q) == 3 for q in queries)


def test_key_aucs_average_to_the_class_auc_and_the_null_ranks_it() -> None:
    """A class's AUC is the mean of its members' per-key AUCs; its null is random classes of
    the same size from the sample: mean near 0.5, and the sample's own top keys beat it."""
    from tiny_models import gpt2_tokenizer

    from headatlas.scoring.qk_classes import class_auc, class_null, key_aucs, null_draws

    c = ModelCircuits.load(tiny_model("gpt2"), tokenizer=gpt2_tokenizer())
    X = c.embed(sample_tokens(c, 48, 0)).double()
    Xc = c.embed(torch.tensor([5, 17, 99])).double()
    qk = read_qk(c, 1).to(torch.float64)
    a = key_aucs(qk, X, torch.cat([X, Xc]), X, QKOptions())
    assert a.shape == (c.cfg.n_heads, 51)
    assert torch.allclose(a[:, 48:].mean(-1), class_auc(qk, X, Xc, X, QKOptions()))
    assert torch.allclose(a[:, :48].mean(-1), torch.full((c.cfg.n_heads,), 0.5, dtype=a.dtype))
    draws = null_draws(48, 5, 200, 0)
    assert draws.shape == (200, 5) and all(len(set(d.tolist())) == 5 for d in draws)
    assert torch.equal(draws, null_draws(48, 5, 200, 0)) and null_draws(4, 6, 3, 0).shape == (3, 6)
    top = a[:, :48].topk(5).indices  # per head its five most preferred sample keys
    best = torch.stack([a[h, top[h]].mean() for h in range(a.shape[0])])
    null = class_null(best, a[:, :48], 5, 200, 0)
    assert (null["class_null_mean"] - 0.5).abs().max() < 0.05
    assert (null["class_p_value"] == 1 / 201).all() and (null["class_z"] > 0).all()
    assert (null["class_null_max"] <= best).all()
    mid = class_null(torch.full_like(best, 0.5), a[:, :48], 5, 200, 0)
    assert (mid["class_p_value"] > 0.2).all()


def _record(r_dup: float, mean_r: float, reading: tuple[str, str] = ("recipe", "slow")) -> dict:
    """A QK record as calibrate writes it, with chosen r values."""
    rows = [{"inputs": i, "rotary": m, "score": s, "r": (r_dup if (i, m, s) == (*reading, "dup_score")
                                                           else 0.1)}
            for i in ("recipe", "context") for m in ("none", "offsets", "slow")
            for s in ("dup_score", "dup_mass")]  # fmt: skip
    return {"supported": True, "rotary": reading[1], "context": reading[0] == "context",
            "readings": rows,
            "classes": {"reading": "/".join(reading), "mean_r": mean_r,
                        "per_class": [{"class": "countries", "r": mean_r},
                                      {"class": "start", "r": 0.2}]}}  # fmt: skip


def test_labels_come_only_from_readings_that_reach_their_target() -> None:
    """A reading below its target (or never measured) labels no head; one above it does."""
    import pandas as pd

    from headatlas.scoring.qk_labels import agreement_of, head_function, qk_labels, verdict_lines

    table = pd.DataFrame({"layer": [0, 0], "head": [0, 1], "dup_score": [0.97, 0.2],
                          "classes": [["countries", "start"]] * 2,
                          "class_auc": [[0.9, 0.95], [0.5, 0.5]],
                          "class_null_max": [[0.6, 0.8], [0.6, 0.8]],
                          "class_p_value": [[0.001, 0.001], [0.5, 0.5]]})  # fmt: skip
    good = agreement_of(_record(0.9, 0.8), "recipe", "slow")
    labels = qk_labels(table, good)
    assert labels["reads"][0].startswith("duplicate-token; countries keys (AUC 0.90")
    assert "start" not in labels["reads"][0] and labels["reads"][1] == ""
    assert "used for labels" in verdict_lines(good)[0]
    assert head_function(labels["reads"][0], "copying", good).endswith("· writes copying")
    low = agreement_of(_record(0.78, 0.08), "recipe", "slow")  # Gemma 3's measured values
    assert (qk_labels(table, low)["reads"] == "").all()
    assert all("below the" in line for line in verdict_lines(low))
    assert "not labelled" in head_function("", "copying", low)
    other = agreement_of(_record(0.9, 0.8), "context", "none")  # a reading not chosen
    assert other["duplicate_token"]["r"] == 0.1 and not other["class_preference"]["classes"]
    never = agreement_of(None, "recipe", "offsets")
    assert (qk_labels(table, never)["reads"] == "").all()
    assert "not measured" in verdict_lines(never)[0]


def test_calibrated_qk_reading_is_what_preset_calibrated_maps_with(tmp_path: Path) -> None:
    """calibrate's QK step records the best reading; ``map --preset calibrated --qk`` maps with
    it and records its agreement; the summary and figure say when it is below its target.
    (Tiny random GPT-2: learned positions and no rotary, so this tests the plumbing only.)"""
    import dataclasses
    import json

    from tiny_models import gpt2_tokenizer, save_tiny

    from headatlas.cli.main import main
    from headatlas.report.qk_figure import qk_caption
    from headatlas.store import load_results, model_slug
    from headatlas.validate.qk_calibration import calibrate_qk

    model = tiny_model("gpt2")
    c = ModelCircuits.load(model, tokenizer=gpt2_tokenizer())
    record = calibrate_qk(c, model, Recipe(), QKOptions(n_tokens=64, class_null=20))
    assert record["supported"] and len(record["readings"]) == 12
    best = max(record["readings"], key=lambda r: -1 if r["r"] is None else r["r"])
    assert record["duplicate_token"]["r"] == best["r"] and record["rotary"] == best["rotary"]
    assert record["score"] == best["score"]
    assert record["duplicate_token"]["reading"].startswith(record["classes"]["reading"])
    json.dumps(record)  # JSON-safe
    folder = save_tiny(model, tmp_path / "gpt2")
    gpt2_tokenizer().save_pretrained(folder)
    out = tmp_path / "out"
    d = out / model_slug(str(folder))
    d.mkdir(parents=True)
    forced = _record(0.78, 0.08, ("recipe", "slow"))  # a reading below target, chosen
    (d / "calibration.json").write_text(json.dumps(
        {"winner": "default", "recipe": dataclasses.asdict(Recipe()), "qk": forced}))  # fmt: skip
    assert main(["map", str(folder), "--out", str(out), "--relations", "copying",
                 "--preset", "calibrated", "--qk"]) == 0  # fmt: skip
    res = load_results(d)
    assert res.manifest["qk"]["options"]["rotary"] == "slow"
    assert res.manifest["qk"]["agreement"]["duplicate_token"]["r"] == 0.78
    assert "0.78 < 0.8, not used for labels" in qk_caption(res)
    from headatlas.cli.map_cmd import summary_text

    text = summary_text(res)
    assert "below the 0.8 target: no head is labelled" in text
    assert "heads labelled" not in text


def test_learned_positions_join_the_recipe_reading_unless_rotary_none() -> None:
    """GPT-2's learned positions: their mean over 1..max_offset joins the recipe's x̃ under
    offsets and slow, not under none (a tiny random GPT-2: the plumbing, not the evidence)."""
    from headatlas.qk_circuits import mean_position

    model = tiny_model("gpt2")
    c = ModelCircuits.load(model)
    shift = mean_position(c, 128)
    assert shift is not None
    wpe = model.transformer.wpe.weight.detach()
    assert torch.allclose(shift, wpe[1:129].mean(0))
    assert mean_position(ModelCircuits.load(tiny_model("llama-gqa")), 128) is None
    opts = QKOptions(n_tokens=64, classes=False)
    X = embedding_of(c, c.embed(sample_tokens(c, 64, 0)), "mlp0")
    qk = read_qk(c, 1)
    for rotary, x in (("none", X), ("offsets", X + shift), ("slow", X + shift)):
        table = qk_scores(c, opts.replace(rotary=rotary), Recipe(), salient=False)
        want = duplicate_scores(head_logits(qk, x, x, opts), 1)
        assert table[table["layer"] == 1].dup_score.tolist() == want.tolist(), rotary
