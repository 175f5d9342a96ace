"""GGUF files written by llama.cpp's own converter (``convert_hf_to_gguf.py``), not by this
project: an independent check of the GGUF reader.

The converter ships inside the ``llama-cpp-python`` source distribution on PyPI. At test setup
it is fetched once with pip (``pip download --no-deps --no-binary :all:``), and only the
converter, its ``conversion`` package and its ``gguf-py`` are unpacked into a cache folder
(``$HEADATLAS_TEST_CACHE``, default ``~/.cache/headatlas-tests``); nothing of it is committed.
Tiny random Hugging Face models (GPT-2 vocabulary, so the real GPT-2 tokenizer fits) are saved
with ``save_pretrained`` and converted to float32 GGUF in one subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tiny_models import (
    GPT2_VOCAB,
    SENTENCES,
    SMALL_VOCAB,
    _build,
    gpt2,
    gpt2_tokenizer,
    phi,
    pythia,
    save_tiny,
)

LLAMA_CPP_PYTHON = "0.3.36"
_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def cache_dir() -> Path:
    """Where the converter is kept between test runs."""
    root = os.environ.get("HEADATLAS_TEST_CACHE") or Path.home() / ".cache" / "headatlas-tests"
    return Path(root) / f"llama-cpp-python-{LLAMA_CPP_PYTHON}"


def converter() -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py`` from the PyPI sdist (downloaded once, cached).
    Raises RuntimeError when the package registry cannot be reached."""
    root = cache_dir()
    script = root / "llama.cpp" / "convert_hf_to_gguf.py"
    if script.is_file():
        return script
    root.mkdir(parents=True, exist_ok=True)
    sdists = sorted(root.glob("llama_cpp_python-*.tar.gz"))
    if not sdists:
        done = subprocess.run(
            [
                sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(root), "-q",
            ],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
        sdists = sorted(root.glob("llama_cpp_python-*.tar.gz"))
        if done.returncode != 0 or not sdists:
            raise RuntimeError(f"pip download llama-cpp-python failed: {done.stderr[-500:]}")
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
    tmp = root / f"llama.cpp.tmp{os.getpid()}"
    with tarfile.open(sdists[0]) as tar:
        for member in tar.getmembers():
            rel = member.name[len(prefix) :] if member.name.startswith(prefix) else None
            if rel and rel.startswith(_PARTS) and (member.isfile() or member.isdir()):
                member.name = rel
                tar.extract(member, tmp, filter="data")
    os.replace(tmp, root / "llama.cpp")
    return script


def _gpt2_vocab(config: str, model: str, seed: int, plus_one: bool = False, **kw: Any) -> Any:
    """A tiny random model of a ``transformers`` class with the GPT-2 vocabulary."""
    import transformers

    common = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
    return _build(
        getattr(transformers, config), getattr(transformers, model), seed, plus_one=plus_one,
        **{"vocab_size": GPT2_VOCAB, "max_position_embeddings": 128, **common, **kw},
    )  # fmt: skip


# GGUF architecture -> a tiny random model of that family with the GPT-2 vocabulary.
FAMILIES: dict[str, Callable[[], Any]] = {
    "gpt2": gpt2,
    "gptneox": lambda: pythia(False),
    "phi2": phi,
    "llama": lambda: _gpt2_vocab("LlamaConfig", "LlamaForCausalLM", 40, num_key_value_heads=2),
    "mistral": lambda: _gpt2_vocab(
        "MistralConfig", "MistralForCausalLM", 41, num_key_value_heads=1, head_dim=16
    ),
    "qwen3": lambda: _gpt2_vocab(
        "Qwen3Config", "Qwen3ForCausalLM", 43, num_key_value_heads=2, head_dim=24
    ),
    "gemma": lambda: _gpt2_vocab(
        "GemmaConfig",
        "GemmaForCausalLM",
        44,
        True,
        num_key_value_heads=1,
        head_dim=32,
        vocab_size=SMALL_VOCAB,
    ),
    "gemma2": lambda: _gpt2_vocab(
        "Gemma2Config",
        "Gemma2ForCausalLM",
        45,
        True,
        num_key_value_heads=2,
        head_dim=24,
        sliding_window=4,
        query_pre_attn_scalar=24,
        vocab_size=SMALL_VOCAB,
    ),
    "gemma3": lambda: _gpt2_vocab(
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        46,
        True,
        num_key_value_heads=2,
        head_dim=24,
        sliding_window=4,
        query_pre_attn_scalar=24,
        layer_types=["sliding_attention", "full_attention"],
    ),
}

# Keys older checkpoints carry that the converter reads (transformers 5 no longer writes them).
_CONFIG_EXTRAS: dict[str, dict[str, Any]] = {
    "gpt2": {"n_ctx": 128},
    "gptneox": {"rotary_pct": 0.25},
}
# transformers 5 drops ``rotary_pct`` when it parses a GPT-NeoX config; without a model_type
# the converter reads config.json as written instead (it picks the model by "architectures").
_CONFIG_DROP = {"gptneox": ("model_type",)}
# Gemma and Gemma 2 are converted with a SentencePiece tokenizer (llama.cpp requires one).
_SENTENCEPIECE = {"gemma", "gemma2"}


def sentencepiece_model(folder: Path) -> Path:
    """A tiny SentencePiece model trained on a few sentences (``tokenizer.model``)."""
    import io

    import sentencepiece as spm

    text = [*SENTENCES, *(f"{w} number {i}" for i, w in enumerate(SENTENCES[0].split()))]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text * 20), model_writer=buf, vocab_size=120,
        model_type="bpe", character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    path = folder / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


