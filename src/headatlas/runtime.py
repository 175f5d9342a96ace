"""Where and in what precision scores are computed: a device and a dtype by name, checked
once, before anything is loaded."""

from __future__ import annotations

import torch

from headatlas.errors import OptionError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
"""Storage dtypes by the names options and the command line use."""


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first CUDA GPU when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise OptionError(f"device '{name}' is not valid: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "meta":
        raise OptionError(
            f"device '{name}' holds no values, so nothing can be scored on it: use cpu or cuda"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(
            f"device '{name}' asked for, but no CUDA GPU is available: use --device cpu"
        )
    return device


def resolve_dtype(name: str) -> torch.dtype:
    """float32 / float64 / bfloat16 by name."""
    if name not in DTYPES:
        raise OptionError(f"dtype '{name}' is not supported: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def compute_dtype(storage: torch.dtype) -> torch.dtype:
    """The dtype ranks are computed in: float64 when asked for, else float32 whatever the
    storage dtype (bfloat16 logits would round ties apart, and bf16 matmul is ~400x slower
    than fp32 on CPUs without native bf16)."""
    return torch.float64 if storage == torch.float64 else torch.float32
