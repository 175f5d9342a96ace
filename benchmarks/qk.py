"""The QK circuit on the packaged models, one run: static duplicate-token scores against
inference, and the time of the QK scores against the OV map's.

For each model: the dynamic duplicate-token score of every head (16 random 40-token sequences
repeated once), the static score under every rotary mode with the recipe's inputs (and, with
``--context``, in-context residuals), Pearson r over heads with 95% bootstrap intervals, and
the verdict against the target r >= 0.8. Timing: ``map_heads`` (the OV map, every built-in
relation, no cache) and :func:`qk_scores` (every head, salient keys and queries included) in
the same process, as a ratio (target <= 2x).

    PYTHONPATH=src python benchmarks/qk.py [--models smollm2 gemma3-270m] [--context]
        [--max-offset 128] [--timing-only]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from headatlas.circuits import ModelCircuits
from headatlas.report.validation_tables import qk_markdown
from headatlas.scoring.mapping import map_heads
from headatlas.scoring.qk import QKOptions, qk_scores
from headatlas.scoring.recipe import Recipe
from headatlas.validate.qk import validate_qk
from headatlas.weights.transformers_model import inference_model


def main() -> None:
    """Measure and print, per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smollm2", "gemma3-270m"])
    parser.add_argument("--context", action="store_true", help="also the in-context inputs")
    parser.add_argument("--max-offset", type=int, default=QKOptions().max_offset)
    parser.add_argument("--timing-only", action="store_true", help="no inference, no r")
    args = parser.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"cpu: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"load average {load:.1f} at start")  # fmt: skip
    options = QKOptions(max_offset=args.max_offset)
    for name in args.models:
        circuits = ModelCircuits.load(name)
        recipe = Recipe()
        t0 = time.perf_counter()
        map_heads(circuits, progress=False, log=lambda _m: None)
        t_ov = time.perf_counter() - t0
        t0 = time.perf_counter()
        table = qk_scores(circuits, options, recipe)
        t_qk = time.perf_counter() - t0
        print(f"\n## {name}: {len(table)} heads")
        print(f"OV map {t_ov:.1f} s, QK scores {t_qk:.1f} s: ratio {t_qk / t_ov:.2f} "
              f"(target <= 2)")  # fmt: skip
        if args.timing_only:
            continue
        hf = inference_model(name, circuits, torch.device("cpu"))
        inputs = ("recipe", "context") if args.context else ("recipe",)
        v = validate_qk(circuits, hf, recipe, options, inputs=inputs, classes=True)
        print(qk_markdown(v, f"{name}: duplicate-token score, static vs dynamic "
                             f"(max offset {args.max_offset})"))  # fmt: skip
        top = v.heads.sort_values("dynamic", ascending=False).head(5)
        print("strongest dynamic heads:")
        col = f"{v.best['inputs']}/{v.best['rotary']}"
        for row in top.to_dict("records"):
            print(f"  L{row['layer']}H{row['head']}: dynamic {row['dynamic']:.2f}, "
                  f"static {row[col]:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