_RUN_ALL = """
import os, sys, runpy
script, jobs = sys.argv[1], sys.argv[2:]
sys.path.insert(0, os.path.dirname(script))
for folder, out in zip(jobs[::2], jobs[1::2]):
    sys.argv = [script, folder, "--outfile", out, "--outtype", "f32"]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            print(f"FAILED {folder}: exit {exc.code}", file=sys.stderr)
    except Exception as exc:
        print(f"FAILED {folder}: {type(exc).__name__}: {exc}", file=sys.stderr)
"""


def _model_key(model: Any) -> str:
    """Hash of a model's config and weights: names its cached GGUF."""
    h = hashlib.sha256(model.config.to_json_string().encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def convert_families(root: Path) -> tuple[dict[str, tuple[Any, Path]], str]:
    """Every family's tiny model and its llama.cpp GGUF; returns {arch: (hf model, gguf
    path)} for the conversions that succeeded, and the converter's log of failures.

    GGUFs are cached beside the converter, named by a hash of the model's config and weights
    and the converter version, so only a changed model is converted again."""
    script = converter()
    cached = cache_dir() / "gguf"
    cached.mkdir(exist_ok=True)
    tokenizer = gpt2_tokenizer()
    out: dict[str, tuple[Any, Path]] = {}
    jobs: list[str] = []
    for arch, build in FAMILIES.items():
        model = build()
        target = cached / f"{arch}-{_model_key(model)}.gguf"
        out[arch] = (model, target)
        if target.is_file():
            continue
        folder = save_tiny(model, root / arch)
        if arch in _SENTENCEPIECE:
            sentencepiece_model(folder)
        else:
            tokenizer.save_pretrained(folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(_CONFIG_EXTRAS.get(arch, {}))
        for key in _CONFIG_DROP.get(arch, ()):
            cfg.pop(key, None)
        (folder / "config.json").write_text(json.dumps(cfg))
        jobs += [str(folder), str(root / f"{arch}.gguf")]
    failures = ""
    if jobs:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(
            [sys.executable, "-c", _RUN_ALL, str(script), *jobs],
            capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
        failures = "\n".join(x for x in done.stderr.splitlines() if x.startswith("FAILED"))
        for written in jobs[1::2]:
            arch = Path(written).stem
            if Path(written).is_file():
                os.replace(written, out[arch][1])
    return {a: v for a, v in out.items() if v[1].is_file()}, failures
