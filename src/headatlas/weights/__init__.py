"""Where tensors come from: local safetensors folders, GGUF files, hub ids, in-memory models,
and the packaged real models. :func:`open_source` picks the right one."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeAlias

from headatlas.errors import WeightSourceError
from headatlas.weights.base import WeightSource
from headatlas.weights.gguf_file import GGUFSource
from headatlas.weights.hub import HubSource, looks_like_hub_id, split_revision
from headatlas.weights.inmemory import InMemorySource
from headatlas.weights.packaged import PACKAGED_DISPLAY, PACKAGED_NAMES, packaged_path
from headatlas.weights.safetensors_dir import SafetensorsDirSource

ModelSpec: TypeAlias = str | Path | WeightSource | Any
"""A packaged name, a path (folder or .gguf), a hub id, a WeightSource, a torch model, or a
TransformerLens TransformerBridge / HookedTransformer (unprocessed weights)."""


def open_source(
    model: ModelSpec,
    *,
    allow_pickle: bool = False,
    revision: str | None = None,
    tokenizer: Any = None,
) -> WeightSource:
    """Open whatever the user named as a :class:`WeightSource`.

    A hub id may carry its revision as ``org/name@REVISION`` (branch, tag or commit), the same
    as passing ``revision``.
    """
    import torch

    if isinstance(model, WeightSource):
        return model
    from headatlas.weights.transformer_lens import is_transformer_lens, transformer_lens_source

    if is_transformer_lens(model):
        return transformer_lens_source(model)
    if isinstance(model, torch.nn.Module):
        return InMemorySource(model, tokenizer=tokenizer)
    spec, pinned = split_revision(str(model))
    if "://" in spec:
        raise WeightSourceError(
            f"'{spec}' is a URL: headatlas reads a packaged name ({', '.join(PACKAGED_NAMES)}), "
            "a local folder or .gguf file, or a hub id (org/name); download the model first"
        )
    if not spec.strip():
        raise WeightSourceError(
            "no model given (empty name): pass a packaged name, a folder, a .gguf file or a hub id"
        )
    if pinned is not None:
        if revision is not None and revision != pinned:
            raise WeightSourceError(
                f"model '{model}' names revision '{pinned}' but --revision is '{revision}': "
                "give the revision once"
            )
        if not looks_like_hub_id(spec):
            raise WeightSourceError(
                f"model '{model}': a revision (@{pinned}) applies only to hub ids (org/name), "
                f"and '{spec}' is not one"
            )
        revision = pinned
    if spec in PACKAGED_NAMES:
        return GGUFSource(packaged_path(spec), name=spec, display=PACKAGED_DISPLAY[spec])
    path = Path(spec).expanduser()
    if spec.endswith(".gguf") or path.is_file():
        if path.is_file() and not spec.endswith(".gguf"):
            raise WeightSourceError(
                f"{path} is a single file that is not .gguf: pass a Hugging Face model folder "
                "(with config.json) or a .gguf file"
            )
        return GGUFSource(path)
    if path.is_dir():
        return SafetensorsDirSource(path, allow_pickle=allow_pickle)
    if looks_like_path(spec):
        raise WeightSourceError(
            f"model path {path} does not exist: check the spelling, or pass a packaged name "
            f"({', '.join(PACKAGED_NAMES)}) or a hub id (org/name)"
        )
    if looks_like_hub_id(spec):
        from headatlas.arch import spec_for
        from headatlas.arch.config import text_config
        from headatlas.arch.needed import needed_tensors

        def needed(config: dict[str, Any]) -> list[str]:
            return needed_tensors(spec_for(text_config(config)["model_type"]), config)

        return HubSource(spec, needed, revision=revision)
    raise WeightSourceError(
        f"unknown model '{spec}': not a packaged model ({', '.join(PACKAGED_NAMES)}), "
        "not an existing folder or .gguf file, and not a hub id (org/name)"
    )


def looks_like_path(spec: str) -> bool:
    """Whether a string can only mean a filesystem path (absolute, relative with ./ or ../,
    home-relative, or with more than one separator)."""
    return (
        spec.startswith(("/", "./", "../", "~", "\\"))
        or spec.count("/") > 1
        or "\\" in spec
        or (len(spec) > 1 and spec[1] == ":")  # Windows drive
    )


__all__ = [
    "PACKAGED_NAMES",
    "GGUFSource",
    "HubSource",
    "InMemorySource",
    "SafetensorsDirSource",
    "WeightSource",
    "open_source",
]
