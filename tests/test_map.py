"""`headatlas map` end to end: a saved tiny GPT-2 with the real GPT-2 tokenizer, and SmolLM2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from tiny_models import gpt2_tokenizer, save_tiny, tiny_model

from headatlas.cli.main import main
from headatlas.report.titles import recipe_label
from headatlas.scoring.categories import LABELS
from headatlas.scoring.recipe import Recipe
from headatlas.store import load_results, model_slug

ROOT = Path(__file__).resolve().parents[1]

OLD_SWITCHES = {
    "effective_embedding": True,
    "effective_embedding_layer0": False,
    "embedding": "mlp0",
    "contexts": [],
    "pre_norm": True,
    "final_norm": True,
    "value_bias": True,
    "output_gain": True,
    "output_bias": False,
    "unembed_bias": False,
}
"""The default recipe's switches as manifests recorded them among the options before
MapOptions held a Recipe."""


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    save_tiny(tiny_model("gpt2"), folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


def test_map_writes_tables_and_manifest_then_reuses(
    gpt2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    rc = run_cli("map", gpt2_dir, "--out", out, "--relations", "copying", "Knowledge", "--quiet")
    assert rc == 0
    folder = out / model_slug(str(gpt2_dir))
    results = load_results(folder)
    m = results.manifest
    assert m["model"]["architecture"] == "gpt2" and m["model"]["n_layers"] == 2
    assert m["options"]["k"] is None and "pre_norm" not in m["options"]  # the recipe, once:
    assert m["recipe"]["pre_norm"] is True and m["recipe"]["label"] == results.recipe.label()
    assert {"torch", "transformers", "headatlas"} <= set(m["versions"])
    assert m["model"]["fingerprint"] and m["timings"]["layers_computed"] == 2
    scored = [r["name"] for r in m["relations"] if not r["skipped"]]
    assert "copying" in scored and "country_capital" in scored
    assert len(results.scores) == 2 * 4 * len(scored)
    assert list(results.scores.columns) == [
        "model", "layer", "head", "relation", "category", "k", "n_pairs", "score",
        "suppression_score", "null_mean", "null_max", "p_value", "z",
    ]  # fmt: skip
    assert results.scores["score"].between(0, 1).all()
    k = results.scores.set_index("relation")["k"]
    assert (k.loc["copying"] == 1).all() and (k.loc["country_capital"] == 10).all()
    assert len(results.categories) == 8
    assert set(results.categories["label"]) <= set(LABELS)
    assert not (folder / "partial").exists()

    before = (folder / "scores.parquet").stat().st_mtime_ns
    capsys.readouterr()
    assert run_cli("map", gpt2_dir, "--out", out, "--relations", "copying", "Knowledge") == 0
    captured = capsys.readouterr()
    assert "reusing the finished map" in captured.err
    assert "heads per category" in captured.out
    assert (folder / "scores.parquet").stat().st_mtime_ns == before

    # A manifest in the layout before MapOptions held a Recipe (the recipe's switches among
    # the options as well) still loads, reports and is reused.
    old = {**m, "options": {**m["options"], **OLD_SWITCHES}}
    (folder / "manifest.json").write_text(json.dumps(old))
    assert load_results(folder).recipe == Recipe() and recipe_label(load_results(folder))
    del old["recipe"]  # the oldest manifests: no recipe section at all
    (folder / "manifest.json").write_text(json.dumps(old))
    assert load_results(folder).recipe == Recipe()
    assert recipe_label(load_results(folder)) == Recipe().label()
    assert run_cli("report", folder, "--out", tmp_path / "atlas.html") == 0
    capsys.readouterr()
    assert run_cli("map", gpt2_dir, "--out", out, "--relations", "copying", "Knowledge") == 0
    assert "reusing the finished map" in capsys.readouterr().err
    assert (folder / "scores.parquet").stat().st_mtime_ns == before

    # A changed switch is a different map: recomputed, and recorded.
    assert run_cli("map", gpt2_dir, "--out", out, "--relations", "copying", "--k", "3") == 0
    m2 = json.loads((folder / "manifest.json").read_text())
    assert m2["options"]["k"] == 3 and m2["cache_key"] != m["cache_key"]


def test_user_relation_file_and_threshold(gpt2_dir: Path, tmp_path: Path) -> None:
    words = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "was", "on", "with"]
    words += ["he", "as", "at", "by", "this", "had", "not", "are", "but", "from", "or", "have"]
    words += ["an", "they", "which", "one", "you", "were", "her", "all", "she", "there"]
    rel = tmp_path / "echo.csv"
    rel.write_text("source,target\n" + "".join(f"{w},{w}\n" for w in words))
    out = tmp_path / "out"
    rc = run_cli(
        "map", gpt2_dir, "--out", out, "--relations-file", rel, "--relations", "copying",
        "--threshold", "0.0", "--label-rule", "paper", "--quiet",
    )  # fmt: skip
    assert rc == 0
    results = load_results(out / model_slug(str(gpt2_dir)))
    echo = results.scores[results.scores.relation == "echo"]
    assert (echo["category"] == "Custom").all() and (echo["n_pairs"] == len(words)).all()
    # Threshold 0 under the paper's rule (no null to beat): every head implements both
    # relations -> "2 categories".
    assert (results.categories["label"] == "2 categories").all()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--relations", "no_such_relation"], "no_such_relation"),
        (["--k", "0"], "option k (--k) must be a whole number >= 1, got 0"),
        (["--k", "100000"], "option k=100000 exceeds the vocabulary size"),
        (["--threshold", "2"], "option threshold (--threshold) must be a number between 0 and 1"),
        (["--min-pairs", "0"], "option min_pairs (--min-pairs) must be a whole number >= 1"),
        (["--k-relation", "copying"], "NAME=K"),
        (["--k-relation", "copying=0"], "k_per_relation[copying] (--k-relation copying=K)"),
        (["--k-relation", "nosuch=3"], "--k-relation names relation(s) not in this map: nosuch"),
        (["--device", "cuda:0"], "no CUDA GPU"),
        (["--device", "potato"], "device 'potato' is not valid"),
        (["--device", "meta"], "device 'meta' holds no values"),
    ],
)
def test_bad_options_give_one_line_errors(
    gpt2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
    expected: str,
) -> None:  # fmt: skip
    if "cuda" in " ".join(args):
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is present")
    rc = run_cli("map", gpt2_dir, "--out", tmp_path, "--relations", "copying", *args)
    err = capsys.readouterr().err
    assert rc == 2
    assert expected in err
    assert err.startswith("headatlas: error:") and err.count("\n") == 1, err


def test_bad_relation_file_names_file_and_line(
    gpt2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "broken.jsonl"
    bad.write_text('["cat", "cats"]\n["dog"]\n')
    rc = run_cli("map", gpt2_dir, "--out", tmp_path, "--relations-file", bad)
    err = capsys.readouterr().err
    assert rc == 2 and "broken.jsonl" in err and "2" in err and err.count("\n") == 1


def test_relation_file_with_no_single_token_pair_is_an_error(
    gpt2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rel = tmp_path / "long.json"
    rel.write_text(json.dumps([["antidisestablishmentarianism", "floccinaucinihilipilification"]]))
    rc = run_cli("map", gpt2_dir, "--out", tmp_path, "--relations-file", rel, "--relations")
    err = capsys.readouterr().err
    assert rc == 2 and "long.json" in err, err


def test_unknown_model_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run_cli("map", tmp_path / "nope", "--out", tmp_path) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


@pytest.mark.real
def test_interrupted_map_keeps_finished_layers_and_resumes(tmp_path: Path) -> None:
    """A real Ctrl-C in the middle of a SmolLM2 map: finished layers stay, a re-run resumes."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "headatlas.cli.main", "map", "smollm2", "--out", str(out)]
    cmd += ["--relations", "Linguistic", "Knowledge", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    partial = out / "smollm2" / "partial"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(partial.glob("*/layer_*.parquet"))) < 3:
        time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    done = len(list(partial.glob("*/layer_*.parquet")))
    assert 3 <= done < 30
    assert not (out / "smollm2" / "scores.parquet").exists()

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    manifest = json.loads((out / "smollm2" / "manifest.json").read_text())
    assert manifest["timings"]["layers_computed"] == 30 - done
    scores = pd.read_parquet(out / "smollm2" / "scores.parquet")
    assert sorted(scores.layer.unique()) == list(range(30))
    assert not partial.exists()


