"""``MODEL@REVISION`` for hub ids: each revision reads its own snapshot from a local hub cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fake_hub import add_revision, commit_of
from tiny_models import gpt2_tokenizer, save_tiny, tiny_model

from headatlas import MapOptions, map_heads
from headatlas.circuits import ModelCircuits
from headatlas.errors import WeightSourceError
from headatlas.weights import open_source
from headatlas.weights.hub import split_revision

REPO = "tiny-org/tiny-llama"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny-org/tiny-llama`` at ``main`` (llama-gqa) and ``step1000`` (llama-mqa)."""
    cache = tmp_path_factory.mktemp("hub-cache")
    for revision, variant in (("main", "llama-gqa"), ("step1000", "llama-mqa")):
        folder = tmp_path_factory.mktemp(variant)
        save_tiny(tiny_model(variant), folder)
        gpt2_tokenizer().save_pretrained(folder)
        add_revision(cache, REPO, revision, folder)
    return cache


@pytest.fixture
def offline(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


def test_split_revision() -> None:
    assert split_revision("org/name@step1000") == ("org/name", "step1000")
    assert split_revision("org/name") == ("org/name", None)
    assert split_revision("a@b@c") == ("a@b", "c")
    with pytest.raises(WeightSourceError, match="MODEL@REVISION"):
        split_revision("org/name@")


def test_each_revision_reads_its_own_snapshot(offline: Path) -> None:
    main = open_source(REPO)
    step = open_source(f"{REPO}@step1000")
    by_commit = open_source(f"{REPO}@{commit_of(REPO, 'step1000')}")
    assert (main.name, step.name) == (REPO, f"{REPO}@step1000")
    assert step.display_name() == "tiny-llama@step1000"
    assert step.describe()["revision"] == "step1000"
    assert step.describe()["commit"] == commit_of(REPO, "step1000")
    digest = lambda src: ModelCircuits(src).layer(0).digest  # noqa: E731  content of what is read
    assert digest(main) != digest(step)
    assert digest(by_commit) == digest(step)
    assert by_commit.path == step.path  # type: ignore[attr-defined]
    key = "model.layers.0.self_attn.k_proj.weight"
    mqa = dict(tiny_model("llama-mqa").state_dict())[key]
    assert torch.equal(step.read(step.resolve(key)), mqa)  # type: ignore[arg-type]
    assert torch.equal(by_commit.read(by_commit.resolve(key)), mqa)  # type: ignore[arg-type]
    assert main.read(main.resolve(key)).shape != mqa.shape  # type: ignore[arg-type]


def test_revisions_map_into_separate_folders(offline: Path, tmp_path: Path) -> None:
    opts = MapOptions(min_pairs=5)  # a 512-token model keeps few GPT-2 word pairs
    a = map_heads(REPO, relations=["copying"], options=opts, out=tmp_path, progress=False)
    b = map_heads(
        f"{REPO}@step1000", relations=["copying"], options=opts, out=tmp_path, progress=False
    )
    assert a.directory != b.directory
    assert b.manifest["model"]["name"] == f"{REPO}@step1000"
    assert b.manifest["model"]["source"]["revision"] == "step1000"


@pytest.mark.parametrize(
    ("spec", "kwargs", "needles"),
    [
        (f"{REPO}@step9", {}, ["'tiny-org/tiny-llama@step9'", "not in the local cache"]),
        (f"{REPO}@step1000", {"revision": "main"}, ["'step1000'", "--revision is 'main'"]),
        ("smollm2@v1", {}, ["applies only to hub ids", "'smollm2'"]),
    ],
)
def test_bad_revisions_are_one_line(
    offline: Path, spec: str, kwargs: dict[str, str], needles: list[str]
) -> None:
    with pytest.raises(WeightSourceError) as err:
        open_source(spec, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_inference_model_loads_the_same_revision(offline: Path) -> None:
    from headatlas.validate import load_hf_model

    hf = load_hf_model(f"{REPO}@step1000")
    key = "model.layers.0.self_attn.k_proj.weight"
    assert torch.equal(hf.state_dict()[key], tiny_model("llama-mqa").state_dict()[key])
