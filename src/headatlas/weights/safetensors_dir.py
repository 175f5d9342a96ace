"""A local Hugging Face folder: config.json, tokenizer files, and safetensors weights
(single file or shards with ``model.safetensors.index.json``), read tensor by tensor with
``safetensors.safe_open``.

Each read opens the shard, takes one tensor (or, with :meth:`SafetensorsFile.read_slice`, only
a slice of it: the V third of a fused qkv) and closes the shard again, so the memory a pass holds
is the tensor being read, never the shard. Folders with only pickle ``*.bin`` weights are
refused unless the user opts in, because unpickling can execute arbitrary code.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from headatlas.errors import UnsafeWeightsError, WeightSourceError
from headatlas.weights.base import WeightSource

# Any of these makes a folder's tokenizer loadable (the fast JSON, BPE vocab, SentencePiece).
_TOKENIZER_MARKERS = (
    "tokenizer.json",
    "vocab.json",
    "tokenizer.model",
    "vocab.txt",
    "spiece.model",
)


# Files that change what the tokenizer does without making it loadable on their own.
_TOKENIZER_SIDE_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
)


class SafetensorsFile:
    """One ``.safetensors`` file: its tensor names read at open, tensors read on demand."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with safe_open(path, framework="pt") as f:
                self.names: list[str] = list(f.keys())
        except (SafetensorError, OSError) as exc:
            raise WeightSourceError(
                f"{path} is not a valid safetensors file ({exc}): re-download or re-save it"
            ) from exc

    def read(self, name: str) -> torch.Tensor:
        """One whole tensor."""
        try:
            with safe_open(self.path, framework="pt") as f:
                return f.get_tensor(name)
        except (SafetensorError, OSError, TypeError, ValueError) as exc:
            raise WeightSourceError(
                f"{self.path}: tensor {name} cannot be read ({exc}): re-download the file"
            ) from exc

    def read_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """``tensor.narrow(dim, start, stop - start)``, reading only that part of the file."""
        try:
            with safe_open(self.path, framework="pt") as f:
                part = f.get_slice(name)
                index = tuple([slice(None)] * dim + [slice(start, stop)])
                return part[index]
        except (SafetensorError, OSError, TypeError, ValueError) as exc:
            raise WeightSourceError(
                f"{self.path}: tensor {name} cannot be read ({exc}): re-download the file"
            ) from exc

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, from the header (nothing read)."""
        try:
            with safe_open(self.path, framework="pt") as f:
                return tuple(f.get_slice(name).get_shape())
        except (SafetensorError, OSError, TypeError, ValueError) as exc:
            raise WeightSourceError(
                f"{self.path}: tensor {name} cannot be read ({exc}): re-download the file"
            ) from exc


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
                for key in f.names:
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
            for key in _load_pickle(b):
                self._pickle[key] = b.name

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
            self._pickle_cache = (file, _load_pickle(self.path / file))
        return self._pickle_cache[1][name].clone()

    def read_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """Part of one tensor; from safetensors only that part is read."""
        if name in self._where:
            return self._files[self._where[name]].read_slice(name, dim, start, stop)
        return super().read_slice(name, dim, start, stop)

    def row_blocks(self, name: str, rows: int) -> tuple[tuple[int, ...], Iterator[torch.Tensor]]:
        """A tensor in blocks of rows; from safetensors each block is read alone."""
        if name not in self._where:
            return super().row_blocks(name, rows)
        file = self._files[self._where[name]]
        shape = file.shape(name)
        n = shape[0] if shape else 0
        blocks = (file.read_slice(name, 0, i, min(n, i + rows)) for i in range(0, n, rows))
        return shape, blocks

    def tokenizer_key(self) -> str | None:
        """SHA-256 of the folder's tokenizer files (names and content)."""
        h = hashlib.sha256()
        found = False
        for name in sorted(_TOKENIZER_MARKERS + _TOKENIZER_SIDE_FILES):
            f = self.path / name
            if f.is_file():
                found = True
                h.update(f"{name}:{f.stat().st_size}:".encode())
                h.update(f.read_bytes())
        return f"folder-{h.hexdigest()}" if found else None

    def tokenizer(self) -> Any:
        """The folder's tokenizer."""
        from transformers import AutoTokenizer

        if not any((self.path / f).is_file() for f in _TOKENIZER_MARKERS):
            raise WeightSourceError(
                f"{self.path} holds no tokenizer files ({', '.join(_TOKENIZER_MARKERS)}): copy "
                "them from the base model, or save them with tokenizer.save_pretrained"
            )
        try:
            return AutoTokenizer.from_pretrained(self.path)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeightSourceError(
                f"{self.path} has no usable tokenizer files ({first[:200]}): copy the "
                "tokenizer files (tokenizer.json or vocab/merges, tokenizer_config.json) from "
                "the base model, or save it with tokenizer.save_pretrained"
            ) from exc

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


def _load_pickle(path: Path) -> dict[str, torch.Tensor]:
    """A pickle ``*.bin`` state dict through ``torch.load(weights_only=True)``; a file that is
    not one is named instead of raising the unpickler's error."""
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightSourceError(
            f"{path} is not a loadable PyTorch state dict ({first[:200]}): re-save the model "
            "with save_pretrained (safetensors), or re-download it"
        ) from exc
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightSourceError(
            f"{path} does not hold a state dict of tensors: re-save the model with save_pretrained"
        )
    return sd


def is_hf_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a local Hugging Face model folder."""
    return Path(path).is_dir()
