"""``headatlas sweep`` on a real local Ray cluster (loopback, 2 CPUs, one per module): tiny
random models of three families and two hub revisions of one model, from a local hub cache;
one worker killed mid-task; re-runs skip finished maps; without Ray the maps run in-process."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
from fake_hub import add_revision
from tiny_models import gpt2_tokenizer, save_tiny, tiny_model

from headatlas import MapOptions, load_results
from headatlas.cli.main import main
from headatlas.store import model_slug
from headatlas.sweep import SweepEntry, run_sweep, sweep_entries
from headatlas.sweep.ledger import EVENTS, SWEEP_DIR

ray = pytest.importorskip("ray")

RELATIONS = ["copying", "country_capital", "adjective_antonym", "english_french"]
HUB = "tiny-org/tiny-gpt2"
SLOW_LAYERS = 16


def _save(model: torch.nn.Module, folder: Path) -> str:
    save_tiny(model, folder)
    gpt2_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Three families as folders, a deeper GPT-2 (the task to kill), and two revisions of one
    hub model in a local hub cache."""
    from transformers import GPT2Config, GPT2LMHeadModel

    root = tmp_path_factory.mktemp("models")
    out = {
        name: _save(tiny_model(name), root / name) for name in ("gpt2", "pythia-parallel", "phi")
    }
    torch.manual_seed(7)
    deep = GPT2LMHeadModel(
        GPT2Config(vocab_size=50257, n_embd=64, n_layer=SLOW_LAYERS, n_head=4, n_positions=64)
    ).eval()
    out["deep"] = _save(deep, root / "deep")
    cache = root / "hub-cache"
    for step, seed in (("step1000", 11), ("step2000", 12)):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(
            GPT2Config(vocab_size=50257, n_embd=64, n_layer=2, n_head=4, n_positions=64)
        ).eval()
        add_revision(cache, HUB, step, Path(_save(model, root / step)))
    out["cache"] = str(cache)
    return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """One real local Ray cluster for the module: loopback only, 2 CPUs."""
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def offline_hub(models: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", models["cache"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _events(out: Path) -> list[dict]:
    lines = (out / SWEEP_DIR / EVENTS).read_text().splitlines()
    return [json.loads(line) for line in lines]


def _entries(models: dict[str, str]) -> list[SweepEntry]:
    names = [models["gpt2"], models["pythia-parallel"], models["phi"], models["deep"]]
    return sweep_entries([*names, f"{HUB}@step1000", f"{HUB}@step2000"])


def _layer_files(out: Path, slug: str) -> list[Path]:
    return list((out / slug / "partial").glob("*/layer_*.parquet"))


def test_sweep_survives_a_killed_worker_and_maps_nothing_twice(
    models: dict[str, str], cluster: None, offline_hub: None, tmp_path: Path
) -> None:
    out = tmp_path / "store"
    entries = _entries(models)
    box: dict = {}
    sweep = threading.Thread(
        target=lambda: box.update(
            report=run_sweep(entries, out, relations=RELATIONS, progress=False, log=lambda m: None)
        )
    )
    sweep.start()
    deep = str(Path(models["deep"]).resolve())
    deadline = time.time() + 60
    pid = None
    while time.time() < deadline and pid is None:
        if (out / SWEEP_DIR / EVENTS).is_file() and _layer_files(out, model_slug(models["deep"])):
            starts = [e for e in _events(out) if e["spec"] == deep and e["event"] == "start"]
            pid = starts[0]["pid"] if starts else None
        time.sleep(0.01)
    assert pid is not None, "the deep model's task never started a layer"
    seen = len(_layer_files(out, model_slug(models["deep"])))
    os.kill(pid, signal.SIGKILL)
    sweep.join(timeout=120)
    report = box["report"]

    assert [o.status for o in report.outcomes] == ["mapped"] * 6, report.summary_text()
    by_spec = {o.entry.spec: o for o in report.outcomes}
    assert by_spec[deep].attempts == 2
    assert all(o.attempts == 1 for s, o in by_spec.items() if s != deep)
    # The retry resumed from the layers the killed task had saved: none was mapped twice.
    assert by_spec[deep].layers_computed is not None
    assert by_spec[deep].layers_computed <= SLOW_LAYERS - seen
    done = [e["spec"] for e in _events(out) if e["event"] == "done"]
    assert sorted(done) == sorted(e.spec for e in entries)

    combined = pd.read_parquet(out / SWEEP_DIR / "scores.parquet")
    key = ["entry", "layer", "head", "relation"]
    assert not combined.duplicated(key).any()
    for entry in entries:
        results = load_results(by_spec[entry.spec].directory)  # type: ignore[arg-type]
        mine = combined[combined["entry"] == entry.spec]
        assert len(mine) == len(results.scores) == results.n_layers * results.n_heads * 4
    steps = combined.groupby("entry")["step"].first()
    assert steps[f"{HUB}@step2000"] == 2000 and pd.isna(steps[deep])
    revs = [load_results(by_spec[f"{HUB}@{s}"].directory).scores for s in ("step1000", "step2000")]  # type: ignore[arg-type]
    assert not revs[0]["score"].equals(revs[1]["score"])  # each revision read its own weights

    # The killed-and-resumed map equals a map of the same model made in one piece, in-process.
    alone = run_sweep(
        [SweepEntry(deep)], tmp_path / "alone", relations=RELATIONS, ray="off", progress=False
    )
    assert alone.engine.startswith("one process")
    a = load_results(alone.outcomes[0].directory).scores  # type: ignore[arg-type]
    b = load_results(by_spec[deep].directory).scores  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(a, b)

    # A re-run skips every finished map without starting a task.
    n_events = len(_events(out))
    again = run_sweep(entries, out, relations=RELATIONS, progress=False, log=lambda m: None)
    assert [o.status for o in again.outcomes] == ["skipped"] * 6
    assert len(_events(out)) == n_events
    # Other options are another request: those maps run again.
    other = run_sweep(
        entries[:1],
        out,
        options=MapOptions(k=3),
        relations=RELATIONS,
        progress=False,
        log=lambda m: None,
    )
    assert [o.status for o in other.outcomes] == ["mapped"]


def test_cli_sweep_reports_a_failed_map_and_finishes_the_rest(
    models: dict[str, str],
    cluster: None,
    offline_hub: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = tmp_path / "sweep.toml"
    spec.write_text(
        f'models = ["{models["gpt2"]}", {{model = "{HUB}", revisions = ["step1000", "step404"]}}]\n'
    )
    out = tmp_path / "store"
    rc = main(["sweep", str(spec), "--out", str(out), "--relations", *RELATIONS, "--quiet"])
    assert rc == 1
    err = capsys.readouterr()
    ledger = json.loads((out / SWEEP_DIR / "sweep.json").read_text())["entries"]
    failed = ledger[f"{HUB}@step404"]
    assert failed["status"] == "failed" and failed["attempts"] == 1  # bad input: no retry
    assert "not in the local cache" in failed["error"] and "\n" not in failed["error"]
    assert ledger[f"{HUB}@step1000"]["status"] == "mapped"
    assert f"failed   {HUB}@step404" in err.out
    assert (out / SWEEP_DIR / "atlas.html").is_file()


def test_without_ray_the_sweep_runs_in_process_and_says_so(
    models: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` now fails
    notes: list[str] = []
    report = run_sweep(
        sweep_entries([models["gpt2"]]), tmp_path, relations=RELATIONS, log=notes.append
    )
    assert "ray is not installed" in notes[0] and "headatlas[ray]" in notes[0]
    assert report.engine.startswith("one process")
    assert [o.status for o in report.outcomes] == ["mapped"]
