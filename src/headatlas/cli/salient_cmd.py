"""`headatlas salient`: the tokens a head amplifies most and what it maps them to."""

from __future__ import annotations

import argparse
from typing import Any

import pandas as pd

from headatlas.cli.common import (
    add_method_args,
    add_model_source_args,
    add_relation_file_args,
    calibrated_recipe,
    open_circuits,
    options_from_args,
)
from headatlas.errors import HeadAtlasError

SALIENT_OPTIONS = ("dtype", "device")
"""The MapOptions fields besides the recipe that shape salient operations."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `headatlas salient`."""
    p = sub.add_parser(
        "salient",
        help="salient operations: the tokens a head amplifies most and their top mappings",
        description=(
            "Rank every vocabulary token by how much a head amplifies it, "
            "sigma = |x W_V W_O| / |x|, and show the top tokens with the tokens the head maps "
            "them to. One head with --layer/--head (printed), or every head with --all --out "
            "(stored as OUT/<model-slug>/salient.parquet beside the map)."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="packaged name, folder, .gguf file or hub id")
    p.add_argument("--layer", type=int, help="layer of the head to show")
    p.add_argument("--head", type=int, help="head to show (with --layer)")
    p.add_argument("--all", action="store_true", help="every head of every layer (needs --out)")
    p.add_argument(
        "--layers", type=int, nargs="+", metavar="L", help="with --all: only these layers"
    )
    p.add_argument(
        "--out",
        help="results folder (with --all, and where --preset calibrated finds the calibration); "
        "the table goes to OUT/<model-slug>/",
    )
    p.add_argument("--tokens", type=int, default=15, help="salient tokens per head (default: 15)")
    p.add_argument(
        "--mappings", type=int, default=5, help="target tokens per salient token (default: 5)"
    )
    p.add_argument(
        "--no-exclude-special",
        action="store_true",
        help="keep special, added, unused, byte-fallback and whitespace-only tokens",
    )
    p.add_argument(
        "--relations",
        nargs="*",
        metavar="NAME",
        help="relations matched against the mappings: names or categories (default: all built-ins)",
    )
    add_relation_file_args(p)
    add_model_source_args(p)
    add_method_args(p, only=SALIENT_OPTIONS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print one head's salient operations, or store every head's."""
    from headatlas.scoring.salient import all_salient_operations, salient_operations

    if args.all:
        if args.out is None:
            raise HeadAtlasError("--all needs --out DIR: the folder that holds the results")
        if args.layer is not None or args.head is not None:
            raise HeadAtlasError("--all covers every head: drop --layer/--head, or drop --all")
    elif args.layers is not None:
        raise HeadAtlasError(
            "--layers selects layers for --all; for one head use --layer L --head H"
        )
    elif args.layer is None or args.head is None:
        raise HeadAtlasError(
            "name a head with --layer L --head H, or pass --all --out DIR for every head"
        )
    circuits = open_circuits(args)
    options = options_from_args(args, calibrated_recipe(args, circuits))
    common: dict[str, Any] = {
        "tokens": args.tokens,
        "mappings": args.mappings,
        "options": options,
        "exclude_special": not args.no_exclude_special,
        "relations": args.relations,
        "relation_files": args.relations_file,
    }
    if args.all:
        table = all_salient_operations(circuits, layers=args.layers, out=args.out, **common)
        from headatlas.store import model_slug

        where = f"{args.out}/{model_slug(str(circuits.summary()['name']))}/salient.parquet"
        heads = table[["layer", "head"]].drop_duplicates()
        print(f"stored salient operations of {len(heads)} heads in {where}")
        return 0
    layer: int | None = args.layer
    head: int | None = args.head
    assert layer is not None and head is not None  # checked above
    df = salient_operations(circuits, layer, head, **common)
    print(format_table(df, layer, head))
    return 0


def shown(token: str) -> str:
    """A token string safe to print: quoted, control and invisible characters escaped."""
    return repr(token)


def format_table(df: pd.DataFrame, layer: int, head: int) -> str:
    """Token → mappings, σ, one line per salient token."""
    lines = [f"layer {layer} head {head}: salient tokens (sigma = |x W_V W_O| / |x|)"]
    tokens = [shown(t) for t in df["token"]]
    width = min(24, max((len(t) for t in tokens), default=0))
    for token, sigma, mapped in zip(tokens, df["sigma"], df["mappings"]):
        targets = ", ".join(shown(m) for m in mapped)
        lines.append(f"  {token:<{width}} → {targets}   σ {sigma:.3f}")
    excluded = df.attrs.get("excluded", {})
    if excluded.get("n_excluded"):
        reasons = ", ".join(f"{n} {why}" for why, n in excluded["reasons"].items())
        lines.append(f"excluded {excluded['n_excluded']} tokens ({reasons})")
    matched = df.attrs.get("matched_relations")
    lines.append(f"matched relations: {matched or 'none'}")
    return "\n".join(lines)
