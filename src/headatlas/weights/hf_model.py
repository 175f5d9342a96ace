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
    gguf_path = Path(source) / kwargs["gguf_file"] if "gguf_file" in kwargs else None
    try:
        model = _from_gguf(gguf_path) if gguf_path is not None else None
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
        if not with_tokenizer:
            tokenizer = None
        elif gguf_path is not None:  # the converted tokenizer, cached (weights/gguf_file.py)
            from headatlas.weights.gguf_file import GGUFSource

            tokenizer = GGUFSource(gguf_path).tokenizer()
        else:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightSourceError(
            f"cannot load {spec!r} with transformers for {purpose} ({first[:300]}): pass a "
            "packaged name, a .gguf file, a local model folder, or a hub id already downloaded"
        ) from exc
    model.eval()
    return (model, tokenizer) if with_tokenizer else model


def _from_gguf(path: Path) -> Any:
    """The ``*ForCausalLM`` of a GGUF file built from headatlas's own reading of it, or None
    when transformers cannot make a config of it or some parameter has no tensor there or
    another shape (then transformers loads the file itself, as before).

    transformers' GGUF loader parses every metadata array (token and merge lists) with
    ``gguf.GGUFReader`` and dequantises every tensor: 24 s for SmolLM2, 58 s for Gemma 3 on a
    2-core CPU. Here the config comes from transformers too, but from a copy of the file's
    metadata without its arrays (plus the vocabulary size), and each parameter is the tensor
    :meth:`GGUFSource.read` returns (dequantised, in Hugging Face layout): 9 s and 20 s.
    Tests check every parameter and the logits: equal to transformers' own loading of
    SmolLM2's file, and to the original model of each file llama.cpp's converter wrote.
    """
    import tempfile

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from headatlas.weights.gguf_file import GGUFSource
    from headatlas.weights.gguf_header import GGUFHeader

    src = GGUFSource(path)
    header = src.header
    if not isinstance(header, GGUFHeader):
        return None
    extra = {}
    vocab_key = f"{src.arch}.vocab_size"
    if vocab_key not in header.fields and "tokenizer.ggml.tokens" in header.fields:
        extra[vocab_key] = len(header.fields["tokenizer.ggml.tokens"].data)
    with tempfile.TemporaryDirectory(prefix="headatlas-gguf-") as tmp:
        keep = lambda f: not (f.is_array and f.name.startswith("tokenizer."))  # noqa: E731
        header.write_metadata(Path(tmp) / "metadata.gguf", keep, extra)
        try:
            config = AutoConfig.from_pretrained(tmp, gguf_file="metadata.gguf")
        except (ValueError, KeyError, OSError):  # an architecture transformers cannot read
            return None
    config._name_or_path = str(path.parent)
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import (  # type: ignore[attr-defined,no-redef]
            no_init_weights,
        )

    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {}
    for name in model.state_dict():
        stored = src.resolve(name)
        if stored is not None:
            state[name] = src.read(stored)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError:  # shapes the config does not expect: transformers' loader decides
        return None
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        return None
    model.tie_weights()
    return model
