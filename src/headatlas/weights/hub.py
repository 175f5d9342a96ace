"""A Hugging Face hub id: download only config, tokenizer and the safetensors shards that hold
the tensors a pass needs, then read them as a local folder. Honours ``HF_HUB_OFFLINE``,
``HF_HUB_CACHE`` / ``HF_HOME`` and the local cache (nothing is fetched twice)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from headatlas.errors import WeightSourceError
from headatlas.weights.safetensors_dir import SafetensorsDirSource

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "generation_config.json",
)


def looks_like_hub_id(spec: str) -> bool:
    """``org/name`` (one slash, no path separators beyond it, not an existing path)."""
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not Path(spec).exists()


def download_needed(
    repo_id: str,
    needed: Callable[[dict[str, Any]], Iterable[str]],
    revision: str | None = None,
) -> Path:
    """Fetch config, tokenizer and the shards holding ``needed(config)`` tensors; return the
    snapshot folder.

    ``needed`` maps the config to the tensor names a pass will read (checkpoint naming).
    """
    try:
        from huggingface_hub import hf_hub_download, snapshot_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise WeightSourceError(
            "hub ids need huggingface_hub: pip install huggingface_hub"
        ) from exc
    try:
        config_path = Path(hf_hub_download(repo_id, "config.json", revision=revision))
        config = json.loads(config_path.read_text())
        patterns = ["config.json", *TOKENIZER_FILES]
        try:
            index_path = Path(
                hf_hub_download(repo_id, "model.safetensors.index.json", revision=revision)
            )
            weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
            patterns.append("model.safetensors.index.json")
            wanted = set(needed(config))
            shards = {
                file
                for key, file in weight_map.items()
                if key in wanted
                or any(key.endswith("." + w) or w.endswith("." + key) for w in wanted)
            }
            patterns.extend(sorted(shards or set(weight_map.values())))
        except (EntryNotFoundError, LocalEntryNotFoundError):
            patterns.append("model.safetensors")
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
    except LocalEntryNotFoundError as exc:
        raise WeightSourceError(
            f"hub model '{repo_id}' is not in the local cache and downloads are off "
            "(HF_HUB_OFFLINE=1 or no network): download it once with network access, "
            "or pass a local folder"
        ) from exc
    except RepositoryNotFoundError as exc:
        raise WeightSourceError(
            f"hub model '{repo_id}' does not exist or needs a token: check the id, "
            "or log in with `hf auth login`"
        ) from exc
    return Path(folder)


class HubSource(SafetensorsDirSource):
    """A hub model, read from the files :func:`download_needed` fetched."""

    def __init__(
        self,
        repo_id: str,
        needed: Callable[[dict[str, Any]], Iterable[str]],
        revision: str | None = None,
    ):
        folder = download_needed(repo_id, needed, revision)
        self.repo_id = repo_id
        super().__init__(folder)
        self.name = repo_id

    def describe(self) -> dict[str, Any]:
        """Manifest entry."""
        return {"kind": "hub", "repo_id": self.repo_id, "snapshot": str(self.path)}

    def display_name(self) -> str:
        """The repository name."""
        return self.repo_id.split("/")[-1]
