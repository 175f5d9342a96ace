"""Validation of the static map on the packaged SmolLM2-135M-Instruct, every relation that
survives its tokenizer: correlative (static vs dynamic scores), multi-token sources, and causal
(ablating relation heads vs random heads and controls).

Capped to finish in minutes on two CPU cores; the caps are options and are printed. Run:

    PYTHONPATH=src python benchmarks/validate_smollm2.py [--out DIR] [--max-prompts N] ...
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from headatlas.circuits import ModelCircuits
from headatlas.report.validation_tables import causal_markdown, correlation_markdown
from headatlas.validate import DEFAULT_TEMPLATES, ValidationOptions, load_hf_model
from headatlas.validate.run import validate


def main() -> int:
    """Run the experiments and print the tables."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="/tmp/headatlas-validate-bench")
    p.add_argument("--max-prompts", type=int, default=32, help="pairs per relation (correlative)")
    p.add_argument("--templates", type=int, default=2, help="first N of the four context templates")
    p.add_argument(
        "--causal-prompts", type=int, default=16, help="pairs per relation, in each template"
    )
    p.add_argument("--steps", type=int, nargs="+", default=[4], help="causal steps (m added)")
    p.add_argument("--random-draws", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    circuits = ModelCircuits.load("smollm2")
    hf = load_hf_model("smollm2")
    templates = DEFAULT_TEMPLATES[: args.templates]
    print(f"model: SmolLM2-135M-Instruct, {circuits.cfg.n_layers} layers x "
          f"{circuits.cfg.n_heads} heads; torch threads: {torch.get_num_threads()}")  # fmt: skip
    print(
        f"caps: correlative/multi-token: at most {args.max_prompts} pairs per relation, "
        f"{len(templates)} of {len(DEFAULT_TEMPLATES)} templates {list(templates)}"
    )
    print(
        f"caps: causal: at most {args.causal_prompts} pairs per relation in each of its few-shot "
        f"templates, steps {args.steps} + m, {args.random_draws} random draws (default 5)"
    )
    skipped: list[str] = []
    corr = validate(
        circuits,
        experiments=["correlative", "multi-token"],
        options=ValidationOptions(
            templates=templates, max_prompts=args.max_prompts, batch_size=args.batch_size
        ),
        out=args.out,
        hf_model=hf,
        log=skipped.append,
    )
    t1 = time.perf_counter()
    causal = validate(
        circuits,
        experiments=["causal"],
        options=ValidationOptions(
            max_prompts=args.causal_prompts,
            steps=tuple(args.steps),
            random_draws=args.random_draws,
            batch_size=args.batch_size,
        ),
        out=args.out,
        hf_model=hf,
        log=skipped.append,
    )
    t2 = time.perf_counter()
    for line in dict.fromkeys(skipped):
        print(f"note: {line}")
    assert corr.correlative is not None and causal.causal is not None
    print()
    print(correlation_markdown(corr.correlative, "SmolLM2: static vs dynamic scores"))
    if corr.multi_token is not None and len(corr.multi_token):
        print(correlation_markdown(corr.multi_token, "SmolLM2: multi-token sources"))
    print(causal_markdown(causal.causal, "SmolLM2: ablating relation heads"))
    for kind in ("relation", "suppression"):
        sub = corr.correlative[corr.correlative["score"] == kind]
        print(
            f"mean r ({kind} scores, {len(sub)} relations): without context "
            f"{sub['r_without_context'].mean():.3f}, with context "
            f"{sub['r_with_context'].mean():.3f}"
        )
    print(f"time: load + correlative + multi-token {t1 - t0:.0f} s, causal {t2 - t1:.0f} s; "
          f"results in {corr.directory}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
