"""Peak memory of a pass over every head's OV factors, against the checkpoint's size.

Writes a synthetic sharded safetensors checkpoint (random bf16 weights, Llama layout and names,
layers shaped like Llama-3-8B: d_model 4096, 32 query heads, 8 KV heads, d_mlp 14336, vocab
128256) shard by shard, never holding more than one tensor in memory. Then, in a fresh
subprocess (so the peak is the pass's own), opens it with :class:`ModelCircuits` and computes
every head's OV Frobenius norm from the factors,

    ||W_V W_O||_F^2 = trace((W_V^T W_V)(W_O W_O^T)),

and prints peak RSS as a fraction of the checkpoint size. Target: < 0.25.

    PYTHONPATH=src python benchmarks/memory.py [--layers 10] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

D, N_HEADS, N_KV, D_HEAD, D_MLP, VOCAB = 4096, 32, 8, 128, 14336, 128256
SHARD_BYTES = 5 * 1024**3
ROWS_PER_WRITE = 4096


def llama_tensors(n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of a Llama-3-8B-shaped checkpoint with n_layers."""
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (VOCAB, D))]
    for i in range(n_layers):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (D,)),
            (p + "self_attn.q_proj.weight", (N_HEADS * D_HEAD, D)),
            (p + "self_attn.k_proj.weight", (N_KV * D_HEAD, D)),
            (p + "self_attn.v_proj.weight", (N_KV * D_HEAD, D)),
            (p + "self_attn.o_proj.weight", (D, N_HEADS * D_HEAD)),
            (p + "post_attention_layernorm.weight", (D,)),
            (p + "mlp.gate_proj.weight", (D_MLP, D)),
            (p + "mlp.up_proj.weight", (D_MLP, D)),
            (p + "mlp.down_proj.weight", (D, D_MLP)),
        ]
    out += [("model.norm.weight", (D,)), ("lm_head.weight", (VOCAB, D))]
    return out


def _nbytes(shape: tuple[int, ...]) -> int:
    n = 2  # bf16
    for s in shape:
        n *= s
    return n


def write_checkpoint(folder: Path, n_layers: int) -> int:
    """Write the checkpoint; return its total size in bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = llama_tensors(n_layers)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in tensors:
        if size and size + _nbytes(shape) > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += _nbytes(shape)
    gen = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    total = 0
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header: dict[str, object] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape in shard:
            header[name] = {
                "dtype": "BF16",
                "shape": list(shape),
                "data_offsets": [offset, offset + _nbytes(shape)],
            }
            offset += _nbytes(shape)
            weight_map[name] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, shape in shard:  # a block of rows in memory at a time
                for lo in range(0, shape[0], ROWS_PER_WRITE):
                    rows = (min(ROWS_PER_WRITE, shape[0] - lo), *shape[1:])
                    t = torch.randn(rows, generator=gen)
                    t = 1 + 0.1 * t if name.endswith("norm.weight") else 0.02 * t
                    f.write(t.to(torch.bfloat16).view(torch.uint8).numpy().tobytes())
                    del t
        total += (folder / fname).stat().st_size
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": D,
        "num_hidden_layers": n_layers,
        "num_attention_heads": N_HEADS,
        "num_key_value_heads": N_KV,
        "head_dim": D_HEAD,
        "intermediate_size": D_MLP,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    (folder / "config.json").write_text(json.dumps(config))
    return total


def _vm_hwm_bytes() -> int | None:
    """This process's peak RSS since exec (Linux VmHWM), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def measure(folder: Path) -> dict[str, object]:
    """The pass, run in this (fresh) process: every head's OV Frobenius norm."""
    from headatlas.circuits import ModelCircuits
    from headatlas.weights.safetensors_dir import SafetensorsFile

    read: list[str] = []
    original = SafetensorsFile.read

    def counting_read(self: SafetensorsFile, name: str) -> torch.Tensor:
        read.append(name)
        return original(self, name)

    SafetensorsFile.read = counting_read  # type: ignore[method-assign]
    baseline = _vm_hwm_bytes()
    t0 = time.perf_counter()
    mc = ModelCircuits.load(folder)
    norms = torch.empty(mc.cfg.n_layers, mc.cfg.n_heads)
    for ov in mc.layers():
        gram_v = torch.einsum("gdk,gdl->gkl", ov.W_V, ov.W_V)  # [n_kv, dh, dh]
        gram_o = torch.einsum("hkd,hld->hkl", ov.W_O, ov.W_O)  # [H, dh, dh]
        gram_v = gram_v.repeat_interleave(ov.group_size, dim=0)  # query head h -> KV group
        norms[ov.layer] = (gram_v * gram_o).sum((1, 2)).clamp_min(0).sqrt()
    seconds = time.perf_counter() - t0
    peak = _vm_hwm_bytes()
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rss_now = None
    try:
        import psutil

        rss_now = psutil.Process().memory_info().rss
    except ImportError:
        pass
    return {
        "peak_rss_vmhwm": peak,
        "peak_rss_getrusage": ru,
        "rss_after_imports": baseline,
        "rss_now_psutil": rss_now,
        "seconds": seconds,
        "tensors_read": len(read),
        "read_embeddings": [n for n in read if "embed_tokens" in n or "lm_head" in n],
        "mean_ov_norm": float(norms.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=10, help="layers of the synthetic checkpoint")
    ap.add_argument("--keep", type=Path, default=None, help="write (or reuse) the checkpoint here")
    ap.add_argument("--measure", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(args.measure)))
        return

    folder = args.keep or Path(tempfile.mkdtemp(prefix="headatlas-mem-")) / "ckpt"
    need = sum(_nbytes(s) for _, s in llama_tensors(args.layers))
    free = shutil.disk_usage(folder.parent if folder.parent.exists() else Path.cwd()).free
    print(
        f"checkpoint: {args.layers} Llama-3-8B-shaped layers, {need / 1e9:.2f} GB; free disk {free / 1e9:.1f} GB"
    )
    if not (folder / "config.json").is_file():
        if free < need * 1.1:
            sys.exit(f"not enough free disk in {folder.parent}: need {need / 1e9:.1f} GB")
        t0 = time.perf_counter()
        write_checkpoint(folder, args.layers)
        print(f"wrote {folder} in {time.perf_counter() - t0:.0f} s")
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--measure", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    peak = r["peak_rss_vmhwm"] or r["peak_rss_getrusage"]
    print(
        f"checkpoint size: {size / 1e9:.2f} GB in {len(list(folder.glob('*.safetensors')))} shards"
    )
    print(
        f"peak RSS (VmHWM): {peak / 1e9:.3f} GB = {peak / size:.3f} of checkpoint (target < 0.25)"
    )
    print(f"peak RSS (getrusage ru_maxrss): {r['peak_rss_getrusage'] / 1e9:.3f} GB")
    if r["rss_after_imports"]:
        print(f"RSS after imports, before the pass: {r['rss_after_imports'] / 1e9:.3f} GB")
    if r["rss_now_psutil"]:
        print(f"RSS at end (psutil): {r['rss_now_psutil'] / 1e9:.3f} GB")
    print(
        f"pass: {r['tensors_read']} tensors read in {r['seconds']:.1f} s; "
        f"embeddings read: {r['read_embeddings'] or 'none'}; mean OV norm {r['mean_ov_norm']:.4f}"
    )
    if args.keep is None:
        shutil.rmtree(folder.parent)


if __name__ == "__main__":
    main()
