"""The map's pruned exact kernel: for every (source, target) pair of one head, how many tokens
score at least as high as the target (relation rank) and strictly lower (suppression rank),
decided only as far as rank < k.

For a head, logits = Z @ B with Z [n_sources, r] and B = W @ U [r, V] kept factored
(:class:`~headatlas.scoring.kernel.factored.Factored`). Tie rule (deterministic): a token whose
logit equals the target's counts as above the target in the relation rank, and not below it in
the suppression rank.
"""

from __future__ import annotations

import torch

from headatlas.scoring.kernel.bounds import gamma, rounding_margin
from headatlas.scoring.kernel.candidates import candidate_columns
from headatlas.scoring.kernel.factored import Factored
from headatlas.scoring.kernel.layout import PairLayout

STAGES = (256, 2048)
"""Columns per first-pass stage (in the head's candidate order); rows still undecided after
the last stage get full rows."""
FULL_ROW_BYTES = 64 * 2**20
"""Logits held at once while computing full rows."""


def pair_margin(Z: torch.Tensor, B: Factored) -> torch.Tensor:
    """Per row of Z [n]: the rounding margin of its logits (:mod:`..bounds`), for any column."""
    return rounding_margin(Z, B.W, B.shared.col_max)


def column_slack(Z: torch.Tensor, B: Factored) -> torch.Tensor:
    """Per row of Z [n]: γ ‖|z||W|‖, so that a computed logit of column j is within
    slack · ‖u_j‖ of its exact value (:mod:`..bounds`; the per-column form of
    :func:`pair_margin`, tighter where column norms vary)."""
    g = gamma(B.W.shape[-2] + B.W.shape[-1], Z.dtype, Z.device)
    return g * (Z.abs() @ B.W.abs()).norm(dim=-1)


def target_logits(Z: torch.Tensor, B: Factored, layout: PairLayout) -> torch.Tensor:
    """Each pair's target logit [n_pairs] (layout order), from gathered columns."""
    return (Z[layout.src] * B.columns(layout.tgt).T).sum(1)


