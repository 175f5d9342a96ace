"""The plain per-head reference the fast path is tested against: the full row
x̃ · W_V · W_O · W_U for each source, then the target's rank in it. Slow by design."""

from __future__ import annotations

import torch

from headatlas.circuits import LayerOV, ModelCircuits, Norm
from headatlas.scoring.options import MapOptions


def reference_rows(
    circuits: ModelCircuits,
    layer: LayerOV,
    head: int,
    X: torch.Tensor,
    options: MapOptions,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Full logit rows x̃ · W_V · W_O · W_U [n, V] of one head for source embeddings ``X`` [n, d].

    The final norm is applied as a function (without its bias), not folded; the post-attention
    norm (Gemma 2/3) too.
    """
    X = X.to(dtype)
    u = layer.attn_norm(X) if options.pre_norm else X
    z = u @ layer.head_W_V(head).to(dtype)
    b_V = layer.head_b_V(head)
    if options.value_bias and b_V is not None:
        z = z + b_V.to(dtype)
    y = z @ layer.W_O[head].to(dtype)
    if options.output_bias and layer.b_O is not None:
        y = y + layer.b_O.to(dtype)
    if layer.out_norm is not None:
        n = layer.out_norm
        y = Norm(n.kind, _d(n.gain, dtype), None, n.eps)(y)
    if options.final_norm:
        n = circuits.final_norm()
        y = Norm(n.kind, _d(n.gain, dtype), None, n.eps)(y)
    rows = y @ circuits.W_U.to(dtype)
    if options.unembed_bias:
        b = circuits.unembed_bias()
        if b is not None:
            rows = rows + b.to(dtype)
    return rows


def reference_ranks(
    circuits: ModelCircuits,
    layer: LayerOV,
    head: int,
    X: torch.Tensor,
    targets: torch.Tensor,
    options: MapOptions,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) ranks of ``targets`` in each row: up = #others >= target, down = #others <
    target (the tie rule of the fast path)."""
    rows = reference_rows(circuits, layer, head, X, options, dtype)
    t = rows.gather(1, targets[:, None])
    up = (rows >= t).sum(1) - 1
    down = (rows < t).sum(1)
    return up, down


def reference_topk_scores(
    circuits: ModelCircuits,
    layer: LayerOV,
    head: int,
    X: torch.Tensor,
    targets: torch.Tensor,
    k: int,
    options: MapOptions,
    dtype: torch.dtype = torch.float32,
) -> tuple[float, float]:
    """(relation score, suppression score) of one head on one relation the plain way, as the
    method is usually written: the full rows, then ``torch.topk`` of M and of −M."""
    rows = reference_rows(circuits, layer, head, X, options, dtype)
    top = rows.topk(k, dim=1).indices
    bottom = (-rows).topk(k, dim=1).indices
    score = (top == targets[:, None]).any(1).double().mean().item()
    suppression = (bottom == targets[:, None]).any(1).double().mean().item()
    return score, suppression


def _d(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)
