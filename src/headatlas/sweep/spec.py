"""What a sweep maps: a list of models and hub revisions, from the command line or a file.

A spec file is plain text (one ``MODEL[@REVISION]`` a line, ``#`` comments), or JSON / TOML with
a ``models`` list whose items are ``"MODEL[@REVISION]"`` strings or
``{model = "org/name", revisions = ["step1000", "step2000"]}`` tables.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from headatlas.errors import OptionError
from headatlas.weights.hub import split_revision, with_revision
from headatlas.weights.packaged import PACKAGED_NAMES

SPEC_SUFFIXES = (".txt", ".json", ".toml")
_STEP = re.compile(r"step[-_]?(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class SweepEntry:
    """One map of a sweep: a model (packaged name, path or hub id) at an optional revision."""

    model: str
    """What opens the weights: packaged name, absolute path, or hub id."""
    revision: str | None = None
    """Hub revision (branch, tag or commit), or None for the default branch."""

    @property
    def spec(self) -> str:
        """``MODEL[@REVISION]``: the name this entry goes by in the ledger and tables."""
        return with_revision(self.model, self.revision)

    @property
    def step(self) -> int | None:
        """The training step a revision names (``step1000`` -> 1000), else None."""
        match = _STEP.search(self.revision or "")
        return int(match.group(1)) if match else None


def parse_entry(text: str, base: Path | None = None) -> SweepEntry:
    """One ``MODEL[@REVISION]``; a relative path that exists (from ``base``) becomes absolute,
    so tasks on other processes find it."""
    text = text.strip()
    model, revision = split_revision(text)
    if model in PACKAGED_NAMES:  # a packaged name wins over a folder of that name, as in map
        return SweepEntry(model, revision)
    for root in ([base] if base is not None else []) + [Path.cwd()]:
        candidate = (root / model).expanduser()
        if candidate.exists() and not Path(model).is_absolute():
            model = str(candidate.resolve())
            break
    return SweepEntry(model, revision)


def _from_item(item: Any, where: str, base: Path) -> list[SweepEntry]:
    if isinstance(item, str):
        return [parse_entry(item, base)]
    if isinstance(item, dict) and isinstance(item.get("model"), str):
        revisions = item.get("revisions", [item.get("revision")])
        if not isinstance(revisions, list) or not all(
            r is None or isinstance(r, str) for r in revisions
        ):
            raise OptionError(f"{where}: 'revisions' of {item['model']} must be a list of names")
        entry = parse_entry(item["model"], base)
        return [SweepEntry(entry.model, r or entry.revision) for r in revisions or [None]]
    raise OptionError(
        f"{where}: each item of 'models' is 'MODEL[@REVISION]' or "
        f"{{model = ..., revisions = [...]}}, got {item!r}"
    )


def read_spec_file(path: Path) -> list[SweepEntry]:
    """Entries of a ``.txt``, ``.json`` or ``.toml`` spec file."""
    text = path.read_text()
    if path.suffix == ".txt":
        lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
        return [parse_entry(line, path.parent) for line in lines if line]
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise OptionError(f"sweep spec {path} does not parse ({exc}): fix the file") from exc
    models = data.get("models") if isinstance(data, dict) else None
    if not isinstance(models, list) or not models:
        raise OptionError(f"sweep spec {path} needs a non-empty 'models' list")
    return [e for item in models for e in _from_item(item, str(path), path.parent)]


def sweep_entries(items: Sequence[str]) -> list[SweepEntry]:
    """Entries from command-line words: spec files (``.txt``/``.json``/``.toml``) or models.
    Repeats are dropped (each map runs once)."""
    entries: list[SweepEntry] = []
    for item in items:
        path = Path(item)
        if path.suffix in SPEC_SUFFIXES:
            if not path.is_file():
                raise OptionError(f"sweep spec {path} does not exist: check the path")
            entries.extend(read_spec_file(path))
        else:
            entries.append(parse_entry(item))
    unique = list(dict.fromkeys(entries))
    if not unique:
        raise OptionError("the sweep names no model: pass models or a spec file")
    return unique