def pair_ranks(
    Z: torch.Tensor,
    B: Factored,
    layout: PairLayout,
    k: torch.Tensor | int | None = None,
    stages: tuple[int, ...] = STAGES,
    order: torch.Tensor | None = None,
    column_bound: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relation and suppression ranks of every pair (in the original pair order).

    ``Z`` [n_sources, r], ``B`` [r, V]. Returns (up, down), each int64 [n_pairs]: up = number of
    other tokens with logit >= the target's, down = number with logit < the target's.

    With ``k`` (or ``layout.k``; per pair in the original order, or one int) only ``rank < k``
    is decided and ranks come back capped at k: a first pass over a few candidate columns per
    stage (``order``, from :func:`~..candidates.candidate_columns` when None) counts, per pair,
    the columns surely above and surely below the target logit (beyond the rounding margin:
    with ``column_bound``, slack · (‖u_j‖ + ‖u_t‖) per column j and target t, see
    :func:`column_slack`; without, the row's :func:`pair_margin` for every column); a pair
    with at least k of each is a miss for both scores, exactly. Only the source rows of
    the pairs left undecided are computed in full. Without k every row is computed in full
    (exact ranks). In both cases the target's logit is read from the same product as its
    competitors, so the tie rule holds under rounding.
    """
    n_pairs = layout.n_pairs
    dev = Z.device
    kk = layout.k_for(k, dev)
    up = torch.empty(n_pairs, dtype=torch.int64, device=dev)
    down = torch.empty(n_pairs, dtype=torch.int64, device=dev)
    src = layout.src
    alive: torch.Tensor | None = None
    # On the meta device nothing can be decided from values: every pair goes to full rows.
    if kk is not None and dev.type != "meta" and stages:
        alive = torch.arange(n_pairs, device=dev)
        above = torch.zeros(n_pairs, dtype=torch.int64, device=dev)
        below = torch.zeros(n_pairs, dtype=torch.int64, device=dev)
        t = target_logits(Z, B, layout)
        if column_bound:  # |error of logit j| <= slack · ‖u_j‖
            slack = column_slack(Z, B)[src]
            margin = slack * B.shared.col_norms[layout.tgt]
        else:
            margin = pair_margin(Z, B)[src]
        if order is None:  # the candidate columns, best first (Σ stages of them)
            order = candidate_columns(Z, B, sum(stages))
        c0 = 0
        for size in stages:
            cols = order[c0 : c0 + size]
            c0 += size
            if cols.numel() == 0 or alive.numel() == 0:
                break
            rows, loc = torch.unique(src[alive], return_inverse=True)
            S = Z[rows] @ B.columns(cols)  # [m, c]
            Sp = S[loc]  # [p, c] the pairs' rows
            ta, ma = t[alive][:, None], margin[alive][:, None]
            if column_bound:  # each column's own error bound on top of the target's
                ma = ma + slack[alive][:, None] * B.shared.col_norms[cols][None, :]
            above[alive] += (Sp > ta + ma).sum(1)
            below[alive] += (Sp < ta - ma).sum(1)
            done = (above[alive] >= kk[alive]) & (below[alive] >= kk[alive])
            up[alive[done]] = kk[alive[done]]
            down[alive[done]] = kk[alive[done]]
            alive = alive[~done]
    full_rows(Z, B, layout, alive, up, down)
    if kk is not None:
        up = torch.minimum(up, kk)
        down = torch.minimum(down, kk)
    out_up, out_down = torch.empty_like(up), torch.empty_like(down)
    out_up[layout.t_index] = up
    out_down[layout.t_index] = down
    return out_up, out_down


def full_rows(
    Z: torch.Tensor,
    B: Factored,
    layout: PairLayout,
    pairs: torch.Tensor | None,
    up: torch.Tensor,
    down: torch.Tensor,
) -> None:
    """Exact ranks of ``pairs`` (layout positions; None: all) from full logit rows, written
    into up/down. Rows come in chunks of one matmul each; the target is read from it. A head
    with many rows gets its B formed once (r·d·V beats m rows of (z W) U)."""
    r, d = int(B.W.shape[0]), int(B.W.shape[1])
    V = B.shared.vocab
    if pairs is None:
        rows = torch.arange(layout.n_rows, device=Z.device)
        loc = layout.src
        pairs = torch.arange(layout.n_pairs, device=Z.device)
    elif pairs.numel() == 0:
        return
    else:
        rows, loc = torch.unique(layout.src[pairs], return_inverse=True)
    n_rows = int(rows.numel())
    dense = B.dense() if n_rows * (d - r) > r * d else None

    def logits_of(Zs: torch.Tensor) -> torch.Tensor:
        return Zs @ dense if dense is not None else B.rows(Zs)

    chunk = max(1, FULL_ROW_BYTES // (V * Z.element_size()))
    if Z.device.type == "meta":
        chunk = n_rows  # no values to split pairs by
    if chunk >= n_rows:
        groups = [(0, n_rows, pairs, loc)]
    else:
        order = torch.argsort(loc)
        pairs, loc = pairs[order], loc[order]
        edges = torch.searchsorted(loc, torch.arange(0, n_rows + chunk, chunk, device=loc.device))
        e = edges.tolist()
        groups = [
            (r0, min(n_rows, r0 + chunk), pairs[e[i] : e[i + 1]], loc[e[i] : e[i + 1]])
            for i, r0 in enumerate(range(0, n_rows, chunk))
        ]
    tgt = layout.tgt
    for r0, r1, p, lc in groups:
        if p.numel() == 0:
            continue
        logits = logits_of(Z[rows[r0:r1]])  # [m, V], one product
        rel = lc - r0
        t = logits[rel, tgt[p]]
        ge = (logits[rel] >= t[:, None]).sum(1)
        up[p] = ge - 1
        down[p] = V - ge
