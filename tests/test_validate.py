"""Validation hooks and experiments.

The hook mechanics are checked exactly on tiny random models (Llama with GQA, GPT-2's Conv1D,
Gemma 2's post-attention norm): per-head outputs sum to the attention output, zeroing a head
removes exactly its contribution, the "without context" edit puts the head's KV-group value at
the source into z, the hooked values equal the pre-attention norm output through LayerOV's
W_V / b_V, and the readout of a hooked value vector ranks targets exactly as the plain
reference of the static map does. The SmolLM2 runs (``-m real``) check each experiment end to
end on two relations.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import gpt2_tokenizer, tiny_model

from headatlas.circuits import ModelCircuits
from headatlas.errors import ValidationInputError
from headatlas.scoring.options import MapOptions
from headatlas.scoring.reference import reference_ranks
from headatlas.validate import AttentionHooks, ValidationOptions, validate
from headatlas.validate.dynamic import DynamicJob, HeadReadout, dynamic_scores
from headatlas.validate.options import EXPERIMENTS
from headatlas.validate.prompts import build_prompts
from headatlas.validate.run import merge_summaries

ATOL = 1e-5
HOOK_MODELS = ["llama-gqa", "gpt2", "gemma2"]


class WordTokenizer:
    """A stand-in tokenizer for small vocabularies: one id per whitespace-separated word."""

    def __init__(self, vocab: int):
        self.vocab = vocab

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [1 + sum(w.encode()) * 7 % (self.vocab - 1) for w in text.split()]


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = (a - b).abs().max().item()
    assert err <= ATOL, f"{what}: max abs error {err:.3g}"


def _batch(vocab: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A right-padded batch of three rows of lengths 7, 5 and 3."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    mask[2, 3:] = 0
    return dict(
        input_ids=ids,
        attention_mask=mask,
        read_pos=mask.sum(1) - 1,
        source_pos=torch.tensor([2, 1, 0]),
    )


@pytest.fixture(scope="module", params=HOOK_MODELS)
def hooked(request: pytest.FixtureRequest) -> tuple[str, Any, ModelCircuits, AttentionHooks]:
    model = tiny_model(request.param)
    mc = ModelCircuits.load(model)
    return request.param, model, mc, AttentionHooks(model, mc.spec, mc.cfg)


def test_heads_sum_to_attention_output(hooked: Any) -> None:
    name, _model, mc, hooks = hooked
    b = _batch(mc.cfg.vocab_size)
    run = hooks.run(**b)
    for layer in range(mc.cfg.n_layers):
        ov = mc.layer(layer)
        per_head = torch.einsum("bhe,hed->bhd", run.z[layer], ov.W_O)  # z_h W_O^h
        total = per_head.sum(1) + (ov.b_O if ov.b_O is not None else 0)
        _close(total, run.attn_out[layer], f"{name} layer {layer}: sum of heads + b_O")


def test_logits_match_an_unpadded_pass(hooked: Any) -> None:
    name, model, mc, hooks = hooked
    b = _batch(mc.cfg.vocab_size)
    run = hooks.run(**b)
    for row in range(3):
        n = int(b["attention_mask"][row].sum())
        with torch.no_grad():
            alone = model(b["input_ids"][row : row + 1, :n]).logits[0, -1]
        _close(run.logits[row], alone, f"{name} row {row}: logits at the last real position")


def test_zeroing_a_head_removes_exactly_its_output(hooked: Any) -> None:
    name, _model, mc, hooks = hooked
    b = _batch(mc.cfg.vocab_size)
    base = hooks.run(**b)
    layer, head = mc.cfg.n_layers - 1, 1
    cut = hooks.run(**b, zero={layer: [head]})
    ov = mc.layer(layer)
    assert torch.equal(cut.z[layer][:, head], torch.zeros_like(cut.z[layer][:, head]))
    others = [h for h in range(mc.cfg.n_heads) if h != head]
    assert torch.equal(cut.z[layer][:, others], base.z[layer][:, others])
    removed = base.attn_out[layer] - cut.attn_out[layer]
    _close(removed, base.z[layer][:, head] @ ov.W_O[head], f"{name}: ablated contribution")
    for earlier in range(layer):  # edits at the last position change nothing upstream
        assert torch.equal(cut.attn_out[earlier], base.attn_out[earlier])


def test_without_context_edit_uses_the_source_value(hooked: Any) -> None:
    name, _model, mc, hooks = hooked
    b = _batch(mc.cfg.vocab_size)
    heads = list(range(mc.cfg.n_heads))
    run = hooks.run(**b, from_value={0: heads})
    ov = mc.layer(0)
    for h in heads:
        g = ov.kv_group(h)
        assert torch.equal(run.z[0][:, h], run.values[0][:, g]), f"{name} head {h}"
        by_hand = run.attn_in[0] @ ov.head_W_V(h)
        if ov.head_b_V(h) is not None:
            by_hand = by_hand + ov.head_b_V(h)
        _close(run.values[0][:, g], by_hand, f"{name} head {h}: value = norm(x) W_V + b_V")


def test_readout_of_hooked_values_equals_reference(hooked: Any) -> None:
    """The without-context readout is the static map's OV readout applied to the real
    attention input at the source: same logits as by hand, same ranks as the reference."""
    name, _model, mc, hooks = hooked
    options = MapOptions()
    b = _batch(mc.cfg.vocab_size)
    run = hooks.run(**b)
    readout = HeadReadout(mc, options, dtype=torch.float64)
    targets = torch.tensor([5, 17, 123])
    reference_options = MapOptions(pre_norm=False)  # attn_in is already normed
    for layer in range(mc.cfg.n_layers):
        ov = mc.layer(layer)
        z = readout.source_values(layer, run.values[layer].double())
        up, down = readout.ranks(layer, z, targets)
        logits = readout.logits(layer, z)
        for h in range(mc.cfg.n_heads):
            gain = ov.out_gain(mc.cfg.d_model).double()
            by_hand = ((z[:, h] @ ov.W_O[h].double()) * gain) @ readout.W_Uf
            _close(logits[:, h], by_hand, f"{name} L{layer}H{h}: readout by hand")
            ref_up, ref_down = reference_ranks(
                mc, ov, h, run.attn_in[layer], targets, reference_options
            )
            assert torch.equal(up[:, h], ref_up), f"{name} L{layer}H{h}: relation ranks"
            assert torch.equal(down[:, h], ref_down), f"{name} L{layer}H{h}: suppression ranks"


def test_dynamic_score_without_context_equals_reference_hits() -> None:
    """dynamic_scores end to end (prompts, batching, padding) against the reference ranks of
    the hooked attention inputs at the source, on a GQA model."""
    model = tiny_model("llama-gqa")
    mc = ModelCircuits.load(model)
    hooks = AttentionHooks(model, mc.spec, mc.cfg)
    tok = WordTokenizer(mc.cfg.vocab_size)
    sources = [[i] for i in range(3, 60, 4)]
    targets = [(7 * i) % mc.cfg.vocab_size for i in range(len(sources))]
    k, template = 40, "The story of <X> contains"
    readout = HeadReadout(mc, MapOptions(), dtype=torch.float64)
    job = DynamicJob("r", template, sources, targets, k)
    (scores,) = dynamic_scores(hooks, readout, tok, [job], batch_size=4, budget_bytes=1)
    prompts = build_prompts(tok, template, sources, targets)
    assert all(p.ids[p.source_pos] == s[0] for p, s in zip(prompts, sources, strict=True))
    expected = np.zeros((mc.cfg.n_layers, mc.cfg.n_heads))
    for p in prompts:
        ids = torch.tensor([p.ids])
        run = hooks.run(ids, torch.ones_like(ids), torch.tensor([len(p.ids) - 1]),
                        torch.tensor([p.source_pos]))  # fmt: skip
        for layer in range(mc.cfg.n_layers):
            ov = mc.layer(layer)
            for h in range(mc.cfg.n_heads):
                up, _ = reference_ranks(mc, ov, h, run.attn_in[layer], torch.tensor([p.target]),
                                        MapOptions(pre_norm=False))  # fmt: skip
                expected[layer, h] += float(up[0] < k) / len(prompts)
    np.testing.assert_allclose(scores.without_context, expected, atol=1e-12)
    assert scores.with_context.shape == expected.shape


def test_validate_end_to_end_on_tiny_gpt2(tmp_path: Path) -> None:
    """Every experiment runs and writes its files (scores are made non-trivial with large k)."""
    model = tiny_model("gpt2")
    mc = ModelCircuits.load(model, tokenizer=gpt2_tokenizer())
    res = validate(
        mc,
        relations=["country_capital", "copying", "noun_pronoun"],
        out=tmp_path,
        map_options=MapOptions(k=3000, min_pairs=5),
        options=ValidationOptions(
            max_prompts=12,
            templates=("No <X> means no",),
            max_heads=3,
            random_draws=2,
            causal_templates=1,
            min_multi_token=3,
        ),
        progress=False,
        log=lambda _m: None,
    )
    d = res.directory
    assert d is not None and d.name == "validation"
    expected = "correlative.csv correlative.md correlative.png causal.csv causal_curves.csv"
    expected += " causal.md causal.png multi_token.csv summary.json"
    for f in expected.split():
        assert (d / f).is_file(), f
    assert res.correlative is not None and len(res.correlative) == 6
    assert np.isfinite(res.correlative["r_without_context"]).any()
    summary = json.loads((d / "summary.json").read_text())
    assert set(summary["experiments"]) == set(EXPERIMENTS) == set(summary["runs"])
    assert "relation" in summary["relations"]["country_capital"]["correlative"]
    assert "base_accuracy" in summary["relations"]["country_capital"]["causal"]
    assert res.causal is not None and res.causal_curves is not None
    done = res.causal[res.causal["skipped"] == ""]
    assert len(done) >= 1
    assert set(res.causal_curves["condition"]) >= {"relation", "random"}


def test_summaries_of_separate_runs_merge() -> None:
    old = {
        "model": "m",
        "experiments": ["correlative", "multi-token", "causal"],
        "relations": {
            "a": {"category": "K", "correlative": 1, "multi_token": 4, "causal": 2},
            "b": {"category": "K", "multi_token": 3},
        },
        "skipped": {"multi-token: c": "few pairs", "causal: d": "no heads"},
        "runs": {"correlative": {"x": 1}, "multi-token": {"y": 1}, "causal": {"z": 1}},
    }
    new = {
        "model": "m",
        "experiments": ["multi-token"],
        "relations": {"a": {"category": "K", "multi_token": 5}},
        "skipped": {},
        "runs": {"multi-token": {"y": 2}},
    }
    merged = merge_summaries(old, new)
    assert merged["experiments"] == ["correlative", "causal", "multi-token"]
    assert merged["relations"] == {
        "a": {"category": "K", "correlative": 1, "multi_token": 5, "causal": 2}
    }
    assert merged["skipped"] == {"causal: d": "no heads"}
    assert merged["runs"] == {"correlative": {"x": 1}, "multi-token": {"y": 2}, "causal": {"z": 1}}
    assert merge_summaries({**old, "model": "other"}, new) == new
    assert merge_summaries({**old, "runs": None}, new) == new


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    model = tiny_model("gpt2")
    mc = ModelCircuits.load(model, tokenizer=gpt2_tokenizer())
    with pytest.raises(ValidationInputError, match="unknown experiment 'causl'"):
        validate(mc, ["copying"], experiments=["causl"], progress=False)
    with pytest.raises(ValidationInputError, match="slot <X>"):
        validate(mc, ["copying"], options=ValidationOptions(templates=("no slot",)))
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"name": "mine", "pairs": [["cat", "dog"]] * 3}))
    with pytest.raises(ValidationInputError, match="no prompt templates"):
        validate(mc, [], relation_files=[user], experiments=["causal"], progress=False)


def test_main_cli_reports_bad_experiment(capsys: pytest.CaptureFixture[str]) -> None:
    from headatlas.cli.main import main

    with pytest.raises(SystemExit):
        main(["validate", "smollm2", "--experiment", "nope"])
    assert "invalid choice" in capsys.readouterr().err
    assert EXPERIMENTS == ("correlative", "causal", "multi-token")


@pytest.mark.parametrize("name", ["llama-gqa", "gpt2", "phi", "gemma2"])
def test_cached_prefix_ablation_equals_whole_pass(name: str) -> None:
    """The causal experiment's shortcut: the prefix cache plus the last token, with heads
    zeroed, gives the logits of a whole hooked pass (sliding-window models opt out)."""
    model = tiny_model(name)
    mc = ModelCircuits.load(model)
    hooks = AttentionHooks(model, mc.spec, mc.cfg)
    if not hooks.supports_prefix_cache:
        assert name == "gemma2"
        return
    b = _batch(mc.cfg.vocab_size)
    prefix = hooks.prefix(b["input_ids"], b["attention_mask"], b["read_pos"])
    for zero in ({}, {1: [0, 2]}, {0: [1], 1: [3]}):
        whole = hooks.run(b["input_ids"], b["attention_mask"], b["read_pos"], capture=False,
                          zero=zero).logits  # fmt: skip
        _close(hooks.run_last(prefix, zero), whole, f"{name} {zero}: cached last token")
        _close(hooks.run_last(prefix, zero), whole, f"{name} {zero}: the cache is reused intact")


def test_steps_and_m() -> None:
    o = ValidationOptions()
    assert o.m_for(270) == 30 and o.m_for(576) == 50 and o.m_for(5000) == 250
    assert o.steps_for(30) == [0, 1, 2, 4, 8, 16, 30]
    assert ValidationOptions(steps=(5, 10, 99)).steps_for(12) == [0, 5, 10, 12]


# ---- SmolLM2 (real) -------------------------------------------------------------------------
REAL_RELATIONS = ["country_capital", "name_copying"]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelCircuits, Any, Path]:
    """SmolLM2's circuits and transformers model, and a folder holding its static map of the
    two relations (computed once; every experiment reuses it)."""
    from headatlas.scoring.mapping import map_heads
    from headatlas.validate import load_hf_model

    try:
        mc = ModelCircuits.load("smollm2")
        hf = load_hf_model("smollm2")
    except Exception as exc:  # package missing
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("smollm2-validate")
    map_heads(mc, REAL_RELATIONS, out=out, progress=False, log=lambda _m: None)
    return mc, hf, out


@pytest.mark.real
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_smollm2_experiment(smollm2: Any, experiment: str) -> None:
    mc, hf, out = smollm2
    options = ValidationOptions(
        max_prompts=30, templates=("The story of <X> contains",), steps=(4, 16), random_draws=2,
        max_controls=1, batch_size=60, min_multi_token=5,
    )  # fmt: skip
    res = validate(mc, REAL_RELATIONS, experiments=[experiment], out=out, options=options,
                   hf_model=hf, progress=False, log=lambda _m: None)  # fmt: skip
    if experiment == "correlative":
        t = res.correlative
        assert t is not None and set(t["relation"]) == set(REAL_RELATIONS)
        rel = t[t["score"] == "relation"]
        assert (rel["r_without_context"] > 0.3).all(), rel.to_string()
    elif experiment == "multi-token":
        t = res.multi_token
        assert t is not None and "multi-token: name_copying" in res.skipped  # no such pairs
        row = t[(t["relation"] == "country_capital") & (t["score"] == "relation")].iloc[0]
        assert row["n_prompts"] >= 5 and np.isfinite(row["r_without_context"])
    else:
        t = res.causal
        assert t is not None and (t["skipped"] == "").all(), t.to_string()
        copying = t[t["relation"] == "name_copying"].iloc[0]
        assert copying["base_accuracy"] > 0.8
        # the heads the map credits with copying matter more than random ones
        assert copying["drop_relation_heads"] > copying["drop_random_mean"], t.to_string()


def test_validating_some_relations_keeps_the_folders_bigger_map(tmp_path: Path) -> None:
    # A folder holding a map of three relations: validating one of them reuses that map (no
    # layer computed, all three relations still in scores.parquet) instead of replacing it.
    from headatlas.scoring.mapping import map_heads
    from headatlas.store import load_results

    model = tiny_model("gpt2")
    mc = ModelCircuits.load(model, tokenizer=gpt2_tokenizer())
    opts = MapOptions(k=3000, min_pairs=5)
    three = ["country_capital", "copying", "noun_pronoun"]
    first = map_heads(mc, three, options=opts, out=tmp_path, progress=False, log=lambda _m: None)
    vopts = ValidationOptions(max_prompts=6, templates=("No <X> means no",))
    res = validate(
        mc, relations=["copying"], experiments=["correlative"], out=tmp_path, map_options=opts,
        options=vopts, progress=False, log=lambda _m: None,
    )  # fmt: skip
    assert res.correlative is not None and set(res.correlative["relation"]) == {"copying"}
    after = load_results(first.directory)
    assert set(after.scores["relation"]) == set(three)
    assert after.manifest["timings"]["layers_computed"] == 0  # reused, not re-mapped
    pd.testing.assert_frame_equal(after.scores, first.scores)
    # A relation from a file not given now could not be kept: a one-line error, nothing written.
    rel_file = tmp_path / "mine.json"
    rel_file.write_text(
        json.dumps({"name": "mine", "category": "Knowledge", "pairs": [["France", "Paris"]] * 6})
    )
    mine = tmp_path / "with_file"
    map_heads(mc, ["copying"], [rel_file], options=MapOptions(k=3000, min_pairs=1), out=mine,
              progress=False, log=lambda _m: None)  # fmt: skip
    with pytest.raises(ValidationInputError, match="relation file not given here"):
        validate(
            mc, relations=["copying"], experiments=["correlative"], out=mine, map_options=opts,
            options=vopts, progress=False, log=lambda _m: None,
        )  # fmt: skip
