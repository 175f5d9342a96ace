"""The data that describes one model family: tensor names, fused layouts, norms, MLP, scaling.

An :class:`ArchSpec` is pure data. Paths are module paths of the Hugging Face ``*ForCausalLM``
model with ``{i}`` standing for the layer index; a tensor's name is its module path plus
``.weight`` / ``.bias``. The same paths name the modules that the validation hooks attach to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

NormKind = Literal["layernorm", "rmsnorm"]
QKVLayout = Literal["separate", "gpt2_fused", "neox_fused"]
"""How value weights are stored.

- ``separate``: ``v_proj`` Linear [n_kv*d_head, d];
- ``gpt2_fused``: Conv1D ``c_attn`` [d, 3d] (in, out), columns q | k | v, heads contiguous;
- ``neox_fused``: Linear ``query_key_value`` [3d, d], rows grouped per head as (q, k, v).
"""


@dataclass(frozen=True)
class NormSpec:
    """A normalisation layer: its kind and whether its gain is stored as ``w`` for ``(1 + w)``."""

    kind: NormKind
    plus_one: bool = False
    """Gemma stores RMSNorm gains as w and multiplies by (1 + w)."""


@dataclass(frozen=True)
class MLPSpec:
    """Block MLP: ``down(act(gate(x)) * up(x))`` when gated, else ``down(act(up(x)))``."""

    up: str
    down: str
    gate: str | None = None
    act_keys: tuple[str, ...] = ("hidden_act",)
    """Config keys tried in order for the activation name (an ``ACT2FN`` key)."""
    default_act: str = "gelu_new"
    act_renames: tuple[tuple[str, str], ...] = ()
    """(config value, activation meant) pairs for legacy names the family's HF code rewrites."""


@dataclass(frozen=True)
class ArchSpec:
    """One model family. Every attribute is a fact about the checkpoint layout."""

    family: str
    model_types: tuple[str, ...]
    """Hugging Face ``model_type`` values this spec reads."""
    embed: str
    """Token embedding module, weight [V, d]."""
    unembed: str
    """Output head module, weight [V, d] (Linear); may be tied to ``embed``."""
    final_norm: str
    layers: str
    """Module path of the layer list, e.g. ``model.layers``; layer i is ``{layers}.{i}``."""
    attn: str
    """Attention module, relative to a layer."""
    attn_norm: str
    """Pre-attention norm, relative to a layer."""
    mlp_norm: str
    """Norm whose output feeds the MLP, relative to a layer (the shared one in parallel blocks)."""
    qkv_layout: QKVLayout
    v_proj: str
    """Value projection (or the fused q/k/v projection), relative to the attention module."""
    o_proj: str
    """Output projection, relative to the attention module."""
    mlp: MLPSpec
    norm: NormSpec
    q_proj: str | None = None
    k_proj: str | None = None
    q_norm: str | None = None
    """QK-norm on queries over d_head (Gemma 3, Qwen3), relative to the attention module; read
    only where the checkpoint has it."""
    k_norm: str | None = None
    """QK-norm on keys, as ``q_norm``."""
    default_query_scalar: float | None = None
    """Gemma 2/3: the attention scale is query_pre_attn_scalar^-1/2 (this when the config does
    not say) instead of d_head^-1/2."""
    conv1d: bool = False
    """GPT-2's Conv1D stores weights as (in, out); Linear stores (out, in)."""
    attn_out_norm: str | None = None
    """Gemma 2/3: norm applied to the attention output before the residual add."""
    mlp_out_norm: str | None = None
    """Gemma 2/3: norm applied to the MLP output before the residual add."""
    embed_scale_sqrt_d: bool = False
    """Gemma multiplies token embeddings by sqrt(d_model)."""
    tied_default: bool = False
    """Whether the output head is tied to the embedding when the config does not say."""
    unembed_bias: bool = False
    """Phi's lm_head has a bias (off by default in scoring, see MapOptions)."""
    parallel_residual_key: str | None = None
    """Config key saying the block is parallel (attention and MLP read the same residual)."""
    parallel_default: bool = False
    n_layers_keys: tuple[str, ...] = ("num_hidden_layers", "n_layer")
    n_heads_keys: tuple[str, ...] = ("num_attention_heads", "n_head")
    n_kv_keys: tuple[str, ...] = ("num_key_value_heads",)
    d_model_keys: tuple[str, ...] = ("hidden_size", "n_embd")
    eps_keys: tuple[str, ...] = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon")
    softcap_key: str | None = None
    """Config key of the final logit soft-cap (monotone: top-k unchanged)."""
    unembed_aliases: tuple[str, ...] = ()
    """Other module names the output head has had (older checkpoints), tried after ``unembed``."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """Assumptions stated for users (shown by ``headatlas info``)."""

    def layer_path(self, i: int, rel: str) -> str:
        """Module path of ``rel`` inside layer ``i``."""
        return f"{self.layers}.{i}.{rel}"

    def attn_path(self, i: int, rel: str) -> str:
        """Module path of ``rel`` inside layer ``i``'s attention module."""
        return f"{self.layers}.{i}.{self.attn}.{rel}"
