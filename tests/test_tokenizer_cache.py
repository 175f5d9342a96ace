"""The converted-tokenizer cache of GGUF sources gives the same tokens as a fresh conversion."""

from __future__ import annotations

from pathlib import Path

import pytest

from headatlas.relations import builtin_relations
from headatlas.weights import open_source


@pytest.mark.real
def test_cached_tokenizer_encodes_like_the_gguf_conversion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEADATLAS_CACHE", str(tmp_path))
    source = open_source("smollm2")
    fresh = source.tokenizer()  # converts from GGUF metadata and fills the cache
    assert any((tmp_path / "tokenizers").iterdir())
    cached = source.tokenizer()  # loads the saved copy
    words = [w for rel in builtin_relations() for pair in rel.pairs for w in pair]
    texts = [" " + w for w in words] + ["Hello, world!\n\t<|im_start|>user", "1999 2024"]
    for text in texts:
        assert cached.encode(text, add_special_tokens=False) == fresh.encode(
            text, add_special_tokens=False
        ), text
    assert len(cached) == len(fresh) == 49152
    assert cached.all_special_ids == fresh.all_special_ids
