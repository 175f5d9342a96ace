"""How far two computations of one logit can differ: the rounding margin of the pruned kernels.

A logit l_j = z·W·u_j (+ o_j), computed in floating point with any summation order and either
association of z W U, is within γ (|z||W|)·|u_j| (+ |o_j|) of its exact value, with
γ = γ_m, γ_m = m u / (1 - m u), m the product's depth (r + d, one more with an offset) and u
the unit roundoff; by Cauchy–Schwarz that is at most γ ‖|z||W|‖ max_j ‖u_j‖ (+ max |o|). A
column more than twice this above (below) a target's computed logit is above (below) it in
exact arithmetic, and the full rows decide the rest from one product.
"""

from __future__ import annotations

import torch


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


def gamma(depth: int, dtype: torch.dtype, device: torch.device) -> float:
    """γ_m = m u / (1 - m u): the relative error bound of a depth-m dot product."""
    u = unit_roundoff(dtype, device)
    return depth * u / (1 - depth * u)


def rounding_margin(
    Z: torch.Tensor,
    W: torch.Tensor,
    col_max: torch.Tensor,
    offset_max: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Per row of ``Z`` [..., n, r] read through ``W`` [..., r, d] and a shared U whose
    columns' norms are at most ``col_max`` (plus an offset up to ``offset_max``): twice the
    bound on a computed logit's error, 2 γ (‖|z||W|‖ col_max + offset_max), [..., n]."""
    depth = W.shape[-2] + W.shape[-1] + (1 if offset_max is not None else 0)
    g = gamma(depth, Z.dtype, Z.device)
    row = (Z.abs() @ W.abs()).norm(dim=-1) * col_max
    if offset_max is not None:
        row = row + offset_max
    return 2 * g * row
