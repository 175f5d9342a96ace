"""Recipes: the ``forward`` mode's inputs equal Hugging Face's hidden states, GQA value sharing
equals Hugging Face's eager attention, with-context dynamic scores equal an independent
computation from HF's attention weights, presets, the dynamic readout switches and
``calibrate`` end to end. (Recipes against the plain reference on every family:
tests/test_scoring.py.)"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import gpt2_tokenizer, tiny_model

from headatlas.circuits import ModelCircuits
from headatlas.cli.common import options_from_args
from headatlas.cli.main import build_parser, main
from headatlas.errors import OptionError
from headatlas.scoring.kernel.layout import PairLayout
from headatlas.scoring.options import MapOptions, recipe_with
from headatlas.scoring.recipe import (
    DEFAULT_CONTEXTS,
    PRESETS,
    Recipe,
    SourceInputs,
    context_ids,
    context_inputs,
    forward_inputs,
)
from headatlas.scoring.reference import reference_ranks
from headatlas.scoring.relation_scores import layer_ranks
from headatlas.validate import AttentionHooks, ValidationOptions
from headatlas.validate.calibrate import CANDIDATES, calibrate, read_calibration
from headatlas.validate.dynamic import DynamicJob, HeadReadout, dynamic_recipe, dynamic_scores
from headatlas.validate.prompts import build_prompts


class WordTokenizer:
    """One id per whitespace-separated word (small vocabularies); id 1 is the start token."""

    bos_token_id = 1

    def __init__(self, vocab: int):
        self.vocab = vocab

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [2 + sum(w.encode()) * 7 % (self.vocab - 2) for w in text.split()]


def _eager(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a tiny model running Hugging Face's eager attention (explicit softmax)."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    assert eager.config._attn_implementation == "eager"
    return eager.eval()


@pytest.mark.parametrize("name", ["llama-gqa", "gpt2", "gemma3", "pythia-parallel"])
def test_forward_inputs_equal_hf_hidden_states(name: str) -> None:
    """Batched [start, s] inputs per layer == hidden_states[l] of each sequence run alone."""
    model = tiny_model(name)
    mc = ModelCircuits.load(model)
    ids = torch.tensor([3, 7, 11, 200, 5])
    got = forward_inputs(mc, ids, model, start=2)  # [L, n, d]
    assert got.shape == (mc.cfg.n_layers, len(ids), mc.cfg.d_model)
    with torch.no_grad():
        for i, s in enumerate(ids.tolist()):
            hs = model(input_ids=torch.tensor([[2, s]]), output_hidden_states=True).hidden_states
            for layer in range(mc.cfg.n_layers):
                torch.testing.assert_close(got[layer, i], hs[layer][0, -1], rtol=1e-5, atol=1e-5)
        alone = forward_inputs(mc, ids[:2], model, start=None)
        hs = model(input_ids=ids[:1, None], output_hidden_states=True).hidden_states
        torch.testing.assert_close(alone[1, 0], hs[1][0, 0], rtol=1e-5, atol=1e-5)
    if name != "gpt2":  # no position embedding: layer 0's input is the scaled token embedding
        torch.testing.assert_close(got[0], mc.embed(ids), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["llama-gqa", "gpt2", "gemma3"])
def test_context_inputs_are_the_mean_of_hf_hidden_states_over_contexts(name: str) -> None:
    """[start, *p, s] per prefix p, batched == hidden_states[l] of each sequence run alone,
    averaged over the prefixes; the empty prefix alone is the forward mode."""
    model = tiny_model(name)
    mc = ModelCircuits.load(model)
    ids = torch.tensor([3, 7, 11, 200, 5])
    prefixes = [[4], [9, 12], [6, 8, 10]]
    got = context_inputs(mc, ids, prefixes, model, start=2)  # [L, n, d]
    assert got.shape == (mc.cfg.n_layers, len(ids), mc.cfg.d_model)
    with torch.no_grad():
        for i, s in enumerate(ids.tolist()):
            runs = [
                model(input_ids=torch.tensor([[2, *p, s]]), output_hidden_states=True)
                for p in prefixes
            ]
            for layer in range(mc.cfg.n_layers):
                want = torch.stack([r.hidden_states[layer][0, -1] for r in runs]).mean(0)
                torch.testing.assert_close(got[layer, i], want, rtol=1e-5, atol=1e-5)
    alone = context_inputs(mc, ids, [[]], model, start=2)
    torch.testing.assert_close(alone, forward_inputs(mc, ids, model, start=2))
    with pytest.raises(OptionError, match="outside the model's vocabulary"):
        context_inputs(mc, ids, [[10**6]], model, start=2)
    with pytest.raises(OptionError, match="at least one context"):
        context_inputs(mc, ids, [], model, start=2)


@pytest.mark.parametrize("name", ["llama-gqa", "gemma3"])
def test_context_mode_ranks_equal_the_plain_reference_in_float64(name: str) -> None:
    """The context recipe's fast ranks == the plain per-head reference on the same inputs, and
    its inputs are the model's hidden states after the tokenised contexts."""
    model = copy.deepcopy(tiny_model(name)).double()  # the fixture is shared: a copy
    mc = ModelCircuits.load(model, tokenizer=WordTokenizer(model.config.vocab_size))
    recipe = Recipe(embedding="context", contexts=("The", "I saw", "Here is a"))
    ids = torch.tensor([3, 7, 11, 200, 5, 42])
    inputs = SourceInputs(recipe, mc, ids, model)
    prefixes = context_ids(mc.tokenizer, recipe.contexts)
    assert [len(p) for p in prefixes] == [1, 2, 3]
    torch.testing.assert_close(
        inputs.layer(1), context_inputs(mc, ids, prefixes, model)[1], rtol=0, atol=0
    )
    assert (
        inputs.digest()
        and inputs.digest()
        != SourceInputs(recipe.replace(contexts=("The",)), mc, ids, model).digest()
    )
    readout = recipe.bind(mc, "cpu", torch.float64)
    targets = torch.tensor([1, 9, 30, 100, 4, 77])
    layout = PairLayout(torch.arange(len(ids)), targets, len(ids), readout.W_Uf.shape[1])
    for i in range(mc.cfg.n_layers):
        layer = mc.layer(i)
        X = inputs.layer(i).double()
        up, down = layer_ranks(layer, X, readout, layout)
        for h in range(mc.cfg.n_heads):
            ru, rd = reference_ranks(mc, layer, h, X, targets, recipe)
            assert torch.equal(up[h], ru) and torch.equal(down[h], rd), f"layer {i} head {h}"


