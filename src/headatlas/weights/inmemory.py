"""A ``transformers`` model object the user already holds: its parameters, read by name."""

from __future__ import annotations

from typing import Any

import torch

from headatlas.weights.base import WeightSource


class InMemorySource(WeightSource):
    """Wraps a ``PreTrainedModel`` (``*ForCausalLM``); tensors are detached float copies."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any = None, name: str | None = None):
        self.model = model
        self._tokenizer = tokenizer
        cfg = getattr(model, "config", None)
        self.name = name or str(getattr(cfg, "_name_or_path", "") or type(model).__name__)
        self._tensors = dict(model.state_dict(keep_vars=False))

    def config(self) -> dict[str, Any]:
        """The model's config as a dict."""
        data: dict[str, Any] = self.model.config.to_dict()  # type: ignore[operator, union-attr]
        return data

    def keys(self) -> list[str]:
        """State-dict names."""
        return list(self._tensors)

    def read(self, name: str) -> torch.Tensor:
        """A detached copy of one parameter."""
        return self._tensors[name].detach().clone()

    def tokenizer(self) -> Any:
        """The tokenizer given with the model, else one loaded from the model's name."""
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.name)
        return self._tokenizer

    def describe(self) -> dict[str, Any]:
        """Manifest entry."""
        return {"kind": "in-memory", "name": self.name, "class": type(self.model).__name__}
