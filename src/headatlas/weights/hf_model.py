"""The one place a ``transformers`` model is built for inference (validation runs it with
hooks, the local describe backend chats with it): a packaged name, a ``.gguf`` file, a model
folder or a hub id, resolved the same way for every caller."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from headatlas.errors import WeightSourceError


def _where(spec: str) -> tuple[str, dict[str, Any]]:
    """(what ``from_pretrained`` is given, extra keyword arguments) for a model spec."""
    from headatlas.weights.packaged import PACKAGED_NAMES, packaged_path

    if spec in PACKAGED_NAMES:
        path = packaged_path(spec)
        return str(path.parent), {"gguf_file": path.name}
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        return str(path), {}
    from headatlas.weights.hub import hub_cache_dir, hub_offline, split_revision

    source, revision = split_revision(spec)  # org/name@REVISION: that hub revision
    kwargs: dict[str, Any] = {"cache_dir": hub_cache_dir(), "local_files_only": hub_offline()}
    if revision is not None:
        kwargs["revision"] = revision
    return source, kwargs


def load_causal_lm(spec: str, *, with_tokenizer: bool = False, purpose: str = "inference") -> Any:
    """The float32 ``*ForCausalLM`` for ``spec`` in eval mode (with its tokenizer when
    ``with_tokenizer``: then a ``(model, tokenizer)`` pair)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, kwargs = _where(str(spec))
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs) if with_tokenizer else None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightSourceError(
            f"cannot load {spec!r} with transformers for {purpose} ({first[:300]}): pass a "
            "packaged name, a .gguf file, a local model folder, or a hub id already downloaded"
        ) from exc
    model.eval()
    return (model, tokenizer) if with_tokenizer else model