def test_context_recipe_records_its_contexts_and_keys_only_them() -> None:
    assert Recipe(embedding="context").contexts == DEFAULT_CONTEXTS
    assert Recipe(embedding="mlp0", contexts=("The",)) == Recipe()
    assert "contexts" not in Recipe().key_fields()
    assert Recipe(embedding="context").key_fields()["contexts"] == DEFAULT_CONTEXTS
    assert Recipe(embedding="context").label().startswith(f"context×{len(DEFAULT_CONTEXTS)} ")
    with pytest.raises(OptionError, match="contexts must be a list of strings"):
        Recipe(embedding="context", contexts="The")  # type: ignore[arg-type]
    # cache keys of the modes without contexts are those from before the context mode (the
    # null of issue 20 changed them once: its columns are part of every map since)
    assert (MapOptions().scoring_key(), MapOptions.preset("maps").scoring_key()) == (
        "4ada9c17f05fe0dd",
        "7ac869f8714ecd5d",
    )
    assert (
        MapOptions(embedding="context").scoring_key()
        != MapOptions(embedding="context", contexts=("The",)).scoring_key()
    )
    args = build_parser().parse_args(
        ["map", "--embedding", "context", "--contexts", "The", "I saw"]
    )
    assert options_from_args(args).recipe == Recipe(embedding="context", contexts=("The", "I saw"))
    with pytest.raises(OptionError, match="has none"):
        context_ids(None, ("The",))


