"""The QK circuit of each layer, read from weights alone: where a head attends.

For every query head h and the KV group g = h // group_size it reads:

    q = qnorm(norm1(x) · W_Q^h + b_Q^h)        [d_head]   (qnorm: Gemma 3, Qwen3; else none)
    k = knorm(norm1(x) · W_K^g + b_K^g)        [d_head]
    logit(query at m, key at n) = cap(scale · rot_m(q) · rot_n(k))

with ``scale`` = d_head^-1/2 (Gemma 2/3: query_pre_attn_scalar^-1/2), ``cap`` Gemma 2's
attention soft-cap c·tanh(s/c) (monotone), and ``rot`` the rotary embedding on the first
``rot_dims`` dimensions of a head (rotate-half layout, as every supported family stores it
after reading; GGUF Q/K rows are un-permuted by the weights reader). rot_m(q)·rot_n(k) depends
only on the distance δ = m − n: it equals q · R(−δ) k, see :meth:`Rotary.key_map`.

Q and K stay factored per head ([d, d_head] each): no d × d or V × V matrix is formed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from headatlas.circuits import ModelCircuits, Norm
from headatlas.errors import ShapeMismatchError, UnsupportedArchitecture


@dataclass
class Rotary:
    """The rotary embedding of one layer: frequencies of the ``rot_dims // 2`` pairs
    (j, j + rot_dims/2) of a head's first ``rot_dims`` dimensions. ``rot_dims`` 0: none."""

    inv_freq: torch.Tensor  # [rot_dims // 2], float64
    rot_dims: int

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x [..., n, d_head] rotated to ``positions`` [n] (as Hugging Face's apply_rotary)."""
        if self.rot_dims == 0:
            return x
        r = self.rot_dims
        ang = positions.to(torch.float64)[:, None] * self.inv_freq.to(positions.device)[None]
        cos, sin = ang.cos().to(x), ang.sin().to(x)
        a, b, rest = x[..., : r // 2], x[..., r // 2 : r], x[..., r:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], -1)

    def key_map(self, offsets: torch.Tensor, slow_only: float | None = None) -> torch.Tensor:
        """Per-pair (cos, sin) weights [2, rot_dims // 2] that turn a key into the average over
        ``offsets`` δ of R(−δ)·k, so that q · map(k) = mean_δ rot_{n+δ}(q) · rot_n(k).

        ``slow_only``: instead keep (cos 1, sin 0) for pairs whose angle at the largest offset
        is below this many radians and drop the others (weights 0)."""
        if slow_only is not None:
            keep = (self.inv_freq * float(offsets.max()) < slow_only).to(torch.float64)
            return torch.stack([keep, torch.zeros_like(keep)])
        ang = offsets.to(torch.float64)[:, None] * self.inv_freq[None]
        return torch.stack([ang.cos().mean(0), ang.sin().mean(0)])

    def apply_key_map(self, k: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Keys k [..., d_head] through :meth:`key_map`'s weights:
        (c·k_a + s·k_b, c·k_b − s·k_a) on each pair, the other dimensions as they are."""
        if self.rot_dims == 0:
            return k
        r = self.rot_dims
        c, s = weights[0].to(k), weights[1].to(k)
        a, b, rest = k[..., : r // 2], k[..., r // 2 : r], k[..., r:]
        return torch.cat([c * a + s * b, c * b - s * a, rest], -1)


@dataclass
class LayerQK:
    """One layer's QK factors. Query head h reads KV group ``h // group_size``."""

    layer: int
    W_Q: torch.Tensor  # [n_heads, d, d_head]
    b_Q: torch.Tensor | None  # [n_heads, d_head]
    W_K: torch.Tensor  # [n_kv, d, d_head]
    b_K: torch.Tensor | None  # [n_kv, d_head]
    attn_norm: Norm
    q_norm: Norm | None
    k_norm: Norm | None
    group_size: int
    scale: float
    softcap: float | None
    rotary: Rotary

    @property
    def n_heads(self) -> int:
        """Query heads."""
        return int(self.W_Q.shape[0])

    def queries(self, X: torch.Tensor, pre_norm: bool = True) -> torch.Tensor:
        """Every query head's query vectors of inputs X [n, d], before rotation: [H, n, d_head]."""
        u = self.attn_norm(X) if pre_norm else X
        q = torch.einsum("nd,hde->hne", u, self.W_Q.to(u))
        if self.b_Q is not None:
            q = q + self.b_Q.to(u)[:, None]
        return self.q_norm(q) if self.q_norm is not None else q

    def keys(self, X: torch.Tensor, pre_norm: bool = True) -> torch.Tensor:
        """Key vectors of inputs X [n, d] for every query head (its KV group's), before
        rotation: [H, n, d_head]."""
        u = self.attn_norm(X) if pre_norm else X
        k = torch.einsum("nd,gde->gne", u, self.W_K.to(u))
        if self.b_K is not None:
            k = k + self.b_K.to(u)[:, None]
        if self.k_norm is not None:
            k = self.k_norm(k)
        return k.repeat_interleave(self.group_size, 0)

    def cap(self, logits: torch.Tensor) -> torch.Tensor:
        """The attention soft-cap c·tanh(s/c) where the model has one (monotone)."""
        if self.softcap is None:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap

    def to(self, dtype: torch.dtype) -> LayerQK:
        """A copy with every factor and norm in ``dtype``."""

        def m(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(dtype)

        def n(x: Norm | None) -> Norm | None:
            return None if x is None else x.to("cpu", dtype)

        return LayerQK(self.layer, self.W_Q.to(dtype), m(self.b_Q), self.W_K.to(dtype),
                       m(self.b_K), self.attn_norm.to("cpu", dtype), n(self.q_norm),
                       n(self.k_norm), self.group_size, self.scale, self.softcap,
                       self.rotary)  # fmt: skip


def _rope_parameters(config: dict[str, Any], layer_type: str | None) -> dict[str, Any]:
    """The rope settings of one layer: transformers >= 5 keep them in ``rope_parameters``
    (per layer type where layers differ), older configs at the top level."""
    rp = config.get("rope_parameters")
    if isinstance(rp, dict) and layer_type is not None and isinstance(rp.get(layer_type), dict):
        return dict(rp[layer_type])
    if isinstance(rp, dict) and "rope_theta" in rp:
        return dict(rp)
    out: dict[str, Any] = {}
    theta = config.get("rope_theta") or config.get("rotary_emb_base")
    if layer_type == "sliding_attention" and config.get("rope_local_base_freq"):
        theta = config["rope_local_base_freq"]
    if theta is not None:
        out["rope_theta"] = theta
    factor = config.get("partial_rotary_factor") or config.get("rotary_pct")
    if factor is not None:
        out["partial_rotary_factor"] = factor
    scaling = config.get("rope_scaling")
    if isinstance(scaling, dict):
        out.update({k: v for k, v in scaling.items() if k not in out})
        out["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
    return out


_PARTIAL_DEFAULT = {"gpt_neox": 0.25, "phi": 0.5}
"""transformers' defaults for the share of a head that is rotated (1 for other families)."""


def layer_type(circuits: ModelCircuits, layer: int) -> str | None:
    """``sliding_attention`` / ``full_attention`` where the config says (Gemma 2/3), else None.
    Gemma 3 configs without ``layer_types`` follow ``sliding_window_pattern`` (default 6)."""
    config = circuits.raw_config
    types = config.get("layer_types")
    if isinstance(types, list) and layer < len(types):
        return str(types[layer])
    if circuits.cfg.model_type in ("gemma3_text", "gemma3"):
        pattern = int(config.get("sliding_window_pattern") or 6)
        return "full_attention" if (layer + 1) % pattern == 0 else "sliding_attention"
    return None


def rotary_of(circuits: ModelCircuits, layer: int) -> Rotary:
    """The rotary embedding of a layer from the config (none for GPT-2's learned positions).
    Rope types other than default and linear are read with default frequencies."""
    dh = circuits.cfg.d_head
    if circuits.spec.family == "gpt2":
        return Rotary(torch.zeros(0, dtype=torch.float64), 0)
    config = circuits.raw_config
    kind = layer_type(circuits, layer)
    rp = _rope_parameters(config, kind)
    theta = float(rp.get("rope_theta") or 10000.0)
    if kind == "sliding_attention" and "rope_parameters" not in config:
        theta = float(config.get("rope_local_base_freq") or 10000.0)
    elif "rope_theta" not in rp and circuits.cfg.model_type in ("gemma3_text", "gemma3"):
        theta = 1_000_000.0
    factor = float(rp.get("partial_rotary_factor") or _PARTIAL_DEFAULT.get(circuits.spec.family, 1))
    rot = int(dh * factor)
    rot -= rot % 2
    inv = 1.0 / theta ** (torch.arange(0, rot, 2, dtype=torch.float64) / rot)
    if rp.get("rope_type") == "linear" and rp.get("factor"):
        inv = inv / float(rp["factor"])
    return Rotary(inv, rot)


def mean_position(circuits: ModelCircuits, max_offset: int) -> torch.Tensor | None:
    """The mean of the learned absolute position embeddings over positions 1..``max_offset``
    [d] (GPT-2's ``wpe``), or None for a model without them (rotary or none). A static reading
    has no positions; this is what a token at an unknown later position carries on average."""
    if circuits.spec.family != "gpt2":
        return None
    wpe = circuits.tensor("transformer.wpe", "weight", required=False)
    if wpe is None:
        return None
    return wpe[1 : max_offset + 1].mean(0)


def attention_scale(circuits: ModelCircuits) -> float:
    """The factor on q·k: query_pre_attn_scalar^-1/2 (Gemma 2/3), else d_head^-1/2."""
    scalar = circuits.raw_config.get("query_pre_attn_scalar") or circuits.spec.default_query_scalar
    return 1.0 / math.sqrt(float(scalar if scalar else circuits.cfg.d_head))


def read_qk(circuits: ModelCircuits, layer: int) -> LayerQK:
    """Read one layer's QK factors (Q/K weights and biases, pre-norm, QK-norms, rotary,
    scale, soft-cap). Reads only the Q and K parts of fused projections."""
    c, s = circuits.cfg, circuits.spec
    d, dh, nh, nkv = c.d_model, c.d_head, c.n_heads, c.n_kv_heads
    if circuits.raw_config.get("qk_layernorm"):
        raise UnsupportedArchitecture(
            f"{circuits.source.name}: Phi's qk_layernorm is not read by the QK circuit; map "
            "without --qk"
        )
    bq: torch.Tensor | None
    bk: torch.Tensor | None
    if s.qkv_layout == "separate":
        assert s.q_proj is not None and s.k_proj is not None
        q_mod, k_mod = s.attn_path(layer, s.q_proj), s.attn_path(layer, s.k_proj)
        wq = circuits._linear(q_mod, nh * dh, d).reshape(nh, dh, d)
        wk = circuits._linear(k_mod, nkv * dh, d).reshape(nkv, dh, d)
        bq = circuits.tensor(q_mod, "bias", required=False)
        bk = circuits.tensor(k_mod, "bias", required=False)
    elif s.qkv_layout == "gpt2_fused":  # rows q | k | v
        mod = s.attn_path(layer, s.v_proj)
        q, k = (
            circuits._part(mod, "weight", i * nh * dh, (i + 1) * nh * dh, rows=d) for i in (0, 1)
        )
        assert q is not None and k is not None
        wq, wk = q.reshape(nh, dh, d), k.reshape(nh, dh, d)
        bq, bk = (circuits._part(mod, "bias", i * nh * dh, (i + 1) * nh * dh) for i in (0, 1))
    else:  # neox_fused: rows grouped per head as (q, k, v)
        mod = s.attn_path(layer, s.v_proj)
        w = circuits._linear(mod, 3 * nh * dh, d).reshape(nh, 3, dh, d)
        wq, wk = w[:, 0], w[:, 1]
        b = circuits.tensor(mod, "bias", required=False)
        bq = None if b is None else b.reshape(nh, 3, dh)[:, 0]
        bk = None if b is None else b.reshape(nh, 3, dh)[:, 1]
    if bq is not None and bq.numel() != wq.shape[0] * dh:
        raise ShapeMismatchError(f"{circuits.source.name}: query bias of layer {layer} has "
                                 f"{bq.numel()} values, not {wq.shape[0] * dh}")  # fmt: skip
    return LayerQK(
        layer=layer,
        W_Q=wq.transpose(1, 2).contiguous(),
        b_Q=None if bq is None else bq.reshape(-1, dh).contiguous(),
        W_K=wk.transpose(1, 2).contiguous(),
        b_K=None if bk is None else bk.reshape(-1, dh).contiguous(),
        attn_norm=circuits.norm(s.layer_path(layer, s.attn_norm)),
        q_norm=_qk_norm(circuits, layer, s.q_norm),
        k_norm=_qk_norm(circuits, layer, s.k_norm),
        group_size=wq.shape[0] // wk.shape[0],
        scale=attention_scale(circuits),
        softcap=_softcap(circuits),
        rotary=rotary_of(circuits, layer),
    )


def _qk_norm(circuits: ModelCircuits, layer: int, rel: str | None) -> Norm | None:
    if rel is None:
        return None
    path = circuits.spec.attn_path(layer, rel)
    if circuits._name(path, "weight", required=False) is None:
        return None
    return circuits.norm(path)


def _softcap(circuits: ModelCircuits) -> float | None:
    cap = circuits.raw_config.get("attn_logit_softcapping")
    return float(cap) if cap else None
