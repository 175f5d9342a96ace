"""The previous full kernel, kept as the benchmarks' baseline: every rank computed in full from
cache-sized tiles of B = W_O·W_U formed per head, with the target logit from a separate dot
product (so a competitor within rounding of the target may be counted on the wrong side; the
pruned kernel reads it from the same product). ``benchmarks/map_speed.py`` times it against
``headatlas.scoring.kernel.pairs.pair_ranks``."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from headatlas.circuits import LayerOV
from headatlas.scoring import relation_scores
from headatlas.scoring.kernel import pairs
from headatlas.scoring.kernel.bounds import gamma
from headatlas.scoring.kernel.count import count_at_least
from headatlas.scoring.kernel.factored import Factored
from headatlas.scoring.kernel.layout import PairLayout
from headatlas.scoring.readout import Readout, _norm_factor, _with_ones

_B_BYTES = 512 * 2**20  # heads whose W_O·W_U block is formed in one matmul


def count_ge(tile: torch.Tensor, t: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, how many entries of ``tile`` (or of ``tile[rows]``) are >= ``t`` (int64): the
    package's count, compiled for every tile as this kernel always had it (eager without a
    compiler or with HEADATLAS_NO_COMPILE=1)."""
    return count_at_least(tile, t, rows, compile_above=0)


def pair_ranks_full(
    Z: torch.Tensor, B: torch.Tensor, layout: PairLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ranks of every pair, ``Z`` [n_sources, r], ``B`` [r, V]: (up, down), each int64
    [n_pairs], up = other tokens with logit >= the target's, down = tokens with logit < it."""
    n_rows = layout.n_rows
    t = (Z[layout.src] * B[:, layout.tgt].T).sum(1)  # [P] target logits, layout order
    t_p, t_e = t[:n_rows], t[n_rows:]
    ge = torch.zeros(layout.n_pairs, dtype=torch.int64, device=Z.device)
    ge_p, ge_e = ge[:n_rows], ge[n_rows:]
    self_logit = torch.empty(layout.n_pairs, dtype=Z.dtype, device=Z.device)
    self_p, self_e = self_logit[:n_rows], self_logit[n_rows:]
    buf = torch.empty(layout.max_rows, layout.max_cols, dtype=Z.dtype, device=Z.device)
    for b in layout.blocks:
        tile = torch.mm(Z[b.r0 : b.r1], B[:, b.c0 : b.c1], out=buf[: b.r1 - b.r0, : b.c1 - b.c0])
        ge_p[b.r0 : b.r1] += count_ge(tile, t_p[b.r0 : b.r1])
        if b.self_rows.numel():
            self_p[b.r0 + b.self_rows] = tile[b.self_rows, b.self_cols]
        if b.e1 > b.e0:
            ge_e[b.e0 : b.e1] += count_ge(tile, t_e[b.e0 : b.e1], b.extra_rows)
            if b.self_extra.numel():
                self_e[b.e0 + b.self_extra] = tile[b.extra_rows[b.self_extra], b.self_extra_cols]
    # The target's own entry came out of the same matmul; take it out of the counts.
    self_ge = (self_logit >= t).long()
    up = torch.empty_like(ge)
    down = torch.empty_like(ge)
    up[layout.t_index] = ge - self_ge
    down[layout.t_index] = layout.vocab - ge - (1 - self_ge)
    return up, down


def layer_ranks_full(
    layer: LayerOV, X: torch.Tensor, readout: Readout, layout: PairLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every head's exact ranks [n_heads, n_pairs] by :func:`pair_ranks_full`, B formed per
    head (the previous path of ``relation_scores.layer_ranks``)."""
    W_Uf = readout.W_Uf
    lr = readout.layer(layer)  # on the readout's device and in its dtype
    Zg = lr.values(X)
    W_O, b_O = lr.W_O, lr.b_O  # [H, dh, d], [d]: post-attention gain applied
    post_bias, final_norm = readout.logit_bias, readout.final_norm
    d = W_Uf.shape[0]
    H, dh = W_O.shape[0], W_O.shape[1]
    per_chunk = max(1, _B_BYTES // (dh * W_Uf.shape[1] * W_Uf.element_size()))
    ups, downs = [], []
    for h0 in range(0, H, per_chunk):
        h1 = min(H, h0 + per_chunk)
        B_all = (W_O[h0:h1].reshape(-1, d) @ W_Uf).reshape(h1 - h0, dh, -1)  # [h, dh, V]
        for h in range(h0, h1):
            Z, B, W = Zg[h // lr.group_size], B_all[h - h0], W_O[h]
            if b_O is not None:
                Z = _with_ones(Z)
                B = torch.cat([B, (b_O @ W_Uf)[None]], 0)
                W = torch.cat([W, b_O[None]], 0)
            if post_bias is not None:
                if final_norm is not None:
                    Z = Z * _norm_factor(Z, W, final_norm)[:, None]
                Z = _with_ones(Z)
                B = torch.cat([B, post_bias[None]], 0)
            up, down = pair_ranks_full(Z.contiguous(), B, layout)
            ups.append(up)
            downs.append(down)
        del B_all
    return torch.stack(ups), torch.stack(downs)


def previous_margin(Z: torch.Tensor, B: Factored) -> torch.Tensor:
    """The pruned kernel's first rounding margin, 2 γ ‖z‖ ‖W‖_F max_j ‖u_j‖ per row (γ from
    the product's depth r + d)."""
    g = gamma(B.W.shape[0] + B.W.shape[1], Z.dtype, Z.device)
    return 2 * g * Z.norm(dim=1) * B.W.norm() * B.shared.col_max


@contextmanager
def previous_pruned_kernel() -> Iterator[None]:
    """Inside: the map's pruned kernel as it was before the per-column bound (one margin per
    row, from ‖z‖ ‖W‖_F), for before/after timings in one process."""
    old_rank, old_margin = relation_scores.pair_ranks, pairs.pair_margin
    relation_scores.pair_ranks = functools.partial(pairs.pair_ranks, column_bound=False)  # type: ignore[assignment]
    pairs.pair_margin = previous_margin
    try:
        yield
    finally:
        relation_scores.pair_ranks, pairs.pair_margin = old_rank, old_margin


@contextmanager
def count_full_rows(counts: dict[str, int]) -> Iterator[None]:
    """Inside: ``counts["pairs"]`` and ``counts["full"]`` add up the pairs the map's pruned
    kernel saw and those it left undecided (computed from full rows)."""
    original = pairs.full_rows

    def counting(head, jobs):  # type: ignore[no-untyped-def]
        for job in jobs:
            if job.name == "pairs":  # the map's pairs, not the null's
                n = job.layout.n_pairs
                counts["pairs"] = counts.get("pairs", 0) + n
                counts["full"] = counts.get("full", 0) + (
                    n if job.pairs is None else int(job.pairs.numel())
                )
        return original(head, jobs)

    pairs.full_rows = counting
    try:
        yield
    finally:
        pairs.full_rows = original