def test_forward_start_token_outside_vocabulary_is_an_error() -> None:
    mc = ModelCircuits.load(tiny_model("llama-gqa"))
    with pytest.raises(OptionError, match="start token"):
        forward_inputs(mc, torch.tensor([3]), tiny_model("llama-gqa"), start=10**6)


@pytest.mark.parametrize("name", ["llama-gqa", "llama-mqa"])
def test_gqa_values_equal_hf_eager_attention(name: str) -> None:
    """On a one-token sequence every query head attends to that token only, so HF's eager
    attention (with its repeat_kv) gives z_h = v_{group(h)}(x); the recipe's value vectors of
    query head h must equal it."""
    eager = _eager(tiny_model(name))
    mc = ModelCircuits.load(eager)
    readout = Recipe().bind(mc, "cpu", torch.float32)
    captured: list[torch.Tensor] = []
    layers = eager.model.layers
    hooks = [
        layer.self_attn.o_proj.register_forward_pre_hook(
            lambda _m, args: captured.append(args[0].detach())
        )
        for layer in layers
    ]
    try:
        with torch.no_grad():
            hs = eager(input_ids=torch.tensor([[9]]), output_hidden_states=True).hidden_states
    finally:
        for h in hooks:
            h.remove()
    for i in range(mc.cfg.n_layers):
        ov = mc.layer(i)
        z_hf = captured[i][0, 0].reshape(ov.n_heads, -1)  # [H, dh]
        Z = readout.layer(ov).values(hs[i][0])  # [n_kv, 1, dh]
        assert ov.group_size > 1
        for h in range(ov.n_heads):
            torch.testing.assert_close(Z[ov.kv_group(h), 0], z_hf[h], rtol=1e-5, atol=1e-5)


def test_with_context_dynamic_scores_equal_an_independent_computation() -> None:
    """with-context z from HF's eager attention weights x values recomputed from the hidden
    states through LayerOV, read out by hand through the final norm as a function."""
    eager = _eager(tiny_model("llama-gqa"))
    mc = ModelCircuits.load(eager)
    hooks = AttentionHooks(eager, mc.spec, mc.cfg)
    tok = WordTokenizer(mc.cfg.vocab_size)
    sources = [[i] for i in range(3, 50, 4)]
    targets = [(11 * i) % mc.cfg.vocab_size for i in range(len(sources))]
    k, template = 60, "The story of <X> contains"
    readout = HeadReadout(mc, MapOptions(), dtype=torch.float64)
    job = DynamicJob("r", template, sources, targets, k)
    (scores,) = dynamic_scores(hooks, readout, tok, [job], batch_size=3, budget_bytes=1)
    expected = np.zeros((mc.cfg.n_layers, mc.cfg.n_heads))
    W_U = mc.W_U.double()
    final = mc.final_norm()
    prompts = build_prompts(tok, template, sources, targets)
    with torch.no_grad():
        for p in prompts:
            out = eager(
                input_ids=torch.tensor([p.ids]), output_hidden_states=True, output_attentions=True
            )
            for layer in range(mc.cfg.n_layers):
                ov = mc.layer(layer)
                x = ov.attn_norm(out.hidden_states[layer][0]).double()  # [T, d]
                attn = out.attentions[layer][0, :, -1].double()  # [H, T]
                for h in range(mc.cfg.n_heads):
                    v = x @ ov.head_W_V(h).double()
                    if ov.head_b_V(h) is not None:
                        v = v + ov.head_b_V(h).double()
                    y = (attn[h] @ v) @ ov.W_O[h].double()
                    row = final.__class__(final.kind, final.gain.double(), None, final.eps)(y)
                    row = row @ W_U
                    above = int((row >= row[p.target]).sum()) - 1
                    expected[layer, h] += float(above < k) / len(prompts)
    np.testing.assert_allclose(scores.with_context, expected, atol=1e-12)
    assert 0 < expected.mean() < 1


