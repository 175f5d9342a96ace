"""Tiny random Hugging Face ``*ForCausalLM`` models, one per supported family and variant.

Seeded, float32, eval mode. Norm gains and biases are randomised (Hugging Face initialises
gains at 1 and biases at 0, which would let a wrong norm or a dropped bias pass unnoticed).
Plain functions: tests import them with ``from tiny_models import ...``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

GPT2_VOCAB = 50257
SMALL_VOCAB = 512
SENTENCES = (
    "The capital of France is Paris, and the capital of Italy is Rome.",
    "Water boils at one hundred degrees Celsius.",
    " she went to the market to buy apples",
)


@functools.cache
def gpt2_tokenizer() -> Any:
    """The real GPT-2 tokenizer, built offline (cached per test session)."""
    from headatlas.weights.packaged import gpt2_tokenizer as load

    return load()


def token_batches(vocab_size: int) -> list[torch.Tensor]:
    """A few real token sequences ([1, T] each); ids folded into small vocabularies."""
    tok = gpt2_tokenizer()
    assert len(tok) == GPT2_VOCAB, "the GPT-2 tokenizer files did not load"
    return [torch.tensor([tok.encode(s)]) % vocab_size for s in SENTENCES]


def randomise_norms_and_biases(model: torch.nn.Module, seed: int, plus_one: bool = False) -> None:
    """Give every norm a non-trivial gain and bias, and every bias a nonzero value.

    ``plus_one``: the model stores RMSNorm gains as ``w`` for ``(1 + w)`` (Gemma), so the raw
    ``w`` is perturbed around 0 rather than 1.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            is_norm = any(k in name.lower() for k in ("norm", ".ln_"))
            if p.ndim == 1 and is_norm and leaf == "weight":
                centre = 0.0 if plus_one else 1.0
                p.copy_(centre + 0.3 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1 and leaf == "bias":
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def _finish(model: torch.nn.Module, seed: int, plus_one: bool = False) -> torch.nn.Module:
    randomise_norms_and_biases(model, seed + 1, plus_one)
    return model.float().eval()


def _build(config_cls: Any, model_cls: Any, seed: int, plus_one: bool = False, **kw: Any) -> Any:
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kw))
    return _finish(model, seed, plus_one)


_COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)


def gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    return _build(
        GPT2Config, GPT2LMHeadModel, 1, vocab_size=GPT2_VOCAB, n_embd=64, n_layer=2, n_head=4,
        n_positions=128,
    )  # fmt: skip


def pythia(parallel: bool) -> Any:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    return _build(
        GPTNeoXConfig, GPTNeoXForCausalLM, 2 + parallel, vocab_size=GPT2_VOCAB, **_COMMON,
        use_parallel_residual=parallel, rotary_pct=0.25, max_position_embeddings=128,
    )  # fmt: skip


def phi() -> Any:
    from transformers import PhiConfig, PhiForCausalLM

    return _build(
        PhiConfig, PhiForCausalLM, 4, vocab_size=GPT2_VOCAB, **_COMMON,
        partial_rotary_factor=0.5, max_position_embeddings=128,
    )  # fmt: skip


def llama(n_kv: int, bias: bool = False) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    return _build(
        LlamaConfig, LlamaForCausalLM, 10 + n_kv, vocab_size=SMALL_VOCAB, **_COMMON,
        num_key_value_heads=n_kv, attention_bias=bias, mlp_bias=bias, max_position_embeddings=128,
    )  # fmt: skip


def mistral() -> Any:
    from transformers import MistralConfig, MistralForCausalLM

    return _build(
        MistralConfig, MistralForCausalLM, 20, vocab_size=SMALL_VOCAB, **_COMMON,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
    )  # fmt: skip


def qwen2() -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _build(
        Qwen2Config, Qwen2ForCausalLM, 21, vocab_size=SMALL_VOCAB, **_COMMON,
        num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=128,
    )  # fmt: skip


def qwen3() -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    # head_dim deliberately not d_model / n_heads
    return _build(
        Qwen3Config, Qwen3ForCausalLM, 22, vocab_size=SMALL_VOCAB, **_COMMON,
        num_key_value_heads=2, head_dim=24, max_position_embeddings=128,
    )  # fmt: skip


def gemma() -> Any:
    from transformers import GemmaConfig, GemmaForCausalLM

    return _build(
        GemmaConfig, GemmaForCausalLM, 30, plus_one=True, vocab_size=SMALL_VOCAB, **_COMMON,
        num_key_value_heads=1, head_dim=32, max_position_embeddings=128,
    )  # fmt: skip


def gemma2() -> Any:
    from transformers import Gemma2Config, Gemma2ForCausalLM

    return _build(
        Gemma2Config, Gemma2ForCausalLM, 31, plus_one=True, vocab_size=SMALL_VOCAB, **_COMMON,
        num_key_value_heads=2, head_dim=24, max_position_embeddings=128, sliding_window=4,
        final_logit_softcapping=30.0, attn_logit_softcapping=50.0, query_pre_attn_scalar=24,
    )  # fmt: skip


def gemma3() -> Any:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    return _build(
        Gemma3TextConfig, Gemma3ForCausalLM, 32, plus_one=True, vocab_size=SMALL_VOCAB,
        **_COMMON, num_key_value_heads=2, head_dim=24, max_position_embeddings=128,
        sliding_window=4, query_pre_attn_scalar=24, layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip


TINY_MODELS: dict[str, Callable[[], Any]] = {
    "gpt2": gpt2,
    "pythia-parallel": lambda: pythia(True),
    "pythia-sequential": lambda: pythia(False),
    "phi": phi,
    "llama-mha-bias": lambda: llama(4, bias=True),
    "llama-gqa": lambda: llama(2),
    "llama-mqa": lambda: llama(1),
    "mistral": mistral,
    "qwen2": qwen2,
    "qwen3": qwen3,
    "gemma": gemma,
    "gemma2": gemma2,
    "gemma3": gemma3,
}
"""Variant name -> builder of a fresh tiny model."""


@functools.cache
def tiny_model(name: str) -> Any:
    """A cached tiny model by variant name (do not mutate it)."""
    return TINY_MODELS[name]()


def save_tiny(model: Any, folder: Path, max_shard_size: str | None = None) -> Path:
    """``save_pretrained`` a model (safetensors) into ``folder`` and return it."""
    kwargs = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(folder, **kwargs)
    return folder
