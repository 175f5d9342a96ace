"""Every adapter proven against Hugging Face's own forward pass, on tiny random models.

For each family and variant, forward hooks capture what the model really computes and the
circuit view must reproduce it to 1e-5: the attention output from per-head z_h W_O^h + b_O,
the values from the pre-attention norm and W_V / b_V, the effective embedding from block 0's
MLP, the scaled embedding, the unembedding and the final norm.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from tiny_models import TINY_MODELS, save_tiny, tiny_model, token_batches

from headatlas.arch import SUPPORTED_MODEL_TYPES
from headatlas.arch.activations import ACTIVATIONS, activation
from headatlas.circuits import ModelCircuits
from headatlas.errors import UnsupportedArchitecture

ATOL = 1e-5


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert a.shape == b.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b.shape)}"
    err = (a - b).abs().max().item()
    assert err <= ATOL, f"{what}: max abs error {err:.3g}"


# How each family's modules are reached in Hugging Face, written out independently of the
# adapters' data so that a wrong path in headatlas.arch cannot agree with itself.
def _hf_layout(model: Any) -> dict[str, Any]:
    t = model.config.model_type
    if t == "gpt2":
        return dict(
            layers=model.transformer.h,
            attn_norm=lambda b: b.ln_1,
            v_module=lambda b: b.attn.c_attn,
            o_module=lambda b: b.attn.c_proj,
            post_attn_norm=None,
            mlp0=lambda b, x: b.mlp(b.ln_2(x)),
            embed=model.transformer.wte,
            final_norm=model.transformer.ln_f,
        )
    if t == "gpt_neox":
        return dict(
            layers=model.gpt_neox.layers,
            attn_norm=lambda b: b.input_layernorm,
            v_module=lambda b: b.attention.query_key_value,
            o_module=lambda b: b.attention.dense,
            post_attn_norm=None,
            mlp0=lambda b, x: b.mlp(b.post_attention_layernorm(x)),
            embed=model.gpt_neox.embed_in,
            final_norm=model.gpt_neox.final_layer_norm,
        )
    if t == "phi":
        return dict(
            layers=model.model.layers,
            attn_norm=lambda b: b.input_layernorm,
            v_module=lambda b: b.self_attn.v_proj,
            o_module=lambda b: b.self_attn.dense,
            post_attn_norm=None,
            mlp0=lambda b, x: b.mlp(b.input_layernorm(x)),  # parallel block, shared norm
            embed=model.model.embed_tokens,
            final_norm=model.model.final_layernorm,
        )
    gemma23 = t in ("gemma2", "gemma3_text")
    return dict(
        layers=model.model.layers,
        attn_norm=lambda b: b.input_layernorm,
        v_module=lambda b: b.self_attn.v_proj,
        o_module=lambda b: b.self_attn.o_proj,
        post_attn_norm=(lambda b: b.post_attention_layernorm) if gemma23 else None,
        mlp0=(
            (lambda b, x: b.post_feedforward_layernorm(b.mlp(b.pre_feedforward_layernorm(x))))
            if gemma23
            else (lambda b, x: b.mlp(b.post_attention_layernorm(x)))
        ),
        embed=model.model.embed_tokens,
        final_norm=model.model.norm,
    )


def _hf_values(model: Any, v_out: torch.Tensor) -> torch.Tensor:
    """The model's own value vectors [T, n_kv, d_head] from the hooked projection output."""
    c = model.config
    t = c.model_type
    n_heads = c.num_attention_heads
    d_head = getattr(c, "head_dim", None) or c.hidden_size // n_heads
    v_out = v_out[0]  # batch of one
    if t == "gpt2":  # c_attn output: q | k | v, heads contiguous inside each
        return v_out[:, 2 * c.hidden_size :].reshape(-1, n_heads, d_head)
    if t == "gpt_neox":  # per head (q, k, v)
        return v_out.reshape(-1, n_heads, 3 * d_head)[..., 2 * d_head :]
    return v_out.reshape(v_out.shape[0], -1, d_head)


