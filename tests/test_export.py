"""`headatlas export`: a map of a saved tiny GPT-2 as a Hugging Face dataset folder (loaded back
with `datasets`) and as HeadVis's data/ layout (JSON shapes checked against the contract in the
docstrings of HeadVis's data_pipeline.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tiny_models import gpt2_tokenizer, save_tiny, tiny_model

from headatlas.cli.main import main
from headatlas.store import model_slug, read_manifest, write_manifest


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished map (with its QK scores) and salient table of a tiny GPT-2 (real GPT-2
    tokenizer)."""
    model = tmp_path_factory.mktemp("tiny-gpt2")
    save_tiny(tiny_model("gpt2"), model)
    gpt2_tokenizer().save_pretrained(model)
    out = tmp_path_factory.mktemp("maps")
    rels = ["copying", "country_capital", "country_language"]
    assert (
        main(["map", str(model), "--out", str(out), "--relations", *rels, "--quiet", "--qk"]) == 0
    )
    assert main(["salient", str(model), "--all", "--out", str(out), "--tokens", "5"]) == 0
    return out / model_slug(str(model))


@pytest.fixture()
def with_evidence(results_dir: Path, tmp_path: Path) -> Path:
    """The same map plus the tables and columns other steps add (evidence, null baseline)."""
    folder = tmp_path / "with-evidence"
    shutil.copytree(results_dir, folder)
    scores = pd.read_parquet(folder / "scores.parquet")
    scores["null_mean"] = 0.01
    scores["null_max"] = 0.05
    scores["p_value"] = 0.5
    scores["z"] = 1.0
    one = (scores["layer"] == 0) & (scores["head"] == 1) & (scores["relation"] == "country_capital")
    scores.loc[one, "score"] = 0.5  # a labelled head (the tiny random model has none)
    scores.to_parquet(folder / "scores.parquet", index=False)
    evidence = pd.DataFrame(
        {
            "model": "m",
            "layer": [0, 0, 1],
            "head": [1, 1, 2],
            "relation": ["country_capital"] * 3,
            "source": [" France", " Italy", " Spain"],
            "target": [" Paris", " Rome", " Madrid"],
            "correct": [True, False, True],
            "target_rank": [0, 57, 3],
            "top_tokens": [[" Paris", " Lyon"], [" Milan"], [" Madrid", " Spain"]],
            "kind": ["right", "wrong", "right"],
        }
    )
    evidence.to_parquet(folder / "evidence.parquet", index=False)
    # what a map writing these would do last: vouch for the files beside the manifest
    write_manifest(folder, read_manifest(folder), ["scores.parquet", "evidence.parquet"])
    return folder


