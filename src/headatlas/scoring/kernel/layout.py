"""(source, target) pairs arranged once per map for the rank kernels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
    """Pairs arranged for the kernels, once per map.

    Each unique source row gets one "primary" pair; the rest (a source shared by several
    relations) are "extra" pairs. ``src``/``tgt``/``k`` are in layout order (primaries first);
    ``t_index`` maps a layout position to the original pair index. ``blocks`` tile rows and
    columns for a full tiled pass (the benchmarks' previous kernel).
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
        """Per pair (layout order): with it, the pruned kernel decides only rank < k."""
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

    def k_for(self, k: torch.Tensor | int | None, device: torch.device) -> torch.Tensor | None:
        """Per pair k in layout order: ``k`` (original order, or one int) when given, else the
        layout's own; None when neither."""
        if k is not None:
            kk = torch.as_tensor(k, dtype=torch.int64, device=device).expand(self.n_pairs)
            return kk[self.t_index.to(device)]
        return None if self.k is None else self.k.to(device)
