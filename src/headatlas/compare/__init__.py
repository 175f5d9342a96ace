"""Comparisons between maps: two checkpoints head by head (:func:`diff_maps`), and many models
side by side (:mod:`headatlas.compare.cross_model`). Plain tables; figures live in ``report``."""

from headatlas.compare.diff import MapDiff, diff_maps

__all__ = ["MapDiff", "diff_maps"]