def _capture(model: Any, ids: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Run the forward pass, recording per layer: attn-norm input/output, value projection
    output, o-proj input/output, post-attention norm output."""
    lay = _hf_layout(model)
    records: list[dict[str, torch.Tensor]] = [{} for _ in lay["layers"]]
    handles = []

    def keep(i: int, key_in: str | None, key_out: str | None) -> Any:
        def hook(_mod: Any, args: tuple[Any, ...], out: Any) -> None:
            if key_in:
                records[i][key_in] = args[0].detach().clone()
            if key_out:
                records[i][key_out] = (out[0] if isinstance(out, tuple) else out).detach().clone()

        return hook

    for i, block in enumerate(lay["layers"]):
        handles.append(lay["attn_norm"](block).register_forward_hook(keep(i, "resid", "normed")))
        handles.append(lay["v_module"](block).register_forward_hook(keep(i, None, "v_out")))
        handles.append(lay["o_module"](block).register_forward_hook(keep(i, "z", "attn_out")))
        if lay["post_attn_norm"] is not None:
            post = lay["post_attn_norm"](block)
            handles.append(post.register_forward_hook(keep(i, None, "post_attn")))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return records


VARIANTS = list(TINY_MODELS)


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request: pytest.FixtureRequest) -> tuple[str, Any, ModelCircuits]:
    model = tiny_model(request.param)
    return request.param, model, ModelCircuits.load(model)


def test_attention_output_is_sum_of_heads(variant: tuple[str, Any, ModelCircuits]) -> None:
    name, model, mc = variant
    for ids in token_batches(model.config.vocab_size):
        for i, rec in enumerate(_capture(model, ids)):
            ov = mc.layer(i)
            z = rec["z"][0]  # [T, n_heads * d_head]
            z_heads = z.reshape(z.shape[0], ov.n_heads, -1)  # [T, H, dh]
            out = torch.einsum("thk,hkd->td", z_heads, ov.W_O)
            if ov.b_O is not None:
                out = out + ov.b_O
            _close(out, rec["attn_out"][0], f"{name} layer {i} attention output")
            if ov.out_norm is not None:
                _close(ov.out_norm(out), rec["post_attn"][0], f"{name} layer {i} post-attn norm")


def test_values_from_norm_and_W_V(variant: tuple[str, Any, ModelCircuits]) -> None:
    name, model, mc = variant
    for ids in token_batches(model.config.vocab_size):
        for i, rec in enumerate(_capture(model, ids)):
            ov = mc.layer(i)
            normed = ov.attn_norm(rec["resid"][0])
            _close(normed, rec["normed"][0], f"{name} layer {i} attention norm")
            values = torch.einsum("td,gdk->tgk", rec["normed"][0], ov.W_V)
            if ov.b_V is not None:
                values = values + ov.b_V
            _close(values, _hf_values(model, rec["v_out"]), f"{name} layer {i} values")
            # Query head h reads KV group h // group_size, as HF's repeat_kv does.
            for h in range(ov.n_heads):
                assert torch.equal(ov.head_W_V(h), ov.W_V[h // ov.group_size])


def test_effective_embedding_embed_unembed_final_norm(
    variant: tuple[str, Any, ModelCircuits],
) -> None:
    name, model, mc = variant
    lay = _hf_layout(model)
    ids = token_batches(model.config.vocab_size)[0][0]
    with torch.no_grad():
        hf_embed = lay["embed"](ids)
        _close(mc.embed(ids), hf_embed, f"{name} embed")
        x = hf_embed + 0.5 * torch.randn(hf_embed.shape, generator=torch.Generator().manual_seed(0))
        _close(mc.effective_embedding(x), lay["mlp0"](lay["layers"][0], x), f"{name} MLP0")
        _close(mc.final_norm()(x), lay["final_norm"](x), f"{name} final norm")
    assert torch.equal(mc.W_U, model.get_output_embeddings().weight.detach().T)
    assert torch.equal(mc.W_E, model.get_input_embeddings().weight.detach())


def _same_circuits(a: ModelCircuits, b: ModelCircuits) -> None:
    assert a.cfg == b.cfg
    assert torch.equal(a.W_E, b.W_E) and torch.equal(a.W_U, b.W_U)
    x = torch.randn(3, a.cfg.d_model, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.effective_embedding(x), b.effective_embedding(x))
    assert torch.equal(a.final_norm()(x), b.final_norm()(x))
    for i in range(a.cfg.n_layers):
        la, lb = a.layer(i), b.layer(i)
        for field in ("W_V", "b_V", "W_O", "b_O"):
            ta, tb = getattr(la, field), getattr(lb, field)
            assert (ta is None) == (tb is None), field
            assert ta is None or torch.equal(ta, tb), f"layer {i} {field}"
        assert torch.equal(la.attn_norm(x), lb.attn_norm(x))


@pytest.mark.parametrize("name", VARIANTS)
def test_saved_folder_reads_the_same_circuits(name: str, tmp_path: Path) -> None:
    model = tiny_model(name)
    folder = save_tiny(model, tmp_path / name)
    _same_circuits(ModelCircuits.load(model), ModelCircuits.load(folder))


def test_gemma_legacy_gelu_config_means_tanh_gelu(tmp_path: Path) -> None:
    """Gemma 1 checkpoints say hidden_act "gelu" but mean the tanh approximation (as HF does)."""
    model = TINY_MODELS["gemma"]()
    with torch.no_grad():  # large pre-activations, where exact and tanh GELU differ
        model.model.layers[0].mlp.gate_proj.weight.mul_(10.0)
        model.model.layers[0].mlp.down_proj.weight.mul_(100.0)
    folder = save_tiny(model, tmp_path / "gemma")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_act"], cfg["hidden_activation"] = "gelu", None
    (folder / "config.json").write_text(json.dumps(cfg))
    mc = ModelCircuits.load(folder)
    block = model.model.layers[0]
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _close(mc.effective_embedding(x), block.mlp(block.post_attention_layernorm(x)), "MLP0")


def test_unknown_model_type_lists_supported(tmp_path: Path) -> None:
    folder = save_tiny(tiny_model("llama-gqa"), tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UnsupportedArchitecture) as err:
        ModelCircuits.load(folder)
    assert "'mamba'" in str(err.value)
    for t in SUPPORTED_MODEL_TYPES:
        assert t in str(err.value)


def test_multimodal_gemma3_checkpoint_reads_its_text_model(tmp_path: Path) -> None:
    """Gemma 3 multimodal checkpoints nest the text config and prefix the text weights."""
    from safetensors.torch import load_file, save_file

    model = tiny_model("gemma3")
    folder = save_tiny(model, tmp_path / "g3")
    shard = folder / "model.safetensors"
    state = load_file(shard)
    renamed = {
        (k if k.startswith("lm_head") else "model.language_model." + k[len("model.") :]): v
        for k, v in state.items()
    }
    save_file(renamed, shard)
    text = json.loads((folder / "config.json").read_text())
    wrapped = {"model_type": "gemma3", "text_config": text, "tie_word_embeddings": True}
    (folder / "config.json").write_text(json.dumps(wrapped))
    _same_circuits(ModelCircuits.load(model), ModelCircuits.load(folder))


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_equal_transformers_bit_for_bit(name: str) -> None:
    from transformers.activations import ACT2FN

    x = torch.linspace(-12, 12, 20001, dtype=torch.float32)
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(activation(name)(x.to(dtype)), ACT2FN[name](x.to(dtype))), name


def test_an_activation_not_written_out_comes_from_transformers() -> None:
    from transformers.activations import ACT2FN

    assert "relu2" not in ACTIVATIONS
    x = torch.linspace(-3, 3, 101)
    assert torch.equal(activation("relu2")(x), ACT2FN["relu2"](x))


def test_mapping_does_not_import_transformers_activations(tmp_path: Path) -> None:
    """The map's start-up: reading the circuits of a model folder imports no transformers
    activation module (about 2 s of imports on a small CPU)."""
    import subprocess

    save_tiny(tiny_model("gpt2"), tmp_path)
    code = (
        "import sys; from headatlas.circuits import ModelCircuits; "
        f"c = ModelCircuits.load({str(tmp_path)!r}); c.block0_mlp(); "
        "print('transformers.activations' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr[-500:]