def test_presets_and_switches_as_keywords() -> None:
    maps = MapOptions.preset("maps").recipe
    assert maps == PRESETS["maps"] and MapOptions.preset("maps").label_rule == "paper"
    assert (maps.pre_norm, maps.final_norm, maps.value_bias, maps.output_bias) == (False,) * 4
    assert (maps.unembed_bias, maps.output_gain, maps.embedding) == (False, False, "mlp0")
    assert MapOptions.preset("maps").k is None
    assert MapOptions.preset("default") == MapOptions()
    # the switches as keywords (the API before MapOptions held a Recipe) set the recipe
    for recipe in [*PRESETS.values(), *CANDIDATES.values(), Recipe(embedding="none")]:
        assert MapOptions(recipe=recipe) == MapOptions(**recipe_fields(recipe))
        assert recipe_with(Recipe(), recipe_fields(recipe)) == recipe
    assert MapOptions(pre_norm=False).recipe == Recipe(pre_norm=False)
    assert dataclasses.replace(MapOptions(pre_norm=False), k=3).recipe == Recipe(pre_norm=False)
    assert MapOptions.preset("maps", output_bias=True).recipe == PRESETS["maps"].replace(
        output_bias=True
    )
    with pytest.raises(OptionError, match="preset 'nope'"):
        MapOptions.preset("nope")
    with pytest.raises(OptionError, match="embedding mode 'x'"):
        Recipe(embedding="x")
    with pytest.raises(OptionError, match="embedding mode 'x'"):
        MapOptions(embedding="x")
    with pytest.raises(OptionError, match="option pre_norm must be True or False"):
        MapOptions(pre_norm=1)  # type: ignore[arg-type]
    args = build_parser().parse_args(["map", "smollm2", "--preset", "maps", "--output-bias"])
    assert options_from_args(args) == MapOptions.preset("maps", output_bias=True)
    args = build_parser().parse_args(["map", "--embedding", "forward", "--no-final-norm"])
    assert options_from_args(args).recipe == Recipe(embedding="forward", final_norm=False)


def recipe_fields(recipe: Recipe) -> dict[str, object]:
    """The switches of ``recipe`` spelled the old way (MapOptions' fields before it held one)."""
    return {
        "effective_embedding": recipe.embedding != "none",
        "embedding": recipe.embedding if recipe.embedding != "none" else "mlp0",
        "effective_embedding_layer0": recipe.embedding_layer0,
        "pre_norm": recipe.pre_norm,
        "value_bias": recipe.value_bias,
        "output_gain": recipe.output_gain,
        "output_bias": recipe.output_bias,
        "final_norm": recipe.final_norm,
        "unembed_bias": recipe.unembed_bias,
        "contexts": recipe.contexts,
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["--preset", "maps", "--pre-norm"],  # the bug: a switch equal to its default was dropped
        ["--pre-norm", "--preset", "maps"],
        ["--recipe", "maps", "--final-norm", "--value-bias", "--output-gain"],
        ["--preset", "maps", "--label-rule", "null"],
    ],
)
def test_switches_given_win_over_the_preset(argv: list[str]) -> None:
    options = options_from_args(build_parser().parse_args(["map", *argv]))
    given = {a[2:].replace("-", "_") for a in argv if a.startswith("--") and a[2:] not in (
        "preset", "recipe", "label-rule")}  # fmt: skip
    for name in given:
        assert getattr(options.recipe, name) is True, name
    for name in {"pre_norm", "final_norm", "value_bias", "output_gain"} - given:
        assert getattr(options.recipe, name) is False, name
    assert options.label_rule == ("null" if "--label-rule" in argv else "paper")
    # and a switch at the preset's own value changes nothing
    assert options_from_args(
        build_parser().parse_args(["map", "--preset", "maps", "--no-pre-norm"])
    ) == MapOptions.preset("maps")


