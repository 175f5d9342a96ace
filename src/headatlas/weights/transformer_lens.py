"""A TransformerLens model the user already holds, read by Hugging Face tensor names.

TransformerLens 4.x (``TransformerBridge``) wraps a ``transformers`` model and keeps its
parameters: each wrapped module's tensors sit one level down, under ``_original_component``, so
stripping that segment gives back the Hugging Face names and the very tensors the model
computes with. That is what this source reads.

Stated assumption (the reading used): the map reads the **raw** weights, the ones
``transformers`` loads. TransformerLens's weight processing (``enable_compatibility_mode()``
or ``process_weights()``: ``fold_ln``, ``center_writing_weights``, ``center_unembed``,
``fold_value_biases``) rewrites those tensors in place: folding the norm gains into ``W_V`` and
``W_U``, centring ``W_O`` and ``W_U`` and moving ``b_V`` into ``b_O`` changes the OV map the
recipe reads, so a processed bridge is refused with the fix (a fresh bridge, or
``enable_compatibility_mode(no_processing=True)``, which keeps the hook aliases).

TransformerLens 3.x ``HookedTransformer`` stores its own layout (``embed.W_E`` [V, d],
``blocks.{l}.attn.W_V`` [n_heads, d, d_head], ``W_O`` [n_heads, d_head, d], ``unembed.W_U``
[d, V] ...). :class:`HookedTransformerSource` translates it back to Hugging Face names for the
two layouts TransformerLens's own converters produce most: GPT-2 (LayerNorm, learned positions,
one MLP) and Llama (RMSNorm, rotary, gated MLP, GQA through ``_W_K``/``_W_V``). The same
assumption holds: ``from_pretrained`` processes weights by default (``normalization_type``
becomes ``LNPre``/``RMSPre``, norms folded away), so only an unprocessed model
(``from_pretrained_no_processing``, or one built from a config) is read.
"""

from __future__ import annotations

from typing import Any

import torch

from headatlas.errors import WeightSourceError
from headatlas.weights.inmemory import InMemorySource

WRAPPED = "._original_component"


def transformer_lens_source(model: Any) -> InMemorySource:
    """The source for a TransformerLens object: a bridge (4.x) or a HookedTransformer (3.x)."""
    if hasattr(model, "original_model"):
        return TransformerLensSource(model)
    if type(model).__name__ == "HookedTransformer":
        return HookedTransformerSource(model)
    raise WeightSourceError(
        f"TransformerLens {type(model).__name__} is not a model headatlas reads: pass a "
        "TransformerBridge, a HookedTransformer, or the Hugging Face model"
    )


