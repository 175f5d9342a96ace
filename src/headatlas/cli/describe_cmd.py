"""`headatlas describe` (placeholder until implemented)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `headatlas describe`."""
    p = sub.add_parser("describe", help="(not yet implemented)")
    p.set_defaults(func=lambda args: print("not yet implemented") or 1)