def test_one_recipe_has_one_cache_key() -> None:
    none = MapOptions(embedding="none")
    assert MapOptions(effective_embedding=False) == none
    assert MapOptions(effective_embedding=False, embedding="residual") == none
    assert MapOptions(effective_embedding=False).scoring_key() == none.scoring_key()
    assert MapOptions(contexts=("The",)).scoring_key() == MapOptions().scoring_key()
    for argv in (["--embedding", "none"], ["--no-effective-embedding"]):
        assert options_from_args(build_parser().parse_args(["map", *argv])) == none
    with pytest.raises(OptionError, match="--no-effective-embedding is --embedding none"):
        options_from_args(
            build_parser().parse_args(["map", "--no-effective-embedding", "--embedding", "mlp0"])
        )
    # the manifest records the recipe once: options hold every other switch
    assert "pre_norm" not in MapOptions().as_dict(recipe=False)
    assert MapOptions().as_dict()["recipe"] == Recipe().as_dict()


def test_salient_takes_the_map_recipe_switches(capsys: pytest.CaptureFixture[str]) -> None:
    from headatlas.cli.common import calibrated_recipe

    argv = ["smollm2", "--layer", "0", "--head", "0", "--revision", "main"]
    for preset in ("maps", "default"):
        salient = build_parser().parse_args(["salient", *argv, "--preset", preset])
        assert options_from_args(salient).recipe == PRESETS[preset]
    salient = build_parser().parse_args(
        ["salient", *argv, "--preset", "maps", "--output-bias", "--unembed-bias",
         "--relations-file", "a.json", "--relation-file", "b.json"]
    )  # fmt: skip
    assert options_from_args(salient).recipe == PRESETS["maps"].replace(
        output_bias=True, unembed_bias=True
    )
    assert salient.revision == "main" and salient.relations_file == ["a.json", "b.json"]
    assert "--relation-file is deprecated, use --relations-file" in capsys.readouterr().err
    calibrated = build_parser().parse_args(["salient", *argv, "--preset", "calibrated"])
    with pytest.raises(OptionError, match="--preset calibrated needs --out"):
        calibrated_recipe(calibrated, ModelCircuits.load(tiny_model("llama-gqa")))
    winner = CANDIDATES["residual"]
    assert options_from_args(calibrated, winner).recipe == winner


def test_paper_dynamic_readout_drops_final_norm_and_biases() -> None:
    mc = ModelCircuits.load(tiny_model("llama-mha-bias"))
    recipe = MapOptions(output_bias=True, unembed_bias=True).recipe
    paper = HeadReadout(mc, dynamic_recipe(recipe, "paper"))
    assert torch.equal(paper.W_Uf, mc.W_U)
    assert all(o is None for o in paper.offset)
    as_map = HeadReadout(mc, dynamic_recipe(recipe, "map"))
    assert all(o is not None for o in as_map.offset)
    assert not torch.equal(as_map.W_Uf, mc.W_U)


