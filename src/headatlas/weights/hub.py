"""A Hugging Face hub id: download only config, tokenizer and the safetensors shards that hold
the tensors a pass needs, then read them as a local folder. Honours ``HF_HUB_OFFLINE``,
``HF_HUB_CACHE`` / ``HF_HOME`` and the local cache (nothing is fetched twice). When the hub
does not answer within ``HEADATLAS_HUB_TIMEOUT`` seconds (default 5) only the cache is used, so
an offline machine gets its error at once instead of after the hub library's retries."""

from __future__ import annotations

import json
import os
import socket
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


def split_revision(spec: str) -> tuple[str, str | None]:
    """``MODEL@REVISION`` -> (MODEL, REVISION); a spec without ``@`` (or an existing path that
    holds one) -> (spec, None). The revision is a branch, tag or commit of a hub repository."""
    if "@" not in spec or Path(spec).exists():
        return spec, None
    model, _, revision = spec.rpartition("@")
    if not model or not revision:
        raise WeightSourceError(
            f"model '{spec}' has an empty side around '@': write MODEL@REVISION, "
            "e.g. EleutherAI/pythia-70m@step1000"
        )
    return model, revision


def with_revision(repo_id: str, revision: str | None) -> str:
    """The ``MODEL@REVISION`` name of a hub model (just MODEL without a revision)."""
    return f"{repo_id}@{revision}" if revision else repo_id


def hub_cache_dir(cache_dir: str | Path | None = None) -> str | None:
    """The hub cache folder: ``cache_dir`` if given, else ``HF_HUB_CACHE``, else
    ``$HF_HOME/hub``, read now (``huggingface_hub`` reads them once, at import)."""
    if cache_dir is not None:
        return str(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def hub_offline() -> bool:
    """Whether downloads are off (``HF_HUB_OFFLINE`` set now or when the hub library loaded)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return env in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


HUB_TIMEOUT_ENV = "HEADATLAS_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT = 5.0


def hub_unreachable(timeout: float | None = None) -> str | None:
    """None when the hub endpoint (``HF_ENDPOINT``, a mirror too) accepts a connection within
    ``timeout`` seconds (``$HEADATLAS_HUB_TIMEOUT``, default 5), else why not, in words."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if timeout is None:
        try:
            timeout = float(os.environ.get(HUB_TIMEOUT_ENV) or DEFAULT_HUB_TIMEOUT)
        except ValueError:
            timeout = DEFAULT_HUB_TIMEOUT
    url = urlparse(constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return f"{host} does not answer within {timeout:g} s ({why})"
    return None


def download_needed(
    repo_id: str,
    needed: Callable[[dict[str, Any]], Iterable[str]],
    revision: str | None = None,
    cache_dir: str | Path | None = None,
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
            RevisionNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise WeightSourceError(
            "hub ids need huggingface_hub: pip install huggingface_hub"
        ) from exc
    offline = hub_offline()
    unreachable = None if offline else hub_unreachable()
    where: dict[str, Any] = {
        "revision": revision,
        "cache_dir": hub_cache_dir(cache_dir),
        "local_files_only": offline or unreachable is not None,
    }
    try:
        config_path = Path(hf_hub_download(repo_id, "config.json", **where))
        config = json.loads(config_path.read_text())
        patterns = ["config.json", *TOKENIZER_FILES]
        try:
            index_path = Path(hf_hub_download(repo_id, "model.safetensors.index.json", **where))
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
        folder = snapshot_download(repo_id, allow_patterns=patterns, **where)
    except RevisionNotFoundError as exc:
        raise WeightSourceError(
            f"hub model '{repo_id}' has no revision '{revision}': check the branch, tag or "
            "commit name on the model's hub page"
        ) from exc
    except LocalEntryNotFoundError as exc:
        if unreachable is not None:
            raise WeightSourceError(
                f"hub model '{with_revision(repo_id, revision)}' is not in the local cache and "
                f"the hub is unreachable ({unreachable}): connect to the network, or pass a "
                f"local folder ({HUB_TIMEOUT_ENV} sets the wait)"
            ) from exc
        raise WeightSourceError(
            f"hub model '{with_revision(repo_id, revision)}' is not in the local cache and downloads are off "
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
        cache_dir: str | Path | None = None,
    ):
        folder = download_needed(repo_id, needed, revision, cache_dir)
        self.repo_id = repo_id
        self.revision = revision
        # Only the shards holding needed tensors were fetched: the index lists more.
        super().__init__(folder, require_all_shards=False)
        self.name = with_revision(repo_id, revision)

    def describe(self) -> dict[str, Any]:
        """Manifest entry (``commit``: the snapshot folder's name, the resolved commit)."""
        return {
            "kind": "hub",
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.path.name,
            "snapshot": str(self.path),
        }

    def display_name(self) -> str:
        """The repository name (``name@revision`` for a revision)."""
        return with_revision(self.repo_id.split("/")[-1], self.revision)
