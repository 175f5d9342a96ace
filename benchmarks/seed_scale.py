"""The seeds' models at their published shapes, mapped end to end by the CLI on this machine.

For each model: writes a synthetic safetensors checkpoint shard by shard (random weights, never
more than a 128 MB pool of values in memory) with Hugging Face's tensor names, the published dtype and
the published ``config.json`` values, plus the real GPT-2 tokenizer (its ids fit every
vocabulary here); maps it with ``headatlas map DIR`` in a fresh process (all built-in
relations, default recipe) under ``/usr/bin/time -v``; records wall time, time per layer,
peak RSS and its share of the checkpoint, and the pruned kernel's undecided share (pairs that
needed full logit rows); deletes the checkpoint before the next model (the disk holds one at
a time). Prints one table.

    PYTHONPATH=src python benchmarks/seed_scale.py [--models gpt2-xl phi-2 ...] [--layers N]
        [--work DIR] [--keep-maps DIR] [--json FILE] [--device cpu|cuda]

``--layers N`` writes at most N layers (the per-layer cost is then extrapolated to the
published layer count; the table says so). Peak RSS does not grow with the layer count (layers
are streamed), so its share is given against the full published checkpoint size as well as
against the written one.

Sources of every shape and config value (checked against each model's published
``config.json`` and safetensors index on the Hugging Face hub):

- gpt2-xl: https://huggingface.co/openai-community/gpt2-xl/blob/main/config.json
  (n_embd 1600, n_layer 48, n_head 25, n_positions 1024, vocab 50257, gelu_new, eps 1e-5,
  tied); model.safetensors is one float32 file whose names carry no ``transformer.`` prefix
  (``wte.weight``, ``h.0.attn.c_attn.weight`` ...), Conv1D layout [in, out].
- phi-2: https://huggingface.co/microsoft/phi-2/blob/main/config.json (hidden 2560, 32 layers,
  32 heads, intermediate 10240, vocab 51200, partial_rotary_factor 0.4, gelu_new,
  layer_norm_eps 1e-5, untied ``lm_head`` with bias, float16, 2 shards).
- pythia-12b: https://huggingface.co/EleutherAI/pythia-12b/blob/main/config.json (hidden 5120,
  36 layers, 40 heads, intermediate 20480, vocab 50688, rotary_pct 0.25,
  use_parallel_residual, gelu, float16; fused ``attention.query_key_value``, ``embed_out``).
  The hub serves it as pickle ``.bin`` shards; written here as safetensors with the same names.
- Llama-3.1-8B: https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json (hidden
  4096, 32 layers, 32 heads, 8 KV heads, intermediate 14336, vocab 128256, rms_norm_eps 1e-5,
  rope_theta 500000 with llama3 scaling, bfloat16, 4 shards).
- Llama-3.1-70B: https://huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json
  (hidden 8192, 80 layers, 64 heads, 8 KV heads, intermediate 28672, vocab 128256, bfloat16).

Buffers that are not parameters (GPT-2's ``attn.bias`` causal masks, rotary ``inv_freq``) are
not written: no map reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SHARD_BYTES = 5 * 10**9
DTYPES = {"F32": (torch.float32, 4), "F16": (torch.float16, 2), "BF16": (torch.bfloat16, 2)}

Tensor = tuple[str, tuple[int, ...]]

_ROPE_LLAMA3 = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
    "rope_type": "llama3",
}


@dataclass(frozen=True)
class SeedModel:
    """One seed model's published shape: hub id, dtype, config and tensor names."""

    key: str
    hub_id: str
    dtype: str
    """safetensors dtype: F32, F16 or BF16 (as published)."""
    config: dict[str, Any]
    """The published config.json values that shape the weights (layer count rewritten when
    fewer layers are written)."""
    layers_key: str
    single_file: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def n_layers(self) -> int:
        """Published layer count."""
        return int(self.config[self.layers_key])

    def grid(self) -> str:
        """layers × heads."""
        heads = self.config.get("num_attention_heads", self.config.get("n_head"))
        return f"{self.n_layers} × {heads}"

    def tensors(self, n_layers: int) -> list[Tensor]:
        """(name, shape) of every parameter with ``n_layers`` layers, in the hub's order."""
        return _TENSORS[self.key.removesuffix("-narrow")](self.config, n_layers)

    def narrow(self, d_head: int) -> SeedModel:
        """The same family, layer and head counts, vocabulary and dtype with ``d_head``
        dimensions per head (hidden = heads × d_head, MLP 4 × hidden): the full grid at a
        fraction of the cost, for figures at the real grid sizes."""
        c = dict(self.config)
        heads = int(c.get("num_attention_heads", c.get("n_head")))
        hidden = heads * d_head
        c["n_embd" if "n_embd" in c else "hidden_size"] = hidden
        if "intermediate_size" in c:
            c["intermediate_size"] = 4 * hidden
        return SeedModel(
            f"{self.key}-narrow", self.hub_id, self.dtype, c, self.layers_key, self.single_file
        )

    def nbytes(self, n_layers: int) -> int:
        """Bytes of the weights with ``n_layers`` layers."""
        size = DTYPES[self.dtype][1]
        return sum(size * _numel(s) for _, s in self.tensors(n_layers))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _gpt2(c: dict[str, Any], n: int) -> list[Tensor]:
    d, V, P = c["n_embd"], c["vocab_size"], c["n_positions"]
    out: list[Tensor] = [("wte.weight", (V, d)), ("wpe.weight", (P, d))]
    for i in range(n):
        p = f"h.{i}."
        out += [
            (p + "ln_1.weight", (d,)),
            (p + "ln_1.bias", (d,)),
            (p + "attn.c_attn.weight", (d, 3 * d)),
            (p + "attn.c_attn.bias", (3 * d,)),
            (p + "attn.c_proj.weight", (d, d)),
            (p + "attn.c_proj.bias", (d,)),
            (p + "ln_2.weight", (d,)),
            (p + "ln_2.bias", (d,)),
            (p + "mlp.c_fc.weight", (d, 4 * d)),
            (p + "mlp.c_fc.bias", (4 * d,)),
            (p + "mlp.c_proj.weight", (4 * d, d)),
            (p + "mlp.c_proj.bias", (d,)),
        ]
    return [*out, ("ln_f.weight", (d,)), ("ln_f.bias", (d,))]


