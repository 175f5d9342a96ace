"""Architecture adapters: one data entry per model family, and the resolved shape of a model."""

from __future__ import annotations

from headatlas.arch.config import ArchConfig, resolve_config
from headatlas.arch.families import FAMILIES
from headatlas.arch.spec import ArchSpec, MLPSpec, NormSpec
from headatlas.errors import UnsupportedArchitecture

SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for f in FAMILIES for t in f.model_types)


def spec_for(model_type: str) -> ArchSpec:
    """The adapter of a Hugging Face ``model_type``, or an error listing the supported ones."""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    raise UnsupportedArchitecture(
        f"model_type '{model_type}' is not supported; supported model types are: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)} (open an issue to add a family)"
    )


__all__ = [
    "FAMILIES",
    "SUPPORTED_MODEL_TYPES",
    "ArchConfig",
    "ArchSpec",
    "MLPSpec",
    "NormSpec",
    "resolve_config",
    "spec_for",
]
