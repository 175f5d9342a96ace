"""The fast kernel: for every head and (source, target) pair, how many tokens the head's OV map
scores at least as high as the target (relation rank) and strictly lower (suppression rank),
without forming V x V or even n x V matrices beyond cache-sized blocks.

For a head, logits = Z @ B with Z [n_sources, r] (value vectors, plus a ones column when a
constant offset is added) and B [r, V] (W_O W_U, plus the offset row). Blocks of Z rows and B
columns are multiplied into a reused buffer and compared with the pairs' target logits, so the
work is one matmul pass plus one comparison pass, both in cache.

Tie rule (deterministic): a token whose logit equals the target's counts as above the target in
the relation rank, and not below it in the suppression rank.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

_KERNELS: dict[str, Any] = {}


def _count_ge_eager(tile: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (tile >= t[:, None]).sum(1)


def _count_ge_rows_eager(tile: torch.Tensor, rows: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (tile[rows] >= t[:, None]).sum(1)


def _kernel(name: str, eager: Any, probe: tuple[torch.Tensor, ...]) -> Any:
    """``torch.compile`` of ``eager`` on CPU, checked on a probe; eager when compiling fails."""
    if name not in _KERNELS:
        _KERNELS[name] = eager
        if os.environ.get("HEADATLAS_NO_COMPILE") != "1":
            try:
                compiled = torch.compile(eager, dynamic=True)
                if torch.equal(compiled(*probe), eager(*probe)):
                    _KERNELS[name] = compiled
            except Exception:  # no C++ toolchain, unsupported platform...
                _KERNELS[name] = eager
    return _KERNELS[name]


def count_ge(tile: torch.Tensor, t: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Per row, how many entries of ``tile`` (or of ``tile[rows]``) are >= ``t`` (int64).

    On CPU a ``torch.compile``d kernel fuses the gather and comparison into the reduction
    (several times faster than eager, which writes a bool tile first); without a working
    compiler, or with HEADATLAS_NO_COMPILE=1, the eager version runs. Both give the same
    integers.
    """
    probe = torch.arange(12.0).reshape(3, 4)
    if rows is None:
        if tile.device.type != "cpu":
            return _count_ge_eager(tile, t)
        fn = _kernel("count", _count_ge_eager, (probe, probe[:, 1]))
        result: torch.Tensor = fn(tile, t)
        return result
    if tile.device.type != "cpu":
        return _count_ge_rows_eager(tile, rows, t)
    fn = _kernel("count_rows", _count_ge_rows_eager, (probe, torch.tensor([2, 0]), probe[:2, 1]))
    result = fn(tile, rows, t)
    return result


ROW_BLOCK = 512
COL_BLOCK = 4096


@dataclass
class _Block:
    r0: int
    r1: int
    e0: int
    e1: int
    extra_rows: torch.Tensor  # rows (relative to r0) of the extra pairs e0:e1
    c0: int
    c1: int
    self_rows: torch.Tensor  # primary pairs (relative to r0) whose target is in [c0, c1)
    self_cols: torch.Tensor
    self_extra: torch.Tensor  # extra pairs (relative to e0) whose target is in [c0, c1)
    self_extra_cols: torch.Tensor