def _phi(c: dict[str, Any], n: int) -> list[Tensor]:
    d, V, m = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    out: list[Tensor] = [("model.embed_tokens.weight", (V, d))]
    for i in range(n):
        p = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "dense"):
            out += [(p + f"self_attn.{proj}.weight", (d, d)), (p + f"self_attn.{proj}.bias", (d,))]
        out += [
            (p + "input_layernorm.weight", (d,)),
            (p + "input_layernorm.bias", (d,)),
            (p + "mlp.fc1.weight", (m, d)),
            (p + "mlp.fc1.bias", (m,)),
            (p + "mlp.fc2.weight", (d, m)),
            (p + "mlp.fc2.bias", (d,)),
        ]
    return [
        *out,
        ("model.final_layernorm.weight", (d,)),
        ("model.final_layernorm.bias", (d,)),
        ("lm_head.weight", (V, d)),
        ("lm_head.bias", (V,)),
    ]


def _neox(c: dict[str, Any], n: int) -> list[Tensor]:
    d, V, m = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    out: list[Tensor] = [("gpt_neox.embed_in.weight", (V, d))]
    for i in range(n):
        p = f"gpt_neox.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (d,)),
            (p + "input_layernorm.bias", (d,)),
            (p + "post_attention_layernorm.weight", (d,)),
            (p + "post_attention_layernorm.bias", (d,)),
            (p + "attention.query_key_value.weight", (3 * d, d)),
            (p + "attention.query_key_value.bias", (3 * d,)),
            (p + "attention.dense.weight", (d, d)),
            (p + "attention.dense.bias", (d,)),
            (p + "mlp.dense_h_to_4h.weight", (m, d)),
            (p + "mlp.dense_h_to_4h.bias", (m,)),
            (p + "mlp.dense_4h_to_h.weight", (d, m)),
            (p + "mlp.dense_4h_to_h.bias", (d,)),
        ]
    return [
        *out,
        ("gpt_neox.final_layer_norm.weight", (d,)),
        ("gpt_neox.final_layer_norm.bias", (d,)),
        ("embed_out.weight", (V, d)),
    ]


