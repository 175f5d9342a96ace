"""Relation and suppression scores of every head of one layer, factored and batched over all
relations' pairs."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from headatlas.circuits import LayerOV, Norm
from headatlas.scoring.kernel.candidates import candidate_columns_shared, candidate_directions
from headatlas.scoring.kernel.factored import Factored, SharedU
from headatlas.scoring.kernel.layout import PairLayout
from headatlas.scoring.kernel.pairs import STAGES, pair_ranks
from headatlas.scoring.plan import ScoringPlan
from headatlas.scoring.recipe import Readout


def layer_ranks(
    layer: LayerOV, X: torch.Tensor, readout: Readout, layout: PairLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relation and suppression ranks [n_heads, n_pairs] for every head of a layer (the pruned
    kernel, :func:`~headatlas.scoring.kernel.pairs.pair_ranks`, with B kept factored; ranks
    capped at the layout's k when it has one), on the readout's device and in its dtype.

    ``X`` [n_sources, d] are the layer's source embeddings; ``readout`` (a bound recipe) gives
    the folded unembedding W_Uf [d, V], the output map and the logit bias b_U (added after
    the final norm).

    logits = s · (z W_O + b_O) W_Uf + b_U, kept factored as Z [n, r] @ B [r, V]. The final
    norm's per-row factor s = 1/σ(y) is positive and cancels out of top-k, so it is computed
    (through a d_head x d_head Gram matrix) only when a bias follows it.
    """
    return layer_ranks_multi(layer, X, readout, [layout])[0]


def head_readouts(
    layer: LayerOV, X: torch.Tensor, readout: Readout
) -> list[tuple[torch.Tensor, Factored]]:
    """Every head's logits kept factored, ``Z`` [n_sources, r] and ``B`` = W @ U [r, V]
    (logits = Z @ B, up to the final norm's positive per-row factor when no bias follows
    it), on the readout's device and in its dtype."""
    W_Uf = readout.W_Uf
    dtype, device = W_Uf.dtype, W_Uf.device
    layer = layer.to(device, dtype)
    Zg = readout.value_vectors(layer, X)
    W_O, b_O = readout.output_map(layer)  # [H, dh, d], [d]: post-attention gain applied
    post_bias = readout.logit_bias
    final_norm = readout.final_norm
    # B = W @ U stays factored; a post-norm logit bias is one more row of U.
    U = _shared_readout(W_Uf, post_bias, post_bias)
    heads = []
    for h in range(W_O.shape[0]):
        Z, W = Zg[layer.kv_group(h)], W_O[h]
        if b_O is not None:  # y = [z, 1] @ [W_O; b_O]
            Z = _with_ones(Z)
            W = torch.cat([W, b_O[None]], 0)
        if post_bias is not None:
            if final_norm is not None:
                Z = Z * _norm_factor(Z, W, final_norm)[:, None]
            Z = _with_ones(Z)
            W = torch.nn.functional.pad(W, (0, 1))
            one = torch.zeros(1, W.shape[1], dtype=dtype, device=device)
            one[0, -1] = 1
            W = torch.cat([W, one], 0)
        heads.append((Z.contiguous(), Factored(W, U)))
    return heads


def candidate_orders(heads: Sequence[tuple[torch.Tensor, Factored]]) -> list[torch.Tensor | None]:
    """Each head's candidate columns for the pruned kernel's first passes, best first
    (Σ STAGES of them, every head's from one pass over U); None on the meta device."""
    if not heads or heads[0][0].device.type == "meta":
        return [None] * len(heads)
    dirs = [candidate_directions(Z, B) for Z, B in heads]
    return list(candidate_columns_shared(dirs, heads[0][1].shared, sum(STAGES)))


def layer_ranks_multi(
    layer: LayerOV,
    X: torch.Tensor,
    readout: Readout,
    layouts: Sequence[PairLayout],
    heads: Sequence[tuple[torch.Tensor, Factored]] | None = None,
    orders: Sequence[torch.Tensor | None] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`layer_ranks` (pruned kernel) for several pair layouts over the same source rows,
    sharing each head's factors and candidate columns; each layout's ranks are exactly what
    :func:`layer_ranks` gives for it alone. ``heads`` (:func:`head_readouts`) and ``orders``
    (:func:`candidate_orders`): when the caller has them already."""
    if heads is None:
        heads = head_readouts(layer, X, readout)
    if orders is None:
        orders = (
            candidate_orders(heads)
            if any(lay.k is not None for lay in layouts)
            else [None] * len(heads)
        )
    out = []
    for layout in layouts:
        ups, downs = [], []
        for (Z, B), order in zip(heads, orders, strict=True):
            up, down = pair_ranks(Z, B, layout, order=order if layout.k is not None else None)
            ups.append(up)
            downs.append(down)
        out.append((torch.stack(ups), torch.stack(downs)))
    return out


_LAST: list[tuple[torch.Tensor, torch.Tensor | None, SharedU]] = []


def _shared_readout(
    W_Uf: torch.Tensor, logit_bias: torch.Tensor | None, post_bias: torch.Tensor | None
) -> SharedU:
    """U = [W_Uf; logit bias] prepared once per map: the last one is kept (with the tensors it
    was made from, so their identity is a safe key) and reused by the next layer."""
    if _LAST and _LAST[0][0] is W_Uf and _LAST[0][1] is logit_bias:
        return _LAST[0][2]
    shared = SharedU(W_Uf if post_bias is None else torch.cat([W_Uf, post_bias[None]], 0))
    _LAST[:] = [(W_Uf, logit_bias, shared)]
    return shared


def _with_ones(Z: torch.Tensor) -> torch.Tensor:
    return torch.cat([Z, torch.ones(Z.shape[0], 1, dtype=Z.dtype, device=Z.device)], 1)


def _norm_factor(Z: torch.Tensor, W: torch.Tensor, norm: Norm) -> torch.Tensor:
    """1/σ of each row of y = Z @ W [n, d], through the Gram matrix of W (no [n, d] formed).

    RMSNorm: σ² = mean(y²) + eps; LayerNorm: the variance of y plus eps.
    """
    d = W.shape[1]
    if norm.kind == "layernorm":
        W = W - W.mean(1, keepdim=True)
    G = (W @ W.T) / d  # [r, r]
    ms = ((Z @ G) * Z).sum(1)
    return torch.rsqrt(ms.clamp_min(0) + norm.eps)


def layer_scores(
    plan: ScoringPlan, up: torch.Tensor, down: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores [n_heads, n_relations] from ranks: share of pairs ranked within top-k."""
    k = plan.pair_k.to(up.device)
    return plan.relation_means((up < k).cpu()), plan.relation_means((down < k).cpu())
