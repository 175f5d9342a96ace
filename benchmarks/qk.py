"""The QK circuit on the packaged models, one run: static duplicate-token scores against
inference, and the time of the QK scores against the OV map's.

For each model: the dynamic duplicate-token score of every head (16 random 40-token sequences
repeated once), the static score under every rotary mode with the recipe's inputs (and, with
``--context``, in-context residuals), Pearson r over heads with 95% bootstrap intervals, and
the verdict against the target r >= 0.8. Timing: ``map_heads`` (the OV map, every built-in
relation, no cache) and :func:`qk_scores` (every head, salient keys and queries included) in
the same process, as a ratio (target <= 2x).

    PYTHONPATH=src python benchmarks/qk.py [--models smollm2 gemma3-270m] [--context]
        [--max-offset 128] [--timing-only | --skip-timing]

The duplicate-token score is read two ways (dup_score: the rank of a token's own key;
dup_mass: its attention share against 40 random keys), the key preference per class beside
its null (random classes of equal size), and on models whose layers differ (Gemma 3: sliding
and global layers, different rotary bases) r within each kind of layer.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from headatlas.circuits import ModelCircuits
from headatlas.qk_circuits import layer_type
from headatlas.report.validation_tables import qk_markdown
from headatlas.scoring.mapping import map_heads
from headatlas.scoring.qk import QKOptions, qk_scores
from headatlas.scoring.qk_classes import token_classes
from headatlas.scoring.qk_labels import reading_name
from headatlas.scoring.recipe import Recipe
from headatlas.stats import pearson_with_interval
from headatlas.validate.qk import validate_qk
from headatlas.weights.transformers_model import inference_model


def main() -> None:
    """Measure and print, per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "gemma3-270m"])
    parser.add_argument("--context", action="store_true", help="also the in-context inputs")
    parser.add_argument("--max-offset", type=int, default=QKOptions().max_offset)
    parser.add_argument("--timing-only", action="store_true", help="no inference, no r")
    parser.add_argument("--skip-timing", action="store_true", help="no OV map, no timing")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"cpu: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"load average {load:.1f} at start")  # fmt: skip
    options = QKOptions(max_offset=args.max_offset)
    for name in args.models:
        circuits = ModelCircuits.load(name)
        recipe = Recipe()
        print(f"\n## {name}: {circuits.cfg.n_layers * circuits.cfg.n_heads} heads", flush=True)
        if not args.skip_timing:
            t0 = time.perf_counter()
            map_heads(circuits, progress=False, log=lambda _m: None)
            t_ov = time.perf_counter() - t0
            t0 = time.perf_counter()
            qk_scores(circuits, options, recipe, classes=token_classes(circuits))
            t_qk = time.perf_counter() - t0
            print(f"OV map {t_ov:.1f} s, QK scores {t_qk:.1f} s: ratio {t_qk / t_ov:.2f} "
                  f"(target <= 2; QK with class preferences and their null)", flush=True)  # fmt: skip
        if args.timing_only:
            continue
        hf = inference_model(name, circuits, torch.device("cpu"))
        inputs = ("recipe", "context") if args.context else ("recipe",)
        v = validate_qk(circuits, hf, recipe, options, inputs=inputs, classes=True)
        print(qk_markdown(v, f"{name}: duplicate-token score, static vs dynamic "
                             f"(max offset {args.max_offset})"))  # fmt: skip
        top = v.heads.sort_values("dynamic", ascending=False).head(5)
        print("strongest dynamic heads:")
        col = reading_name(v.best["inputs"], v.best["rotary"], v.best["score"])
        for row in top.to_dict("records"):
            print(f"  L{row['layer']}H{row['head']}: dynamic {row['dynamic']:.2f}, "
                  f"static {row[col]:.2f}")  # fmt: skip
        kinds = [layer_type(circuits, int(layer)) for layer in v.heads["layer"]]
        if len(set(kinds)) > 1:
            print("r within each kind of layer (every reading):")
            for reading in [c for c in v.heads.columns if "/" in c]:
                per = []
                for kind in sorted(set(kinds), key=str):
                    m = np.array([k == kind for k in kinds])
                    r = pearson_with_interval(v.heads[reading][m], v.heads["dynamic"][m], n_boot=1)
                    per.append(f"{kind} ({int(m.sum())} heads) {r.r:.3f}")
                print(f"  {reading}: " + ", ".join(per))


if __name__ == "__main__":
    main()
