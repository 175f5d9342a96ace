"""Options of ``headatlas export`` and the one entry point that dispatches on the format."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from headatlas.errors import OptionError, ResultsError
from headatlas.store import create_folder, write_error

FORMATS = ("dataset", "headvis")


@dataclass(frozen=True)
class ExportOptions:
    """How a results folder is written out."""

    format: str = field(default="dataset", metadata={"choices": FORMATS})
    """dataset: one parquet per table and a dataset card, loadable with `datasets.load_dataset`
    and ready for `hf upload`; headvis: HeadVis's data/ layout (config.json, scatter_data.json,
    heads/L{l}H{h}.json) filled with what a weights-only map has"""
    overwrite: bool = False
    """replace files in an OUT folder that already holds files"""

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise OptionError(
                f"export format '{self.format}' is unknown: use {' or '.join(FORMATS)}"
            )


def prepare_out(out: str | Path, overwrite: bool) -> Path:
    """The output folder, created; a non-empty one only with ``overwrite``."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ResultsError(f"export target {path} is a file: pass a folder path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise ResultsError(
            f"export target {path} is not empty: pass an empty or new folder, or --overwrite"
        )
    return create_folder(path, "the export folder", "OUT")


def export_map(
    directory: str | Path, out: str | Path, options: ExportOptions | None = None
) -> Path:
    """Write the map in results folder ``directory`` to ``out`` in ``options.format``; returns
    the folder written."""
    from headatlas.export.dataset import export_dataset
    from headatlas.export.headvis import export_headvis

    options = options or ExportOptions()
    write = export_headvis if options.format == "headvis" else export_dataset
    new = not Path(out).exists()
    try:
        return write(directory, out, overwrite=options.overwrite)
    except (OSError, ResultsError) as exc:  # a full disk, a folder that went away...
        if new:  # a new folder is all or nothing: no half export left to be mistaken for one
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(exc, ResultsError):  # already names the file and the fix
            raise
        raise write_error(Path(out), exc) from exc
