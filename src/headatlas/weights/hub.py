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


def hub_endpoint() -> str | None:
    """The hub's address: ``HF_ENDPOINT`` read now (a mirror such as olah), else the library's
    default (``huggingface_hub`` reads it once, at import)."""
    return os.environ.get("HF_ENDPOINT") or None


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
    url = urlparse(hub_endpoint() or constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return f"{host} does not answer within {timeout:g} s ({why})"
    return None


INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def needed_shards(weight_map: dict[str, str], wanted: set[str]) -> list[str]:
    """The shards of an index that hold a wanted tensor (prefix variants allowed); all of them
    if the index names none of the wanted tensors."""
    shards = {
        file
        for key, file in weight_map.items()
        if key in wanted or any(key.endswith("." + w) or w.endswith("." + key) for w in wanted)
    }
    return sorted(shards or set(weight_map.values()))


def _weight_files(
    folder_has: Callable[[str], bool],
    read_json: Callable[[str], dict[str, Any]],
    needed: Callable[[dict[str, Any]], Iterable[str]],
) -> list[str]:
    """The weight files a pass reads: the needed shards of an index, or the single file;
    ``[]`` when the revision holds no safetensors weights."""
    if folder_has(INDEX_FILE):
        config = read_json("config.json")
        try:
            weight_map: dict[str, str] = read_json(INDEX_FILE)["weight_map"]
        except KeyError as exc:
            raise WeightSourceError(
                f"{INDEX_FILE} has no weight_map: the repository's index is not a safetensors "
                "index; re-upload it or pass a local folder"
            ) from exc
        return [INDEX_FILE, *needed_shards(weight_map, set(needed(config)))]
    if folder_has(SINGLE_FILE):
        return [SINGLE_FILE]
    return []


def download_needed(
    repo_id: str,
    needed: Callable[[dict[str, Any]], Iterable[str]],
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> Path:
    """Fetch config, tokenizer and the shards holding ``needed(config)`` tensors; return the
    snapshot folder.

    ``needed`` maps the config to the tensor names a pass will read (checkpoint naming). Which
    files exist comes from one metadata call (the revision's file list), so a mirror that
    answers 401 instead of 404 for an absent file reads like the hub; offline, the cached
    snapshot must hold every file the pass needs.
    """
    try:
        from huggingface_hub import HfApi, hf_hub_download
        from huggingface_hub import errors as hub_errors
        from huggingface_hub.errors import (
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise WeightSourceError(
            "hub ids need huggingface_hub: pip install huggingface_hub"
        ) from exc
    # Transport failures: OSError under requests, the HTTP client's own HTTPError under httpx.
    network = (OSError, LocalEntryNotFoundError, getattr(hub_errors, "HTTPError", OSError))
    name = with_revision(repo_id, revision)
    ref = revision or "main"
    where: dict[str, Any] = {
        "revision": ref,
        "cache_dir": hub_cache_dir(cache_dir),
        "endpoint": hub_endpoint(),
    }
    if hub_offline():
        return _cached_snapshot(repo_id, name, needed, where)
    unreachable = hub_unreachable()
    if unreachable is not None:  # no minutes of retries: the cache or a one-line error
        return _cached_snapshot(repo_id, name, needed, where, unreachable)
    api = HfApi(endpoint=where["endpoint"])
    try:
        info = api.model_info(repo_id, revision=ref)
    except RevisionNotFoundError as exc:
        raise _no_revision(repo_id, revision) from exc
    except RepositoryNotFoundError as exc:
        # Mirrors answer an unknown revision like an unknown repository: ask about main.
        if revision and revision != "main" and _exists(api, repo_id):
            raise _no_revision(repo_id, revision) from exc
        raise WeightSourceError(
            f"hub model '{repo_id}' does not exist or needs a token: check the id, "
            "or log in with `hf auth login`"
        ) from exc
    except network as exc:
        raise _unreachable(name, where["endpoint"], exc) from exc
    files = {s.rfilename for s in info.siblings or []}
    if "config.json" not in files:
        raise WeightSourceError(
            f"hub model '{name}' has no config.json: it is not a transformers model "
            "repository; check the id and revision"
        )
    fetched: dict[str, Path] = {}

    def fetch(file: str) -> Path:
        if file not in fetched:
            try:
                fetched[file] = Path(hf_hub_download(repo_id, file, **where))
            except network as exc:
                raise _unreachable(name, where["endpoint"], exc) from exc
        return fetched[file]

    weights = _weight_files(files.__contains__, lambda f: json.loads(fetch(f).read_text()), needed)
    if not weights:
        raise WeightSourceError(
            f"hub model '{name}' has no safetensors weights ({INDEX_FILE} or {SINGLE_FILE}): "
            "headatlas reads safetensors from the hub; convert the repository or pass a "
            "local folder (--allow-pickle for *.bin)"
        )
    for file in ["config.json", *[f for f in TOKENIZER_FILES if f in files], *weights]:
        fetch(file)
    return fetched["config.json"].parent


def _cached_snapshot(
    repo_id: str,
    name: str,
    needed: Callable[[dict[str, Any]], Iterable[str]],
    where: dict[str, Any],
    unreachable: str | None = None,
) -> Path:
    """The cached snapshot of a revision, offline (or with the hub ``unreachable``, in words):
    it must hold every file the pass reads."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        config = Path(hf_hub_download(repo_id, "config.json", local_files_only=True, **where))
    except LocalEntryNotFoundError as exc:
        if unreachable is not None:
            raise WeightSourceError(
                f"hub model '{name}' is not in the local cache and the hub is unreachable "
                f"({unreachable}): connect to the network, or pass a local folder "
                f"({HUB_TIMEOUT_ENV} sets the wait)"
            ) from exc
        raise WeightSourceError(
            f"hub model '{name}' is not in the local cache and downloads are off "
            "(HF_HUB_OFFLINE=1 or no network): download it once with network access, "
            "or pass a local folder"
        ) from exc
    folder = config.parent
    weights = _weight_files(
        lambda f: (folder / f).is_file(),
        lambda f: json.loads((folder / f).read_text()),
        needed,
    )
    missing = [f for f in weights if not (folder / f).is_file()] if weights else [SINGLE_FILE]
    if missing:
        raise WeightSourceError(
            f"hub model '{name}' is only partly in the local cache (missing {', '.join(missing)}) "
            "and downloads are off (HF_HUB_OFFLINE=1): download it again with network access"
        )
    return folder


def _exists(api: Any, repo_id: str) -> bool:
    """Whether the repository's main branch answers (tells a missing revision from a missing
    repository where the server answers both alike)."""
    try:
        api.model_info(repo_id, revision="main")
    except Exception:  # any failure means "cannot tell": say the repo is missing
        return False
    return True


def _no_revision(repo_id: str, revision: str | None) -> WeightSourceError:
    return WeightSourceError(
        f"hub model '{repo_id}' has no revision '{revision}': check the branch, tag or "
        "commit name on the model's hub page"
    )


def _unreachable(name: str, endpoint: str | None, exc: BaseException) -> WeightSourceError:
    where = endpoint or "the hub"
    return WeightSourceError(
        f"download of hub model '{name}' from {where} stopped ({type(exc).__name__}): "
        "files fetched completely are kept in the cache and partial ones are not used; "
        "rerun when the server is reachable, or set HF_HUB_OFFLINE=1 to use the cache"
    )


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
