"""The plain per-head reference the factored readout is tested against: the full row
x̃ · W_V · W_O · W_U for each source, the norms applied as functions and nothing folded, then
the target's rank in it; and the salient operations computed the same plain way. Slow by
design: the only unfactored path (:mod:`headatlas.scoring.readout` is the factored one)."""

from __future__ import annotations

import torch

from headatlas.circuits import LayerOV, ModelCircuits, Norm
from headatlas.scoring.options import MapOptions
from headatlas.scoring.recipe import Recipe


def _recipe(options: MapOptions | Recipe) -> Recipe:
    return options if isinstance(options, Recipe) else options.recipe


def _head_values(
    layer: LayerOV, head: int, X: torch.Tensor, recipe: Recipe
) -> tuple[torch.Tensor, torch.Tensor]:
    """(u = norm(X) or X [n, d], z = u · W_V + b_V [n, dh]) of one head, in X's dtype."""
    dtype = X.dtype
    u = layer.attn_norm(X) if recipe.pre_norm else X
    z = u @ layer.head_W_V(head).to(dtype)
    b_V = layer.head_b_V(head)
    if recipe.value_bias and b_V is not None:
        z = z + b_V.to(dtype)
    return u, z


def _without_bias(norm: Norm, dtype: torch.dtype) -> Norm:
    """``norm`` with its gain in ``dtype`` and no bias (a bias is no part of any head)."""
    return Norm(norm.kind, None if norm.gain is None else norm.gain.to(dtype), None, norm.eps)


def reference_rows(
    circuits: ModelCircuits,
    layer: LayerOV,
    head: int,
    X: torch.Tensor,
    options: MapOptions | Recipe,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Full logit rows x̃ · W_V · W_O · W_U [n, V] of one head for source embeddings ``X`` [n, d].

    The plain way: the pre-attention, post-attention (Gemma 2/3) and final norms applied as
    functions (the last two without their bias), b_O added before the post-attention norm,
    b_U after the final norm; nothing folded."""
    r = _recipe(options)
    _, z = _head_values(layer, head, X.to(dtype), r)
    y = z @ layer.W_O[head].to(dtype)
    if r.output_bias and layer.b_O is not None:
        y = y + layer.b_O.to(dtype)
    if r.output_gain and layer.out_norm is not None:
        y = _without_bias(layer.out_norm, dtype)(y)
    final = circuits.final_norm() if r.final_norm else None
    if final is not None:
        y = _without_bias(final, dtype)(y)
    rows = y @ circuits.W_U.to(dtype)
    b_U = circuits.unembed_bias() if r.unembed_bias else None
    if b_U is not None:
        rows = rows + b_U.to(dtype).cpu()
    return rows


def reference_ranks(
    circuits: ModelCircuits,
    layer: LayerOV,
    head: int,
    X: torch.Tensor,
    targets: torch.Tensor,
    options: MapOptions | Recipe,
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
    options: MapOptions | Recipe,
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


def plain_salient(
    layer: LayerOV,
    head: int,
    X: torch.Tensor,
    W_Uf: torch.Tensor,
    options: MapOptions | Recipe,
    excluded: torch.Tensor | None = None,
    tokens: int = 15,
    mappings: int = 5,
    logit_offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The salient operations of one head the plain way, which the fast pass
    (:class:`~headatlas.scoring.salient.SalientPass`) is tested and timed against: the head's
    output Y = (norm(X) W_V + b_V) W_O γ_post (+ b_O γ_post) [V, d] for the source embeddings
    ``X`` [V, d], σ = ‖Y‖/‖norm(X)‖ per row, then the top rows' logits through ``W_Uf`` (the
    folded unembedding) plus ``logit_offset``.

    Returns (σ [V], top token ids [tokens], mapping ids [tokens, mappings]); ``excluded``
    [V'] masks ids out of both rankings.
    """
    dtype = W_Uf.dtype
    recipe = _recipe(options)
    u, z = _head_values(layer, head, X.to(dtype), recipe)
    gain = layer.out_gain(X.shape[1]).to(dtype) if recipe.output_gain else 1.0
    Y = z @ (layer.W_O[head].to(dtype) * gain)
    if recipe.output_bias and layer.b_O is not None:
        Y = Y + layer.b_O.to(dtype) * gain
    norms = u.norm(dim=-1)
    sigma = torch.where(norms > 0, Y.norm(dim=-1) / norms.clamp_min(1e-30), 0.0)
    ranked = sigma if excluded is None else sigma.masked_fill(excluded[: len(sigma)], -torch.inf)
    top = ranked.topk(tokens).indices
    logits = Y[top] @ W_Uf
    if logit_offset is not None:
        logits = logits + logit_offset
    if excluded is not None:
        logits = logits.masked_fill(excluded[: logits.shape[1]], -torch.inf)
    return sigma, top, logits.topk(mappings, dim=1).indices
