"""The map's encoder: a tokenizer's backend saved once and read back without transformers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import save_tiny, tiny_model

from headatlas.circuits import ModelCircuits
from headatlas.relations import resolve_relations
from headatlas.weights import open_source
from headatlas.weights.encoder import BackendEncoder, encoder_cache_dir, map_encoder


def _words() -> list[str]:
    return [" " + w for rel in resolve_relations(None) for pair in rel.pairs for w in pair]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HEADATLAS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def gpt2_folder(tmp_path: Path, gpt2_tokenizer) -> Path:
    folder = save_tiny(tiny_model("gpt2"), tmp_path / "tiny-gpt2")
    gpt2_tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model", ["gpt2", "smollm2"])
def test_saved_backend_encodes_every_builtin_word_like_transformers(
    model: str, cache: Path, request: pytest.FixtureRequest
) -> None:
    source = open_source(request.getfixturevalue("gpt2_folder") if model == "gpt2" else model)
    tok = source.tokenizer()
    words = _words() + [w.strip() for w in _words()[:500]] + ["", " ", "naïve café", "2024 1999"]
    first = map_encoder(source, lambda: tok, words)
    assert first is tok  # the first time: transformers' tokenizer, backend saved
    assert len(list((cache / "encoders").glob("*.json"))) == 1
    again = map_encoder(source, lambda: pytest.fail("transformers loaded again"), words)
    assert isinstance(again, BackendEncoder)
    for w in words:
        assert again.encode(w, add_special_tokens=False) == tok.encode(w, add_special_tokens=False)
    with pytest.raises(ValueError, match="without special tokens"):
        again.encode("x")


def test_second_map_imports_no_transformers_and_scores_the_same(
    gpt2_folder: Path, cache: Path, tmp_path: Path
) -> None:
    code = (
        "import sys, json; from headatlas.scoring.mapping import map_heads; "
        f"r = map_heads({str(gpt2_folder)!r}, ['copying', 'country_capital'], "
        f"out={str(tmp_path / 'out')!r} + sys.argv[1], progress=False, log=lambda m: None); "
        "print(json.dumps({'t': 'transformers' in sys.modules, "
        "'s': r.scores[['score', 'suppression_score']].to_numpy().tolist()}))"
    )
    env = dict(os.environ, HEADATLAS_CACHE=str(cache))
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", code, str(i)], env=env, capture_output=True, text=True,
                check=True,
            ).stdout.strip().splitlines()[-1]
        )
        for i in range(2)
    ]  # fmt: skip
    assert runs[0]["t"] is True and runs[1]["t"] is False
    assert runs[0]["s"] == runs[1]["s"] and len(runs[0]["s"]) > 0


def test_changed_tokenizer_files_are_not_served_from_the_cache(
    gpt2_folder: Path, cache: Path
) -> None:
    source = open_source(gpt2_folder)
    key = source.tokenizer_key()
    map_encoder(source, source.tokenizer, _words()[:50])
    config = gpt2_folder / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data["model_max_length"] = 77
    config.write_text(json.dumps(data))
    changed = open_source(gpt2_folder)
    assert changed.tokenizer_key() != key
    loaded = []
    map_encoder(changed, lambda: loaded.append(1) or changed.tokenizer(), _words()[:50])
    assert loaded == [1]  # a new entry, built through transformers
    assert len(list(encoder_cache_dir().glob("*.json"))) == 2


def test_damaged_entry_falls_back_to_transformers_and_is_rewritten(
    gpt2_folder: Path, cache: Path
) -> None:
    source = open_source(gpt2_folder)
    map_encoder(source, source.tokenizer, _words()[:50])
    (entry,) = encoder_cache_dir().glob("*.json")
    entry.write_text("{not json")
    tok = source.tokenizer()
    assert map_encoder(source, lambda: tok, _words()[:50]) is tok
    assert isinstance(map_encoder(source, source.tokenizer, _words()[:50]), BackendEncoder)


def test_a_loaded_tokenizer_is_used_as_it_is(gpt2_folder: Path, cache: Path) -> None:
    circuits = ModelCircuits.load(gpt2_folder)
    tok = circuits.tokenizer
    assert circuits.encoder(_words()[:10]) is tok
    assert not list(cache.glob("encoders/*.json"))
