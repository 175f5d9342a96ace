"""The ``headatlas`` command line: one module per subcommand, each thin over the Python API."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from headatlas.errors import HeadAtlasError

# Each module defines ``add_parser(subparsers)`` which registers its subcommand and sets
# ``func(args) -> int`` as the parser default.
COMMANDS = (
    "info",
    "map",
    "figure",
    "report",
    "salient",
    "describe",
    "validate",
    "sweep",
    "diff",
    "calibrate",
    "export",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="headatlas",
        description="Map what every attention head of a language model does, from its weights.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"headatlas.cli.{name}_cmd")
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from headatlas.interrupts import install

    install()
    try:
        return int(args.func(args) or 0)
    except HeadAtlasError as exc:
        print(f"headatlas: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the system refused (unwritable, too long, not a folder...)
        from headatlas.store import is_disk_full

        where = f" {exc.filename}" if exc.filename else ""
        if is_disk_full(exc):
            print(
                f"headatlas: error: cannot write{where}: no space left on the device; free "
                "space on that disk or choose another output folder",
                file=sys.stderr,
            )
            return 2
        reason = " ".join(str(exc.strerror or exc).split())
        print(f"headatlas: error: cannot use{where}: {reason}; check the path", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "headatlas: interrupted; finished work is saved and a re-run resumes from it",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
