"""Speed of `map_heads` on SmolLM2 (or Gemma 3), in one run: the previous full kernel vs the
pruned exact kernel on the same heads (equal scores asserted), vs the plain per-head
reference, and the fraction of the fp32 matmul peak of the work done.

Prints: this machine's fp32 matmul peak; the pruned kernel before and after the per-column
rounding bound (interleaved per layer, equal ranks asserted) with the share of pairs each left
undecided (computed from full rows); per layer, the previous kernel and the pruned one run
back to back (interleaved, so shared-CPU noise hits both alike) with their scores compared;
the full map (every relation, relation and suppression scores) with the pruned kernel, wall;
the plain reference (x̃ @ W_V @ W_O @ W_U, then topk of M and −M, per head and relation)
measured on a subset of layers and scaled; the speed-ups; and useful FLOP/s (2 · n_sources ·
d_head · V per head: the factored logits a full kernel computes) as a fraction of the peak.

    python benchmarks/map_speed.py [--model smollm2] [--embedding forward] [--layers all]
        [--reference-layers 2] [--skip-full] [--skip-map]
"""

from __future__ import annotations

import argparse
import time

import torch
from full_kernel import count_full_rows, layer_ranks_full, previous_pruned_kernel

from headatlas.circuits import ModelCircuits
from headatlas.relations import resolve_relations, tokenize_relation
from headatlas.scoring.kernel.layout import PairLayout
from headatlas.scoring.layers import LayerScores, score_layers
from headatlas.scoring.mapping import map_heads
from headatlas.scoring.options import MapOptions
from headatlas.scoring.plan import RelationPairs, ScoringPlan
from headatlas.scoring.readout import Readout
from headatlas.scoring.recipe import SourceInputs
from headatlas.scoring.reference import reference_topk_scores
from headatlas.scoring.relation_scores import layer_ranks, layer_scores


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


