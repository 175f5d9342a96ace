"""The map's tokenizer without ``transformers``: encoding words needs only the backend
(``tokenizers``) tokenizer that a transformers fast tokenizer encodes with.

Importing transformers and building its tokenizer costs about 1.7 s of a tiny model's 6 s map
on a small CPU. The first map of a tokenizer loads it through transformers as always, and
saves its backend (``backend_tokenizer.to_str()``, i.e. after everything transformers changed
at load) under ``$HEADATLAS_CACHE/encoders/``, keyed by the content of the tokenizer's files
and the versions of transformers and tokenizers; it is saved only when it encodes every word
of that map exactly as the transformers tokenizer does. Later maps of the same files read it
with ``tokenizers`` alone. Only ``encode(text, add_special_tokens=False)`` is offered: with
special tokens, transformers' own post-processing decides, so that stays with transformers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from headatlas.weights.base import WeightSource


def encoder_cache_dir() -> Path:
    """Where backend tokenizers are saved."""
    root = os.environ.get("HEADATLAS_CACHE", Path.home() / ".cache" / "headatlas")
    return Path(root) / "encoders"


class BackendEncoder:
    """``encode(text, add_special_tokens=False)`` of a transformers fast tokenizer, from its
    backend tokenizer alone."""

    def __init__(self, backend: Any, key: str):
        self._backend = backend
        self.key = key
        """The cache entry it was read from."""

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text``; only without special tokens (the map's use)."""
        if add_special_tokens:
            raise ValueError("BackendEncoder encodes without special tokens only")
        ids: list[int] = self._backend.encode(text, add_special_tokens=False).ids
        return ids

    def decode(self, ids: list[int]) -> str:
        """The text of token ids (special tokens kept), as the backend decodes it."""
        text: str = self._backend.decode(ids, skip_special_tokens=False)
        return text


def _versions() -> str:
    out = []
    for pkg in ("transformers", "tokenizers"):
        try:
            out.append(f"{pkg}={md.version(pkg)}")
        except md.PackageNotFoundError:
            out.append(f"{pkg}=none")
    return ",".join(out)


def _entry(source: WeightSource) -> Path | None:
    key = source.tokenizer_key()
    if key is None:
        return None
    digest = hashlib.sha256(f"{key}|{_versions()}".encode()).hexdigest()[:24]
    return encoder_cache_dir() / f"{digest}.json"


def map_encoder(
    source: WeightSource, full: Callable[[], Any], words: Iterable[str]
) -> BackendEncoder | Any:
    """What the map encodes ``words`` with: the saved backend of this tokenizer when there is
    one, else the transformers tokenizer ``full()`` (saving its backend for next time when it
    encodes every one of ``words`` the same way)."""
    entry = _entry(source)
    if entry is not None and entry.is_file():
        try:
            from tokenizers import Tokenizer

            data = json.loads(entry.read_text(encoding="utf-8"))
            return BackendEncoder(Tokenizer.from_str(data["backend"]), entry.stem)
        except Exception:  # a damaged entry: load through transformers and save it again
            pass
    tok = full()
    backend = getattr(tok, "backend_tokenizer", None)
    if entry is None or backend is None:
        return tok
    try:
        from tokenizers import Tokenizer

        saved = backend.to_str()
        candidate = Tokenizer.from_str(saved)
        probe = sorted(set(words))  # both sides in one batch each (fast tokenizers batch in Rust)
        mine = [e.ids for e in candidate.encode_batch(probe, add_special_tokens=False)]
        theirs = tok(probe, add_special_tokens=False)["input_ids"] if probe else []
        if [list(x) for x in theirs] != mine:
            return tok
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps({"backend": saved}), encoding="utf-8")
        os.replace(tmp, entry)
    except OSError:  # a read-only cache is fine: transformers every time then
        pass
    return tok
