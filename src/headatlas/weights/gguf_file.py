"""A GGUF file (llama.cpp format): tensors dequantised one at a time, config and tokenizer from
its metadata. Tensors are presented under Hugging Face names and layouts, undoing the
conversions llama.cpp applies: Q/K rows permuted for rotary (llama), Gemma norm gains stored as
``1 + w``, GPT-2 Conv1D weights transposed.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from headatlas.errors import UnsupportedArchitecture, WeightSourceError
from headatlas.weights.base import WeightSource
from headatlas.weights.dequant import dequantize
from headatlas.weights.gguf_header import open_gguf

# GGUF architecture -> Hugging Face model_type.
_MODEL_TYPES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma": "gemma",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
    "gpt2": "gpt2",
    "gptneox": "gpt_neox",
    "phi2": "phi",
}
_PERMUTED_QK = {"llama", "mistral"}
_NORM_PLUS_ONE = {"gemma", "gemma2", "gemma3"}
_CONV1D = {"gpt2"}
_CONV1D_SUFFIXES = ("attn_qkv.weight", "attn_output.weight", "ffn_up.weight", "ffn_down.weight")


def tokenizer_cache_dir() -> Path:
    """Where converted tokenizers are cached."""
    return (
        Path(os.environ.get("HEADATLAS_CACHE", Path.home() / ".cache" / "headatlas")) / "tokenizers"
    )


def unpermute_qk(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's rotary permutation of Q/K rows: per head, (d/2, 2) -> (2, d/2).

    llama.cpp wrote ``w.reshape(n_heads, 2, rows // n_heads // 2, *rest).swapaxes(1, 2)``.
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def interleave_neox_qkv(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's GPT-NeoX qkv reordering: rows q | k | v -> per head (q, k, v).

    llama.cpp wrote ``cat(w.reshape(n_heads, 3, d_head, *rest)[:, j] for j in 0, 1, 2)``.
    """
    rows = w.shape[0]
    return w.reshape(3, n_heads, rows // 3 // n_heads, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)


class GGUFSource(WeightSource):
    """One ``.gguf`` file."""

    def __init__(self, path: str | Path, name: str | None = None, display: str | None = None):
        import gguf

        self._display = display
        self.path = Path(path)
        self.name = name or str(path)
        if not self.path.is_file():
            raise WeightSourceError(f"GGUF file {self.path} does not exist: check the path")
        try:
            self._reader = open_gguf(self.path)
        except Exception as exc:  # the reader raises ValueError, struct.error, IndexError...
            raise WeightSourceError(
                f"{self.path} is not a readable GGUF file ({type(exc).__name__}: {exc}): "
                "re-download it"
            ) from exc
        self.arch = str(self._field("general.architecture"))
        if self.arch not in _MODEL_TYPES:
            raise UnsupportedArchitecture(
                f"GGUF architecture '{self.arch}' is not supported; supported: "
                f"{', '.join(_MODEL_TYPES)}"
            )
        self._tensors = {t.name: t for t in self._reader.tensors}
        arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == self.arch)
        self._name_map = gguf.get_tensor_name_map(
            arch_enum, int(self._field(f"{self.arch}.block_count"))
        )

    @property
    def header(self) -> Any:
        """The file's parsed header (:class:`~headatlas.weights.gguf_header.GGUFHeader`, or
        ``gguf.GGUFReader`` for layouts that one leaves alone)."""
        return self._reader

    def _field(self, key: str, default: Any = None) -> Any:
        field = self._reader.fields.get(key)
        if field is None:
            return default
        value = field.contents()
        return value

    def _float(self, key: str) -> float | None:
        """A float32 metadata value as the decimal it was written from (1e-06, not 9.99e-07)."""
        value = self._field(key)
        return None if value is None else float(str(np.float32(value)))

    def config(self) -> dict[str, Any]:
        """A Hugging Face style config built from the GGUF metadata."""
        a = self.arch
        n_heads = int(self._field(f"{a}.attention.head_count"))
        d_model = int(self._field(f"{a}.embedding_length"))
        vocab = self._field(f"{a}.vocab_size")
        if vocab is None:
            vocab = len(self._reader.fields["tokenizer.ggml.tokens"].data)
        cfg: dict[str, Any] = {
            "model_type": _MODEL_TYPES[a],
            "num_hidden_layers": int(self._field(f"{a}.block_count")),
            "hidden_size": d_model,
            "intermediate_size": int(self._field(f"{a}.feed_forward_length", 4 * d_model)),
            "num_attention_heads": n_heads,
            "num_key_value_heads": int(self._field(f"{a}.attention.head_count_kv", n_heads)),
            "head_dim": int(self._field(f"{a}.attention.key_length", d_model // n_heads)),
            "vocab_size": int(vocab),
            "max_position_embeddings": int(self._field(f"{a}.context_length", 2048)),
            "tie_word_embeddings": "output.weight" not in self._tensors,
        }
        eps = self._float(f"{a}.attention.layer_norm_rms_epsilon")
        if eps is not None:
            cfg["rms_norm_eps"] = float(eps)
        eps = self._float(f"{a}.attention.layer_norm_epsilon")
        if eps is not None:
            cfg["layer_norm_eps"] = cfg["layer_norm_epsilon"] = float(eps)
        theta = self._float(f"{a}.rope.freq_base")
        if theta is not None:
            cfg["rope_theta"] = float(theta)
        if a == "gptneox":
            cfg["use_parallel_residual"] = bool(self._field(f"{a}.use_parallel_residual", True))
        softcap = self._float(f"{a}.final_logit_softcapping")
        if softcap is not None:
            cfg["final_logit_softcapping"] = float(softcap)
        return cfg

    def keys(self) -> list[str]:
        """GGUF tensor names (``blk.0.attn_v.weight``...); :meth:`resolve` maps HF names here."""
        return list(self._tensors)

    def resolve(self, name: str) -> str | None:
        """The GGUF name of a Hugging Face tensor name."""
        if name in self._tensors:
            return name
        base, _, suffix = name.rpartition(".")
        gguf_base = self._name_map.get_name(base)
        if gguf_base is None:
            return None
        candidate = f"{gguf_base}.{suffix}"
        return candidate if candidate in self._tensors else None

    def read(self, name: str) -> torch.Tensor:
        """Dequantise one tensor to float32, in Hugging Face layout."""
        t = self._tensors[name]
        try:
            tensor = dequantize(t.data, t.tensor_type)
        except Exception as exc:
            raise WeightSourceError(
                f"{self.path}: tensor {name} could not be dequantised ({exc}): the file is corrupt"
            ) from exc
        self._release(t)
        if self.arch in _PERMUTED_QK and (".attn_q." in name or ".attn_k." in name):
            heads = int(self._field(f"{self.arch}.attention.head_count"))
            if ".attn_k." in name:
                heads = int(self._field(f"{self.arch}.attention.head_count_kv", heads))
            tensor = unpermute_qk(tensor, heads)
        if self.arch in _NORM_PLUS_ONE and name.endswith("norm.weight"):
            tensor = tensor - 1.0
        if self.arch == "gptneox" and ".attn_qkv." in name:
            tensor = interleave_neox_qkv(
                tensor, int(self._field(f"{self.arch}.attention.head_count"))
            )
        if self.arch in _CONV1D and name.endswith(_CONV1D_SUFFIXES):
            tensor = tensor.T.contiguous()
        return tensor

    def _release(self, t: Any) -> None:
        # Drop the file pages this tensor occupied from the process (they stay in page cache).
        mm = getattr(self._reader.data, "_mmap", None)
        if mm is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = int(t.data_offset)
        lo = start - start % mmap.PAGESIZE
        with contextlib.suppress(OSError, ValueError):
            mm.madvise(mmap.MADV_DONTNEED, lo, start + int(t.n_bytes) - lo)

    def tokenizer(self) -> Any:
        """The tokenizer stored in the GGUF metadata, built by ``transformers``.

        Building it from GGUF metadata is slow for large vocabularies (about 20 s for Gemma's
        262k tokens), so the result is saved under ``$HEADATLAS_CACHE`` (default
        ``~/.cache/headatlas``) keyed by the file's size and tensor table, and loaded from there next time.
        """
        from transformers import AutoTokenizer

        cache = tokenizer_cache_dir() / f"{self.path.stem}-{self._file_key()}"
        if (cache / "tokenizer_config.json").is_file():
            try:
                return AutoTokenizer.from_pretrained(cache)
            except Exception:  # a damaged cache entry: rebuild it below
                pass
        tok = AutoTokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name)
        try:
            tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
            tok.save_pretrained(tmp)
            if not cache.exists():
                os.replace(tmp, cache)
        except OSError:  # a read-only home is fine: no cache then
            pass
        return tok

    def start_token_id(self) -> tuple[bool, int | None]:
        """The BOS id ``transformers`` gives the file's tokenizer: ``tokenizer.ggml.bos_token_id``
        (read from the header, no tokenizer built; unknown without the key)."""
        bos = self._field("tokenizer.ggml.bos_token_id")
        return (False, None) if bos is None else (True, int(bos))

    def tokenizer_key(self) -> str | None:
        """The file's size and tensor table (its tokenizer is in its metadata)."""
        return f"gguf-{self._file_key()}"

    def _file_key(self) -> str:
        """Hash of size and tensor table (names, types, shapes, offsets): names the cached
        tokenizer (the results' fingerprint hashes tensor content instead)."""
        h = hashlib.sha256(str(self.path.stat().st_size).encode())
        for t in self._reader.tensors:
            h.update(f"{t.name}:{t.tensor_type}:{list(t.shape)}:{t.data_offset}".encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """Manifest entry."""
        return {"kind": "gguf", "path": str(self.path.resolve()), "arch": self.arch}

    def display_name(self) -> str:
        """The model's name from the GGUF metadata, else the file stem."""
        if self._display:
            return self._display
        name = self._field("general.name")
        return str(name) if name else self.path.stem
