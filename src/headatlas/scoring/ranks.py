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
        return self


def pair_ranks(
    Z: torch.Tensor, B: torch.Tensor, layout: PairLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """Relation and suppression ranks of every pair (in the original pair order).

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
