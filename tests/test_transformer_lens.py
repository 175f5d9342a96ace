"""TransformerLens models go into `map_heads` as they are: a TransformerLens 4.x
TransformerBridge wrapping a tiny model is mapped to the same scores as the same weights saved
to disk, and a bridge whose weights TransformerLens processed is refused."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny_models import gpt2_tokenizer, save_tiny, tiny_model

from headatlas.circuits import ModelCircuits
from headatlas.errors import WeightSourceError
from headatlas.scoring.mapping import map_heads
from headatlas.scoring.options import MapOptions
from headatlas.scoring.salient import salient_operations

bridge_module = pytest.importorskip("transformer_lens.model_bridge")

# A wide top-k gives random tiny heads nonzero scores, so equality says something.
OPTIONS = MapOptions(k=5000)
RELATIONS = ["copying", "country_capital", "country_language"]


def boot(name: str) -> tuple[object, torch.nn.Module]:
    """A TransformerBridge over a private copy of a tiny model (no download: hf_model given)."""
    hf = copy.deepcopy(tiny_model(name))
    arch = hf.config.model_type
    bridge = bridge_module.TransformerBridge.boot_transformers(
        {"gpt2": "gpt2", "gpt_neox": "EleutherAI/pythia-14m"}.get(arch, arch),
        hf_model=hf,
        tokenizer=gpt2_tokenizer(),
    )
    return bridge, hf


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name", ["gpt2", "pythia-parallel"])
def test_bridge_maps_like_the_weights_on_disk(name: str, tmp_path: Path) -> None:
    folder = save_tiny(tiny_model(name), tmp_path / name)  # the same weights, before wrapping
    bridge, _ = boot(name)
    gpt2_tokenizer().save_pretrained(folder)
    quiet = {"options": OPTIONS, "progress": False, "log": lambda _: None}
    from_bridge = map_heads(bridge, RELATIONS, **quiet)
    from_disk = map_heads(folder, RELATIONS, **quiet)
    cols = ["layer", "head", "relation", "k", "n_pairs", "score", "suppression_score"]
    assert from_disk.scores["score"].gt(0).mean() > 0.5  # not a comparison of zeros
    pd.testing.assert_frame_equal(from_bridge.scores[cols], from_disk.scores[cols])
    pd.testing.assert_frame_equal(from_bridge.categories, from_disk.categories)
    source = from_bridge.manifest["model"]["source"]
    assert source["kind"] == "transformer-lens" and source["class"] == "TransformerBridge"
    assert source["weights"] == "raw (unprocessed)"
    # Salient operations read the same circuits (sigma is never zero on a random head).
    a = salient_operations(ModelCircuits.load(bridge), 1, 2, tokens=5)
    b = salient_operations(ModelCircuits.load(folder), 1, 2, tokens=5)
    assert list(a["token_id"]) == list(b["token_id"]) and a["sigma"].tolist() == b["sigma"].tolist()


def test_bridge_circuits_equal_the_hf_model_with_gqa() -> None:
    bridge, _ = boot("llama-gqa")
    mine, ref = (
        ModelCircuits.load(bridge),
        ModelCircuits.load(copy.deepcopy(tiny_model("llama-gqa"))),
    )
    for layer in range(ref.cfg.n_layers):
        a, b = mine.layer(layer), ref.layer(layer)
        assert torch.equal(a.W_V, b.W_V) and torch.equal(a.W_O, b.W_O)
    assert torch.equal(mine.W_E, ref.W_E) and torch.equal(mine.W_U, ref.W_U)


def test_processed_bridge_is_refused_with_the_fix() -> None:
    bridge, _ = boot("gpt2")
    bridge.enable_compatibility_mode(disable_warnings=True)  # fold_ln + centring, in place
    with pytest.raises(WeightSourceError, match="no_processing=True") as info:
        map_heads(bridge, ["copying"], progress=False, log=lambda _: None)
    assert len(str(info.value).splitlines()) == 1


def test_bridge_without_processing_keeps_hook_aliases_and_is_read() -> None:
    bridge, _ = boot("gpt2")
    bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)
    reread = ModelCircuits.load(bridge)
    ref = ModelCircuits.load(copy.deepcopy(tiny_model("gpt2")))
    assert torch.equal(reread.layer(0).W_V, ref.layer(0).W_V)