class PairLayout:
    """Pairs arranged for tiling, once per map.

    Each unique source row gets one "primary" pair; the rest (a source shared by several
    relations) are "extra" pairs compared against a gathered copy of their rows. The matmul
    runs once per unique source, and comparisons run once per pair.
    """

    def __init__(
        self,
        src_rows: torch.Tensor,
        targets: torch.Tensor,
        n_rows: int,
        vocab: int,
        row_block: int = ROW_BLOCK,
        col_block: int = COL_BLOCK,
        k: torch.Tensor | int | None = None,
    ):
        n = int(src_rows.numel())
        order = torch.argsort(src_rows, stable=True)
        s_sorted = src_rows[order]
        first = torch.ones(n, dtype=torch.bool)
        first[1:] = s_sorted[1:] != s_sorted[:-1]
        if int(first.sum()) != n_rows:
            raise ValueError("every source row needs at least one pair")
        primary, extra = order[first], order[~first]  # original pair indices
        self.n_rows, self.n_pairs, self.vocab = n_rows, n, vocab
        self.t_index = torch.cat([primary, extra])  # position -> original pair index
        self.src = src_rows[self.t_index]
        self.tgt = targets[self.t_index]
        self.k: torch.Tensor | None = None
        """Per pair (layout order): with it, :func:`pair_ranks` decides only rank < k."""
        if k is not None:
            k_all = torch.as_tensor(k, dtype=torch.int64).expand(n)
            self.k = k_all[self.t_index].contiguous()
        extra_src = src_rows[extra]
        self.blocks: list[_Block] = []
        for r0 in range(0, n_rows, row_block):
            r1 = min(n_rows, r0 + row_block)
            e0 = int(torch.searchsorted(extra_src, r0))
            e1 = int(torch.searchsorted(extra_src, r1))
            tgt_p = targets[primary[r0:r1]]
            tgt_e = targets[extra[e0:e1]]
            for c0 in range(0, vocab, col_block):
                c1 = min(vocab, c0 + col_block)
                ip = ((tgt_p >= c0) & (tgt_p < c1)).nonzero().flatten()
                ie = ((tgt_e >= c0) & (tgt_e < c1)).nonzero().flatten()
                self.blocks.append(
                    _Block(
                        r0,
                        r1,
                        e0,
                        e1,
                        extra_src[e0:e1] - r0,
                        c0,
                        c1,
                        ip,
                        tgt_p[ip] - c0,
                        ie,
                        tgt_e[ie] - c0,
                    )
                )
        self.max_rows = min(row_block, n_rows)
        self.max_cols = min(col_block, vocab)

    def to(self, device: torch.device) -> PairLayout:
        """Move index tensors to a device."""
        for b in self.blocks:
            for name in ("extra_rows", "self_rows", "self_cols", "self_extra", "self_extra_cols"):
                setattr(b, name, getattr(b, name).to(device))
        self.src, self.tgt, self.t_index = (
            self.src.to(device),
            self.tgt.to(device),
            self.t_index.to(device),
        )
        if self.k is not None:
            self.k = self.k.to(device)
        return self


