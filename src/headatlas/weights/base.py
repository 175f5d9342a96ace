"""The weight-source interface: named tensors read one at a time, plus config and tokenizer."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch

# Checkpoint name prefixes that differ between how a model was saved and the *ForCausalLM
# module tree (e.g. the original GPT-2 files have no "transformer." prefix; Gemma 3
# multimodal checkpoints nest the text model under "language_model.").
_PREFIXES = ("", "transformer.", "model.", "language_model.", "model.language_model.")


class WeightSource(ABC):
    """Where tensors come from. Tensor names follow the Hugging Face ``*ForCausalLM`` naming."""

    name: str
    """What the user passed (path, hub id, packaged name)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The Hugging Face config as a dict (``model_type`` included)."""

    @abstractmethod
    def keys(self) -> list[str]:
        """Names of every tensor the source holds."""

    @abstractmethod
    def read(self, name: str) -> torch.Tensor:
        """Read one tensor (exact name from :meth:`keys`), without loading the others."""

    @abstractmethod
    def tokenizer(self) -> Any:
        """The model's tokenizer (a ``transformers`` tokenizer)."""

    def start_token_id(self) -> tuple[bool, int | None]:
        """(known, id): the tokenizer's BOS id when the weights' own metadata says it without
        building the tokenizer (known=False: ask the tokenizer)."""
        return False, None

    def tokenizer_key(self) -> str | None:
        """What the tokenizer is built from (a content hash of its files), so that what is
        derived from it can be cached; None when unknown (nothing is cached then)."""
        return None

    def read_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """``read(name).narrow(dim, start, stop - start)``; sources that can read a part
        without the whole (safetensors) do so."""
        return self.read(name).narrow(dim, start, stop - start)

    def row_blocks(self, name: str, rows: int) -> tuple[tuple[int, ...], Iterator[torch.Tensor]]:
        """(shape, blocks of at most ``rows`` consecutive rows): a tensor streamed along its
        first dimension. Sources that can read a part without the whole (safetensors) hold one
        block at a time; the others read the tensor once and hand out views."""
        t = self.read(name)
        return tuple(t.shape), (t[i : i + rows] for i in range(0, t.shape[0], rows))

    def describe(self) -> dict[str, Any]:
        """What the manifest records about the source."""
        return {"kind": type(self).__name__, "name": self.name}

    def display_name(self) -> str:
        """Short human name for figures."""
        return self.name.rstrip("/").split("/")[-1]

    def resolve(self, name: str) -> str | None:
        """The stored name of a ``*ForCausalLM`` tensor name, trying known prefix variants."""
        keys = self._key_set()
        if name in keys:
            return name
        stripped = name
        for prefix in ("transformer.", "model.", "gpt_neox."):
            if name.startswith(prefix) and prefix != "gpt_neox.":
                stripped = name[len(prefix) :]
                break
        for prefix in _PREFIXES:
            for candidate in (prefix + name, prefix + stripped):
                if candidate in keys:
                    return candidate
        return None

    def _key_set(self) -> set[str]:
        cached: set[str] | None = getattr(self, "_keys_cache", None)
        if cached is None:
            cached = set(self.keys())
            self._keys_cache = cached
        return cached
