"""Speed of `map_heads` on SmolLM2, against the plain per-head reference, in one run.

Prints: this machine's fp32 matmul peak; seconds for the full map (every relation, relation and
suppression scores); seconds for the plain reference (x̃ @ W_V @ W_O @ W_U, then the target's
rank, per head) measured on a subset of layers and scaled to all layers; the speed-up; and the
map's useful FLOP/s (2 · n_sources · d_head · V per head: the factored logits) as a fraction of
the peak.

    python benchmarks/map_speed.py [--reference-layers 2] [--model smollm2]
"""

from __future__ import annotations

import argparse
import time

import torch

from headatlas.circuits import ModelCircuits
from headatlas.relations import resolve_relations, tokenize_relation
from headatlas.scoring.mapping import map_heads
from headatlas.scoring.options import MapOptions
from headatlas.scoring.plan import RelationPairs, ScoringPlan, source_embeddings
from headatlas.scoring.reference import reference_topk_scores


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
    """Best fp32 FLOP/s of an n x n x n matmul on this machine."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--reference-layers", type=int, default=2)
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    peak = matmul_peak()
    print(f"fp32 matmul peak (2048^3, best of 5): {peak / 1e9:.1f} GFLOP/s")

    circuits = ModelCircuits.load(args.model)
    options = MapOptions()
    map_heads(circuits, options=options, progress=False, log=lambda _: None)  # warm-up: compile
    t0 = time.perf_counter()
    result = map_heads(circuits, options=options, progress=False, log=lambda _: None)
    map_s = time.perf_counter() - t0
    timings = result.manifest["timings"]

    # The same relations and pairs, for the reference.
    pairs = []
    for rel in resolve_relations(None):
        tok = tokenize_relation(rel, circuits.tokenizer)
        if tok.usable:
            k = options.k_for(rel.name, rel.copying, circuits.cfg.vocab_size)
            pairs.append(RelationPairs(rel.name, rel.category, k, tok.source_ids, tok.target_ids))
    plan = ScoringPlan.build(pairs)
    cfg = circuits.cfg
    X0, Xe = source_embeddings(circuits, plan.source_ids, options)
    ref_layers = list(range(1, 1 + args.reference_layers))
    # The plain way: per head and per relation, the full rows, then top-k of M and of -M.
    per_relation = [
        (r, plan.pair_rows[plan.pair_relation == i], plan.pair_targets[plan.pair_relation == i])
        for i, r in enumerate(plan.relations)
    ]
    t0 = time.perf_counter()
    ref_scores = {}
    for i in ref_layers:
        layer = circuits.layer(i)
        X = X0 if i == 0 else Xe
        for h in range(cfg.n_heads):
            for rel, rows, targets in per_relation:
                ref_scores[(i, h, rel.name)] = reference_topk_scores(
                    circuits, layer, h, X[rows], targets, rel.k, options
                )
    ref_s = (time.perf_counter() - t0) * cfg.n_layers / len(ref_layers)
    fast = result.scores.set_index(["layer", "head", "relation"])
    diffs = [
        max(abs(fast.loc[key, "score"] - s), abs(fast.loc[key, "suppression_score"] - u))
        for key, (s, u) in ref_scores.items()
    ]

    n_heads = cfg.n_layers * cfg.n_heads
    n_sources, n_pairs = len(plan.source_ids), len(plan.pair_rows)
    useful = 2 * n_sources * cfg.d_head * cfg.vocab_size * n_heads
    print(
        f"model {result.display_name}: {cfg.n_layers} layers x {cfg.n_heads} heads, "
        f"V={cfg.vocab_size}, d_head={cfg.d_head}; {len(pairs)} relations, "
        f"{n_sources} unique sources, {n_pairs} pairs"
    )
    print(
        f"map (all relations, with suppression): {map_s:.1f} s wall "
        f"(scores {timings['scores_s']:.1f} s, load {timings['load_s']:.1f} s, "
        f"prepare {timings['prepare_s']:.1f} s)"
    )
    print(
        f"plain per-head reference (per relation: full rows, topk of M and -M): {ref_s:.1f} s "
        f"(measured on layers {ref_layers}, scaled to {cfg.n_layers} layers)"
    )
    print(f"speed-up: {ref_s / map_s:.1f}x")
    print(
        f"agreement on the reference layers: {len(diffs)} (head, relation) scores, "
        f"largest difference {max(diffs):.4f} (one pair of n moves a score by 1/n: float ties)"
    )
    print(
        f"useful FLOP/s: {useful / map_s / 1e9:.1f} GFLOP/s = {useful / map_s / peak:.2f} of peak "
        f"(wall); {useful / timings['scores_s'] / 1e9:.1f} GFLOP/s = "
        f"{useful / timings['scores_s'] / peak:.2f} of peak (scoring loop)"
    )


if __name__ == "__main__":
    main()