def compare_pruned(
    circuits: ModelCircuits,
    inputs: SourceInputs,
    readout: Readout,
    layout: PairLayout,
    plan: ScoringPlan,
    layers: range,
) -> None:
    """The pruned kernel before (one margin per row, 2γ‖z‖‖W‖_F max‖u‖) and after the
    per-column bound (γ‖|z||W|‖(‖u_j‖ + ‖u_t‖)), interleaved per layer: seconds, pairs left
    undecided, ranks asserted equal."""
    secs = {"before": 0.0, "after": 0.0}
    counts: dict[str, dict[str, int]] = {"before": {}, "after": {}}
    per_layer = []
    for i in layers:
        layer, X = circuits.layer(i), inputs.layer(i)
        got = {}
        for name in ("before", "after") if i % 2 == 0 else ("after", "before"):
            c: dict[str, int] = {}
            t0 = time.perf_counter()
            with torch.no_grad(), count_full_rows(c):
                if name == "before":
                    with previous_pruned_kernel():
                        got[name] = layer_ranks(layer, X, readout, layout)
                else:
                    got[name] = layer_ranks(layer, X, readout, layout)
            secs[name] += time.perf_counter() - t0
            for key, v in c.items():
                counts[name][key] = counts[name].get(key, 0) + v
            got[name + "_undecided"] = c["full"] / max(1, c["pairs"])
        for a, b in zip(got["before"], got["after"], strict=True):
            assert torch.equal(a, b), f"layer {i}: the ranks differ"
        per_layer.append(f"L{i} {got['before_undecided']:.1%}->{got['after_undecided']:.1%}")
    share = {n: counts[n]["full"] / max(1, counts[n]["pairs"]) for n in counts}
    print(
        f"pruned kernel, {len(layers)} layers: before {secs['before']:.1f} s, after "
        f"{secs['after']:.1f} s: {secs['before'] / secs['after']:.2f}x; undecided pairs "
        f"{share['before']:.2%} -> {share['after']:.2%}; ranks identical"
    )
    print("undecided per layer: " + ", ".join(per_layer))
    del plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layers", default="all", help="'all' or a count: layers compared")
    parser.add_argument("--reference-layers", type=int, default=2)
    parser.add_argument("--embedding", default=None, help="the recipe's embedding mode")
    parser.add_argument("--skip-full", action="store_true", help="no previous full kernel")
    parser.add_argument("--skip-map", action="store_true", help="no full map, no reference")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads (CPU shared with other "
          "jobs: ratios from one run are the result, not seconds)")  # fmt: skip
    peak = matmul_peak()
    print(f"fp32 matmul peak (2048^3, best of 5): {peak / 1e9:.1f} GFLOP/s")

    circuits = ModelCircuits.load(args.model)
    cfg = circuits.cfg
    options = MapOptions(device="cpu")
    if args.embedding:
        options = MapOptions(device="cpu", embedding=args.embedding)
    pairs = []
    for rel in resolve_relations(None):
        tok = tokenize_relation(rel, circuits.tokenizer)
        if tok.usable:
            k = options.k_for(rel.name, rel.copying, cfg.vocab_size)
            pairs.append(RelationPairs(rel.name, rel.category, k, tok.source_ids, tok.target_ids))
    plan = ScoringPlan.build(pairs)
    t0 = time.perf_counter()
    inputs = SourceInputs(options.recipe, circuits, plan.source_ids, None, options.forward_start())
    print(f"source inputs ({options.recipe.label()}): {time.perf_counter() - t0:.1f} s")
    readout = options.recipe.bind(circuits)
    W_Uf = readout.W_Uf
    layout = PairLayout(
        plan.pair_rows, plan.pair_targets, len(plan.source_ids), W_Uf.shape[1], k=plan.pair_k
    )
    n_sources, n_pairs = len(plan.source_ids), len(plan.pair_rows)
    print(
        f"model {circuits.source.display_name()}: {cfg.n_layers} layers x {cfg.n_heads} heads, "
        f"V={cfg.vocab_size}, d_head={cfg.d_head}; {len(pairs)} relations, "
        f"{n_sources} unique sources, {n_pairs} pairs"
    )

    layers = range(cfg.n_layers) if args.layers == "all" else range(int(args.layers))
    compare_pruned(circuits, inputs, readout, layout, plan, layers)
    if args.skip_full:
        return

    # 1. Previous full kernel vs pruned kernel (the map's layer loop), same heads, interleaved
    # per layer.
    def full(s: LayerScores) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return layer_scores(plan, *layer_ranks_full(s.read, s.sources, readout, s.layout))

    for s in score_layers(circuits, plan, [inputs], readout, layers=[1]):
        full(s)  # warm both (the previous kernel compiles its count on first use)
        _ = s.scores
    secs = {"full": 0.0, "pruned": 0.0}
    for s in score_layers(circuits, plan, [inputs], readout, layers=layers):
        i = s.index
        got = {}
        for kernel in ("full", "pruned") if i % 2 == 0 else ("pruned", "full"):
            t0 = time.perf_counter()
            got[kernel] = full(s) if kernel == "full" else s.scores[0]
            secs[kernel] += time.perf_counter() - t0
        for a, b in zip(got["full"], got["pruned"], strict=True):
            assert torch.equal(a, b), f"layer {i}: the pruned kernel's scores differ"
    n_layers = len(layers)
    print(
        f"scoring {n_layers} layers: previous full kernel {secs['full']:.1f} s, pruned kernel "
        f"{secs['pruned']:.1f} s: {secs['full'] / secs['pruned']:.1f}x; scores identical "
        f"({n_layers * cfg.n_heads} heads x {len(pairs)} relations x 2 scores)"
    )

    if args.skip_map:
        return

    # 2. The full map with the pruned kernel (wall, loading included).
    t0 = time.perf_counter()
    result = map_heads(circuits, options=options, progress=False, log=lambda _: None)
    map_s = time.perf_counter() - t0
    timings = result.manifest["timings"]
    full_map_s = secs["full"] * cfg.n_layers / n_layers + (map_s - timings["scores_s"])
    print(
        f"map (all relations, with suppression): {map_s:.1f} s wall (scores "
        f"{timings['scores_s']:.1f} s, load {timings['load_s']:.1f} s, prepare "
        f"{timings['prepare_s']:.1f} s); with the previous kernel ≈ {full_map_s:.1f} s: "
        f"{full_map_s / map_s:.1f}x"
    )

    # 3. The plain way: per head and per relation, the full rows, then top-k of M and of -M.
    ref_layers = list(range(1, 1 + args.reference_layers))
    per_relation = [
        (r, plan.pair_rows[plan.pair_relation == i], plan.pair_targets[plan.pair_relation == i])
        for i, r in enumerate(plan.relations)
    ]
    t0 = time.perf_counter()
    ref_scores = {}
    for i in ref_layers:
        layer = circuits.layer(i)
        X = inputs.layer(i)
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
    print(
        f"plain per-head reference (per relation: full rows, topk of M and -M): {ref_s:.1f} s "
        f"(measured on layers {ref_layers}, scaled to {cfg.n_layers} layers): map is "
        f"{ref_s / map_s:.1f}x faster"
    )
    print(
        f"agreement with the reference: {len(diffs)} (head, relation) scores, largest "
        f"difference {max(diffs):.4f} (one pair of n moves a score by 1/n: float ties)"
    )
    useful = 2 * n_sources * cfg.d_head * cfg.vocab_size * cfg.n_heads * n_layers
    for name in ("full", "pruned"):
        print(
            f"useful FLOP/s, {name} kernel: {useful / secs[name] / 1e9:.1f} GFLOP/s = "
            f"{useful / secs[name] / peak:.2f} of peak (the pruned kernel skips most of this "
            "work: above 1 means faster than any full kernel could be)"
        )


if __name__ == "__main__":
    main()