def front_matter(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_dataset_export_loads_with_datasets(results_dir: Path, tmp_path: Path) -> None:
    import datasets

    out = tmp_path / "ds"
    assert main(["export", str(results_dir), str(out)]) == 0
    header = front_matter(out / "README.md")
    names = [c["config_name"] for c in header["configs"]]
    assert names == [
        "scores",
        "categories",
        "salient",
        "qk",
    ]  # the empty evidence table is left out
    assert sum(bool(c.get("default")) for c in header["configs"]) == 1
    from huggingface_hub import DatasetCard  # what the hub parses on upload

    card_data = DatasetCard.load(out / "README.md").data.to_dict()
    assert [c["config_name"] for c in card_data["configs"]] == names
    cache = tmp_path / "cache"
    for name in names:
        loaded = datasets.load_dataset(str(out), name, split="train", cache_dir=str(cache))
        stored = pd.read_parquet(results_dir / f"{ {'qk': 'qk_scores'}.get(name, name) }.parquet")
        assert loaded.num_rows == len(stored)
        assert loaded.column_names == list(stored.columns)
    scores = datasets.load_dataset(str(out), "scores", split="train", cache_dir=str(cache))
    stored = pd.read_parquet(results_dir / "scores.parquet")
    pd.testing.assert_series_equal(scores.to_pandas()["score"], stored["score"], check_names=False)
    salient = datasets.load_dataset(str(out), "salient", split="train", cache_dir=str(cache))
    assert salient[0]["mappings"] == list(
        pd.read_parquet(results_dir / "salient.parquet")["mappings"][0]
    )
    # The card names what a reader needs to trust and reproduce the map.
    manifest = json.loads((results_dir / "manifest.json").read_text())
    card = (out / "README.md").read_text()
    assert manifest["model"]["fingerprint"] in card
    assert manifest["recipe"]["label"] in card
    for rel in manifest["relations"]:
        assert rel["name"] in card and rel["provenance"] in card
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_dataset_export_carries_evidence_and_null_when_present(
    with_evidence: Path, tmp_path: Path
) -> None:
    import datasets

    out = tmp_path / "ds"
    assert main(["export", str(with_evidence), str(out)]) == 0
    names = [c["config_name"] for c in front_matter(out / "README.md")["configs"]]
    assert names == ["scores", "categories", "evidence", "salient", "qk"]
    cache = str(tmp_path / "cache")
    evidence = datasets.load_dataset(str(out), "evidence", split="train", cache_dir=cache)
    assert evidence[0]["top_tokens"] == [" Paris", " Lyon"] and evidence[1]["correct"] is False
    scores = datasets.load_dataset(str(out), "scores", split="train", cache_dir=cache)
    assert {"null_mean", "null_max", "p_value", "z"} <= set(scores.column_names)
    assert "empirical p-value" in (out / "README.md").read_text()


def test_export_refuses_a_full_folder_and_a_missing_map(
    results_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ds"
    assert main(["export", str(results_dir), str(out)]) == 0
    capsys.readouterr()
    assert main(["export", str(results_dir), str(out)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(results_dir), str(out), "--overwrite"]) == 0
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


# The HeadVis contract (docstrings of data_pipeline.py): the keys and value types of each file.
CONFIG_KEYS = {
    "model_name": str,
    "heads": list,
    "n_layers": int,
    "n_heads": int,
    "n_intervals": int,
    "metrics": list,
    "metric_descriptions": dict,
    "head_data_pattern": str,
    "has_umap": bool,
    "umap_heads": list,
}
HEAD_KEYS = {
    "sequences": list,
    "qk_distance_histogram": dict,
    "top_query_tokens": list,
    "top_key_tokens": list,
    "histogram": dict,
    "statistics": dict,
}


def assert_rounded(x: float) -> None:
    assert x == round(x, 4)


def test_headvis_layout_follows_the_contract(with_evidence: Path, tmp_path: Path) -> None:
    out = tmp_path / "hv"
    assert main(["export", str(with_evidence), str(out), "--format", "headvis"]) == 0
    data = out / "data"
    config = json.loads((data / "config.json").read_text())
    for key, tp in CONFIG_KEYS.items():
        assert isinstance(config[key], tp), key
    assert config["head_data_pattern"] == "L{layer}H{head}.json"
    assert config["heads"] == [[la, h] for la in range(2) for h in range(4)]
    assert config["has_umap"] is False and config["umap_heads"] == []
    assert set(config["metric_descriptions"]) == set(config["metrics"])
    for extra in ("custom_tables", "statistics_display"):
        assert isinstance(config[extra], list if extra == "custom_tables" else dict)

    scatter = json.loads((data / "scatter_data.json").read_text())
    assert [[r["layer"], r["head"]] for r in scatter] == config["heads"]
    scores = pd.read_parquet(with_evidence / "scores.parquet").set_index(
        ["layer", "head", "relation"]
    )
    for row in scatter:
        assert set(row) == {"layer", "head", *config["metrics"]}
        for metric in config["metrics"]:
            assert isinstance(row[metric], (int, float))
            assert_rounded(row[metric])
        for rel in ("copying", "country_capital"):
            assert row[rel] == pytest.approx(
                scores.loc[(row["layer"], row["head"], rel), "score"], abs=1e-4
            )

    table_keys = [t["key"] for t in config["custom_tables"]]
    assert {"relation_scores", "salient_tokens", "evidence_pairs"} <= set(table_keys)
    for layer, head in config["heads"]:
        path = data / "heads" / config["head_data_pattern"].format(layer=layer, head=head)
        payload = json.loads(path.read_text())
        for key, tp in HEAD_KEYS.items():
            assert isinstance(payload[key], tp), key
        hist = payload["qk_distance_histogram"]
        assert set(hist) == {"bin_edges", "bin_values"}
        assert len(hist["bin_values"]) == max(len(hist["bin_edges"]) - 1, 0)
        assert set(payload["statistics"]) <= set(config["statistics_display"])
        for key in table_keys:  # tables need [{token, weight}]
            for entry in payload.get(key, []):
                assert set(entry) == {"token", "weight"} and isinstance(entry["token"], str)
                assert_rounded(entry["weight"])
    l0h1 = json.loads((data / "heads" / "L0H1.json").read_text())
    assert [e["token"] for e in l0h1["evidence_pairs"]] == [
        "country_capital:  France →  Paris ✓ (top:  Paris,  Lyon)",
        "country_capital:  Italy →  Rome ✗ (top:  Milan)",
    ]
    assert len(l0h1["salient_tokens"]) == 5
    labelled = [p for p in scatter if p["max_score"] > 0]
    assert [[p["layer"], p["head"]] for p in labelled] == [[0, 1]]
    assert l0h1["statistics"]["best_relation"] == "country_capital"
    for row in labelled:
        stats = json.loads((data / "heads" / f"L{row['layer']}H{row['head']}.json").read_text())
        assert stats["statistics"]["p_value"] == 0.5  # the null column, when present
