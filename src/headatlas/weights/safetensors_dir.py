"""A local Hugging Face folder: config.json, tokenizer files, and safetensors weights
(single file or shards with ``model.safetensors.index.json``), read tensor by tensor.

Each file is memory-mapped; a tensor is copied out of the map and the pages it occupied are
released at once (``madvise(MADV_DONTNEED)``), so reading every layer in turn never holds more
than the tensor being read. Folders with only pickle ``*.bin`` weights are refused unless the
user opts in, because unpickling can execute arbitrary code.
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import torch

from headatlas.errors import UnsafeWeightsError, WeightSourceError
from headatlas.weights.base import WeightSource

_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_PAGE = mmap.PAGESIZE


class SafetensorsFile:
    """One ``.safetensors`` file: its header parsed eagerly, tensors read on demand."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        try:
            with open(path, "rb") as f:
                raw = f.read(8)
                if len(raw) < 8:
                    raise ValueError("shorter than its 8-byte header length")
                (hlen,) = struct.unpack("<Q", raw)
                if hlen > size - 8:
                    raise ValueError(f"header claims {hlen} bytes but the file has {size}")
                header = json.loads(f.read(hlen))
        except (ValueError, UnicodeDecodeError) as exc:
            raise WeightSourceError(
                f"{path} is not a valid safetensors file ({exc}): re-download or re-save it"
            ) from exc
        header.pop("__metadata__", None)
        self.header: dict[str, Any] = header
        self.data_start = 8 + hlen
        end = max((v["data_offsets"][1] for v in header.values()), default=0)
        if self.data_start + end > size:
            raise WeightSourceError(
                f"{path} is truncated: its header needs {self.data_start + end} bytes, the file "
                f"has {size}; re-download it"
            )
        self.header_digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()
        self._mm: mmap.mmap | None = None

    def _map(self) -> mmap.mmap:
        if self._mm is None:
            with open(self.path, "rb") as f:
                # ACCESS_COPY gives a writable private view torch can wrap; the file never changes.
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        return self._mm

    def read(self, name: str) -> torch.Tensor:
        """Copy one tensor out of the file and release the pages it used."""
        info = self.header[name]
        dtype = _DTYPES.get(info["dtype"])
        if dtype is None:
            raise WeightSourceError(
                f"{self.path}: tensor {name} has unsupported dtype {info['dtype']}"
            )
        start, end = info["data_offsets"]
        mm = self._map()
        offset = self.data_start + start
        count = (end - start) // torch.empty((), dtype=dtype).element_size()
        if count != math.prod(info["shape"]):
            raise WeightSourceError(
                f"{self.path}: tensor {name} has shape {info['shape']} but {end - start} bytes "
                f"of {info['dtype']}; the file is corrupt, re-download it"
            )
        if count == 0:
            return torch.empty(info["shape"], dtype=dtype)
        tensor = torch.frombuffer(mm, dtype=dtype, count=count, offset=offset).clone()
        lo = offset - offset % _PAGE
        if hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED, lo, self.data_start + end - lo)
        return tensor.reshape(info["shape"])


class SafetensorsDirSource(WeightSource):
    """A local Hugging Face model folder."""

    def __init__(
        self, path: str | Path, allow_pickle: bool = False, require_all_shards: bool = True
    ):
        """Open a folder. ``require_all_shards=False`` accepts a folder holding only some of
        the shards its index lists (a hub download of just the shards a pass needs)."""
        self.path = Path(path)
        self.name = str(path)
        if not self.path.exists():
            raise WeightSourceError(f"model path {self.path} does not exist: check the spelling")
        if not self.path.is_dir():
            raise WeightSourceError(
                f"{self.path} is a file: pass the model folder (with config.json), or a .gguf file"
            )
        if not (self.path / "config.json").is_file():
            raise WeightSourceError(
                f"{self.path} has no config.json: pass a Hugging Face model folder "
                "(save_pretrained writes one)"
            )
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, str] = {}
        self._pickle: dict[str, str] = {}
        self._pickle_cache: tuple[str, dict[str, torch.Tensor]] | None = None
        shards = sorted(self.path.glob("*.safetensors"))
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            # The index names the shards; other .safetensors files in the folder (Mistral's
            # consolidated.safetensors, adapters) hold the same weights under other names.
            try:
                listed = set(json.loads(index.read_text())["weight_map"].values())
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise WeightSourceError(
                    f"{index} is not a valid safetensors index ({exc}): re-download it"
                ) from exc
            missing = listed - {p.name for p in shards}
            if missing and (require_all_shards or missing == listed):
                raise WeightSourceError(
                    f"{self.path}: shards listed in model.safetensors.index.json are missing: "
                    f"{', '.join(sorted(missing))}; download them"
                )
            shards = [p for p in shards if p.name in listed]
        if shards:
            for shard in shards:
                f = SafetensorsFile(shard)
                self._files[shard.name] = f
                for key in f.header:
                    self._where[key] = shard.name
            return
        bins = sorted(self.path.glob("*.bin"))
        if not bins:
            raise WeightSourceError(
                f"{self.path} holds no weights (*.safetensors or *.bin): download the model files"
            )
        if not allow_pickle:
            raise UnsafeWeightsError(
                f"{self.path} has only pickle *.bin weights, and unpickling can run arbitrary code: "
                "convert them to safetensors, or pass --allow-pickle to load them with "
                "torch.load(weights_only=True)"
            )
        for b in bins:
            sd = torch.load(b, map_location="cpu", weights_only=True, mmap=True)
            for key in sd:
                self._pickle[key] = b.name
            del sd

    def config(self) -> dict[str, Any]:
        """config.json as a dict."""
        path = self.path / "config.json"
        try:
            data = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError) as exc:
            raise WeightSourceError(
                f"{path} is not valid JSON ({exc}): re-download it or re-save the model"
            ) from exc
        if not isinstance(data, dict):
            raise WeightSourceError(f"{path} is not a JSON object: re-download it")
        return data

    def keys(self) -> list[str]:
        """Every tensor name across shards."""
        return list(self._where) or list(self._pickle)

    def read(self, name: str) -> torch.Tensor:
        """One tensor, from its shard."""
        if name in self._where:
            return self._files[self._where[name]].read(name)
        file = self._pickle[name]
        if self._pickle_cache is None or self._pickle_cache[0] != file:
            sd = torch.load(self.path / file, map_location="cpu", weights_only=True, mmap=True)
            self._pickle_cache = (file, sd)
        return self._pickle_cache[1][name].clone()

    def tokenizer(self) -> Any:
        """The folder's tokenizer."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path)

    def fingerprint(self) -> str:
        """Hash of every shard's header and size."""
        h = hashlib.sha256()
        for name, f in sorted(self._files.items()):
            h.update(f"{name}:{f.path.stat().st_size}:{f.header_digest}".encode())
        for name in sorted(set(self._pickle.values())):
            h.update(f"{name}:{(self.path / name).stat().st_size}".encode())
        h.update((self.path / "config.json").read_bytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """Manifest entry."""
        return {
            "kind": "safetensors",
            "path": str(self.path.resolve()),
            "files": sorted(self._files),
        }

    def display_name(self) -> str:
        """Folder name."""
        return self.path.resolve().name


def is_hf_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a local Hugging Face model folder."""
    return Path(path).is_dir()
