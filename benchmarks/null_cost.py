"""Cost of the null and the evidence on a real model, in one run: the map without them (the
paper's rule, no evidence) and with them (3 permutations per relation, evidence at the
threshold), alternated so shared-CPU noise hits both alike; the real scores are asserted
equal. Then which labels the null rule changes against the paper's rule.

Prints per repeat the scoring seconds (``timings.scores_s``: the layer loop, evidence
included) and the map's total, the ratios of the medians (target: null + evidence <= 1.5x a
map), and the (head, relation) cells the null rule removes.

    python benchmarks/null_cost.py [--model smollm2] [--embedding residual] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics

import pandas as pd

from headatlas.circuits import ModelCircuits
from headatlas.scoring.mapping import map_heads
from headatlas.scoring.options import MapOptions


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--embedding", default="residual", help="the recipe's embedding mode")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    circuits = ModelCircuits.load(args.model)
    plain = MapOptions(
        embedding=args.embedding,
        null_permutations=0,
        label_rule="paper",
        evidence_right=0,
        evidence_wrong=0,
    )
    full = MapOptions(embedding=args.embedding)
    hf = None
    if args.embedding == "forward":
        from headatlas.weights.hf_model import load_causal_lm

        hf = load_causal_lm(args.model)
    times: dict[str, list[tuple[float, float]]] = {"map": [], "map+null+evidence": []}
    results = {}
    map_heads(circuits, options=plain, progress=False, hf_model=hf)  # warm-up (caches, pages)
    for _ in range(args.repeats):
        for name, opts in (("map", plain), ("map+null+evidence", full)):
            res = map_heads(circuits, options=opts, progress=False, hf_model=hf)
            t = res.manifest["timings"]
            times[name].append((t["scores_s"], t["total_s"]))
            results[name] = res
            print(
                f"{name:<18} scores {t['scores_s']:6.1f} s  total {t['total_s']:6.1f} s"
                + (
                    f"  (null ranks {t['null_s']:.1f} s, evidence {t['evidence_s']:.1f} s)"
                    if opts is full
                    else ""
                ),
                flush=True,
            )
    a, b = results["map"], results["map+null+evidence"]
    cols = ["layer", "head", "relation", "score", "suppression_score"]
    pd.testing.assert_frame_equal(a.scores[cols], b.scores[cols])
    med = {n: [statistics.median(x[i] for x in v) for i in (0, 1)] for n, v in times.items()}
    print(
        f"RATIO {args.model}: scoring {med['map+null+evidence'][0] / med['map'][0]:.2f}x, "
        f"whole map {med['map+null+evidence'][1] / med['map'][1]:.2f}x "
        f"(target <= 1.5x); evidence rows {0 if b.evidence is None else len(b.evidence)}"
    )
    s = b.scores
    th = b.manifest["options"]["threshold"]
    lost = s[(s["score"] >= th) & (s["score"] <= s["null_max"])]
    print(f"labelled cells (score >= {th}): {int((s['score'] >= th).sum())}; removed by the null:")
    for r in lost.itertuples():
        print(f"  L{r.layer}H{r.head} {r.relation} {r.score:.2f} real / {r.null_max:.2f} null max")
    paper = a.categories.set_index(["layer", "head"])["label"]
    null = b.categories.set_index(["layer", "head"])["label"]
    changed = paper[paper != null]
    print(f"labels changed: {len(changed)}")
    for (layer, head), label in changed.items():
        print(f"  L{layer}H{head}: {label} -> {null.loc[(layer, head)]}")
    print(f"class-level relations: {b.manifest['relations_class_level']}")
    for rel in b.manifest["relations_class_level"]:
        cells = s[(s["relation"] == rel) & ((s["score"] >= th) | (s["null_max"] >= th))]
        for r in cells.sort_values(["layer", "head"]).itertuples():
            print(
                f"  {rel} L{r.layer}H{r.head}: score {r.score:.3f}, null mean {r.null_mean:.3f} "
                f"max {r.null_max:.3f}, p {r.p_value:.2f}, z {r.z:.1f}"
            )


if __name__ == "__main__":
    main()
