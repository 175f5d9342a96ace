"""OV subspace affinity: which heads write into the same part of the residual stream.

A head's OV circuit maps x to x · W_V^h · W_O^h · diag(g) (g: Gemma 2/3's post-attention norm
gain, ones elsewhere). Its *output subspace* S_h is the row space of that d × d matrix, of rank
r_h <= d_head, found from the factors without forming it: W_V^h = Q R (QR), then the right
singular vectors of R · W_O^h · diag(g) whose singular value exceeds ``RANK_TOL`` × the largest.

The affinity of heads i and j is the mean squared cosine of the principal angles between S_i
and S_j::

    affinity(i, j) = ||U_i^T U_j||_F^2 / min(r_i, r_j)        (U: orthonormal bases)

in [0, 1]: 1 when one subspace contains the other, 0 when they are orthogonal. Two random
subspaces of dimensions r_i, r_j in R^d have expected affinity max(r_i, r_j) / d (the chance
level shown beside it: 64 / 576 = 0.11 for SmolLM2, 256 / 640 = 0.40 for Gemma 3 270M).

All pairs at once: ||U_i^T U_j||_F^2 = <P_i, P_j> with the projector P = U U^T, so the affinity
matrix is one Gram matrix of the flattened projectors ([n_heads, d^2]; 270 × 331 776 floats for
SmolLM2), computed in blocks. Stored as ``ov_affinity.parquet`` beside the map: each head's
``MAX_ALIKE`` most alike heads (layer, head, rank, other_layer, other_head, affinity, chance).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from headatlas.circuits import LayerOV, ModelCircuits
from headatlas.store import MapResults, read_table, write_parquet_atomic

OV_AFFINITY = "ov_affinity.parquet"
"""The affinity table beside a map (``scripts/ov_affinity.py``)."""
AFFINITY_COLUMNS = ("layer", "head", "rank", "other_layer", "other_head", "affinity", "chance")
MAX_ALIKE = 5
"""Most alike heads kept per head."""
RANK_TOL = 1e-6
"""Singular values below this share of a head's largest do not span its subspace."""
_BLOCK = 64  # heads per projector block


def output_bases(ov: LayerOV) -> list[torch.Tensor]:
    """Orthonormal bases [d, r_h] of each query head's OV output subspace (float64)."""
    d = ov.W_O.shape[-1]
    gain = ov.out_gain(d).double()
    out = []
    for h in range(ov.n_heads):
        _, R = torch.linalg.qr(ov.head_W_V(h).double())  # [d_head, d_head]
        core = R @ (ov.W_O[h].double() * gain)  # [d_head, d]
        _, s, vh = torch.linalg.svd(core, full_matrices=False)
        keep = s > RANK_TOL * s.max() if s.numel() and s.max() > 0 else s > 0
        out.append(vh[keep].T.contiguous())
    return out


def affinity_matrix(bases: list[torch.Tensor]) -> np.ndarray:
    """[n, n] affinity of every pair of subspaces (the diagonal is 1 for non-empty ones)."""
    n = len(bases)
    ranks = torch.tensor([b.shape[1] for b in bases], dtype=torch.float64)
    out = torch.zeros(n, n, dtype=torch.float64)

    def projectors(lo: int, hi: int) -> torch.Tensor:
        return torch.stack([(b @ b.T).reshape(-1).float() for b in bases[lo:hi]])

    for i in range(0, n, _BLOCK):
        Pi = projectors(i, min(n, i + _BLOCK))
        for j in range(i, n, _BLOCK):
            Pj = Pi if j == i else projectors(j, min(n, j + _BLOCK))
            block = (Pi @ Pj.T).double()
            out[i : i + len(Pi), j : j + len(Pj)] = block
            out[j : j + len(Pj), i : i + len(Pi)] = block.T
    denom = torch.minimum(ranks[:, None], ranks[None, :]).clamp(min=1)
    return (out / denom).clamp(0, 1).numpy()


def model_affinity(circuits: ModelCircuits) -> tuple[np.ndarray, np.ndarray]:
    """(affinity [n, n], ranks [n]) of every head of a model, index layer × n_heads + head."""
    bases: list[torch.Tensor] = []
    with torch.no_grad():
        for ov in circuits.layers():
            bases.extend(output_bases(ov))
    return affinity_matrix(bases), np.array([b.shape[1] for b in bases])


def top_alike(
    affinity: np.ndarray, ranks: np.ndarray, n_heads: int, d_model: int, k: int = MAX_ALIKE
) -> pd.DataFrame:
    """Each head's ``k`` most alike others (ties: lower index first) as a table."""
    n = len(affinity)
    a = affinity.copy()
    np.fill_diagonal(a, -np.inf)
    k = min(k, n - 1)
    rows = []
    for i in range(n):
        order = np.lexsort((np.arange(n), -a[i]))[:k]
        for j in order:
            rows.append(
                (i // n_heads, i % n_heads, int(ranks[i]), int(j) // n_heads, int(j) % n_heads,
                 float(affinity[i, j]), max(int(ranks[i]), int(ranks[j])) / d_model)
            )  # fmt: skip
    return pd.DataFrame(rows, columns=list(AFFINITY_COLUMNS))


def write_ov_affinity(circuits: ModelCircuits, directory: Path) -> pd.DataFrame:
    """Compute every head's most alike heads and write ``directory/ov_affinity.parquet``."""
    affinity, ranks = model_affinity(circuits)
    cfg = circuits.cfg
    table = top_alike(affinity, ranks, cfg.n_heads, cfg.d_model)
    write_parquet_atomic(table, Path(directory) / OV_AFFINITY)
    return table


def read_ov_affinity(results: MapResults) -> pd.DataFrame | None:
    """The affinity table beside a map, or None when there is none."""
    path = results.directory / OV_AFFINITY
    return read_table(path, AFFINITY_COLUMNS) if path.is_file() else None


def alike_by_head(results: MapResults) -> list[list[float]] | None:
    """Per head index: flat [index, affinity in thousandths, ...] best first, then the chance
    level in thousandths as the last item; None without a table."""
    table = read_ov_affinity(results)
    if table is None:
        return None
    H, n = results.n_heads, results.n_layers * results.n_heads
    ok = (
        table["layer"].between(0, results.n_layers - 1)
        & table["head"].between(0, H - 1)
        & table["other_layer"].between(0, results.n_layers - 1)
        & table["other_head"].between(0, H - 1)
    )
    table = table[ok].sort_values(["layer", "head", "affinity"], ascending=[True, True, False])
    out: list[list[float]] = [[] for _ in range(n)]
    chance: dict[int, float] = {}
    for row in table.itertuples(index=False):
        i = int(row.layer) * H + int(row.head)
        out[i] += [
            int(row.other_layer) * H + int(row.other_head),
            round(float(row.affinity) * 1000),
        ]
        chance[i] = max(chance.get(i, 0.0), float(row.chance))
    return [[*v, round(chance[i] * 1000)] if v else [] for i, v in enumerate(out)]