def is_transformer_lens(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens object (bridge or HookedTransformer)."""
    return type(model).__module__.split(".")[0] == "transformer_lens"


def _version() -> str:
    import importlib.metadata as md

    try:
        return md.version("transformer-lens")
    except md.PackageNotFoundError:  # pragma: no cover - the object exists, so it is installed
        return "unknown"


class TransformerLensSource(InMemorySource):
    """A TransformerLens ``TransformerBridge``: the ``transformers`` model it wraps, with raw
    (unprocessed) weights, by Hugging Face names."""

    def __init__(self, bridge: Any, name: str | None = None):
        kind = type(bridge).__name__
        if not hasattr(bridge, "original_model"):
            raise WeightSourceError(
                f"TransformerLens {kind} is not read (TransformerLens 3.x layout): pass the "
                "Hugging Face model or its name, or a TransformerLens 4.x TransformerBridge"
            )
        if getattr(bridge, "_weights_processed", False):
            raise WeightSourceError(
                f"this {kind}'s weights were processed by TransformerLens (fold_ln / centring / "
                "folded value biases change the OV map): boot a fresh bridge and map it before "
                "enable_compatibility_mode(), or call enable_compatibility_mode(no_processing=True)"
            )
        hf = bridge.original_model
        cfg = getattr(bridge, "cfg", None)
        super().__init__(
            hf,
            tokenizer=getattr(bridge, "tokenizer", None),
            name=name or getattr(cfg, "model_name", None) or None,
        )
        self.kind = kind
        self._tensors = hf_named_tensors(hf)

    def describe(self) -> dict[str, Any]:
        """Manifest entry."""
        return {
            "kind": "transformer-lens",
            "name": self.name,
            "class": self.kind,
            "wrapped_class": type(self.model).__name__,
            "transformer_lens": _version(),
            "weights": "raw (unprocessed)",
        }


def hf_named_tensors(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The wrapped model's state dict under Hugging Face names (wrapper segments stripped).
    A name the bridge adds for its own split view (GPT-2's ``attn.q``) is kept too; it never
    shadows a Hugging Face name with a different tensor."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf.state_dict(keep_vars=False).items():
        name = key.replace(WRAPPED, "")
        if name in out and not torch.equal(out[name], value):
            raise WeightSourceError(
                f"TransformerLens bridge holds two different tensors named {name}: pass the "
                "Hugging Face model instead"
            )
        out[name] = value
    return out


def _flat_in(w: torch.Tensor) -> torch.Tensor:
    """[n, d_model, d_head] -> [n * d_head, d_model] (a ``nn.Linear`` weight into heads)."""
    n, d, h = w.shape
    return w.permute(0, 2, 1).reshape(n * h, d)


class HookedTransformerSource(InMemorySource):
    """A TransformerLens 3.x ``HookedTransformer`` (unprocessed), its tensors renamed and laid
    out as Hugging Face's GPT-2 or Llama holds them."""

    def __init__(self, model: Any, name: str | None = None):
        cfg = model.cfg
        norm = getattr(cfg, "normalization_type", None)
        if norm not in ("LN", "RMS"):
            raise WeightSourceError(
                f"this HookedTransformer's weights were processed by TransformerLens "
                f"(normalization_type {norm!r}: norms folded into the weights change the OV map): "
                "load it with HookedTransformer.from_pretrained_no_processing"
            )
        pos = getattr(cfg, "positional_embedding_type", "standard")
        gated = bool(getattr(cfg, "gated_mlp", False))
        if norm == "LN" and pos == "standard" and not gated:
            self.layout = "gpt2"
        elif norm == "RMS" and pos == "rotary" and gated:
            self.layout = "llama"
        else:
            raise WeightSourceError(
                f"HookedTransformer layout (normalization {norm}, positions {pos}, gated MLP "
                f"{gated}) is not read: GPT-2-like and Llama-like are; pass the Hugging Face model"
            )
        self.cfg = cfg
        super().__init__(
            model, tokenizer=getattr(model, "tokenizer", None), name=name or cfg.model_name
        )
        tl = {k: v.detach() for k, v in model.state_dict().items()}
        self._tensors = self._gpt2(tl) if self.layout == "gpt2" else self._llama(tl)

    def config(self) -> dict[str, Any]:
        """A Hugging Face config of the layout, from the TransformerLens config."""
        c = self.cfg
        if self.layout == "gpt2":
            return {
                "model_type": "gpt2",
                "architectures": ["GPT2LMHeadModel"],
                "n_embd": c.d_model,
                "n_layer": c.n_layers,
                "n_head": c.n_heads,
                "n_inner": c.d_mlp,
                "n_positions": c.n_ctx,
                "vocab_size": c.d_vocab,
                "activation_function": c.act_fn,
                "layer_norm_epsilon": c.eps,
                "tie_word_embeddings": False,
            }
        return {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": c.d_model,
            "num_hidden_layers": c.n_layers,
            "num_attention_heads": c.n_heads,
            "num_key_value_heads": getattr(c, "n_key_value_heads", None) or c.n_heads,
            "head_dim": c.d_head,
            "intermediate_size": c.d_mlp,
            "vocab_size": c.d_vocab,
            "hidden_act": c.act_fn,
            "rms_norm_eps": c.eps,
            "max_position_embeddings": c.n_ctx,
            "tie_word_embeddings": False,
        }

    def _gpt2(self, tl: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """GPT-2's Conv1D layout: ``c_attn`` [d, 3d] columns q | k | v, ``c_proj`` [d, d]."""
        out = {"transformer.wte.weight": tl["embed.W_E"], "lm_head.weight": tl["unembed.W_U"].T}
        if "pos_embed.W_pos" in tl:
            out["transformer.wpe.weight"] = tl["pos_embed.W_pos"]
        out["transformer.ln_f.weight"] = tl["ln_final.w"]
        out["transformer.ln_f.bias"] = tl["ln_final.b"]
        for layer in range(self.cfg.n_layers):
            b, h = f"blocks.{layer}.", f"transformer.h.{layer}."
            qkv = [tl[b + f"attn.W_{x}"] for x in "QKV"]  # each [n_heads, d, d_head]
            out[h + "attn.c_attn.weight"] = torch.cat([_flat_in(w).T for w in qkv], dim=1)
            out[h + "attn.c_attn.bias"] = torch.cat(
                [tl[b + f"attn.b_{x}"].reshape(-1) for x in "QKV"]
            )
            out[h + "attn.c_proj.weight"] = tl[b + "attn.W_O"].reshape(-1, self.cfg.d_model)
            out[h + "attn.c_proj.bias"] = tl[b + "attn.b_O"]
            for tl_name, hf_name in (("ln1", "ln_1"), ("ln2", "ln_2")):
                out[h + f"{hf_name}.weight"] = tl[b + f"{tl_name}.w"]
                out[h + f"{hf_name}.bias"] = tl[b + f"{tl_name}.b"]
            out[h + "mlp.c_fc.weight"] = tl[b + "mlp.W_in"]
            out[h + "mlp.c_fc.bias"] = tl[b + "mlp.b_in"]
            out[h + "mlp.c_proj.weight"] = tl[b + "mlp.W_out"]
            out[h + "mlp.c_proj.bias"] = tl[b + "mlp.b_out"]
        return out

    def _llama(self, tl: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Llama's Linear layout: ``q/k/v_proj`` [heads * d_head, d], ``o_proj`` [d, heads *
        d_head]; GQA keys and values are TransformerLens's ``_W_K`` / ``_W_V`` [n_kv, d, dh]."""
        out = {
            "model.embed_tokens.weight": tl["embed.W_E"],
            "model.norm.weight": tl["ln_final.w"],
            "lm_head.weight": tl["unembed.W_U"].T,
        }
        for layer in range(self.cfg.n_layers):
            b, h = f"blocks.{layer}.", f"model.layers.{layer}."
            for x in "QKV":
                grouped = b + f"attn._W_{x}"  # GQA: per KV head, [n_kv, d, d_head]
                w = tl[grouped] if grouped in tl else tl[b + f"attn.W_{x}"]
                out[h + f"self_attn.{x.lower()}_proj.weight"] = _flat_in(w)
            out[h + "self_attn.o_proj.weight"] = tl[b + "attn.W_O"].reshape(-1, self.cfg.d_model).T
            out[h + "input_layernorm.weight"] = tl[b + "ln1.w"]
            out[h + "post_attention_layernorm.weight"] = tl[b + "ln2.w"]
            out[h + "mlp.gate_proj.weight"] = tl[b + "mlp.W_gate"].T
            out[h + "mlp.up_proj.weight"] = tl[b + "mlp.W_in"].T
            out[h + "mlp.down_proj.weight"] = tl[b + "mlp.W_out"].T
        return out

    def describe(self) -> dict[str, Any]:
        """Manifest entry."""
        return {
            "kind": "transformer-lens",
            "name": self.name,
            "class": "HookedTransformer",
            "layout": self.layout,
            "transformer_lens": _version(),
            "weights": "raw (unprocessed)",
        }
