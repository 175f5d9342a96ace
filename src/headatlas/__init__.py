"""headatlas: map what every attention head of a language model does, from its weights alone.

The data path runs one way: ``weights`` (where tensors come from) → ``arch`` (one adapter per
family) → ``circuits`` (per-head OV factors) → ``scoring`` (relation scores, categories,
salient operations) → ``store`` (tables + manifest) → ``report`` (figures, HTML atlas).
``validate`` checks the static map against inference.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from headatlas.circuits import ModelCircuits
    from headatlas.scoring.mapping import map_heads
    from headatlas.scoring.options import MapOptions
    from headatlas.scoring.recipe import Recipe
    from headatlas.store import MapResults, load_results

_LAZY = {
    "ModelCircuits": "headatlas.circuits",
    "map_heads": "headatlas.scoring.mapping",
    "MapOptions": "headatlas.scoring.options",
    "Recipe": "headatlas.scoring.recipe",
    "MapResults": "headatlas.store",
    "load_results": "headatlas.store",
    "open_source": "headatlas.weights",
}


def __getattr__(name: str) -> Any:
    # Lazy so that `import headatlas` stays cheap (torch loads only when needed).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'headatlas' has no attribute {name!r}")


__all__ = [
    "MapOptions",
    "MapResults",
    "ModelCircuits",
    "Recipe",
    "load_results",
    "map_heads",
    "open_source",
]
