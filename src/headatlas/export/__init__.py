"""Maps that leave headatlas: a Hugging Face ``datasets`` folder and HeadVis's per-head layout."""

from __future__ import annotations

from headatlas.export.dataset import export_dataset
from headatlas.export.headvis import export_headvis
from headatlas.export.options import ExportOptions, export_map

__all__ = ["ExportOptions", "export_dataset", "export_headvis", "export_map"]
