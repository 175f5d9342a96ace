"""Hub ids against a real Hugging Face-compatible server on loopback (olah serving git
repositories built here from tiny random models): which files to fetch comes from the
revision's file list, so a mirror that answers 401 for an absent file reads like the hub."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hub_mirror import OlahMirror, StoppingRelay, commit_folder, git
from tiny_models import gpt2_tokenizer, save_tiny, tiny_model

from headatlas.circuits import ModelCircuits
from headatlas.errors import WeightSourceError
from headatlas.weights import open_source

pytest.importorskip("olah")

SINGLE = "toyorg/tiny"
SHARDED = "toyorg/sharded"
BIG = "toyorg/big"
PICKLED = "toyorg/pickled"


def _scaled(model: Any, factor: float) -> Any:
    """A copy of ``model`` with every weight times ``factor`` (a second checkpoint)."""
    import copy

    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(factor)
    return other


def _state(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def _sharded_folder(model: Any, folder: Path) -> Path:
    """Two shards: one with everything a map reads, one with only what it does not (Q, K and
    the MLPs after block 0)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    state = _state(model)
    unneeded = {
        k
        for k in state
        if "q_proj" in k or "k_proj" in k or (".mlp." in k and ".layers.0." not in k)
    }
    model.config.to_json_file(folder / "config.json")
    save_file({k: v for k, v in state.items() if k not in unneeded}, folder / "model-1.safetensors")
    save_file({k: state[k] for k in unneeded}, folder / "model-2.safetensors")
    weight_map = {
        k: "model-2.safetensors" if k in unneeded else "model-1.safetensors" for k in state
    }
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """olah serving: a single-file repo (main = tag v1, branch dev one commit later), a sharded
    repo, and a single-file repo without tokenizer files for the stopped download."""
    root = tmp_path_factory.mktemp("olah")
    server = OlahMirror(root)
    model = tiny_model("llama-gqa")
    staged = root / "staged"
    first = save_tiny(model, staged / "v1")
    gpt2_tokenizer().save_pretrained(first)
    second = save_tiny(_scaled(model, 2.0), staged / "dev")
    gpt2_tokenizer().save_pretrained(second)
    single = server.new_repo(SINGLE)
    commits = {"v1": commit_folder(single, first, "first")}
    git(single, "tag", "v1")
    git(single, "checkout", "-q", "-b", "dev")
    commits["dev"] = commit_folder(single, second, "second")
    git(single, "checkout", "-q", "main")
    commit_folder(server.new_repo(SHARDED), _sharded_folder(model, staged / "sharded"), "init")
    big = save_tiny(model, staged / "big")
    commit_folder(server.new_repo(BIG), big, "init")
    size = (big / "model.safetensors").stat().st_size
    pickled = staged / "pickled"
    pickled.mkdir()
    model.config.to_json_file(pickled / "config.json")
    (pickled / "pytorch_model.bin").write_bytes(b"never downloaded")
    commit_folder(server.new_repo(PICKLED), pickled, "init")
    with server:
        yield {"server": server, "model": model, "commits": commits, "big_size": size}


