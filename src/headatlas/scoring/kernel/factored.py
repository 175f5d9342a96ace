"""A read-out B = W @ U kept factored, the way TransformerLens' ``FactoredMatrix`` keeps A @ B:
W [..., r, d] per head (leading head dimensions allowed), U [d, V] shared by every head of a
map. Forming B costs r·d·V multiply-adds per head, more than the pruned kernels need: they read
a few columns (W @ U[:, cols]) and a few full rows ((z W) U)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


class SharedU:
    """The read-out factor U [d, V] every head of a map shares, with what the kernels read from
    it prepared once: the column norms (and their maximum) and the mean column. U is the only
    vocabulary-sized matrix held: columns are gathered from it (:meth:`columns`); the transpose
    :attr:`UT` is made only when asked for (the dynamic read-out's batched gathers)."""

    def __init__(self, U: torch.Tensor):
        self.U = U
        step = max(1, 2**24 // max(1, U.shape[0]))  # columns per block: 64 MB of float32
        norms = [U[:, c : c + step].square().sum(0) for c in range(0, U.shape[1], step)]
        self.col_norms = torch.cat(norms).sqrt()
        """‖u_j‖ [V]."""
        self.col_max = self.col_norms.max()
        """max_j ‖u_j‖ (a 0-d tensor)."""
        self.mean = U.mean(1, keepdim=True)
        """The mean column [d, 1]."""
        self._UT: torch.Tensor | None = None

    @property
    def UT(self) -> torch.Tensor:
        """U's transpose [V, d], contiguous (made on first use, then kept)."""
        if self._UT is None:
            self._UT = self.U.T.contiguous()
        return self._UT

    @property
    def vocab(self) -> int:
        """V, the number of columns."""
        return int(self.U.shape[1])

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        """U[:, idx] [d, m]."""
        if self._UT is not None:
            return self._UT[idx].T
        return self.U[:, idx]


@dataclass
class Factored:
    """B = W @ U [..., r, V]: W [..., r, d] (one head, or a leading head dimension), U shared."""

    W: torch.Tensor
    shared: SharedU

    @classmethod
    def plain(cls, B: torch.Tensor) -> Factored:
        """A matrix B [r, V] as W = I, U = B (multiplying by I is exact: same values, same
        ranks; for tests and small cases)."""
        return cls(torch.eye(B.shape[0], dtype=B.dtype, device=B.device), SharedU(B))

    @property
    def U(self) -> torch.Tensor:
        """The shared factor [d, V]."""
        return self.shared.U

    @property
    def shape(self) -> tuple[int, ...]:
        """(..., r, V) of B."""
        return (*self.W.shape[:-1], self.shared.vocab)

    def head(self, i: int) -> Factored:
        """Head ``i`` of a leading head dimension."""
        return Factored(self.W[i], self.shared)

    def columns(self, idx: torch.Tensor) -> torch.Tensor:
        """B[..., :, idx]: ``idx`` [m] for every head, or [h, m] one set per head (W [h, r, d])."""
        if idx.dim() == 1:
            return self.W @ self.shared.columns(idx)
        return torch.bmm(self.W, self.shared.UT[idx].transpose(1, 2))

    def rows(self, Z: torch.Tensor) -> torch.Tensor:
        """Z @ B as one product per factor, (Z W) U: the logits of these rows [..., n, V]."""
        return (Z @ self.W) @ self.shared.U

    def dense(self) -> torch.Tensor:
        """B itself."""
        return self.W @ self.shared.U
