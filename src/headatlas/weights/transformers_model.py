"""A ``transformers`` model to run, for the steps that need inference (validation, the
``forward`` recipe)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from headatlas.errors import ValidationInputError, WeightSourceError
from headatlas.weights import ModelSpec

if TYPE_CHECKING:
    from headatlas.circuits import ModelCircuits


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


def inference_model(
    model: ModelSpec | ModelCircuits, circuits: ModelCircuits, device: torch.device
) -> torch.nn.Module:
    """The model an experiment runs for ``model`` (whose weights ``circuits`` read): the torch
    module they were read from, where it is; else the one named (by ``model``, or by the
    circuits' source when ``model`` is the circuits), loaded onto ``device``."""
    held = getattr(circuits.source, "model", None)
    if isinstance(held, torch.nn.Module):
        return held
    named = circuits.source.name if model is circuits else model
    return load_hf_model(named).to(device)
