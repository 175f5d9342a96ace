"""The GPU path, checked in one prepared run (≤ 8 minutes on one H200).

1. Maps SmolLM2 and Gemma 3 (all built-in relations) on the GPU and on the CPU and compares
   the scores (equal expected: both compute ranks in float32 and decide ties from one product;
   a cell may differ only where two logits are within float32 rounding of each other).
2. Salient operations of a few SmolLM2 heads and the dynamic read-out (random activations) on
   both devices, compared; the correlative validation of two relations (the inference model on
   each device) and one structured answer of the local describer, on both devices.
3. Maps a synthetic Llama-3.1-8B-shaped checkpoint (random bf16 weights, all 32 layers,
   V = 128256, GQA 32/8, d_head 128) on the GPU: timings per layer and peak GPU memory, and
   the previous full kernel on one layer for the speed ratio.
4. With ``--seed-scale [MODEL ...]``: ``benchmarks/seed_scale.py``'s checkpoints of the seeds'
   models (published shapes, ``--seed-layers`` layers, default 2) mapped by the CLI on the GPU
   and on the CPU from the same checkpoint: wall time, time per layer, peak GPU memory, peak
   RSS, and how many (layer, head, relation) cells differ between the two maps.

    PYTHONPATH=src python benchmarks/gpu_check.py            # on a CUDA machine
    PYTHONPATH=src python benchmarks/gpu_check.py --reduced  # CPU only: a few relations, a
        # 2-layer narrow "8B" (checks the script itself; numbers mean nothing)
    PYTHONPATH=src python benchmarks/gpu_check.py --seed-scale llama-3.1-8b --only-seed-scale
"""

from __future__ import annotations

import argparse
import shutil
import time
from typing import Any

import torch

from headatlas.circuits import ModelCircuits
from headatlas.scoring.mapping import map_heads
from headatlas.scoring.options import MapOptions
from headatlas.validate import DEFAULT_TEMPLATES


def log(msg: str) -> None:
    print(msg, flush=True)


def compare_maps(name: str, device: str, relations: list[str] | None) -> None:
    """Map on ``device`` and on the CPU; print times and how many scores differ."""
    circuits = ModelCircuits.load(name)
    res = {}
    for dev in (device, "cpu"):
        t0 = time.perf_counter()
        res[dev] = map_heads(
            circuits, relations, options=MapOptions(device=dev), progress=False, log=lambda _: None
        )
        log(f"{name}: map on {dev}: {time.perf_counter() - t0:.1f} s")
    a, b = res[device].scores, res["cpu"].scores
    cols = ["score", "suppression_score"]
    diff = (a[cols] - b[cols]).abs()
    n_diff = int((diff > 0).any(axis=1).sum())
    log(
        f"{name}: {len(a)} (head, relation) cells, {n_diff} differ between {device} and cpu "
        f"(largest difference {float(diff.to_numpy().max()):.4f})"
    )


def compare_salient_and_readout(device: str) -> None:
    from headatlas.scoring.salient import salient_operations
    from headatlas.validate.dynamic import HeadReadout

    circuits = ModelCircuits.load("smollm2")
    same = 0
    heads = [(1, 0), (10, 4), (25, 8)]
    for layer, head in heads:
        dfs = [
            salient_operations(circuits, layer, head, options=MapOptions(device=dev))
            for dev in (device, "cpu")
        ]
        same += int(dfs[0]["token_id"].tolist() == dfs[1]["token_id"].tolist())
    log(f"salient: {same} of {len(heads)} heads give the same top tokens on {device} and cpu")
    options = MapOptions()
    cpu = HeadReadout(circuits, options)
    gpu = HeadReadout(circuits, options).to(device)
    g = torch.Generator().manual_seed(0)
    c = circuits.cfg
    z = torch.randn(256, c.n_heads, c.d_head, generator=g) * 3
    targets = torch.randint(0, c.vocab_size, (256,), generator=g)
    equal = 0
    for layer in range(c.n_layers):
        a = cpu.ranks(layer, z, targets)
        b = gpu.ranks(layer, z.to(device), targets.to(device))
        equal += int(torch.equal(a[0].clamp(max=10) < 10, b[0].cpu().clamp(max=10) < 10))
    log(f"dynamic read-out: {equal} of {c.n_layers} layers give the same top-10 hits")


