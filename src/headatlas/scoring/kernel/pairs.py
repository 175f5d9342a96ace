"""The map's pruned exact kernel: for every (source, target) pair of one head, how many tokens
score at least as high as the target (relation rank) and strictly lower (suppression rank),
decided only as far as rank < k.

For a head, logits = Z @ B with Z [n_sources, r] and B = W @ U [r, V] kept factored
(:class:`~headatlas.scoring.kernel.factored.Factored`). Tie rule (deterministic): a token whose
logit equals the target's counts as above the target in the relation rank, and not below it in
the suppression rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from headatlas.scoring.kernel.bounds import gamma, rounding_margin
from headatlas.scoring.kernel.candidates import candidate_columns
from headatlas.scoring.kernel.count import count_at_least
from headatlas.scoring.kernel.factored import Factored
from headatlas.scoring.kernel.layout import PairLayout

STAGES = (256, 2048)
"""Columns per first-pass stage (in the head's candidate order); rows still undecided after
the last stage get full rows."""
FULL_ROW_BYTES = 256 * 2**20
"""Logits held at once while computing full rows (a few hundred rows: a matmul of 64 rows
runs at 0.6 of the speed of one of 512 on a CPU)."""


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
    is decided and ranks come back capped at k: :func:`first_pass` decides the clear misses
    from a few candidate columns, and only the source rows of the pairs left undecided are
    computed in full (:func:`full_rows`). Without k every row is computed in full (exact
    ranks). In both cases the target's logit is read from the same product as its
    competitors, so the tie rule holds under rounding.
    """
    kk = layout.k_for(k, Z.device)
    up, down, alive = first_pass(Z, B, layout, kk, stages, order, column_bound)
    full_rows(HeadRows(Z, B), [RowJob(layout, alive, up, down)])
    return finish(layout, kk, up, down)


def first_pass(
    Z: torch.Tensor,
    B: Factored,
    layout: PairLayout,
    kk: torch.Tensor | None,
    stages: tuple[int, ...] = STAGES,
    order: torch.Tensor | None = None,
    column_bound: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The pruned kernel's first pass: (up, down, alive), up/down [n_pairs] in layout order
    (filled with k for the pairs decided), alive the layout positions left undecided (None:
    every pair, when there is no k or no values).

    Per stage, the stage's candidate columns (``order``, from
    :func:`~..candidates.candidate_columns` when None) are read for the rows of the pairs still
    undecided, and each pair counts the columns surely above and surely below its target
    logit (beyond the rounding margin: with ``column_bound``, slack · (‖u_j‖ + ‖u_t‖) per
    column j and target t, see :func:`column_slack`; without, the row's :func:`pair_margin`
    for every column); a pair with at least k of each is a miss for both scores, exactly.
    """
    n_pairs = layout.n_pairs
    dev = Z.device
    up = torch.empty(n_pairs, dtype=torch.int64, device=dev)
    down = torch.empty(n_pairs, dtype=torch.int64, device=dev)
    # On the meta device nothing can be decided from values: every pair goes to full rows.
    if kk is None or dev.type == "meta" or not stages:
        return up, down, None
    src = layout.src
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
    return up, down, alive


def finish(
    layout: PairLayout, kk: torch.Tensor | None, up: torch.Tensor, down: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks in layout order, capped at k (when there is one), back in the original pair order."""
    if kk is not None:
        up = torch.minimum(up, kk)
        down = torch.minimum(down, kk)
    out_up, out_down = torch.empty_like(up), torch.empty_like(down)
    out_up[layout.t_index] = up
    out_down[layout.t_index] = down
    return out_up, out_down


@dataclass
class RowJob:
    """Pairs of one layout to rank from full rows: exact ranks are written into ``up`` (and
    ``down`` unless None: the null needs only the relation rank), layout order."""

    layout: PairLayout
    pairs: torch.Tensor | None
    """Layout positions (None: every pair)."""
    up: torch.Tensor
    down: torch.Tensor | None
    name: str = "pairs"
    """What the pairs are ("pairs": the map's; "null": the null's), for counting."""


class RowBuffers:
    """Memory the full rows reuse from head to head: the logits of one chunk of rows and one
    formed B. A fresh vocabulary-sized tensor per product costs its page faults (a 256 MB
    chunk of logits in a bare loop of products ran at 0.7 of the speed of one written into a
    reused buffer on a CPU; 3–15% per head in a map)."""

    def __init__(self) -> None:
        self._held: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A buffer of at least ``shape``'s first dimension (its leading rows returned),
        ``like``'s dtype and device; reallocated when it does not fit."""
        buf = self._held.get(name)
        if (
            buf is None
            or buf.shape[1:] != shape[1:]
            or buf.shape[0] < shape[0]
            or buf.dtype != like.dtype
            or buf.device != like.device
        ):
            self._held.pop(name, None)
            buf = torch.empty(shape, dtype=like.dtype, device=like.device)
            self._held[name] = buf
        return buf[: shape[0]]


class HeadRows:
    """One head's full logit rows, Z @ B: through a formed B = W U once rows are many
    (r·d·V once beats m·d·V), kept for the head's later rows (the evidence's)."""

    def __init__(self, Z: torch.Tensor, B: Factored, buffers: RowBuffers | None = None):
        self.Z, self.B = Z, B
        self._buffers = buffers or RowBuffers()
        self._dense: torch.Tensor | None = None

    def plan(self, n_rows: int) -> None:
        """Form B now if ``n_rows`` rows are about to be read and that is cheaper."""
        r, d = int(self.B.W.shape[0]), int(self.B.W.shape[1])
        if self._dense is None and n_rows * (d - r) > r * d and self.Z.device.type != "meta":
            out = self._buffers.get("dense", (r, self.B.shared.vocab), self.Z)
            self._dense = torch.matmul(self.B.W, self.B.U, out=out)

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        """The logits of source ``rows`` [m, V], one product, written into the shared buffer:
        valid until the next call."""
        Zs = self.Z[rows]
        if self.Z.device.type == "meta":
            return Zs @ self._dense if self._dense is not None else self.B.rows(Zs)
        m = int(Zs.shape[0])
        rows_held = max(m, min(self.chunk(), int(self.Z.shape[0])))  # one size for every chunk
        out = self._buffers.get("logits", (rows_held, self.B.shared.vocab), Zs)[:m]
        if self._dense is not None:
            return torch.matmul(Zs, self._dense, out=out)
        return torch.matmul(Zs @ self.B.W, self.B.U, out=out)

    def chunk(self) -> int:
        """Rows per product (:data:`FULL_ROW_BYTES` of logits)."""
        return max(1, FULL_ROW_BYTES // (self.B.shared.vocab * self.Z.element_size()))


def full_rows(head: HeadRows, jobs: Sequence[RowJob]) -> None:
    """Exact ranks of every job's pairs from full logit rows, written into the jobs' up/down.
    The jobs' source rows (one set: the head's Z) are computed once each, in chunks of one
    product; each pair's target is read from the same product as its competitors."""
    Z, V = head.Z, head.B.shared.vocab
    dev = Z.device
    pair_sets, srcs = [], []
    for job in jobs:
        p = job.pairs
        if p is None:
            p = torch.arange(job.layout.n_pairs, device=dev)
        pair_sets.append(p)
        srcs.append(job.layout.src[p])
    if not srcs or sum(int(p.numel()) for p in pair_sets) == 0:
        return
    if any(job.pairs is None for job in jobs):  # every row (each row has a pair)
        rows = torch.arange(Z.shape[0], device=dev)
        locs = srcs
    else:
        rows = torch.unique(torch.cat(srcs))  # sorted
        locs = [torch.searchsorted(rows, s) for s in srcs]
    n_rows = int(rows.numel())
    head.plan(n_rows)
    chunk = n_rows if dev.type == "meta" else head.chunk()  # meta: no values to split by
    # Per job: its pairs sorted by their row's position in ``rows``, and where each chunk starts.
    parts = []
    for job, p, loc in zip(jobs, pair_sets, locs, strict=True):
        if chunk >= n_rows:
            parts.append((job, p, loc, [0, int(p.numel())]))
            continue
        o = torch.argsort(loc)
        p, loc = p[o], loc[o]
        edges = torch.searchsorted(loc, torch.arange(0, n_rows + chunk, chunk, device=dev))
        parts.append((job, p, loc, edges.tolist()))
    for i, r0 in enumerate(range(0, n_rows, chunk)):
        logits: torch.Tensor | None = None
        for job, p, loc, e in parts:
            if e[i + 1] == e[i]:
                continue
            if logits is None:
                logits = head.logits(rows[r0 : r0 + chunk])  # [m, V], one product
            pp, rel = p[e[i] : e[i + 1]], loc[e[i] : e[i + 1]] - r0
            t = logits[rel, job.layout.tgt[pp]]
            ge = count_at_least(logits, t, rel)
            job.up[pp] = ge - 1
            if job.down is not None:
                job.down[pp] = V - ge
