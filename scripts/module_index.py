"""Write the "Every module" section of docs/architecture.md: one line per module of the
package, from the first sentence of its docstring (``--check``: exit 1 when it is stale)."""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "headatlas"
DOC = ROOT / "docs" / "architecture.md"
BEGIN = "<!-- module index: scripts/module_index.py writes this section -->"
END = "<!-- end of module index -->"


def module_lines() -> list[str]:
    """One Markdown table row per module: its path and the first sentence of its docstring."""
    rows = ["| module | what it does |", "|---|---|"]
    for path in sorted(PACKAGE.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        first = " ".join(doc.strip().split("\n\n")[0].split())
        first = first.split(". ")[0].rstrip(".") + "." if first else ""
        if not first and path.name == "__init__.py":
            continue
        rel = path.relative_to(PACKAGE).as_posix()
        rows.append(f"| `{rel}` | {first.replace('|', '/')} |")
    return rows


def render(text: str) -> str:
    """``text`` with the section between the markers rewritten."""
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOC}: the markers of the module index are missing")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + BEGIN + "\n" + "\n".join(module_lines()) + "\n" + END + tail


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when the section is stale")
    args = ap.parse_args()
    text = DOC.read_text(encoding="utf-8")
    new = render(text)
    if args.check:
        if new != text:
            print(f"{DOC} is stale: run python scripts/module_index.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
