"""Options shared by several subcommands (model source, method switches)."""

from __future__ import annotations

import argparse

from headatlas.circuits import ModelCircuits
from headatlas.errors import OptionError
from headatlas.scoring.categories import DEFAULT_THRESHOLD
from headatlas.scoring.options import MapOptions


def add_model_source_args(p: argparse.ArgumentParser) -> None:
    """--allow-pickle and --revision."""
    p.add_argument(
        "--allow-pickle",
        action="store_true",
        help="load pickle *.bin weights (can run arbitrary code; only for trusted files)",
    )
    p.add_argument(
        "--revision",
        default=None,
        help="hub revision (branch, tag or commit); the same as MODEL@REVISION",
    )


def open_circuits(args: argparse.Namespace) -> ModelCircuits:
    """Open the model named on the command line."""
    return ModelCircuits.load(args.model, allow_pickle=args.allow_pickle, revision=args.revision)


def _k_pairs(values: list[str]) -> dict[str, int]:
    out = {}
    for item in values:
        name, sep, k = item.partition("=")
        if not sep or not k.isdigit():
            raise OptionError(
                f"--k-relation expects NAME=K with K a positive integer, got '{item}'"
            )
        out[name] = int(k)
    return out


def add_method_args(p: argparse.ArgumentParser) -> None:
    """Every scoring switch of MapOptions as an option."""
    g = p.add_argument_group("method switches (all recorded in the manifest)")
    g.add_argument(
        "--k",
        type=int,
        default=None,
        help="top-k for every relation (default: 1 for copying, 10 otherwise; 3/25 for vocabularies over 100k)",
    )
    g.add_argument(
        "--k-relation",
        action="append",
        default=[],
        metavar="NAME=K",
        help="top-k for one relation (repeatable)",
    )
    g.add_argument(
        "--no-effective-embedding",
        action="store_true",
        help="feed every layer raw token embeddings instead of MLP0(norm(W_E))",
    )
    g.add_argument(
        "--effective-embedding-layer0",
        action="store_true",
        help="also use the effective embedding for layer 0",
    )
    g.add_argument(
        "--no-pre-norm", action="store_true", help="skip each layer's pre-attention norm"
    )
    g.add_argument(
        "--no-final-norm",
        action="store_true",
        help="read out through W_U without the final norm's gain",
    )
    g.add_argument("--no-value-bias", action="store_true", help="leave out b_V")
    g.add_argument(
        "--output-bias", action="store_true", help="add the layer's shared b_O to each head"
    )
    g.add_argument("--unembed-bias", action="store_true", help="add the output head's bias (Phi)")
    g.add_argument(
        "--no-leading-space",
        action="store_true",
        help="tokenise relation words without a leading space",
    )
    g.add_argument(
        "--first-token", action="store_true", help="use the first token of multi-token targets"
    )
    g.add_argument(
        "--min-pairs",
        type=int,
        default=30,
        help="skip relations with fewer single-token pairs (default 30)",
    )
    g.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help="score at which a head implements a relation (default 0.15)",
    )
    g.add_argument(
        "--use-suppression",
        action="store_true",
        help="let suppression scores count towards categories",
    )
    g.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    g.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA GPU when present, else CPU), cpu, cuda, cuda:1...",
    )


def options_from_args(args: argparse.Namespace) -> MapOptions:
    """MapOptions from parsed arguments."""
    if args.k is not None and args.k < 1:
        raise OptionError(f"--k must be at least 1, got {args.k}")
    if not 0 <= args.threshold <= 1:
        raise OptionError(f"--threshold must be between 0 and 1, got {args.threshold}")
    if args.min_pairs < 1:
        raise OptionError(f"--min-pairs must be at least 1, got {args.min_pairs}")
    return MapOptions(
        k=args.k,
        k_per_relation=_k_pairs(args.k_relation),
        effective_embedding=not args.no_effective_embedding,
        effective_embedding_layer0=args.effective_embedding_layer0,
        pre_norm=not args.no_pre_norm,
        final_norm=not args.no_final_norm,
        value_bias=not args.no_value_bias,
        output_bias=args.output_bias,
        unembed_bias=args.unembed_bias,
        leading_space=not args.no_leading_space,
        first_token=args.first_token,
        min_pairs=args.min_pairs,
        threshold=args.threshold,
        use_suppression=args.use_suppression,
        dtype=args.dtype,
        device=args.device,
    )
