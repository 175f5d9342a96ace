"""The plain per-head reference the fast path is tested against: the full row
x̃ · W_V · W_O · W_U for each source, then the target's rank in it. Slow by design."""

from __future__ import annotations

import torch

from headatlas.circuits import LayerOV, ModelCircuits
from headatlas.scoring.options import MapOptions
from headatlas.scoring.recipe import Recipe


def reference_rows(
    circuits: ModelCircuits,
    layer: LayerOV,
    head: int,
    X: torch.Tensor,
    options: MapOptions | Recipe,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Full logit rows x̃ · W_V · W_O · W_U [n, V] of one head for source embeddings ``X`` [n, d].

    Read through the recipe's plain path (:meth:`Readout.head_rows`): the final norm is applied
    as a function (without its bias), not folded; the post-attention norm (Gemma 2/3) too.
    """
    recipe = options if isinstance(options, Recipe) else options.recipe
    return recipe.bind(circuits, "cpu", dtype).head_rows(layer, head, X)


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