def test_store_skips_a_description_line_cut_short(tmp_path: Path) -> None:
    from headatlas.store import MapResults

    (tmp_path / "descriptions.jsonl").write_text('{"layer": 0, "head": 1}\n{"layer": 0, "he')
    results = MapResults(tmp_path, {}, pd.DataFrame(), pd.DataFrame())
    assert results.descriptions() == [{"layer": 0, "head": 1}]


def test_tokens_beyond_the_model_vocabulary_are_dropped_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A 512-token model with the 50257-token GPT-2 tokenizer: most ids have no embedding row.
    folder = tmp_path / "tiny-llama"
    save_tiny(tiny_model("llama-gqa"), folder)
    gpt2_tokenizer().save_pretrained(folder)
    rc = run_cli("map", folder, "--out", tmp_path / "out", "--relations", "copying",
                 "--min-pairs", "1", "--quiet")  # fmt: skip
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "beyond the model's vocabulary" in captured.err
    m = json.loads((tmp_path / "out" / model_slug(str(folder)) / "manifest.json").read_text())
    (rel,) = m["relations"]
    assert (
        rel["out_of_vocabulary"] > 0 and rel["n_pairs"] + rel["out_of_vocabulary"] <= rel["n_raw"]
    )


def test_a_new_map_keeps_sections_other_steps_added(gpt2_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("map", gpt2_dir, "--out", out, "--relations", "copying", "--quiet") == 0
    path = out / model_slug(str(gpt2_dir)) / "manifest.json"
    m = json.loads(path.read_text())
    m["salient"] = {"tokens": 15}
    path.write_text(json.dumps(m))
    assert run_cli("map", gpt2_dir, "--out", out, "--relations", "copying", "--k", "2",
                   "--quiet") == 0  # fmt: skip
    m2 = json.loads(path.read_text())
    assert m2["salient"] == {"tokens": 15} and m2["options"]["k"] == 2


def test_results_files_are_readable_by_others(tmp_path: Path) -> None:
    from headatlas.store import write_text_atomic

    umask = os.umask(0)
    os.umask(umask)
    write_text_atomic("x", tmp_path / "a.txt")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_bfloat16_storage_maps_with_float32_ranks(gpt2_dir: Path) -> None:
    from headatlas.scoring.mapping import map_heads
    from headatlas.scoring.options import MapOptions

    quiet = {"progress": False, "log": lambda _: None}
    bf16 = map_heads(gpt2_dir, ["copying"], options=MapOptions(dtype="bfloat16"), **quiet)
    fp32 = map_heads(gpt2_dir, ["copying"], options=MapOptions(), **quiet)
    assert bf16.manifest["options"]["dtype"] == "bfloat16"
    # Only the weights' rounding differs: scores agree but for near-ties.
    diff = (bf16.scores["score"] - fp32.scores["score"]).abs()
    assert float(diff.max()) < 0.1


def test_a_ctrl_c_a_library_swallowed_still_stops_the_map_at_the_next_layer(
    tmp_path: Path,
) -> None:
    # The CLI records every SIGINT; the layer loop raises on the record, so a KeyboardInterrupt
    # caught and dropped somewhere inside a layer still ends the map with its layers saved.
    import headatlas.scoring.layers as layers_mod
    from headatlas import interrupts
    from headatlas.scoring.mapping import map_heads

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a CLI process
    real = layers_mod.candidate_orders  # once per layer
    calls: list[int] = []

    def swallowing(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.1)
            except KeyboardInterrupt:
                pass  # what a careless library does
        return real(*args, **kwargs)

    try:
        interrupts.install()
        layers_mod.candidate_orders = swallowing  # type: ignore[assignment]
        with pytest.raises(KeyboardInterrupt):
            map_heads("smollm2", ["copying"], out=tmp_path, progress=False, log=lambda _m: None)
    finally:
        layers_mod.candidate_orders = real  # type: ignore[assignment]
        signal.signal(signal.SIGINT, before)
    saved = list(tmp_path.glob("smollm2/partial/*/layer_*.parquet"))
    assert len(saved) == 2  # layer 0 and the layer the Ctrl-C came in
    interrupts.raise_if_interrupted()  # the record was used once: nothing left to raise
