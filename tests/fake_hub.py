"""A local Hugging Face hub cache laid out the way ``huggingface_hub`` writes it, so hub ids
(and ``@revision``\\s) resolve offline. Plain functions: tests import them with
``from fake_hub import ...``."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def commit_of(repo: str, revision: str) -> str:
    """A stable 40-hex commit id for one revision of a fake repository."""
    return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()


def add_revision(cache: Path, repo: str, revision: str, model_folder: Path) -> Path:
    """Put ``model_folder``'s files in ``cache`` as ``repo`` at ``revision``; return the
    snapshot folder (``snapshots/<commit>``; ``refs/<revision>`` points at it)."""
    org, name = repo.split("/")
    entry = cache / f"models--{org}--{name}"
    commit = commit_of(repo, revision)
    snap = entry / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    (entry / "refs").mkdir(parents=True, exist_ok=True)
    (entry / "refs" / revision).write_text(commit)
    for f in model_folder.iterdir():
        shutil.copy(f, snap / f.name)
    return snap
