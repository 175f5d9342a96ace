"""The orchestration apart from the kernels: the shared layer loop (:func:`score_layers`), the
per-layer store an interrupted run resumes from (:class:`LayerCache`) and device/dtype names
(:mod:`headatlas.runtime`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from test_scoring import random_plan
from tiny_models import gpt2_tokenizer, tiny_model

import headatlas.scoring.layers as layers_module
from headatlas.circuits import ModelCircuits
from headatlas.errors import OptionError
from headatlas.runtime import compute_dtype, resolve_device, resolve_dtype
from headatlas.scoring.kernel.layout import PairLayout
from headatlas.scoring.layers import score_layers
from headatlas.scoring.null import null_hits, null_plan
from headatlas.scoring.options import MapOptions
from headatlas.scoring.recipe import PRESETS, Recipe, SourceInputs
from headatlas.scoring.relation_scores import layer_ranks, layer_scores
from headatlas.store import LayerCache

# ---- score_layers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def circuits() -> ModelCircuits:
    return ModelCircuits.load(tiny_model("llama-gqa"))


def test_score_layers_gives_each_layers_ranks_as_the_kernel_does(circuits: ModelCircuits) -> None:
    plan = random_plan(circuits.cfg.vocab_size, 120, seed=3)
    recipe = Recipe()
    readout = recipe.bind(circuits)
    inputs = SourceInputs(recipe, circuits, plan.source_ids)
    layout = PairLayout(
        plan.pair_rows,
        plan.pair_targets,
        len(plan.source_ids),
        readout.W_Uf.shape[1],
        k=plan.pair_k,
    )
    seen = []
    for s in score_layers(circuits, plan, [inputs], readout):
        seen.append(s.index)
        assert s.digest == circuits.layer(s.index).digest
        with torch.no_grad():
            up, down = layer_ranks(circuits.layer(s.index), inputs.layer(s.index), readout, layout)
        assert torch.equal(s.ranks[0], up) and torch.equal(s.ranks[1], down)
        (scores,) = s.scores
        for a, b in zip(scores, layer_scores(plan, up, down), strict=True):
            assert torch.equal(a, b)
    assert seen == list(range(circuits.cfg.n_layers))


def test_a_layer_not_asked_for_its_scores_computes_nothing(
    circuits: ModelCircuits, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = layers_module.head_readouts

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(layers_module, "head_readouts", counted)
    plan = random_plan(circuits.cfg.vocab_size, 60, seed=1)
    readout = Recipe().bind(circuits)
    inputs = SourceInputs(Recipe(), circuits, plan.source_ids)
    digests = [s.digest for s in score_layers(circuits, plan, [inputs], readout, layers=[1, 0])]
    assert digests == [circuits.layer(1).digest, circuits.layer(0).digest] and not calls
    (s,) = score_layers(circuits, plan, [inputs], readout, layers=[1])
    _ = s.ranks, s.heads, s.scores
    assert calls == [1]  # heads computed once, shared by the ranks


def test_stacked_input_sets_score_as_each_alone(circuits: ModelCircuits) -> None:
    """Recipes that differ only in the embedding mode share one readout and one kernel call;
    each set's scores equal a loop over that set alone."""
    plan = random_plan(circuits.cfg.vocab_size, 80, seed=5)
    a, b = Recipe(embedding="mlp0"), Recipe(embedding="none")
    readout = a.bind(circuits)
    sets = [SourceInputs(r, circuits, plan.source_ids) for r in (a, b)]
    together = score_layers(circuits, plan, sets, readout)
    alone = [score_layers(circuits, plan, [inp], readout) for inp in sets]
    for s, s_a, s_b in zip(together, *alone, strict=True):
        for got, want in zip(s.scores, (s_a.scores[0], s_b.scores[0]), strict=True):
            assert all(torch.equal(x, y) for x, y in zip(got, want, strict=True))


def test_null_hits_are_the_nulls_kernel_on_the_same_heads(circuits: ModelCircuits) -> None:
    plan = random_plan(circuits.cfg.vocab_size, 80, seed=7)
    null = null_plan(plan.relations, 3, 0)
    readout = Recipe().bind(circuits)
    inputs = SourceInputs(Recipe(), circuits, plan.source_ids)
    (s,) = score_layers(circuits, plan, [inputs], readout, layers=[1], null=null)
    lay = PairLayout(
        null.pair_rows, null.pair_targets, len(null.source_ids), s.layout.vocab, k=null.pair_k
    )
    with torch.no_grad():
        want = torch.stack([null_hits(Z, B, lay, o) for (Z, B), o in zip(s.heads, s.orders)])
    assert s.null_hits is not None and torch.equal(s.null_hits, want)
    (plain,) = score_layers(circuits, plan, [inputs], readout, layers=[1])
    assert plain.null_hits is None


