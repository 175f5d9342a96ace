"""A TransformerLens model the user already holds, read by Hugging Face tensor names.

TransformerLens 4.x (``TransformerBridge``) wraps a ``transformers`` model and keeps its
parameters: each wrapped module's tensors sit one level down, under ``_original_component``, so
stripping that segment gives back the Hugging Face names and the very tensors the model
computes with. That is what this source reads.

Stated assumption (the reading used): the map reads the **raw** weights, the ones
``transformers`` loads. TransformerLens's weight processing (``enable_compatibility_mode()``
or ``process_weights()``: ``fold_ln``, ``center_writing_weights``, ``center_unembed``,
``fold_value_biases``) rewrites those tensors in place: folding the norm gains into ``W_V`` and
``W_U``, centring ``W_O`` and ``W_U`` and moving ``b_V`` into ``b_O`` changes the OV map the
recipe reads, so a processed bridge is refused with the fix (a fresh bridge, or
``enable_compatibility_mode(no_processing=True)``, which keeps the hook aliases).

TransformerLens 3.x ``HookedTransformer`` stores its own parameter layout (``W_V`` [n_heads,
d_model, d_head] ...) and, from ``from_pretrained``, already processed weights; it is not read
here: TransformerLens 4.x (the release on PyPI) removed it, and one environment holds one
TransformerLens. Pass the Hugging Face model or its name instead.
"""

from __future__ import annotations

from typing import Any

import torch

from headatlas.errors import WeightSourceError
from headatlas.weights.inmemory import InMemorySource

WRAPPED = "._original_component"


def is_transformer_lens(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens object (bridge or HookedTransformer)."""
    return type(model).__module__.split(".")[0] == "transformer_lens"


def _version() -> str:
    import importlib.metadata as md

    try:
        return md.version("transformer-lens")
    except md.PackageNotFoundError:  # pragma: no cover - the object exists, so it is installed
        return "unknown"


class TransformerLensSource(InMemorySource):
    """A TransformerLens ``TransformerBridge``: the ``transformers`` model it wraps, with raw
    (unprocessed) weights, by Hugging Face names."""

    def __init__(self, bridge: Any, name: str | None = None):
        kind = type(bridge).__name__
        if not hasattr(bridge, "original_model"):
            raise WeightSourceError(
                f"TransformerLens {kind} is not read (TransformerLens 3.x layout): pass the "
                "Hugging Face model or its name, or a TransformerLens 4.x TransformerBridge"
            )
        if getattr(bridge, "_weights_processed", False):
            raise WeightSourceError(
                f"this {kind}'s weights were processed by TransformerLens (fold_ln / centring / "
                "folded value biases change the OV map): boot a fresh bridge and map it before "
                "enable_compatibility_mode(), or call enable_compatibility_mode(no_processing=True)"
            )
        hf = bridge.original_model
        cfg = getattr(bridge, "cfg", None)
        super().__init__(
            hf,
            tokenizer=getattr(bridge, "tokenizer", None),
            name=name or getattr(cfg, "model_name", None) or None,
        )
        self.kind = kind
        self._tensors = hf_named_tensors(hf)

    def describe(self) -> dict[str, Any]:
        """Manifest entry."""
        return {
            "kind": "transformer-lens",
            "name": self.name,
            "class": self.kind,
            "wrapped_class": type(self.model).__name__,
            "transformer_lens": _version(),
            "weights": "raw (unprocessed)",
        }


def hf_named_tensors(hf: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The wrapped model's state dict under Hugging Face names (wrapper segments stripped).
    A name the bridge adds for its own split view (GPT-2's ``attn.q``) is kept too; it never
    shadows a Hugging Face name with a different tensor."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf.state_dict(keep_vars=False).items():
        name = key.replace(WRAPPED, "")
        if name in out and not torch.equal(out[name], value):
            raise WeightSourceError(
                f"TransformerLens bridge holds two different tensors named {name}: pass the "
                "Hugging Face model instead"
            )
        out[name] = value
    return out
