"""docs/architecture.md names every module of the package in one line (from its docstring)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_module_has_its_line_in_the_architecture_doc() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "module_index.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for path in (ROOT / "src" / "headatlas").rglob("*.py"):
        rel = path.relative_to(ROOT / "src" / "headatlas").as_posix()
        assert f"`{rel}`" in text or path.name == "__init__.py", rel