def compare_validation_and_describe(device: str, reduced: bool) -> None:
    """The correlative validation (inference model on each device) and a structured
    description from the local describer, on ``device`` and on the CPU."""
    from headatlas.describe.transformers_chat import TransformersChatBackend
    from headatlas.validate import ValidationOptions, validate

    rels = ["country_capital", "name_copying"]
    vopts = ValidationOptions(max_prompts=8 if reduced else 32, templates=DEFAULT_TEMPLATES[:2])
    tables = {}
    for dev in (device, "cpu"):
        t0 = time.perf_counter()
        res = validate(
            "smollm2", rels, experiments=["correlative"], map_options=MapOptions(device=dev),
            options=vopts, progress=False, log=lambda _: None,
        )  # fmt: skip
        log(f"validate (correlative, {len(rels)} relations) on {dev}: "
            f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
        tables[dev] = res.correlative_heads
    cols = [c for c in tables["cpu"].columns if c.startswith("dynamic")]
    diff = (tables[device][cols] - tables["cpu"][cols]).abs().to_numpy()
    log(
        f"validate: {int((diff > 0).any(axis=1).sum())} of {len(diff)} (head, template, relation) "
        f"rows differ between {device} and cpu (largest {float(diff.max()):.4f})"
    )
    messages = [
        {"role": "system", "content": "You describe attention heads in one JSON object."},
        {
            "role": "user",
            "content": "Head L1H2 maps: France -> Paris, Japan -> Tokyo, Peru -> Lima.",
        },
    ]
    answers = {}
    for dev in (device, "cpu"):
        t0 = time.perf_counter()
        answers[dev] = TransformersChatBackend(device=dev).complete(messages)
        log(f"describe (SmolLM2 describer, structured) on {dev}: {time.perf_counter() - t0:.1f} s")
    log(f"describe: same answer on {device} and cpu: {answers[device] == answers['cpu']}")


def synthetic_llama(n_layers: int, reduced: bool) -> Any:
    """A Llama-3.1-8B-shaped ``LlamaForCausalLM`` with random bf16 weights (built on the meta
    device, then filled: no slow initialisation), and the GPT-2 tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from headatlas.weights.packaged import gpt2_tokenizer

    shape = dict(
        hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256,
    )  # fmt: skip
    if reduced:
        shape.update(hidden_size=256, intermediate_size=512, num_attention_heads=8,
                     num_key_value_heads=2, head_dim=32)  # fmt: skip
    cfg = LlamaConfig(
        num_hidden_layers=n_layers, rms_norm_eps=1e-5, rope_theta=500000.0,
        tie_word_embeddings=False, **shape,
    )  # fmt: skip
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    model.eval()
    return model, gpt2_tokenizer()


def llama8b(device: str, reduced: bool) -> None:
    from full_kernel import layer_ranks_full

    from headatlas.scoring.layers import score_layers
    from headatlas.scoring.recipe import SourceInputs
    from headatlas.scoring.relation_scores import layer_scores

    n_layers = 2 if reduced else 32
    t0 = time.perf_counter()
    model, tok = synthetic_llama(n_layers, reduced)
    log(f"synthetic Llama-3.1-8B shape ({n_layers} layers, bf16): built in "
        f"{time.perf_counter() - t0:.1f} s")  # fmt: skip
    circuits = ModelCircuits.load(model, tokenizer=tok)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    options = MapOptions(device=device, dtype="bfloat16")
    t0 = time.perf_counter()
    res = map_heads(circuits, options=options, progress=False, log=lambda _: None)
    total = time.perf_counter() - t0
    t = res.manifest["timings"]
    log(
        f"8B map on {device}: {total:.1f} s wall (load {t['load_s']} s, prepare {t['prepare_s']} "
        f"s, scores {t['scores_s']} s = {t['scores_s'] / n_layers:.2f} s per layer)"
    )
    if device.startswith("cuda"):
        log(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    # One layer, previous full kernel vs pruned, same heads.
    from headatlas.relations import resolve_relations, tokenize_relation
    from headatlas.scoring.plan import RelationPairs, ScoringPlan

    pairs = []
    for rel in resolve_relations(None):
        tk = tokenize_relation(rel, tok)
        if tk.usable:
            k = options.k_for(rel.name, rel.copying, circuits.cfg.vocab_size)
            pairs.append(RelationPairs(rel.name, rel.category, k, tk.source_ids, tk.target_ids))
    plan = ScoringPlan.build(pairs)
    inputs = SourceInputs(options.recipe, circuits, plan.source_ids)
    readout = options.recipe.bind(circuits, device, torch.float32)
    times = {}
    out = {}
    for kernel in ("pruned", "full", "pruned"):  # the first pruned run warms the device
        # the map's layer loop, one fresh pass over the last layer per run
        (s,) = score_layers(circuits, plan, [inputs], readout, layers=[n_layers - 1])
        _sync(device)
        t0 = time.perf_counter()
        if kernel == "full":
            with torch.no_grad():
                out[kernel] = layer_ranks_full(s.read, s.sources, readout, s.layout)
        else:
            out[kernel] = s.ranks
        _sync(device)
        times[kernel] = time.perf_counter() - t0
    a = layer_scores(plan, *[x.cpu() for x in out["full"]])
    b = layer_scores(plan, *[x.cpu() for x in out["pruned"]])
    log(
        f"8B last layer on {device}: full kernel {times['full']:.2f} s, pruned {times['pruned']:.2f}"
        f" s ({times['full'] / times['pruned']:.1f}x); scores equal: "
        f"{torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])}"
    )


def seed_scale_check(device: str, models: list[str], layers: int, reduced: bool) -> None:
    """seed_scale's checkpoints mapped on ``device`` and on the CPU (``--reduced``: narrow
    models, both maps on the CPU)."""
    import tempfile
    from pathlib import Path

    from seed_scale import MODELS, run_model, table

    work = Path(tempfile.mkdtemp(prefix="headatlas-seed-gpu-"))
    rows = []
    for key in models:
        model = MODELS[key].narrow(4) if reduced else MODELS[key]
        n = min(layers, model.n_layers)
        row = run_model(model, n, work, work / "maps", device, also=("cpu",))
        cpu = row["also"]["cpu"]
        gpu = "" if row["gpu_peak_gib"] is None else f", peak GPU {row['gpu_peak_gib']:.2f} GiB"
        log(
            f"seed_scale {key} ({n} layers) on {device}: {row['wall_s']:.0f} s wall, "
            f"{row['per_layer_s']:.2f} s per layer{gpu}, peak RSS {row['peak_rss_gib']:.2f} GiB; "
            f"on cpu: {cpu['wall_s']:.0f} s wall, {cpu['per_layer_s']:.2f} s per layer; "
            f"cells differing: {cpu['cells_differing']}"
        )
        rows.append(row)
    log(table(rows))
    shutil.rmtree(work, ignore_errors=True)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--reduced", action="store_true", help="CPU-sized check of the script")
    p.add_argument(
        "--seed-scale",
        nargs="*",
        default=None,
        metavar="MODEL",
        help="also map seed_scale's checkpoints on the device and the CPU (default: all five)",
    )
    p.add_argument("--seed-layers", type=int, default=2, help="layers written per seed model")
    p.add_argument("--only-seed-scale", action="store_true", help="skip checks 1 to 3")
    args = p.parse_args()
    device = "cpu" if args.reduced else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --reduced for the CPU check of this script")
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    log(f"torch {torch.__version__}, device {device} ({name}), {torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    if not args.only_seed_scale:
        relations = ["country_capital", "name_copying"] if args.reduced else None
        compare_maps("smollm2", device, relations)
        compare_maps("gemma3-270m", device, relations)
        if not args.reduced:
            compare_salient_and_readout(device)
        compare_validation_and_describe(device, args.reduced)
        llama8b(device, args.reduced)
    if args.seed_scale is not None:
        from seed_scale import MODELS

        models = args.seed_scale or list(MODELS)
        seed_scale_check(device, models, args.seed_layers, args.reduced)
    log(f"gpu_check done in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