def _llama(c: dict[str, Any], n: int) -> list[Tensor]:
    d, V, m = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    dh = c.get("head_dim", d // c["num_attention_heads"])
    q, kv = c["num_attention_heads"] * dh, c["num_key_value_heads"] * dh
    out: list[Tensor] = [("model.embed_tokens.weight", (V, d))]
    for i in range(n):
        p = f"model.layers.{i}."
        out += [
            (p + "input_layernorm.weight", (d,)),
            (p + "self_attn.q_proj.weight", (q, d)),
            (p + "self_attn.k_proj.weight", (kv, d)),
            (p + "self_attn.v_proj.weight", (kv, d)),
            (p + "self_attn.o_proj.weight", (d, q)),
            (p + "post_attention_layernorm.weight", (d,)),
            (p + "mlp.gate_proj.weight", (m, d)),
            (p + "mlp.up_proj.weight", (m, d)),
            (p + "mlp.down_proj.weight", (d, m)),
        ]
    return [*out, ("model.norm.weight", (d,)), ("lm_head.weight", (V, d))]


_TENSORS = {"gpt2-xl": _gpt2, "phi-2": _phi, "pythia-12b": _neox}


def _llama_config(hidden: int, layers: int, heads: int, inter: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": dict(_ROPE_LLAMA3),
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 128256,
    }


MODELS: dict[str, SeedModel] = {
    "gpt2-xl": SeedModel(
        "gpt2-xl",
        "openai-community/gpt2-xl",
        "F32",
        {
            "activation_function": "gelu_new",
            "architectures": ["GPT2LMHeadModel"],
            "attn_pdrop": 0.1,
            "bos_token_id": 50256,
            "embd_pdrop": 0.1,
            "eos_token_id": 50256,
            "initializer_range": 0.02,
            "layer_norm_epsilon": 1e-05,
            "model_type": "gpt2",
            "n_ctx": 1024,
            "n_embd": 1600,
            "n_head": 25,
            "n_layer": 48,
            "n_positions": 1024,
            "resid_pdrop": 0.1,
            "vocab_size": 50257,
        },
        "n_layer",
        single_file=True,
    ),
    "phi-2": SeedModel(
        "phi-2",
        "microsoft/phi-2",
        "F16",
        {
            "architectures": ["PhiForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": 50256,
            "embd_pdrop": 0.0,
            "eos_token_id": 50256,
            "hidden_act": "gelu_new",
            "hidden_size": 2560,
            "initializer_range": 0.02,
            "intermediate_size": 10240,
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": 2048,
            "model_type": "phi",
            "num_attention_heads": 32,
            "num_hidden_layers": 32,
            "num_key_value_heads": 32,
            "partial_rotary_factor": 0.4,
            "qk_layernorm": False,
            "resid_pdrop": 0.1,
            "rope_scaling": None,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "torch_dtype": "float16",
            "use_cache": True,
            "vocab_size": 51200,
        },
        "num_hidden_layers",
    ),
    "pythia-12b": SeedModel(
        "pythia-12b",
        "EleutherAI/pythia-12b",
        "F16",
        {
            "architectures": ["GPTNeoXForCausalLM"],
            "bos_token_id": 0,
            "eos_token_id": 0,
            "hidden_act": "gelu",
            "hidden_size": 5120,
            "initializer_range": 0.02,
            "intermediate_size": 20480,
            "layer_norm_eps": 1e-05,
            "max_position_embeddings": 2048,
            "model_type": "gpt_neox",
            "num_attention_heads": 40,
            "num_hidden_layers": 36,
            "rotary_emb_base": 10000,
            "rotary_pct": 0.25,
            "tie_word_embeddings": False,
            "torch_dtype": "float16",
            "use_cache": True,
            "use_parallel_residual": True,
            "vocab_size": 50688,
        },
        "num_hidden_layers",
    ),
    "llama-3.1-8b": SeedModel(
        "llama-3.1-8b",
        "meta-llama/Llama-3.1-8B",
        "BF16",
        _llama_config(4096, 32, 32, 14336),
        "num_hidden_layers",
    ),
    "llama-3.1-70b": SeedModel(
        "llama-3.1-70b",
        "meta-llama/Llama-3.1-70B",
        "BF16",
        _llama_config(8192, 80, 64, 28672),
        "num_hidden_layers",
    ),
}
_TENSORS.update({"llama-3.1-8b": _llama, "llama-3.1-70b": _llama})

DEFAULT_LAYERS = {
    "gpt2-xl": 4,
    "phi-2": 4,
    "pythia-12b": 1,
    "llama-3.1-8b": 1,
    "llama-3.1-70b": 1,
}
"""Layers written by default: a few per model, the per-layer time extrapolated to the
published depth (layers are streamed one at a time, so peak RSS does not depend on the count;
every layer of a model costs the same work); the table gives the extrapolated full-depth
wall time. ``--layers`` overrides (``--layers 80`` writes every layer the published config
has)."""


def _random_block(name: str, n: int, gen: torch.Generator) -> torch.Tensor:
    t = torch.randn(n, generator=gen)
    is_norm = "norm" in name or ".ln_" in name or name.startswith("ln_")
    return 1 + 0.1 * t if is_norm and name.endswith("weight") else 0.02 * t


class _Pool:
    """Random N(0, 0.02²) values in the checkpoint's dtype, drawn once; large tensors are
    written as windows of it at random offsets (drawing every value costs minutes per model
    on a shared CPU; windows at random offsets keep rows distinct)."""

    SIZE = 2**25 + 1237  # not a multiple of any hidden size

    def __init__(self, dtype: torch.dtype, gen: torch.Generator):
        self.gen = gen
        values = (0.02 * torch.randn(self.SIZE, generator=gen)).to(dtype)
        self.bytes = memoryview(values.view(torch.uint8).numpy())
        self.size = values.element_size()

    def write(self, f: Any, n: int) -> None:
        """Write ``n`` values."""
        while n > 0:
            m = min(n, self.SIZE // 2)
            off = int(torch.randint(0, self.SIZE - m, (1,), generator=self.gen))
            f.write(self.bytes[off * self.size : (off + m) * self.size])
            n -= m


def write_checkpoint(model: SeedModel, folder: Path, n_layers: int, seed: int = 0) -> int:
    """Write the checkpoint (config, safetensors shards and index, GPT-2 tokenizer) into
    ``folder``, one block of values in memory at a time; return the weights' bytes."""
    from headatlas.weights.packaged import gpt2_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    dtype, size = DTYPES[model.dtype]
    tensors = model.tensors(n_layers)
    shards: list[list[Tensor]] = [[]]
    used = 0
    for name, shape in tensors:
        nbytes = size * _numel(shape)
        if not model.single_file and used and used + nbytes > SHARD_BYTES:
            shards.append([])
            used = 0
        shards[-1].append((name, shape))
        used += nbytes
    gen = torch.Generator().manual_seed(seed)
    pool = _Pool(dtype, gen)
    weight_map: dict[str, str] = {}
    total = 0
    for k, shard in enumerate(shards):
        fname = (
            "model.safetensors"
            if model.single_file
            else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        )
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape in shard:
            nbytes = size * _numel(shape)
            header[name] = {
                "dtype": model.dtype,
                "shape": list(shape),
                "data_offsets": [offset, offset + nbytes],
            }
            offset += nbytes
            weight_map[name] = fname
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name, shape in shard:
                n = _numel(shape)
                if len(shape) > 1 and n > 2**20:
                    pool.write(f, n)
                    continue
                t = _random_block(name, n, gen).to(dtype)
                f.write(t.view(torch.uint8).numpy().tobytes())
        total += (folder / fname).stat().st_size
    if not model.single_file:
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
        )
    config = dict(model.config)
    config[model.layers_key] = n_layers
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    gpt2_tokenizer(folder).save_pretrained(str(folder))
    return total


# The child: the CLI in a fresh process, with the pruned kernel's full-row pairs counted.
_CHILD = r"""
import json, sys
import headatlas.scoring.kernel.pairs as ranks
counts = {"full": 0, "pairs": 0}
_full = ranks.full_rows
def _counting(head, jobs):
    for job in jobs:
        if job.name == "pairs":  # the map's pairs, not the null's
            counts["pairs"] += job.layout.n_pairs
            counts["full"] += job.layout.n_pairs if job.pairs is None else int(job.pairs.numel())
    return _full(head, jobs)
ranks.full_rows = _counting
from headatlas.cli.main import main
rc = main(sys.argv[2:])
import torch
if torch.cuda.is_available():
    counts["gpu_peak"] = torch.cuda.max_memory_allocated()
json.dump(counts, open(sys.argv[1], "w"))
sys.exit(rc)
"""


def _available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def _expected_peak(model: SeedModel) -> int:
    """A generous guess of the map's peak (one float32 vocabulary matrix, block 0's MLP, a
    layer and the imports), to check free memory before starting."""
    c = model.config
    d = c.get("hidden_size", c.get("n_embd"))
    m = c.get("intermediate_size", 4 * d)
    return int(4 * d * c["vocab_size"] * 1.3 + 3 * 4 * d * m + 1.5e9)


SRC = Path(__file__).resolve().parents[1] / "src"


def map_one(
    model: SeedModel, folder: Path, out: Path, device: str, src: Path = SRC
) -> dict[str, Any]:
    """Map the checkpoint with the CLI in a fresh process; wall time, peak RSS, manifest
    timings and the undecided share."""
    stats = out / f"{model.key}-kernel.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = ["/usr/bin/time", "-v", sys.executable, "-c", _CHILD, str(stats)]
    cmd += ["map", str(folder), "--out", str(out), "--quiet", "--device", device]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{model.key}: map failed:\n{proc.stderr[-3000:]}")
    peak = 0
    for line in proc.stderr.splitlines():
        if "Maximum resident set size" in line:
            peak = int(line.split(":")[1]) * 1024
    results = Path(proc.stdout.strip().splitlines()[-1].split("results:", 1)[1].strip())
    manifest = json.loads((results / "manifest.json").read_text())
    counts = json.loads(stats.read_text())
    return {
        "wall_s": wall,
        "peak_rss": peak,
        "timings": manifest["timings"],
        "undecided": counts["full"] / max(1, counts["pairs"]),
        "gpu_peak": counts.get("gpu_peak"),
        "results": str(results),
    }


def run_model(
    model: SeedModel,
    n_layers: int,
    work: Path,
    out: Path,
    device: str = "cpu",
    src: Path = SRC,
    also: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write, map and delete one model's checkpoint. ``also``: more devices the same
    checkpoint is mapped on, each compared with the first map (``also`` rows under "also")."""
    need = model.nbytes(n_layers)
    free = shutil.disk_usage(work).free
    if free < need * 1.05 + 2e9:
        raise RuntimeError(f"{model.key}: need {need / 1e9:.1f} GB of disk in {work}")
    folder = work / model.key
    shutil.rmtree(folder, ignore_errors=True)
    try:
        t0 = time.perf_counter()
        written = write_checkpoint(model, folder, n_layers)
        t_write = time.perf_counter() - t0
        print(f"{model.key}: wrote {written / 1e9:.2f} GB in {t_write:.0f} s", flush=True)
        want = _expected_peak(model)
        for _ in range(60):  # the machine is shared: wait for room rather than crowd it out
            if _available_bytes() > want:
                break
            print(f"{model.key}: waiting for {want / 2**30:.1f} GiB available", flush=True)
            time.sleep(10)
        else:
            raise RuntimeError(f"{model.key}: {want / 2**30:.1f} GiB never became available")
        devices = (device, *also)  # one results folder per run: no run reuses another's map
        runs = [map_one(model, folder, out / f"{i}-{dev.replace(':', '-')}", dev, src)
                for i, dev in enumerate(devices)]  # fmt: skip
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    row = _row(model, n_layers, written, t_write, runs[0])
    row["also"] = {}
    for dev, run in zip(also, runs[1:], strict=True):
        other = _row(model, n_layers, written, t_write, run)
        other["cells_differing"] = differing_cells(runs[0]["results"], run["results"])
        row["also"][dev] = other
    return row


def differing_cells(a: str, b: str) -> int:
    """(layer, head, relation) cells whose scores differ between two results folders, on the
    layers both have."""
    import pandas as pd

    key = ["layer", "head", "relation"]
    x = pd.read_parquet(Path(a) / "scores.parquet").set_index(key)
    y = pd.read_parquet(Path(b) / "scores.parquet").set_index(key)
    common = x.index.intersection(y.index)
    cols = ["score", "suppression_score"]
    return int((x.loc[common, cols] != y.loc[common, cols]).any(axis=1).sum())


def _row(
    model: SeedModel, n_layers: int, written: int, t_write: float, r: dict[str, Any]
) -> dict[str, Any]:
    t = r["timings"]
    per_layer = t["scores_s"] / max(1, t["layers_computed"])
    fixed = r["wall_s"] - t["scores_s"]
    full_bytes = model.nbytes(model.n_layers)
    return {
        "model": model.key,
        "hub_id": model.hub_id,
        "grid": model.grid(),
        "dtype": model.dtype,
        "layers": n_layers,
        "layers_published": model.n_layers,
        "written_gb": written / 1e9,
        "checkpoint_gb": full_bytes / 1e9,
        "write_s": t_write,
        "wall_s": r["wall_s"],
        "prepare_s": t["load_s"] + t["prepare_s"],
        "per_layer_s": per_layer,
        "full_wall_s": fixed + per_layer * model.n_layers,
        "peak_rss_gib": r["peak_rss"] / 2**30,
        "rss_share": r["peak_rss"] / full_bytes,
        "rss_share_written": r["peak_rss"] / written,
        "undecided": r["undecided"],
        "gpu_peak_gib": None if r["gpu_peak"] is None else r["gpu_peak"] / 2**30,
        "results": r["results"],
    }


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of results."""
    head = (
        "| model | grid | dtype | layers mapped | checkpoint GB (written) | wall s | "
        "start-up s | s / layer | full-depth wall | peak RSS GiB | RSS / checkpoint "
        "(written) | undecided |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        est = "" if r["layers"] == r["layers_published"] else " (extrapolated)"
        narrow = " (narrow)" if r["model"].endswith("-narrow") else ""
        lines.append(
            f"| {r['hub_id']}{narrow} | {r['grid']} | {r['dtype']} | {r['layers']} of "
            f"{r['layers_published']} | {r['checkpoint_gb']:.1f} ({r['written_gb']:.1f}) | "
            f"{r['wall_s']:.0f} | {r['prepare_s']:.0f} | {r['per_layer_s']:.1f} | "
            f"{r['full_wall_s'] / 60:.0f} min{est} | {r['peak_rss_gib']:.2f} | "
            f"{r['rss_share']:.3f} ({r['rss_share_written']:.2f}) | {100 * r['undecided']:.2f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--layers", type=int, default=None, help="at most this many layers each")
    ap.add_argument("--work", type=Path, default=None, help="where checkpoints are written")
    ap.add_argument("--keep-maps", type=Path, default=None, help="keep the results here")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    ap.add_argument(
        "--narrow",
        type=int,
        default=None,
        metavar="D_HEAD",
        help="write every layer at D_HEAD dimensions per head (the published grid, narrow)",
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--src", type=Path, default=SRC, help="the headatlas sources to map with (before/after)"
    )
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="headatlas-seed-"))
    work.mkdir(parents=True, exist_ok=True)
    out = args.keep_maps or work / "maps"
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for key in args.models:
        model = MODELS[key]
        n = min(model.n_layers, args.layers or DEFAULT_LAYERS[key])
        if args.narrow is not None:
            model = model.narrow(args.narrow)
            n = min(model.n_layers, args.layers or model.n_layers)
        row = run_model(model, n, work, out, args.device, args.src)
        print(json.dumps(row), flush=True)
        rows.append(row)
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=2))
    import platform

    print(
        f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB, "
        f"device {args.device}, torch {torch.__version__}"
    )
    print(table(rows))


if __name__ == "__main__":
    main()
