"""Wall time of a sweep on a local Ray cluster against the same maps one after another, in
one run, and a check that both stores hold the same scores.

Maps SmolLM2, Gemma 3 270M and two tiny random models (GPT-2 and Pythia layouts, saved to a
temporary folder with the GPT-2 tokenizer): first one after another in this process (``--ray
off``, torch using ``--threads`` threads, default every core), then as Ray tasks (one CPU,
one torch thread each) on a fresh local cluster. On a machine shared with other work, torch's
default of one thread per core oversubscribes the cores and slows the one-process run; pass
``--threads 1`` for a baseline that does not.

    python benchmarks/sweep_wall.py [--models smollm2 gemma3-270m] [--cpus N] [--threads T]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from headatlas.store import load_results
from headatlas.sweep import run_sweep, sweep_entries
from headatlas.weights.packaged import gpt2_tokenizer


def tiny_models(root: Path) -> list[str]:
    """Two small random models (4 layers, GPT-2 vocabulary), saved as folders."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    tok = gpt2_tokenizer()
    torch.manual_seed(0)
    models = {
        "tiny-gpt2": GPT2LMHeadModel(
            GPT2Config(vocab_size=50257, n_embd=64, n_layer=4, n_head=4, n_positions=64)
        ),
        "tiny-pythia": GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=50257,
                hidden_size=64,
                num_hidden_layers=4,
                num_attention_heads=4,
                intermediate_size=128,
            )
        ),
    }
    out = []
    for name, model in models.items():
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out.append(str(root / name))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=["smollm2", "gemma3-270m"])
    p.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the Ray cluster")
    p.add_argument("--threads", type=int, default=None, help="torch threads, one-process run")
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"one-process run: {torch.get_num_threads()} torch threads")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        entries = sweep_entries([*args.models, *tiny_models(root)])
        print(f"{len(entries)} maps: {', '.join(e.spec for e in entries)}; {args.cpus} CPUs")
        walls = {}
        reports = {}
        for mode in ("off", "local"):
            t0 = time.perf_counter()
            reports[mode] = run_sweep(
                entries, root / mode, ray=mode, num_cpus=args.cpus, progress=True
            )
            walls[mode] = time.perf_counter() - t0
            assert not reports[mode].failed, reports[mode].summary_text()
            print(reports[mode].summary_text())
        for a, b in zip(reports["off"].outcomes, reports["local"].outcomes):
            sa = load_results(a.directory).scores  # type: ignore[arg-type]
            sb = load_results(b.directory).scores  # type: ignore[arg-type]
            pd.testing.assert_frame_equal(sa, sb, check_exact=False, atol=1e-6)
        print(f"one after another (one process):   {walls['off']:.1f} s")
        print(f"Ray tasks on a local cluster:      {walls['local']:.1f} s")
        print(f"ratio (one after another / Ray):   {walls['off'] / walls['local']:.2f}")
        print("scores of both runs agree")


if __name__ == "__main__":
    main()