def test_calibrate_end_to_end_and_map_uses_the_winner(tmp_path: Path) -> None:
    model = tiny_model("gpt2")
    mc = ModelCircuits.load(model, tokenizer=gpt2_tokenizer())
    res = calibrate(
        mc,
        relations=["country_capital", "noun_pronoun"],
        out=tmp_path,
        candidates={name: CANDIDATES[name] for name in ("maps", "forward")},
        map_options=MapOptions(k=3000, min_pairs=5),
        options=ValidationOptions(max_prompts=8, templates=("No <X> means no", "I like <X>")),
        n_boot=50,
        progress=False,
        log=lambda _m: None,
    )
    assert set(res.table["recipe"]) == {"maps", "forward"}
    best = res.table.sort_values("score").iloc[-1]
    assert res.winner == best["recipe"]
    for col in ("relation_without_context", "relation_with_context"):
        row = res.table.iloc[0]
        assert row[f"{col}_ci_low"] <= row[f"{col}_mean_r"] <= row[f"{col}_ci_high"]
    assert len(res.per_template) == 2 * 2 * 2  # recipes x templates x contexts
    assert res.directory is not None
    record = json.loads((res.directory / "calibration.json").read_text())
    assert record["winner"] == res.winner
    assert read_calibration(res.directory) == CANDIDATES[res.winner]
    args = build_parser().parse_args(["map", "--preset", "calibrated", "--out", str(tmp_path)])
    assert options_from_args(args, read_calibration(res.directory)).recipe == CANDIDATES[res.winner]
    for f in ("recipes.md", "recipes.png", "recipes.csv", "dynamic.parquet", "static.parquet"):
        assert (res.directory / "calibration" / f).is_file(), f
    # a second run reuses the cached dynamic scores and gives the same table
    said: list[str] = []
    again = calibrate(
        mc, relations=["country_capital", "noun_pronoun"], out=tmp_path,
        candidates={name: CANDIDATES[name] for name in ("maps", "forward")},
        map_options=MapOptions(k=3000, min_pairs=5),
        options=ValidationOptions(max_prompts=8, templates=("No <X> means no", "I like <X>")),
        n_boot=50, progress=False, log=said.append,
    )  # fmt: skip
    assert any("reusing the dynamic scores" in m for m in said)
    assert again.table.drop(columns="label").equals(res.table.drop(columns="label"))


def test_preset_calibrated_without_a_calibration_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "m"
    tiny_model("llama-gqa").save_pretrained(folder)
    capsys.readouterr()
    code = main(["map", str(folder), "--preset", "calibrated", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no calibration in" in err and "headatlas calibrate" in err
    assert len(err.splitlines()) == 1


def test_one_model_under_two_recipes_is_titled_by_recipe(tmp_path: Path) -> None:
    from report_fixtures import make_results

    from headatlas.report.atlas_html import render_atlas_html
    from headatlas.report.category_figure import plot_category_atlas
    from headatlas.store import MANIFEST, load_results

    maps = []
    for preset in ("maps", "default"):
        folder = make_results(tmp_path / preset, 3, 2, display_name="Toy")
        manifest = json.loads((folder / MANIFEST).read_text())
        if preset == "maps":  # a manifest with the recipe recorded
            recipe = PRESETS["maps"]
            manifest["recipe"] = {**dataclasses.asdict(recipe), "label": recipe.label()}
        else:  # an older manifest, without a recipe section: the label comes from the options
            manifest.pop("recipe", None)
            manifest["options"] = {**MapOptions().as_dict(recipe=False), **recipe_fields(Recipe())}
        (folder / MANIFEST).write_text(json.dumps(manifest))
        maps.append(load_results(folder))
    fig = plot_category_atlas(maps)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["Toy — mlp0 (no norm, no bias)", f"Toy — {Recipe().label()}"]
    page = render_atlas_html(maps)
    assert "mlp0 (no norm, no bias)" in page and "mlp0 +pre-norm +b_V" in page
    single = plot_category_atlas(maps[:1])
    assert [ax.get_title() for ax in single.axes if ax.get_title()] == ["Toy"]


@pytest.mark.parametrize("mode", ["forward", "context"])
def test_salient_operations_refuse_the_forward_pass_modes(mode: str) -> None:
    from headatlas.scoring.salient import SalientInputError, SalientPass

    mc = ModelCircuits.load(tiny_model("llama-gqa"))
    with pytest.raises(SalientInputError, match=f"the '{mode}' embedding mode cannot afford"):
        SalientPass(mc, MapOptions(embedding=mode))
