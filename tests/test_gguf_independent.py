"""The GGUF reader against files written by llama.cpp's own converter (one per family), not by
this project's inverse conversion: what headatlas reads from the GGUF must equal what it reads
from the Hugging Face model the file was converted from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from independent_gguf import FAMILIES, convert_families

from headatlas.circuits import ModelCircuits, Norm


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    try:
        return convert_families(tmp_path_factory.mktemp("llama-cpp"))
    except RuntimeError as exc:  # no package registry: nothing independent to test against
        pytest.skip(str(exc))


def _close(a: torch.Tensor | None, b: torch.Tensor | None, what: str) -> None:
    assert (a is None) == (b is None), what
    if a is not None and b is not None:
        assert a.shape == b.shape, (what, a.shape, b.shape)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=what)


def _norms(a: Norm | None, b: Norm | None, what: str) -> None:
    assert (a is None) == (b is None), what
    if a is not None and b is not None:
        assert a.kind == b.kind, what
        _close(
            a.scale(8) if a.gain is None else a.gain, b.scale(8) if b.gain is None else b.gain, what
        )
        _close(a.bias, b.bias, f"{what} bias")
        assert a.eps == pytest.approx(b.eps), what


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_llama_cpp_gguf_reads_like_the_hf_model(
    arch: str, converted: tuple[dict[str, Any], str]
) -> None:
    files, failures = converted
    assert arch in files, f"llama.cpp could not convert {arch}: {failures}"
    model, path = files[arch]
    g, h = ModelCircuits.load(Path(path)), ModelCircuits.load(model)
    assert g.spec.family == h.spec.family
    for field in ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_head", "vocab_size", "tied"):
        assert getattr(g.cfg, field) == getattr(h.cfg, field), field
    n = h.cfg.vocab_size
    _close(g.W_E[:n], h.W_E[:n], "W_E")
    _close(g.W_U[:, :n], h.W_U[:, :n], "W_U")
    _norms(g.final_norm(), h.final_norm(), "final norm")
    gn, gm, go = g.block0_mlp()
    hn, hm, ho = h.block0_mlp()
    _norms(gn, hn, "block-0 MLP norm")
    _norms(go, ho, "block-0 post-MLP norm")
    for name in ("up_w", "up_b", "down_w", "down_b", "gate_w", "gate_b"):
        _close(getattr(gm, name), getattr(hm, name), f"block-0 MLP {name}")
    for i in range(h.cfg.n_layers):
        a, b = g.layer(i), h.layer(i)
        for name in ("W_V", "b_V", "W_O", "b_O"):
            _close(getattr(a, name), getattr(b, name), f"layer {i} {name}")
        _norms(a.attn_norm, b.attn_norm, f"layer {i} attention norm")
        _norms(a.out_norm, b.out_norm, f"layer {i} post-attention norm")


def _assert_same_model(ours: Any, ref: Any) -> None:
    """Every parameter and the logits of a few tokens equal, bit for bit."""
    a, b = ours.state_dict(), ref.state_dict()
    assert a.keys() == b.keys() and type(ours) is type(ref)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, ref(ids).logits)


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_inference_model_built_from_our_reading_equals_transformers_loading(
    arch: str, converted: tuple[dict[str, Any], str]
) -> None:
    """Where transformers loads the file, the model built from headatlas's reading is the same
    model (every parameter, the logits); where transformers cannot, it steps aside too."""
    from transformers import AutoModelForCausalLM

    from headatlas.weights.hf_model import _from_gguf

    files, failures = converted
    assert arch in files, f"llama.cpp could not convert {arch}: {failures}"
    path = Path(files[arch][1])
    try:
        ref = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        ).eval()
    except (ValueError, RuntimeError, KeyError, OSError):
        ref = None
    ours = _from_gguf(path)
    assert (ours is None) == (ref is None), arch
    if ours is not None and ref is not None:
        _assert_same_model(ours, ref)


def test_smollm2_inference_model_equals_transformers_gguf_loading() -> None:
    from transformers import AutoModelForCausalLM

    from headatlas.weights import open_source
    from headatlas.weights.hf_model import _from_gguf, load_causal_lm

    path = open_source("smollm2").path
    ref = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    ours = _from_gguf(path)
    assert ours is not None
    _assert_same_model(ours, ref.eval())
    _assert_same_model(load_causal_lm("smollm2"), ref)
