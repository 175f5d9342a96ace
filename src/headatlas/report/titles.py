"""Panel and model titles: the model's name, and its recipe when one model appears under two
recipes side by side."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from headatlas.store import MapResults


def recipe_label(results: MapResults) -> str:
    """The recipe a map was computed with, as a short label ("" when the manifest names no
    recipe)."""
    recorded = results.manifest.get("recipe")
    if isinstance(recorded, dict) and recorded.get("label"):
        return str(recorded["label"])
    recipe = results.recipe
    return recipe.label() if recipe is not None else ""


def panel_titles(results: Sequence[MapResults]) -> list[str]:
    """Each map's title: its model's display name, followed by " — <recipe>" for a model that
    appears more than once (so two recipes of one model can be told apart)."""
    names = [r.display_name for r in results]
    repeated = {n for n, c in Counter(names).items() if c > 1}
    titles = []
    for r, name in zip(results, names, strict=True):
        label = recipe_label(r) if name in repeated else ""
        titles.append(f"{name} — {label}" if label else name)
    return titles


def class_level_of(results: MapResults) -> list[str]:
    """The relations the map flagged class-level (its null reaches the threshold: shuffled
    targets score alike, see :mod:`headatlas.scoring.null`); empty for maps before the null."""
    found = results.manifest.get("relations_class_level")
    return [str(r) for r in found] if isinstance(found, list) else []


def class_level_caption(results: Sequence[MapResults]) -> str:
    """A caption line naming each map's class-level relations ("" when there are none)."""
    parts = []
    many = len(results) > 1
    for r, title in zip(results, panel_titles(results), strict=True):
        names = class_level_of(r)
        if names:
            parts.append((f"{title}: " if many else "") + ", ".join(names))
    if not parts:
        return ""
    return "class-level (shuffled targets score alike): " + "; ".join(parts)
