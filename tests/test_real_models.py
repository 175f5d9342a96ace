"""The packaged real models (SmolLM2-135M-Instruct and Gemma 3 270M GGUFs): the circuit view
equals, bit for bit, what ``transformers`` loads from the same file."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from headatlas.circuits import ModelCircuits
from headatlas.weights import open_source

pytestmark = pytest.mark.real


@pytest.fixture(scope="module", params=["smollm2", "gemma3-270m"])
def pair(request: pytest.FixtureRequest) -> tuple[ModelCircuits, Any]:
    """(our circuits, the HF model transformers loads from the same GGUF), once per module."""
    from transformers import AutoModelForCausalLM

    src = open_source(request.param)
    path = src.path  # type: ignore[attr-defined]
    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return ModelCircuits(src), hf.eval()


def _sample_layers(n: int) -> list[int]:
    return [0, n // 2, n - 1]


def test_config_matches(pair: tuple[ModelCircuits, Any]) -> None:
    mc, hf = pair
    c = hf.config
    assert (mc.cfg.n_layers, mc.cfg.n_heads, mc.cfg.n_kv_heads) == (
        c.num_hidden_layers,
        c.num_attention_heads,
        c.num_key_value_heads,
    )
    assert (mc.cfg.d_model, mc.cfg.d_head, mc.cfg.vocab_size) == (
        c.hidden_size,
        c.head_dim,
        c.vocab_size,
    )
    assert mc.cfg.model_type == c.model_type


def test_ov_factors_bit_for_bit(pair: tuple[ModelCircuits, Any]) -> None:
    mc, hf = pair
    c = mc.cfg
    for i in _sample_layers(c.n_layers):
        ov = mc.layer(i)
        block = hf.model.layers[i]
        v = block.self_attn.v_proj.weight.detach()  # [n_kv * dh, d]
        o = block.self_attn.o_proj.weight.detach()  # [d, n_heads * dh]
        assert torch.equal(ov.W_V, v.reshape(c.n_kv_heads, c.d_head, c.d_model).transpose(1, 2))
        assert torch.equal(ov.W_O, o.T.reshape(c.n_heads, c.d_head, c.d_model))
        x = torch.randn(4, c.d_model, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            torch.testing.assert_close(ov.attn_norm(x), block.input_layernorm(x), rtol=0, atol=1e-5)
            if ov.out_norm is not None:
                ref = block.post_attention_layernorm(x)
                torch.testing.assert_close(ov.out_norm(x), ref, rtol=0, atol=1e-5)


def test_embeddings_bit_for_bit(pair: tuple[ModelCircuits, Any]) -> None:
    mc, hf = pair
    assert torch.equal(mc.W_E, hf.model.embed_tokens.weight.detach())
    assert torch.equal(mc.W_U, hf.lm_head.weight.detach().T)
    ids = torch.arange(0, mc.cfg.vocab_size, 997)
    with torch.no_grad():
        assert torch.equal(mc.embed(ids), hf.model.embed_tokens(ids))


def test_effective_embedding_matches_block0_mlp(pair: tuple[ModelCircuits, Any]) -> None:
    mc, hf = pair
    block = hf.model.layers[0]
    ids = torch.arange(0, mc.cfg.vocab_size, 4099)
    with torch.no_grad():
        x = hf.model.embed_tokens(ids)
        if hasattr(block, "pre_feedforward_layernorm"):  # Gemma 3
            ref = block.post_feedforward_layernorm(block.mlp(block.pre_feedforward_layernorm(x)))
        else:
            ref = block.mlp(block.post_attention_layernorm(x))
        torch.testing.assert_close(mc.effective_embedding(x), ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(mc.final_norm()(x), hf.model.norm(x), rtol=0, atol=1e-5)
