"""A ``transformers`` model to run, for the steps that need inference (validation, the
``forward`` recipe)."""

from __future__ import annotations

import torch

from headatlas.errors import ValidationInputError, WeightSourceError
from headatlas.weights import ModelSpec


def load_hf_model(model: ModelSpec) -> torch.nn.Module:
    """The ``transformers`` model (float32, eval) for a packaged name, .gguf, folder or hub id
    (``org/name@REVISION`` included); a torch module is returned as it is."""
    if isinstance(model, torch.nn.Module):
        return model
    from headatlas.weights.hf_model import load_causal_lm

    try:
        hf: torch.nn.Module = load_causal_lm(str(model), purpose="validation")
    except WeightSourceError as exc:
        raise ValidationInputError(str(exc)) from exc
    return hf
