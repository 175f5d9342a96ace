"""``descriptions.jsonl``: one JSON record per head, kept safe across failures and interrupts.

While a run is going each finished head is appended as one line with a single write, so nothing
finished is lost if the run stops; a line cut short by a hard kill is ignored on reading. At the
end of a run (also an interrupted one) the file is rewritten atomically with one record per head,
sorted by (layer, head); for a head recorded twice the later line wins.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from headatlas.errors import ResultsError
from headatlas.store import write_text_atomic

HeadKey = tuple[int, int]

RECORD_FIELDS = (
    "layer",
    "head",
    "status",
    "inputs",
    "pattern",
    "description",
    "raw",
    "prompt",
    "model",
    "backend",
    "attempts",
    "cache_key",
    "error",
    "seconds",
)
"""Keys of a record; ``error`` says why a head failed and is None otherwise; ``seconds`` is the
wall time spent asking for it (all attempts)."""


def read_records(path: Path) -> dict[HeadKey, dict[str, Any]]:
    """The records in ``path`` by (layer, head); unreadable lines are skipped."""
    path = Path(path)
    if not path.is_file():
        return {}
    records: dict[HeadKey, dict[str, Any]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(
            f"{path} is not a descriptions file ({exc.__class__.__name__}): delete it and re-run "
            "`headatlas describe`"
        ) from exc
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                continue  # another tool's line: not a record
            key = (int(record["layer"]), int(record["head"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a line cut short by a kill mid-write: that head is simply redone
        records[key] = record
    return records


def _line(record: dict[str, Any]) -> str:
    # ensure_ascii keeps every line pure ASCII: no raw U+2028 or bidi characters in the file.
    return json.dumps(record, ensure_ascii=True) + "\n"


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one line, starting a new line if the file ends in a cut-off one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _line(record).encode("utf-8")
    if path.is_file() and path.stat().st_size:
        with path.open("rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                data = b"\n" + data
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_records(path: Path, records: dict[HeadKey, dict[str, Any]]) -> None:
    """Rewrite ``path`` atomically with one line per head, sorted by (layer, head)."""
    write_text_atomic("".join(_line(records[key]) for key in sorted(records)), Path(path))
