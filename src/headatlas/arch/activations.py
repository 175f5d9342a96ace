"""Activation functions by their Hugging Face config name (``hidden_act``).

The common ones are written out here so that mapping a model does not import
``transformers.activations`` (about 2 s of start-up on a small CPU: it pulls in transformers'
model-loading and torch.distributed). Each equals transformers' ``ACT2FN`` entry bit for bit
(``tests/test_arch_exact.py``); any other name is taken from ``ACT2FN``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional as F

Activation = Callable[[torch.Tensor], torch.Tensor]


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    return (
        0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    )


def _gelu_fast(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)))


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Activation] = {
    "gelu": F.gelu,
    "gelu_new": _gelu_new,
    "gelu_fast": _gelu_fast,
    "gelu_pytorch_tanh": _gelu_tanh,
    "quick_gelu": _quick_gelu,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
}
"""Config name -> function, for the activations written out here."""


def activation(name: str) -> Activation:
    """The activation a config names (transformers' ``ACT2FN[name]`` for names not above)."""
    fn = ACTIVATIONS.get(name)
    if fn is not None:
        return fn
    from transformers.activations import ACT2FN

    found: Activation = ACT2FN[name]
    return found
