"""Inference-time checks of the static map through forward hooks on the transformers model:
dynamic scores and their correlation with static scores, and head ablation."""

from headatlas.validate.hooks import AttentionHooks, HookedRun
from headatlas.validate.options import EXPERIMENTS, ValidationOptions
from headatlas.validate.prompts import DEFAULT_TEMPLATES
from headatlas.validate.run import ValidationResults, validate
from headatlas.weights.transformers_model import load_hf_model

__all__ = [
    "DEFAULT_TEMPLATES",
    "EXPERIMENTS",
    "AttentionHooks",
    "HookedRun",
    "ValidationOptions",
    "ValidationResults",
    "load_hf_model",
    "validate",
]