def pair_ranks_full(
    Z: torch.Tensor, B: torch.Tensor, layout: PairLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous full kernel, kept as the benchmark's and tests' baseline: exact ranks of
    every pair from cache-sized tiles, with the target logit from a separate dot product (so
    a competitor within rounding of the target may be counted on the wrong side).

    ``Z`` [n_sources, r], ``B`` [r, V]. Returns (up, down), each int64 [n_pairs]: up = number of
    other tokens with logit >= the target's, down = number with logit < the target's.
    """
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


# ---- the pruned exact kernel ------------------------------------------------------------------

STAGES = (256, 2048)
"""Columns per first-pass stage (in the head's candidate order); rows still undecided after
the last stage get full rows."""
FULL_ROW_BYTES = 64 * 2**20
"""Logits held at once while computing full rows."""


def unit_roundoff(dtype: torch.dtype, device: torch.device) -> float:
    """The unit roundoff of a matmul in ``dtype`` on ``device`` (TF32 / bf16x3 on CUDA when
    PyTorch allows them)."""
    if dtype == torch.float64:
        return 2.0**-53
    if dtype in (torch.bfloat16, torch.float16):
        return 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
    if device.type == "cuda" and torch.get_float32_matmul_precision() != "highest":
        return 2.0**-8  # "medium" may use bf16 passes; TF32 ("high") is 2^-11
    return 2.0**-24


class SharedU:
    """The read-out factor U [d, V] every head of a map shares, with what the pruned kernel
    reads from it prepared once: the largest column norm and the mean column. U is the only
    vocabulary-sized matrix held: columns are gathered from it (:meth:`columns`); the
    transpose :attr:`UT` is made only when asked for (the dynamic read-out's batched
    gathers)."""

    def __init__(self, U: torch.Tensor):
        self.U = U
        step = max(1, 2**24 // max(1, U.shape[0]))  # columns per block: 64 MB of float32
        norms = [U[:, c : c + step].square().sum(0).max() for c in range(0, U.shape[1], step)]
        self.col_max = torch.stack(norms).max().sqrt()
        self.mean = U.mean(1, keepdim=True)
        self._UT: torch.Tensor | None = None

    @property
    def UT(self) -> torch.Tensor:
        """U's transpose [V, d], contiguous (made on first use, then kept)."""
        if self._UT is None:
            self._UT = self.U.T.contiguous()
        return self._UT

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        """U[:, idx] [d, m]."""
        if self._UT is not None:
            return self._UT[idx].T
        return self.U[:, idx]


@dataclass
class FactoredB:
    """A read-out matrix B = W @ U [r, V] kept factored: W [r, d] per head, U shared.

    Forming B costs r·d·V multiply-adds per head, more than the pruned kernel needs: it reads
    a few columns (W @ U[:, cols]) and a few full rows ((z W) U)."""

    W: torch.Tensor
    shared: SharedU

    @property
    def U(self) -> torch.Tensor:
        """The shared factor [d, V]."""
        return self.shared.U

    @property
    def shape(self) -> tuple[int, int]:
        """(r, V) of B."""
        return int(self.W.shape[0]), int(self.U.shape[1])

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        """B[:, idx]."""
        return self.W @ self.shared.columns(idx)

    def dense(self) -> torch.Tensor:
        """B itself."""
        return self.W @ self.U


ReadoutB = torch.Tensor | FactoredB


def _columns(B: ReadoutB, idx: torch.Tensor) -> torch.Tensor:
    return B.columns(idx) if isinstance(B, FactoredB) else B[:, idx]


def _rows(Zs: torch.Tensor, B: ReadoutB) -> torch.Tensor:
    """Zs @ B as one product per factor (the logits of these rows)."""
    return (Zs @ B.W) @ B.U if isinstance(B, FactoredB) else Zs @ B


def candidate_columns(Z: torch.Tensor, B: ReadoutB, n: int, rank: int = 8) -> torch.Tensor:
    """The ``n`` columns of ``B`` most likely to be extreme in a row of Z @ B, best first.

    A row's ranks do not change when a constant is added to it, so what matters is each
    column's deviation from the mean column, (b_j - b̄); over the rows z of Z its expected
    square is (b_j - b̄)ᵀ C (b_j - b̄) with C = ZᵀZ / n: columns with a large one are far from
    the middle of most rows, on one side or the other. It is estimated through the top
    ``rank`` singular directions of C^½ W (B = W U; W = I for a plain B), at rank·d·V cost.
    """
    if isinstance(B, FactoredB):
        U, mean = B.U, B.shared.mean
    else:
        U, mean = B, B.mean(1, keepdim=True)
    P = candidate_directions(Z, B, rank)
    proj = P @ U - P @ mean
    return (proj * proj).sum(0).topk(min(n, U.shape[1]), sorted=True).indices


def candidate_directions(Z: torch.Tensor, B: ReadoutB, rank: int = 8) -> torch.Tensor:
    """The top ``rank`` singular directions of C^½ W scaled by their singular values,
    [rank, d] (see :func:`candidate_columns`); stacking several heads' lets one product with
    the shared U score every head's columns at once."""
    W = B.W if isinstance(B, FactoredB) else None
    C = (Z.T @ Z) / max(1, Z.shape[0])
    lam, Q = torch.linalg.eigh(C)
    half = Q * lam.clamp_min(0).sqrt()  # C = half @ half.T
    M = half.T if W is None else half.T @ W  # [r, d]
    _, sv, Vh = torch.linalg.svd(M, full_matrices=False)
    return sv[:rank, None] * Vh[:rank]


def candidate_columns_shared(
    directions: list[torch.Tensor], shared: SharedU, n: int
) -> list[torch.Tensor]:
    """:func:`candidate_columns` of several heads sharing U, from their
    :func:`candidate_directions`, in one pass over U."""
    P = torch.cat(directions, 0)
    proj = P @ shared.U - P @ shared.mean
    out, i = [], 0
    for d in directions:
        part = proj[i : i + d.shape[0]]
        i += d.shape[0]
        out.append((part * part).sum(0).topk(min(n, proj.shape[1]), sorted=True).indices)
    return out


def rounding_margin(Z: torch.Tensor, B: ReadoutB, rows: torch.Tensor) -> torch.Tensor:
    """Per row ``Z[rows]``: twice a bound on how far one logit z·b_j, computed with any
    summation order and either association of Z W U, can be from its exact value:
    2 γ ‖z‖ ‖W‖_F max_j ‖u_j‖ with γ = γ_r + γ_d + γ_r γ_d (γ_m = m u / (1 - m u)); for a plain
    B, 2 γ_r ‖z‖ max_j ‖b_j‖. A column more than this above (below) the target logit is above
    (below) it in every computation, the full rows' included."""
    u = unit_roundoff(Z.dtype, Z.device)

    def g(m: int) -> float:
        return m * u / (1 - m * u)

    zn = Z[rows].norm(dim=1)
    if isinstance(B, FactoredB):
        gr, gd = g(B.W.shape[0]), g(B.W.shape[1])
        scale = B.W.norm() * B.shared.col_max
        return 2 * (gr + gd + gr * gd) * zn * scale
    return 2 * g(B.shape[0]) * zn * B.square().sum(0).max().sqrt()


def pair_ranks(
    Z: torch.Tensor,
    B: ReadoutB,
    layout: PairLayout,
    k: torch.Tensor | int | None = None,
    stages: tuple[int, ...] = STAGES,
    order: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relation and suppression ranks of every pair (in the original pair order).

    ``Z`` [n_sources, r], ``B`` [r, V]. Returns (up, down), each int64 [n_pairs]: up = number of
    other tokens with logit >= the target's, down = number with logit < the target's.

    With ``k`` (or ``layout.k``; per pair in the original order, or one int) only ``rank < k``
    is decided and ranks come back capped at k: a first pass over a few candidate columns per
    stage (see :func:`candidate_columns`) counts, per pair, the columns surely above and surely
    below the target logit (beyond :func:`rounding_margin`); a pair with at least k of each is
    a miss for both scores, exactly. Only the source rows of the pairs left undecided are
    computed in full. Without k every row is computed in full (exact ranks). In both cases
    the target's logit is read from the same product as its competitors, so the tie rule holds
    under rounding.
    """
    n_pairs = layout.n_pairs
    kk: torch.Tensor | None = None
    if k is not None:
        kk = torch.as_tensor(k, dtype=torch.int64, device=Z.device).expand(n_pairs)
        kk = kk[layout.t_index]
    elif layout.k is not None:
        kk = layout.k.to(Z.device)
    up = torch.empty(n_pairs, dtype=torch.int64, device=Z.device)
    down = torch.empty(n_pairs, dtype=torch.int64, device=Z.device)
    src, tgt = layout.src, layout.tgt
    # On the meta device nothing can be decided from values: every pair goes to full rows.
    if kk is None or Z.device.type == "meta" or not stages:
        alive = None
    else:
        alive = torch.arange(n_pairs, device=Z.device)
        above = torch.zeros(n_pairs, dtype=torch.int64, device=Z.device)
        below = torch.zeros(n_pairs, dtype=torch.int64, device=Z.device)
        t = (Z[src] * _columns(B, tgt).T).sum(1)
        margin = rounding_margin(Z, B, src)
        if order is None:  # the candidate columns, best first (Σ stages of them)
            order = candidate_columns(Z, B, sum(stages))
        c0 = 0
        for size in stages:
            cols = order[c0 : c0 + size]
            c0 += size
            if cols.numel() == 0 or alive.numel() == 0:
                break
            rows, loc = torch.unique(src[alive], return_inverse=True)
            S = Z[rows] @ _columns(B, cols)  # [m, c]
            Sp = S[loc]  # [p, c] the pairs' rows
            ta, ma = t[alive][:, None], margin[alive][:, None]
            above[alive] += (Sp > ta + ma).sum(1)
            below[alive] += (Sp < ta - ma).sum(1)
            done = (above[alive] >= kk[alive]) & (below[alive] >= kk[alive])
            up[alive[done]] = kk[alive[done]]
            down[alive[done]] = kk[alive[done]]
            alive = alive[~done]
    _full_rows(Z, B, layout, alive, up, down)
    if kk is not None:
        up = torch.minimum(up, kk)
        down = torch.minimum(down, kk)
    out_up, out_down = torch.empty_like(up), torch.empty_like(down)
    out_up[layout.t_index] = up
    out_down[layout.t_index] = down
    return out_up, out_down


def _full_rows(
    Z: torch.Tensor,
    B: ReadoutB,
    layout: PairLayout,
    pairs: torch.Tensor | None,
    up: torch.Tensor,
    down: torch.Tensor,
) -> None:
    """Exact ranks of ``pairs`` (layout positions; None: all) from full logit rows, written
    into up/down. Rows come in chunks of one matmul each; the target is read from it."""
    r, V = B.shape
    if pairs is None:
        rows = torch.arange(layout.n_rows, device=Z.device)
        loc = layout.src
        pairs = torch.arange(layout.n_pairs, device=Z.device)
    elif pairs.numel() == 0:
        return
    else:
        rows, loc = torch.unique(layout.src[pairs], return_inverse=True)
    n_rows = int(rows.numel())
    if isinstance(B, FactoredB) and n_rows * (B.W.shape[1] - r) > r * B.W.shape[1]:
        B = B.dense()  # cheaper than n_rows products through the wide factor
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
        logits = _rows(Z[rows[r0:r1]], B)  # [m, V], one product
        rel = lc - r0
        t = logits[rel, tgt[p]]
        ge = (logits[rel] >= t[:, None]).sum(1)  # eager: no compile at start-up
        up[p] = ge - 1
        down[p] = V - ge


@dataclass
class HeadsB:
    """Several heads' read-out matrices B_h = W[h] @ U kept factored: W [h, r, d], U shared."""

    W: torch.Tensor
    shared: SharedU

    @property
    def shape(self) -> tuple[int, int, int]:
        """(h, r, V) of the stacked B."""
        return int(self.W.shape[0]), int(self.W.shape[1]), int(self.shared.U.shape[1])


def spread_order(block: torch.Tensor | HeadsB, n: int, rank: int = 8) -> torch.Tensor:
    """Per head, the ``n`` columns of B_h farthest from its mean column (‖b_j - b̄‖², the
    input-free version of :func:`candidate_columns`; through W's top ``rank`` singular
    directions when factored), best first: [h, n]."""
    if isinstance(block, HeadsB):
        h, _, V = block.shape
        _, sv, Vh = torch.linalg.svd(block.W, full_matrices=False)  # [h, r], [h, r, d]
        P = (sv[:, :rank, None] * Vh[:, :rank]).reshape(-1, block.W.shape[2])  # [h*rank, d]
        proj = (P @ block.shared.U - P @ block.shared.mean).reshape(h, -1, V)
        spread = proj.square().sum(1)
    else:
        V = block.shape[2]
        spread = (block - block.mean(2, keepdim=True)).square().sum(1)
    return spread.topk(min(n, V), dim=1, sorted=True).indices


def batched_ranks(
    Z: torch.Tensor,
    block: torch.Tensor | HeadsB,
    targets: torch.Tensor,
    k: int | torch.Tensor | None,
    offset: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    stages: tuple[int, ...] = STAGES,
    order_columns: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) ranks [h, n] of each row's target in logits Z[i] @ block[i] (+ offset), for
    Z [h, n, r], block [h, r, V], targets [n], offset [V] — the dynamic read-out's kernel.

    With ``k`` (one int, or one per row [n]), pruned like :func:`pair_ranks` (columns in
    ``order`` [h, ≥ Σ stages], from :func:`spread_order` when None; ``order_columns``
    [h, r, Σ stages]: those columns of B, when the caller keeps them across calls) and capped
    at k; without, every row in full. The first stage reads every row; later stages only the
    (head, row) cells still undecided. The target's logit is always read from the product its
    competitors come from.
    """
    h, n, r = Z.shape
    dev = Z.device
    up = torch.empty(h, n, dtype=torch.int64, device=dev)
    down = torch.empty(h, n, dtype=torch.int64, device=dev)
    alive: torch.Tensor | None = None  # flat (head * n + row) indices still undecided
    kk: torch.Tensor | None = None
    if k is not None:
        kk = torch.as_tensor(k, dtype=torch.int64, device=dev).expand(n)[None, :].expand(h, n)
    if kk is not None and stages and dev.type != "meta":
        if order is None:
            order = spread_order(block, sum(stages))
        u = unit_roundoff(Z.dtype, dev)
        if isinstance(block, HeadsB):
            UT = block.shared.UT
            # Target columns of B, once per distinct target: [h, r, m] (rows share targets).
            uniq, inv = torch.unique(targets, return_inverse=True)
            Bt = block.W @ UT[uniq].T  # [h, r, m]
            t = (Z * Bt[:, :, inv].transpose(1, 2)).sum(2)
            m = r + block.W.shape[2] + 1
            b_max = block.W.square().sum((1, 2)).sqrt() * block.shared.col_max  # [h]
        else:
            heads = torch.arange(h, device=dev)[:, None]
            bt = block[heads, :, targets[None, :]]  # [h, n, r]: each row's target column
            t = (Z * bt).sum(2)
            m = r + 1
            b_max = block.square().sum(1).max(1).values.sqrt()  # [h]
        if offset is not None:
            t = t + offset[targets][None, :]
        g = m * u / (1 - m * u)
        o_max = offset.abs().max() if offset is not None else 0.0
        margin = 2 * g * (Z.norm(dim=2) + 1) * (b_max[:, None] + o_max)  # [h, n]
        above = torch.zeros(h, n, dtype=torch.int64, device=dev)
        below = torch.zeros(h, n, dtype=torch.int64, device=dev)
        hi_t, lo_t = t + margin, t - margin
        undecided = torch.ones(h, n, dtype=torch.bool, device=dev)
        c0 = 0
        for stage, size in enumerate(stages):
            cols = order[:, c0 : c0 + size]  # [h, c]
            c0 += size
            if cols.shape[1] == 0:
                break
            if order_columns is not None:  # B_h[:, order] prepared once per block
                Bc = order_columns[:, :, c0 - size : c0]
            elif isinstance(block, HeadsB):
                Bc = torch.bmm(block.W, block.shared.UT[cols].transpose(1, 2))
            else:
                Bc = torch.gather(block, 2, cols[:, None, :].expand(h, r, cols.shape[1]))
            if stage == 0:  # every row: one batched product
                S = torch.bmm(Z, Bc)  # [h, n, c]
                if offset is not None:
                    S = S + offset[cols][:, None, :]
                above += (hi_t[:, :, None] < S).sum(2)
                below += (lo_t[:, :, None] > S).sum(2)
            else:  # only the cells still undecided, head by head
                for hi in range(h):
                    rows = undecided[hi].nonzero().flatten()
                    if rows.numel() == 0:
                        continue
                    S = Z[hi, rows] @ Bc[hi]  # [m, c]
                    if offset is not None:
                        S = S + offset[cols[hi]][None, :]
                    above[hi, rows] += (hi_t[hi, rows, None] < S).sum(1)
                    below[hi, rows] += (lo_t[hi, rows, None] > S).sum(1)
            undecided &= ~((above >= kk) & (below >= kk))
            if not bool(undecided.any()):
                break
        up.copy_(kk)
        down.copy_(kk)
        alive = undecided.flatten().nonzero().flatten()
    _batched_full_rows(Z, block, targets, offset, alive, up, down)
    if kk is not None:
        torch.minimum(up, kk, out=up)
        torch.minimum(down, kk, out=down)
    return up, down


def _batched_full_rows(
    Z: torch.Tensor,
    block: torch.Tensor | HeadsB,
    targets: torch.Tensor,
    offset: torch.Tensor | None,
    alive: torch.Tensor | None,
    up: torch.Tensor,
    down: torch.Tensor,
) -> None:
    """Exact ranks of the (head, row) cells ``alive`` (flat head * n + row; None: all) from
    full logit rows, written into up/down [h, n]; the target is read from the same product.

    Factored blocks: a head with many cells gets its B_h formed (r·d·V once beats m·d·V);
    the other heads' cells are stacked as y = z W_h [M, d] and read through the shared U in
    chunks, one product per chunk (U is streamed once per chunk, not once per head)."""
    h, n, r = Z.shape
    V = block.shape[2]
    dev = Z.device
    cells = torch.arange(h * n, device=dev) if alive is None else alive
    if cells.numel() == 0:
        return
    heads, rows = cells // n, cells % n
    chunk = max(1, FULL_ROW_BYTES // (V * Z.element_size()))
    if dev.type == "meta":
        chunk = max(1, int(cells.numel()))

    def count(logits: torch.Tensor, hs: torch.Tensor, rs: torch.Tensor) -> None:
        if offset is not None:
            logits = logits + offset
        ge = (logits >= logits.gather(1, targets[rs][:, None])).sum(1)
        up[hs, rs] = ge - 1
        down[hs, rs] = V - ge

    def by_head(hi: int) -> torch.Tensor:
        return torch.arange(n, device=dev) if alive is None else rows[heads == hi]

    if not isinstance(block, HeadsB):
        for hi in range(h):
            rs = by_head(hi)
            for c0 in range(0, int(rs.numel()), chunk):
                part = rs[c0 : c0 + chunk]
                count(Z[hi, part] @ block[hi], torch.full_like(part, hi), part)
        return
    d = block.W.shape[2]
    per_head = [n] * h if alive is None else torch.bincount(heads, minlength=h).tolist()
    stacked_y, stacked_h, stacked_r = [], [], []
    for hi in range(h):
        if per_head[hi] == 0:
            continue
        rs = by_head(hi)
        W = block.W[hi]
        if per_head[hi] * (d - r) > r * d:  # forming B_h costs less than m rows of z W U
            B_h = W @ block.shared.U
            for c0 in range(0, int(rs.numel()), chunk):
                part = rs[c0 : c0 + chunk]
                count(Z[hi, part] @ B_h, torch.full_like(part, hi), part)
        else:
            stacked_y.append(Z[hi, rs] @ W)
            stacked_h.append(torch.full_like(rs, hi))
            stacked_r.append(rs)
    if stacked_y:
        Y, hs, rs = torch.cat(stacked_y), torch.cat(stacked_h), torch.cat(stacked_r)
        for c0 in range(0, int(Y.shape[0]), chunk):
            count(Y[c0 : c0 + chunk] @ block.shared.U, hs[c0 : c0 + chunk], rs[c0 : c0 + chunk])
