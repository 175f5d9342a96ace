"""Seconds for the salient operations of every SmolLM2 head, against the plain computation.

Fast: :class:`SalientPass` (σ through the d_head space with one value product per KV group,
the vocabulary's effective embedding computed once). Plain: per head, form the output
Y = (norm(x̃) W_V + b_V) W_O [V, d] of the whole vocabulary, take row norms, then the top
rows' logits (:func:`plain_salient`). Both read out through the same folded unembedding and
share the same vocabulary embeddings x̃ (computed once, outside the plain timing), so the ratio
compares the per-head work. The plain computation is timed on ``--plain-layers`` layers and
scaled to all heads; its top tokens and mappings are checked against the fast ones.
Targets: all 270 heads in under 30 s, at least 5x faster than plain.

    PYTHONPATH=src python benchmarks/salient_speed.py [--plain-layers 0 15 29] [--threads N]
        [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from headatlas.circuits import ModelCircuits
from headatlas.scoring.options import MapOptions
from headatlas.scoring.reference import plain_salient
from headatlas.scoring.salient import SalientPass


def main() -> None:
    """Run both computations and print the timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--plain-layers", type=int, nargs="+", default=[0, 15, 29])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=15)
    parser.add_argument("--mappings", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"cpu: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"load average {load:.1f} at start"
    )
    options = MapOptions(device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    circuits = ModelCircuits.load(args.model)
    cfg = circuits.cfg
    n_heads = cfg.n_layers * cfg.n_heads
    t0 = time.perf_counter()
    sp = SalientPass(circuits, options)  # tokenizer strings, exclusions, folded W_U
    t1 = time.perf_counter()
    fast: dict[tuple[int, int], tuple[list[int], list[list[int]]]] = {}
    layer_s = 0.0
    for i in range(cfg.n_layers):
        layer = circuits.layer(i)
        sp.inputs(layer)  # the vocabulary's embeddings: once per input kind, timed apart
        sync()
        t = time.perf_counter()
        rows = sp.layer(layer, None, args.tokens, args.mappings)
        sync()
        layer_s += time.perf_counter() - t
        for r in rows:
            ids, maps = fast.setdefault((i, r["head"]), ([], []))
            ids.append(r["token_id"])
            maps.append(r["mapping_ids"])
    total = time.perf_counter() - t0
    setup_s = t1 - t0
    print(
        f"fast: {n_heads} heads of {args.model} in {total:.1f} s on {sp.device} "
        f"(setup {setup_s:.1f} s, vocabulary embeddings {sp.prepare_s:.1f} s, "
        f"per-head work {layer_s:.1f} s = {1000 * layer_s / n_heads:.1f} ms/head)"
    )

    plain_s = 0.0
    n_plain = 0
    agree = 0
    for i in args.plain_layers:
        layer = circuits.layer(i)
        # the plain computation starts from x̃ itself (un-normalised), as a user would
        ids = torch.arange(sp.n_vocab)
        x = circuits.embed(ids)
        use_eff = options.recipe.mode_of(i) != "none"  # mlp0 here
        if use_eff:
            x = torch.cat(
                [circuits.effective_embedding(x[s : s + 8192]) for s in range(0, len(x), 8192)]
            )
        x = x.to(sp.device)
        for h in range(layer.n_heads):
            sync()
            t = time.perf_counter()
            with torch.no_grad():
                _, top, maps = plain_salient(
                    layer, h, x, sp.W_Uf, options, sp.target_excluded, args.tokens, args.mappings
                )
            sync()
            plain_s += time.perf_counter() - t
            n_plain += 1
            f_ids, f_maps = fast[(i, h)]
            agree += top.tolist() == f_ids and maps.tolist() == f_maps
    per_head = plain_s / n_plain
    plain_all = per_head * n_heads
    print(
        f"plain: {n_plain} heads (layers {', '.join(map(str, args.plain_layers))}) in "
        f"{plain_s:.1f} s = {1000 * per_head:.1f} ms/head; scaled to {n_heads} heads: "
        f"{plain_all:.1f} s; same top tokens and mappings as fast on {agree}/{n_plain} heads"
    )
    print(
        f"speed-up: {plain_all / layer_s:.1f}x on the per-head work, "
        f"{(plain_all + setup_s + sp.prepare_s) / total:.1f}x end to end "
        f"(both need the setup and vocabulary embeddings: {setup_s + sp.prepare_s:.1f} s)"
    )
    print(
        f"targets: all heads < 30 s: {'met' if total < 30 else 'MISSED'} ({total:.1f} s); "
        f">= 5x: {'met' if plain_all / layer_s >= 5 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
