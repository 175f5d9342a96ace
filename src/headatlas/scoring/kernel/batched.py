"""The dynamic read-out's kernel: ranks of each row's target for every head of a layer at once,
rows with their own activations (prompts), heads batched along a leading dimension."""

from __future__ import annotations

import torch

from headatlas.scoring.kernel.bounds import rounding_margin
from headatlas.scoring.kernel.candidates import spread_order
from headatlas.scoring.kernel.count import count_at_least
from headatlas.scoring.kernel.factored import Factored
from headatlas.scoring.kernel.pairs import FULL_ROW_BYTES, STAGES


def batched_ranks(
    Z: torch.Tensor,
    block: Factored | torch.Tensor,
    targets: torch.Tensor,
    k: int | torch.Tensor | None,
    offset: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    stages: tuple[int, ...] = STAGES,
    order_columns: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) ranks [h, n] of each row's target in logits Z[i] @ B_i (+ offset), for
    Z [h, n, r], ``block`` B [h, r, V] (factored; or formed, for the unpruned reference, which
    reads every row in full), targets [n], offset [V].

    With ``k`` (one int, or one per row [n]) and a factored block, pruned like
    :func:`~..pairs.pair_ranks` (columns in ``order`` [h, ≥ Σ stages], from
    :func:`~..candidates.spread_order` when None; ``order_columns`` [h, r, Σ stages]: those
    columns of B, when the caller keeps them across calls) and capped at k; without, every row
    in full. The first stage reads every row; later stages only the (head, row) cells still
    undecided. The target's logit is always read from the product its competitors come from.
    """
    h, n, _ = Z.shape
    dev = Z.device
    up = torch.empty(h, n, dtype=torch.int64, device=dev)
    down = torch.empty(h, n, dtype=torch.int64, device=dev)
    alive: torch.Tensor | None = None  # flat (head * n + row) indices still undecided
    kk: torch.Tensor | None = None
    if k is not None:
        kk = torch.as_tensor(k, dtype=torch.int64, device=dev).expand(n)[None, :].expand(h, n)
    if kk is not None and stages and dev.type != "meta":
        if not isinstance(block, Factored):
            raise ValueError("the pruned read-out needs a factored block")
        if order is None:
            order = spread_order(block, sum(stages))
        # Target columns of B, once per distinct target: [h, r, m] (rows share targets).
        uniq, inv = torch.unique(targets, return_inverse=True)
        Bt = block.W @ block.shared.UT[uniq].T  # [h, r, m]
        t = (Z * Bt[:, :, inv].transpose(1, 2)).sum(2)
        if offset is not None:
            t = t + offset[targets][None, :]
        o_max = offset.abs().max() if offset is not None else None
        margin = rounding_margin(Z, block.W, block.shared.col_max, o_max)  # [h, n]
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
            else:
                Bc = block.columns(cols)
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
    block: Factored | torch.Tensor,
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
    V = block.shape[-1]
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
        ge = count_at_least(logits, logits.gather(1, targets[rs][:, None])[:, 0])
        up[hs, rs] = ge - 1
        down[hs, rs] = V - ge

    def by_head(hi: int) -> torch.Tensor:
        return torch.arange(n, device=dev) if alive is None else rows[heads == hi]

    def by_block(hi: int, B_h: torch.Tensor) -> None:
        rs = by_head(hi)
        for c0 in range(0, int(rs.numel()), chunk):
            part = rs[c0 : c0 + chunk]
            count(Z[hi, part] @ B_h, torch.full_like(part, hi), part)

    if not isinstance(block, Factored):
        for hi in range(h):
            by_block(hi, block[hi])
        return
    d = block.W.shape[2]
    per_head = [n] * h if alive is None else torch.bincount(heads, minlength=h).tolist()
    stacked_y, stacked_h, stacked_r = [], [], []
    for hi in range(h):
        if per_head[hi] == 0:
            continue
        if per_head[hi] * (d - r) > r * d:  # forming B_h costs less than m rows of z W U
            by_block(hi, block.head(hi).dense())
        else:
            rs = by_head(hi)
            stacked_y.append(Z[hi, rs] @ block.W[hi])
            stacked_h.append(torch.full_like(rs, hi))
            stacked_r.append(rs)
    if stacked_y:
        Y, hs, rs = torch.cat(stacked_y), torch.cat(stacked_h), torch.cat(stacked_r)
        for c0 in range(0, int(Y.shape[0]), chunk):
            count(Y[c0 : c0 + chunk] @ block.shared.U, hs[c0 : c0 + chunk], rs[c0 : c0 + chunk])