def test_maps_of_two_recipes_in_turn_share_no_state(tmp_path: Path) -> None:
    """No module-level cache: a map after another recipe's equals the same map run first."""
    from headatlas.scoring.mapping import map_heads

    model = tiny_model("gpt2")
    c = ModelCircuits.load(model, tokenizer=gpt2_tokenizer())
    opts = MapOptions(k=3000, min_pairs=5, unembed_bias=True)
    first = map_heads(c, ["copying"], options=opts, progress=False, log=lambda _m: None)
    maps = MapOptions.preset("maps", k=3000, min_pairs=5)
    map_heads(c, ["copying"], options=maps, progress=False, log=lambda _m: None)
    again = map_heads(c, ["copying"], options=opts, progress=False, log=lambda _m: None)
    pd.testing.assert_frame_equal(first.scores, again.scores)


# ---- LayerCache -----------------------------------------------------------------------------


def test_layer_cache_finds_only_the_same_key_and_layer_digest(tmp_path: Path) -> None:
    frame = pd.DataFrame({"layer": [2, 2], "x": [0.5, 1.5]})
    cache = LayerCache(tmp_path / "partial", "k1")
    assert cache.get(2, "d2", ("layer", "x")) is None
    cache.put(2, "d2", frame)
    pd.testing.assert_frame_equal(cache.get(2, "d2", ("layer", "x")), frame)
    assert cache.get(2, "other-weights") is None
    assert cache.get(3, "d2") is None
    assert LayerCache(tmp_path / "partial", "k2").get(2, "d2") is None  # other inputs
    assert cache.get(2, "d2", kind="evidence") is None
    cache.put(2, "d2", frame.head(1), kind="evidence", tag="t")
    assert len(cache.get(2, "d2", kind="evidence", tag="t")) == 1  # type: ignore[arg-type]
    assert cache.get(2, "d2", kind="evidence", tag="u") is None
    cache.clear()
    assert not (tmp_path / "partial").exists()


def test_layer_cache_drops_an_unreadable_file_and_says_so(tmp_path: Path) -> None:
    said: list[str] = []
    cache = LayerCache(tmp_path, "k", said.append)
    cache.put(0, "d", pd.DataFrame({"a": [1]}))
    path = cache.path(0, "d")
    assert path is not None
    path.write_bytes(path.read_bytes()[:20])  # cut short
    assert cache.get(0, "d") is None and not path.exists()
    assert len(said) == 1 and "recomputing layer 0" in said[0] and "unreadable" in said[0]
    cache.put(0, "d", pd.DataFrame({"a": [1]}))
    assert cache.get(0, "d", ("a", "b")) is None and "lacks column" in said[-1]


def test_layer_cache_without_a_folder_keeps_nothing(tmp_path: Path) -> None:
    cache = LayerCache(None, "k")
    cache.put(0, "d", pd.DataFrame({"a": [1]}))
    assert cache.get(0, "d") is None and cache.path(0, "d") is None
    cache.clear()


def test_calibrate_static_scores_resume_after_an_interrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headatlas.validate.calibrate as cal
    from headatlas.validate.dynamic import DynamicJob

    c = ModelCircuits.load(tiny_model("gpt2"), tokenizer=gpt2_tokenizer())
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, c.cfg.vocab_size, (2, 30), generator=g).tolist()
    jobs = [DynamicJob("r", "<X>", [[s] for s in ids[0]], ids[1], 50)]
    candidates = {"maps": PRESETS["maps"], "mlp0": Recipe(), "none": Recipe(embedding="none")}
    opts = MapOptions()
    fresh = cal.static_scores(c, candidates, jobs, opts)

    real, calls = cal._static_frame, []

    def stop_at(stop: int | None) -> Any:
        def frame(layer: int, *args: Any) -> Any:
            calls.append(layer)
            if layer == stop:
                raise KeyboardInterrupt
            return real(layer, *args)

        return frame

    monkeypatch.setattr(cal, "_static_frame", stop_at(1))
    with pytest.raises(KeyboardInterrupt):
        cal.static_scores(c, candidates, jobs, opts, partial=tmp_path)
    calls.clear()
    monkeypatch.setattr(cal, "_static_frame", stop_at(None))
    resumed = cal.static_scores(c, candidates, jobs, opts, partial=tmp_path)
    # layer 0 of the first group (maps) was kept; everything else is computed now
    assert calls == [1, 0, 1]
    for name in candidates:
        pd.testing.assert_frame_equal(resumed[name], fresh[name])


# ---- runtime ---------------------------------------------------------------------------------


def test_device_and_dtype_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    for bad in ("meta", "nonsense"):
        with pytest.raises(OptionError, match="device"):
            resolve_device(bad)
    assert resolve_dtype("bfloat16") == torch.bfloat16
    with pytest.raises(OptionError, match="float16"):
        resolve_dtype("float16")
    assert compute_dtype(torch.bfloat16) == torch.float32
    assert compute_dtype(torch.float64) == torch.float64
