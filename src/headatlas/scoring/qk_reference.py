"""The plain per-head QK reading, nothing batched or folded: the reference the fast static QK
scores are tested against (float64 on tiny models, same ranks)."""

from __future__ import annotations

import torch

from headatlas.circuits import ModelCircuits
from headatlas.qk_circuits import read_qk
from headatlas.scoring.qk import QKOptions


def head_logits_reference(
    circuits: ModelCircuits,
    layer: int,
    head: int,
    X: torch.Tensor,
    options: QKOptions,
    pre_norm: bool = True,
) -> torch.Tensor:
    """Static logits [n, n] of one head for inputs X [n, d], the plain way: the query and key
    projections of this head alone, the rotation applied at each offset and averaged (``offsets``)
    or the fast pairs zeroed in both vectors (``slow``), in X's dtype."""
    qk = read_qk(circuits, layer).to(X.dtype)
    u = qk.attn_norm(X) if pre_norm else X
    g = head // qk.group_size
    q = u @ qk.W_Q[head]
    k = u @ qk.W_K[g]
    if qk.b_Q is not None:
        q = q + qk.b_Q[head]
    if qk.b_K is not None:
        k = k + qk.b_K[g]
    if qk.q_norm is not None:
        q = qk.q_norm(q)
    if qk.k_norm is not None:
        k = qk.k_norm(k)
    rot = qk.rotary
    n = X.shape[0]
    if rot.rot_dims == 0 or options.rotary == "none":
        s = q @ k.T
    elif options.rotary == "slow":
        keep = torch.ones(q.shape[-1], dtype=X.dtype)
        fast = rot.inv_freq * options.max_offset >= torch.pi / 2
        half = rot.rot_dims // 2
        keep[:half][fast] = 0
        keep[half : rot.rot_dims][fast] = 0
        s = (q * keep) @ (k * keep).T
    else:
        s = torch.zeros(n, n, dtype=X.dtype)
        for delta in range(1, options.max_offset + 1):
            qr = rot.rotate(q, torch.full((n,), delta))
            kr = rot.rotate(k, torch.zeros(n, dtype=torch.int64))
            s = s + qr @ kr.T
        s = s / options.max_offset
    return qk.cap(s * qk.scale)