@pytest.fixture
def online(mirror: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh hub cache, downloads on, the mirror as the hub."""
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_ENDPOINT", mirror["server"].url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def _new_requests(server: OlahMirror, before: int) -> list[str]:
    return server.requests()[before:]


def test_single_file_repo_reads_like_the_model(mirror: dict[str, Any], online: Path) -> None:
    server = mirror["server"]
    before = len(server.requests())
    mc = ModelCircuits.load(SINGLE)
    ref = ModelCircuits.load(mirror["model"])
    assert torch.equal(mc.layer(1).W_V, ref.layer(1).W_V)
    assert torch.equal(mc.W_U, ref.W_U)
    asked = _new_requests(server, before)
    # One metadata call decides the files; nothing absent is probed (olah answers 401 there).
    assert [r for r in asked if "/api/" in r] == [f"GET /api/models/{SINGLE}/revision/main 200"]
    assert all(r.endswith((" 200", " 302", " 307")) for r in asked), asked
    assert not any("index.json" in r for r in asked), asked


def test_sharded_repo_never_requests_unneeded_shards(mirror: dict[str, Any], online: Path) -> None:
    server = mirror["server"]
    before = len(server.requests())
    src = open_source(SHARDED)
    for key, value in _state(mirror["model"]).items():
        if "v_proj" in key or "o_proj" in key:
            assert torch.equal(src.read(src.resolve(key)), value), key  # type: ignore[arg-type]
    asked = _new_requests(server, before)
    assert any("model-1.safetensors" in r for r in asked), asked
    assert not any("model-2.safetensors" in r for r in asked), asked
    assert all(not r.endswith((" 401", " 404")) for r in asked), asked


@pytest.mark.parametrize("revision", ["v1", "dev", "main", "commit"])
def test_revisions_as_tags_branches_and_commits(
    mirror: dict[str, Any], online: Path, revision: str
) -> None:
    commits = mirror["commits"]
    rev = commits["v1"] if revision == "commit" else revision
    expected = commits["dev"] if revision == "dev" else commits["v1"]
    factor = 2.0 if revision == "dev" else 1.0
    src = open_source(f"{SINGLE}@{rev}")
    assert src.describe()["commit"] == expected
    key = "model.layers.1.self_attn.v_proj.weight"
    want = _state(mirror["model"])[key] * factor
    assert torch.equal(src.read(src.resolve(key)), want)  # type: ignore[arg-type]


def test_missing_repo_and_missing_revision(mirror: dict[str, Any], online: Path) -> None:
    with pytest.raises(WeightSourceError, match="does not exist") as err:
        open_source("toyorg/absent")
    assert "'toyorg/absent'" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(WeightSourceError, match="has no revision 'v9'") as err:
        open_source(f"{SINGLE}@v9")
    assert "\n" not in str(err.value)


def test_stopped_download_is_a_clear_error_and_nothing_partial_is_trusted(
    mirror: dict[str, Any], online: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = mirror["server"]
    # Cut halfway through model.safetensors (the metadata and config.json are a few kB).
    relay = StoppingRelay(server.port, cut_after=mirror["big_size"] // 2)
    monkeypatch.setenv("HF_ENDPOINT", relay.url)
    try:
        with pytest.raises(WeightSourceError, match="stopped") as err:
            open_source(BIG)
    finally:
        relay.stop()
    assert relay.cut.is_set()
    assert "\n" not in str(err.value) and f"'{BIG}'" in str(err.value)
    # The cut file is not in the snapshot: offline, the cache says it is incomplete.
    snapshots = list(online.glob("models--toyorg--big/snapshots/*"))
    assert all(not (s / "model.safetensors").exists() for s in snapshots)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightSourceError, match="partly in the local cache"):
        open_source(BIG)
    # With the server back the download completes and the weights are whole.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    mc = ModelCircuits.load(BIG)
    assert torch.equal(mc.W_U, ModelCircuits.load(mirror["model"]).W_U)


def test_offline_afterwards_reuses_the_cache(
    mirror: dict[str, Any], online: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = mirror["server"]
    first = open_source(f"{SINGLE}@dev")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(server.requests())
    again = open_source(f"{SINGLE}@dev")
    assert again.describe()["commit"] == first.describe()["commit"] == mirror["commits"]["dev"]
    assert _new_requests(server, before) == []
    with pytest.raises(WeightSourceError, match="not in the local cache"):
        open_source(f"{SINGLE}@v1")  # never fetched


def test_map_of_a_single_file_repo_at_a_tag(
    mirror: dict[str, Any], online: Path, tmp_path: Path
) -> None:
    """The command a user types against a mirror (a single-file repo failed before: the
    probe for an index file got 401)."""
    from headatlas.cli.main import main
    from headatlas.store import load_results

    out = tmp_path / "store"
    assert (
        main(
            [
                "map",
                f"{SINGLE}@v1",
                "--out",
                str(out),
                "--relations",
                "copying",
                "--min-pairs",
                "5",
                "--quiet",
            ]
        )
        == 0
    )
    results = load_results(next(p for p in out.iterdir() if p.is_dir()))
    assert results.manifest["model"]["source"]["commit"] == mirror["commits"]["v1"]
    assert len(results.scores) > 0


def test_repo_without_safetensors_is_named_and_nothing_is_downloaded(
    mirror: dict[str, Any], online: Path
) -> None:
    server = mirror["server"]
    before = len(server.requests())
    with pytest.raises(WeightSourceError, match="has no safetensors weights") as err:
        open_source(PICKLED)
    assert f"'{PICKLED}'" in str(err.value) and "\n" not in str(err.value)
    assert not any(".bin" in r for r in _new_requests(server, before))
