"""`headatlas salient` (placeholder until implemented)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `headatlas salient`."""
    p = sub.add_parser("salient", help="(not yet implemented)")
    p.set_defaults(func=lambda args: print("not yet implemented") or 1)
