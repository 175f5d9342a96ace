"""The ``forward`` recipe's preparation runs the model's body alone (no LM head): its inputs
are bit-equal to the whole ``*ForCausalLM``'s hidden states on the same batch, so the map's
scores do not change."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_model

from headatlas.circuits import ModelCircuits
from headatlas.scoring.recipe import forward_inputs


@pytest.mark.parametrize("name", ["llama-gqa", "gpt2", "gemma3", "pythia-parallel"])
def test_body_inputs_bit_equal_to_the_whole_model(name: str) -> None:
    model = tiny_model(name)
    mc = ModelCircuits.load(model)
    ids = torch.tensor([3, 7, 11, 200, 5])
    got = forward_inputs(mc, ids, model, start=2)
    inp = torch.stack([torch.full_like(ids, 2), ids], 1)
    with torch.no_grad():
        hs = model(input_ids=inp, output_hidden_states=True, use_cache=False).hidden_states
    for layer in range(mc.cfg.n_layers):
        assert torch.equal(got[layer], hs[layer][:, -1].float()), layer
    assert model.base_model is not model  # the body is a part of the model, not the model


@pytest.mark.parametrize("name", ["smollm2", "gemma3-270m"])
def test_start_token_from_gguf_metadata_is_the_tokenizers_bos(name: str) -> None:
    # "auto" reads the BOS from the file's header instead of building the tokenizer (4.9 s
    # for Gemma 3's 262k tokens from its cache, ~20 s without it): the same id.
    from headatlas.scoring.recipe import resolve_start, start_token

    mc = ModelCircuits.load(name)
    known, bos = mc.source.start_token_id()
    assert known and mc._tokenizer is None
    assert resolve_start(mc, "auto") == bos and mc._tokenizer is None  # nothing built
    assert bos == start_token(mc.tokenizer) is not None
