"""Salient operations: the fast pass against the plain per-head computation, exclusion of
special tokens, GQA sharing, relation matching, storage, and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from tiny_models import gpt2, gpt2_tokenizer, llama, save_tiny, tiny_model

from headatlas.circuits import ModelCircuits
from headatlas.cli.main import main
from headatlas.relations import Relation, builtin_relations
from headatlas.scoring.options import MapOptions
from headatlas.scoring.reference import plain_salient
from headatlas.scoring.salient import (
    PARTIAL,
    SALIENT_COLUMNS,
    SalientPass,
    all_salient_operations,
    salient_operations,
    vocabulary,
)
from headatlas.scoring.salient_match import match_head, relation_matchers
from headatlas.store import MANIFEST, SALIENT, MapResults, model_slug

VARIANTS = ["llama-gqa", "gpt2", "gemma2", "llama-mha-bias", "pythia-parallel"]


def circuits_of(model: torch.nn.Module) -> ModelCircuits:
    return ModelCircuits.load(model, tokenizer=gpt2_tokenizer())


def vocab_inputs(c: ModelCircuits, layer: int, options: MapOptions) -> torch.Tensor:
    """x̃ of the whole vocabulary for a layer, as the map feeds it (float64)."""
    x = c.embed(torch.arange(c.W_E.shape[0])).double()
    effective = options.recipe.mode_of(layer) != "none"  # mlp0 here
    return c.effective_embedding(x) if effective else x


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("output_bias", [False, True])
def test_fast_equals_plain(variant: str, output_bias: bool) -> None:
    c = circuits_of(tiny_model(variant))
    options = MapOptions(dtype="float64", device="cpu", output_bias=output_bias)
    sp = SalientPass(c, options)
    for i in range(c.cfg.n_layers):
        layer = c.layer(i)
        fast = sp.sigma(layer, range(layer.n_heads))
        rows = pd.DataFrame(sp.layer(layer, tokens=7, mappings=4))
        X = vocab_inputs(c, i, options)
        for h in range(layer.n_heads):
            sigma, top, maps = plain_salient(
                layer, h, X, sp.W_Uf, options, sp.vocab.excluded, tokens=7, mappings=4
            )
            torch.testing.assert_close(fast[h], sigma, rtol=1e-5, atol=1e-12)
            mine = rows[rows["head"] == h].sort_values("rank")
            assert mine["token_id"].tolist() == top.tolist()
            assert [list(m) for m in mine["mapping_ids"]] == maps.tolist()
            torch.testing.assert_close(
                torch.tensor(mine["sigma"].tolist(), dtype=torch.float64), sigma[top]
            )


@pytest.mark.parametrize("variant", ["llama-gqa", "gpt2"])
def test_float32_top_tokens_equal_plain(variant: str) -> None:
    c = circuits_of(tiny_model(variant))
    options = MapOptions(device="cpu")
    sp = SalientPass(c, options)
    layer = c.layer(1)
    fast = sp.sigma(layer, range(layer.n_heads))
    X = vocab_inputs(c, 1, options).float()
    for h in range(layer.n_heads):
        sigma, top, _ = plain_salient(layer, h, X, sp.W_Uf, options, sp.vocab.excluded, 10, 3)
        torch.testing.assert_close(fast[h], sigma, rtol=1e-4, atol=1e-6)
        rows = pd.DataFrame(sp.layer(layer, [h], tokens=10, mappings=3))
        assert set(rows["token_id"]) == set(top.tolist())


def test_gqa_shared_work_equals_per_head() -> None:
    c = circuits_of(tiny_model("llama-mqa"))
    assert c.cfg.n_kv_heads == 1 and c.cfg.n_heads == 4
    sp = SalientPass(c, MapOptions(dtype="float64", device="cpu"))
    layer = c.layer(1)
    together = sp.sigma(layer, [0, 1, 2, 3])
    for h in range(4):
        torch.testing.assert_close(sp.sigma(layer, [h])[0], together[h], rtol=1e-12, atol=0)
    both = pd.DataFrame(sp.layer(layer, [3, 1], tokens=5, mappings=3))
    alone = pd.DataFrame(sp.layer(layer, [1], tokens=5, mappings=3))
    pd.testing.assert_frame_equal(both[both["head"] == 1].reset_index(drop=True), alone)


# ---- special tokens ---------------------------------------------------------------------


class FakeTokenizer:
    """A tokenizer with special, added, unused, byte-fallback and whitespace tokens."""

    pieces = ("<s>", "hello", " world", "<unused12>", "[UNUSED]", "<0x0A>", "  ", "", "<tool>")
    all_special_ids = (0,)

    def __len__(self) -> int:
        return len(self.pieces)

    def batch_decode(self, ids: list[list[int]]) -> list[str]:
        return [self.pieces[i[0]] if self.pieces[i[0]] != "<0x0A>" else "\n" for i in ids]

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.pieces[i] for i in ids]

    def get_added_vocab(self) -> dict[str, int]:
        return {"<tool>": 8}


def test_vocabulary_exclusions() -> None:
    v = vocabulary(FakeTokenizer(), 11)
    assert v.excluded.nonzero().flatten().tolist() == [0, 3, 4, 5, 6, 7, 8, 9, 10]
    assert v.reasons == {
        "special": 1,
        "unused or byte fallback": 3,
        "empty or whitespace": 2,
        "added": 1,
        "past the tokenizer's vocabulary": 2,
    }
    assert v.summary()["n_excluded"] == 9
    assert not vocabulary(FakeTokenizer(), 11, exclude_special=False).excluded.any()


def test_gpt2_specials_excluded() -> None:
    v = vocabulary(gpt2_tokenizer(), 50257)
    assert v.excluded[50256] and v.excluded[220] and v.excluded[198]  # <|endoftext|>, " ", "\n"
    assert not v.excluded[40]


def test_excluded_token_never_salient() -> None:
    model = gpt2()  # a fresh copy: its embedding is edited
    c = circuits_of(model)
    options = MapOptions(device="cpu", effective_embedding_layer0=False)
    first = salient_operations(c, 0, 1, tokens=3, mappings=3, options=options)
    best = int(first["token_id"][0])
    with torch.no_grad():  # <|endoftext|> and " " get the top token's embedding: a tie
        model.transformer.wte.weight[50256] = model.transformer.wte.weight[best]
        model.transformer.wte.weight[220] = model.transformer.wte.weight[best]
    c = circuits_of(model)
    kept = salient_operations(c, 0, 1, tokens=3, mappings=3, options=options)
    assert not {50256, 220} & set(kept["token_id"])
    assert all(50256 not in m and 220 not in m for m in kept["mapping_ids"])
    everything = salient_operations(
        c, 0, 1, tokens=3, mappings=3, options=options, exclude_special=False
    )
    assert {50256, 220} <= set(everything["token_id"])
    assert kept.attrs["excluded"]["n_excluded"] > 0


# ---- relation matching ------------------------------------------------------------------


def copying_model() -> tuple[torch.nn.Module, list[int]]:
    """A tiny Llama whose layer-0 head 0 copies 16 word tokens: their embeddings are 10·e_i,
    W_V W_O is the identity on the first 16 dimensions and W_U reads e_i back as the token."""
    model = llama(2)
    tok = gpt2_tokenizer()
    words = [i for i in range(256, 512) if tok.decode([i]).strip().isalpha()][:16]
    d, dh = 64, 16
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[words] = 10 * torch.eye(d)[:dh]
        attn = model.model.layers[0].self_attn
        attn.v_proj.weight[:dh] = torch.eye(dh, d)  # KV group 0 reads dims 0..15
        attn.o_proj.weight[:, :dh] = torch.eye(d, dh)  # head 0 writes them back
        model.lm_head.weight[words] = 10 * torch.eye(d)[:dh]
    return model, words


def test_constructed_copying_head_matches_copying() -> None:
    model, words = copying_model()
    c = circuits_of(model)
    options = MapOptions(device="cpu", pre_norm=False, final_norm=False, value_bias=False)
    df = salient_operations(c, 0, 0, tokens=15, mappings=3, options=options)
    assert set(df["token_id"]) <= set(words)
    assert all(row.mapping_ids[0] == row.token_id for row in df.itertuples())
    assert df.attrs["matched_relations"].startswith("copying:1.00")
    assert all("copying" in r for r in df["token_relations"])


def test_match_head_transforms_and_pairs() -> None:
    capital = Relation(
        "country_capital", "Knowledge", "", "test", (("France", "Paris"), ("Italy", "Rome"))
    )
    matchers = relation_matchers([*builtin_relations(["copying", "year_following"]), capital])
    matchers += relation_matchers(builtin_relations(["word_first_letter"]))
    tokens = [" France", "Italy", " Spain", "1999", " apple", " Banana"]
    mappings = [
        [" Paris", " French"],
        ["rome"],
        [" Madrid"],
        ["2000"],
        [" a", " pear"],
        [" banana", "b"],
    ]
    summary, per_token = match_head(matchers, tokens, mappings)
    assert per_token[0] == ["country_capital"] and per_token[1] == ["country_capital"]
    assert per_token[3] == ["year_following"]
    assert per_token[4] == ["word_first_letter"]
    assert set(per_token[5]) == {"copying", "word_first_letter"}
    shares = dict(item.split(":") for item in summary.split(","))
    assert shares["country_capital"] == "1.00"  # 2 of its 2 sources hit
    assert shares["word_first_letter"] == "0.40"  # 2 of 5 alphabetic words
    assert "year_following" not in shares  # one hit is below MIN_HITS
    assert next(iter(shares)) == "country_capital"


# ---- storage ----------------------------------------------------------------------------


def test_all_heads_stored_beside_the_map(tmp_path: Path) -> None:
    from headatlas.describe.run import load_operations
    from headatlas.scoring.mapping import map_heads
    from headatlas.store import load_results

    c = circuits_of(tiny_model("gpt2"))  # full vocabulary: the map tokenises with GPT-2's
    options = MapOptions(device="cpu", min_pairs=1)
    map_heads(c, relations=["copying"], options=options, out=tmp_path, progress=False)
    table = all_salient_operations(c, tokens=4, mappings=3, options=options, out=tmp_path)
    assert list(table.columns) == SALIENT_COLUMNS
    assert len(table) == c.cfg.n_layers * c.cfg.n_heads * 4
    folder = tmp_path / model_slug(str(c.summary()["name"]))
    results = load_results(folder)
    stored = results.salient()
    assert stored is not None and len(stored) == len(table)
    assert "cache_key" in results.manifest  # the map's manifest was extended, not replaced
    section = results.manifest["salient"]
    assert section["tokens"] == 4 and section["excluded"]["n_excluded"] > 0
    assert section["timings"]["layers_computed"] == c.cfg.n_layers
    from headatlas.report.atlas_html import _salient_by_head

    shown = _salient_by_head(results)  # the atlas lists each operation's own relations
    first = stored.iloc[0]
    assert shown["0"][0][0] == first["token"] and shown["0"][0][3] == list(first["token_relations"])
    ops = load_operations(folder, tokens=4, mappings=3)
    assert len(ops) == c.cfg.n_layers * c.cfg.n_heads and all(len(v) == 4 for v in ops.values())
    assert not (folder / PARTIAL).exists()


def test_resumes_per_layer_and_writes_minimal_manifest(tmp_path: Path, monkeypatch) -> None:
    c = circuits_of(tiny_model("gpt2"))
    original = SalientPass.layer
    calls: list[int] = []

    def fail_on_layer_1(self, layer, *args, **kwargs):
        calls.append(layer.layer)
        if layer.layer == 1:
            raise KeyboardInterrupt
        return original(self, layer, *args, **kwargs)

    monkeypatch.setattr(SalientPass, "layer", fail_on_layer_1)
    with pytest.raises(KeyboardInterrupt):
        all_salient_operations(c, tokens=3, mappings=2, out=tmp_path, progress=False)
    monkeypatch.setattr(SalientPass, "layer", original)
    table = all_salient_operations(c, tokens=3, mappings=2, out=tmp_path, progress=False)
    folder = tmp_path / model_slug(str(c.summary()["name"]))
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["salient"]["timings"]["layers_computed"] == 1  # layer 0 was reused
    assert manifest["model"]["n_layers"] == 2 and "options" in manifest
    stored = MapResults(folder, manifest, pd.DataFrame(), pd.DataFrame()).salient()
    assert stored is not None
    pd.testing.assert_frame_equal(stored, table)


# ---- command line -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = save_tiny(tiny_model("llama-gqa"), tmp_path_factory.mktemp("tiny-llama"))
    gpt2_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "2", "--head", "0"], "layer 2 is out of range"),
        (["--layer", "0", "--head", "4"], "head 4 is out of range"),
        (["--layer", "0"], "name a head with --layer L --head H"),
        ([], "name a head with --layer L --head H"),
        (["--all"], "--all needs --out"),
        (["--layer", "0", "--head", "0", "--tokens", "0"], "tokens must be between 1"),
        (["--all", "--out", "x", "--layers", "7"], "layer 7 is out of range"),
    ],
)
def test_cli_errors_are_one_line(tiny_folder: Path, capsys, args: list[str], message: str) -> None:
    assert main(["salient", str(tiny_folder), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("headatlas: error: ") and message in err and "\n" not in err


def test_cli_prints_a_safe_table(tiny_folder: Path, capsys) -> None:
    assert main(["salient", str(tiny_folder), "--layer", "1", "--head", "2", "--tokens", "5"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("layer 1 head 2") and len(lines) >= 6
    assert all("→" in line and "σ" in line for line in lines[1:6])
    assert "\r" not in out and "\x1b" not in out


def test_cli_all_stores_the_table(tiny_folder: Path, tmp_path: Path, capsys) -> None:
    args = ["salient", str(tiny_folder), "--all", "--out", str(tmp_path), "--layers", "1"]
    assert main([*args, "--tokens", "3"]) == 0
    assert "stored salient operations of 4 heads" in capsys.readouterr().out
    table = pd.read_parquet(tmp_path / model_slug(str(tiny_folder)) / SALIENT)
    assert set(table["layer"]) == {1} and len(table) == 12


# ---- the real model ---------------------------------------------------------------------


@pytest.mark.real
def test_smollm2_salient(tmp_path: Path) -> None:
    from headatlas.describe.run import load_operations
    from headatlas.errors import WeightSourceError

    try:
        c = ModelCircuits.load("smollm2")
    except WeightSourceError as exc:
        pytest.skip(str(exc))
    df = salient_operations(c, 3, 2)
    assert len(df) == 15 and all(len(m) == 5 for m in df["mappings"])
    assert df["sigma"].is_monotonic_decreasing and (df["sigma"] > 0).all()
    assert df.attrs["excluded"]["reasons"]["special"] >= 1
    assert not set(df["token_id"]) & {0, 1, 2}  # <|endoftext|>, <|im_start|>, <|im_end|>

    assert main(["salient", "smollm2", "--all", "--out", str(tmp_path), "--layers", "0", "5"]) == 0
    folder = tmp_path / "smollm2"
    manifest = json.loads((folder / MANIFEST).read_text())
    stored = MapResults(folder, manifest, pd.DataFrame(), pd.DataFrame()).salient()
    assert stored is not None and len(stored) == 2 * 9 * 15
    assert set(stored["layer"]) == {0, 5} and list(stored.columns) == SALIENT_COLUMNS
    assert len(load_operations(folder)) == 18
