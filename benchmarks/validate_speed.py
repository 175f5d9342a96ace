"""Speed of the correlative validation's dynamic read-out on SmolLM2: the previous full
read-out vs the pruned exact one, on the same captured activations, in one run (equal scores
asserted on the layers both read).

Prints the seconds of the hooked forward passes (shared by both), of each read-out, and the
end-to-end ratio (forward + read-out) of the correlative experiment. Default: 8 relations x
the 4 context templates, every prompt (``--max-prompts`` caps pairs per relation). The full
read-out is slow, so it reads the first ``--old-layers`` layers and its time is scaled to all
layers; the pruned one reads every layer.

    PYTHONPATH=src python benchmarks/validate_speed.py [--max-prompts 48] [--old-layers 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from headatlas.circuits import ModelCircuits
from headatlas.relations import resolve_relations, tokenize_relation
from headatlas.scoring.options import MapOptions
from headatlas.validate import DEFAULT_TEMPLATES
from headatlas.validate.dynamic import DynamicJob, HeadReadout, capture, read_out, sample_pairs
from headatlas.validate.hooks import AttentionHooks, eval_mode
from headatlas.weights.transformers_model import load_hf_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--relations", type=int, default=8, help="the first N usable built-ins")
    p.add_argument("--max-prompts", type=int, default=None, help="pairs per relation")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--old-layers",
        type=int,
        default=3,
        help="the full read-out reads the first N layers (0: all); its time is scaled to all",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    circuits = ModelCircuits.load(args.model)
    hf = load_hf_model(args.model)
    options = MapOptions()
    V = circuits.cfg.vocab_size
    jobs = []
    for rel in resolve_relations(None):
        tok = tokenize_relation(rel, circuits.tokenizer)
        if not tok.usable:
            continue
        k = options.k_for(rel.name, rel.copying, V)
        src, tgt = sample_pairs([[s] for s in tok.source_ids], tok.target_ids, args.max_prompts, 0)
        jobs += [DynamicJob(rel.name, t, src, tgt, k) for t in DEFAULT_TEMPLATES]
        if len({j.relation for j in jobs}) == args.relations:
            break
    n_prompts = sum(len(j.targets) for j in jobs)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}: "
        f"{len(jobs) // len(DEFAULT_TEMPLATES)} relations x {len(DEFAULT_TEMPLATES)} templates, "
        f"{n_prompts} prompts (CPU shared with other jobs: ratios, not seconds, are the result)"
    )
    hooks = AttentionHooks(hf, circuits.spec, circuits.cfg)
    L, H = circuits.cfg.n_layers, circuits.cfg.n_heads
    with eval_mode(hf):
        t0 = time.perf_counter()
        captured = capture(hooks, circuits.tokenizer, jobs, args.batch_size)
        forward_s = time.perf_counter() - t0
    print(f"hooked forward passes (shared): {forward_s:.1f} s", flush=True)
    old, new = HeadReadout(circuits, options, pruned=False), HeadReadout(circuits, options)
    n_old = args.old_layers or L
    t0 = time.perf_counter()
    found_old = read_out(old, jobs, captured, n_old, H)
    old_s = (time.perf_counter() - t0) * L / n_old
    t0 = time.perf_counter()
    found_new = read_out(new, jobs, captured, L, H)
    new_s = time.perf_counter() - t0
    for a, b in zip(found_old, found_new, strict=True):
        for name in ("with_context", "without_context"):
            for suffix in ("", "_suppression"):
                x, y = getattr(a, name + suffix)[:n_old], getattr(b, name + suffix)[:n_old]
                assert np.array_equal(x, y), f"{a.relation}/{a.template}: {name + suffix} differs"
    print(
        f"read-out of {L} layers: full {old_s:.1f} s (read {n_old}, scaled), pruned "
        f"{new_s:.1f} s (read all): {old_s / new_s:.1f}x"
    )
    print(
        f"correlative experiment (forward + read-out): {forward_s + old_s:.1f} s -> "
        f"{forward_s + new_s:.1f} s: {(forward_s + old_s) / (forward_s + new_s):.1f}x; "
        f"dynamic scores identical on the {n_old} layers both read"
    )


if __name__ == "__main__":
    main()
