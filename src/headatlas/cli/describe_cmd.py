"""`headatlas describe`: describe heads in words from their salient operations, with a chat LLM."""

from __future__ import annotations

import argparse
import sys
import unicodedata
from pathlib import Path

import pandas as pd

from headatlas import store
from headatlas.describe.backends import BACKENDS, make_backend
from headatlas.describe.run import describe_heads, load_operations
from headatlas.errors import DescribeError
from headatlas.runtime import resolve_device


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `headatlas describe`."""
    p = sub.add_parser(
        "describe",
        help="describe each head's function with a chat LLM, from its salient operations",
        description=(
            "Show each head's salient operations (from `headatlas salient --all`) to a chat model "
            "and store its description in DIR/descriptions.jsonl. Finished heads are kept if the "
            "run stops, and a re-run asks only for heads not yet described."
        ),
    )
    p.add_argument("dir", metavar="DIR", help="a model's results folder (OUT/<model-slug>/)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="openai",
        help="openai: any chat-completions server (hosted, vLLM, llama.cpp, Ollama); "
        "transformers: a local model (default model: the packaged SmolLM2) (default: openai)",
    )
    p.add_argument(
        "--base-url",
        help="chat server URL ending in /v1 (default: $HEADATLAS_LLM_BASE_URL, $OPENAI_BASE_URL)",
    )
    p.add_argument(
        "--model",
        help="model name the server serves (default: $HEADATLAS_LLM_MODEL); for transformers: "
        "'smollm2', a .gguf file, a model folder or a hub id (default: smollm2)",
    )
    p.add_argument(
        "--api-key",
        help="API key (default: $HEADATLAS_LLM_API_KEY, $OPENAI_API_KEY); prefer the variable, "
        "a key on the command line is visible to other users of the machine",
    )
    p.add_argument("--layer", type=int, help="describe heads of this layer only")
    p.add_argument("--head", type=int, help="with --layer: describe this one head")
    p.add_argument(
        "--all",
        action="store_true",
        help="describe every head with salient operations (the default when no head is named)",
    )
    p.add_argument("--heads", choices=["all"], help="same as --all")
    p.add_argument(
        "--concurrency", type=int, default=4, help="requests at once (openai backend; default: 4)"
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, help="seconds to wait for one answer (default: 60)"
    )
    p.add_argument(
        "--tokens", type=int, default=15, help="salient tokens shown per head (default: 15)"
    )
    p.add_argument(
        "--mappings", type=int, default=5, help="target tokens shown per token (default: 5)"
    )
    p.add_argument(
        "--json-mode",
        action="store_true",
        help='send response_format={"type": "json_object"} (if the server supports it)',
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        help="answer length limit: for transformers, default a budget that always fits the "
        "structured answer (200 with --no-structured); for openai, sent as max_tokens (default: "
        "the server's)",
    )
    p.add_argument(
        "--no-structured",
        action="store_true",
        help="transformers backend: decode freely instead of following the answer's JSON schema",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="transformers backend: where the describing model runs: auto (a CUDA GPU when "
        "present, else the CPU), cpu, cuda or cuda:N (default: auto)",
    )
    p.add_argument("--no-cache", action="store_true", help="ask again even for described heads")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def selected_heads(
    args: argparse.Namespace, available: list[tuple[int, int]]
) -> list[tuple[int, int]] | None:
    """The heads named by --layer/--head/--heads; None means all."""
    if args.all or args.heads == "all":
        if args.layer is not None or args.head is not None:
            raise DescribeError("--all cannot be combined with --layer/--head: drop one")
        return None
    if args.head is not None and args.layer is None:
        raise DescribeError("--head needs --layer: pass --layer L --head H")
    if args.layer is None:
        return None
    if args.head is not None:
        return [(args.layer, args.head)]
    heads = [key for key in available if key[0] == args.layer]
    if not heads:
        raise DescribeError(f"layer {args.layer} has no salient operations in {args.dir}")
    return heads


def run(args: argparse.Namespace) -> int:
    """Run `headatlas describe`."""
    available = sorted(load_operations(args.dir, tokens=args.tokens, mappings=args.mappings))
    heads = selected_heads(args, available)
    backend = make_backend(
        args.backend,
        model=args.model,
        base_url=args.base_url,
        api_key=args.api_key,
        timeout=args.timeout,
        json_mode=args.json_mode,
        max_new_tokens=args.max_new_tokens,
        structured=not args.no_structured,
        device=str(resolve_device(args.device)) if args.backend == "transformers" else None,
    )
    table = describe_heads(
        args.dir,
        backend,
        heads=heads,
        concurrency=args.concurrency,
        tokens=args.tokens,
        mappings=args.mappings,
        cache=not args.no_cache,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    print(format_table(table))
    counts = table["status"].value_counts()
    print(
        f"{counts.get('ok', 0)} ok, {counts.get('unclear', 0)} unclear, "
        f"{counts.get('failed', 0)} failed ({int(table['cached'].sum())} from cache); "
        f"records in {Path(args.dir) / store.DESCRIPTIONS}"
    )
    failed = int(counts.get("failed", 0))
    if len(table) and failed == len(table):
        print(
            "error: every head failed (no answer was the requested JSON): see the records' "
            "`error` and `raw`; try a larger model or the default structured decoding",
            file=sys.stderr,
        )
        return 1
    if failed:  # partly done: exit 0 (the answers that came are kept), but say so on stderr
        print(
            f"headatlas: {failed} of {len(table)} heads failed; re-run to retry them "
            "(finished answers are cached)",
            file=sys.stderr,
        )
    return 0


def format_table(table: pd.DataFrame, width: int = 90) -> str:
    """One line per head: layer, head, status, description (cut to fit ``width``)."""
    lines = [f"{'layer':>5} {'head':>4}  {'status':<7}  description"]
    room = max(20, width - 22)
    for row in table.itertuples(index=False):
        text = str(row.description or row.error or "")
        # One printable line, whatever the model wrote (no escape sequences reach the terminal).
        text = "".join(ch for ch in " ".join(text.split()) if unicodedata.category(ch)[0] != "C")
        if len(text) > room:
            text = text[: room - 3] + "..."
        lines.append(f"{row.layer:>5} {row.head:>4}  {row.status:<7}  {text}")
    return "\n".join(lines)
