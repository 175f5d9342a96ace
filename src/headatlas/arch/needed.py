"""Which tensors a pass over every head reads, by module path (checkpoint naming)."""

from __future__ import annotations

from typing import Any

from headatlas.arch.config import resolve_config
from headatlas.arch.spec import ArchSpec


def needed_modules(spec: ArchSpec, config: dict[str, Any]) -> list[str]:
    """Module paths whose weight (and bias) the circuits read: embeddings, unembedding, final
    norm, block 0's MLP and norms, and every layer's norms, value and output projections."""
    cfg = resolve_config(spec, config)
    mods = [spec.embed, spec.unembed, *spec.unembed_aliases, spec.final_norm]
    mlp = spec.mlp
    mods += [spec.layer_path(0, m) for m in (mlp.up, mlp.down, mlp.gate, spec.mlp_norm) if m]
    if spec.mlp_out_norm:
        mods.append(spec.layer_path(0, spec.mlp_out_norm))
    for i in range(cfg.n_layers):
        mods += [spec.layer_path(i, spec.attn_norm), spec.attn_path(i, spec.v_proj)]
        mods.append(spec.attn_path(i, spec.o_proj))
        if spec.attn_out_norm:
            mods.append(spec.layer_path(i, spec.attn_out_norm))
    return mods


def needed_tensors(spec: ArchSpec, config: dict[str, Any]) -> list[str]:
    """Tensor names (weight and bias) of :func:`needed_modules`."""
    return [f"{m}.{s}" for m in needed_modules(spec, config) for s in ("weight", "bias")]
