"""One model's map split into layer ranges run as Ray tasks (a real local cluster, loopback,
2 CPUs): the same per-layer results and final files as a one-process map; a task that dies
mid-run keeps the layers it finished, and its retry computes only the rest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from tiny_models import gpt2_tokenizer, save_tiny, tiny_model

from headatlas import MapOptions, map_heads
from headatlas.errors import OptionError
from headatlas.scoring.mapping import PARTIAL
from headatlas.store import CATEGORIES, SCORES
from headatlas.sweep.split import LayerJob, layer_ranges, layer_task, map_split

ray = pytest.importorskip("ray")

RELATIONS = ("copying", "country_capital")
OPTIONS = MapOptions(k=5000)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = save_tiny(tiny_model("gpt2"), tmp_path_factory.mktemp("split") / "gpt2")
    gpt2_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """A local Ray cluster: loopback, 2 CPUs, a small object store."""
    ray.init(
        num_cpus=2,
        object_store_memory=100 * 2**20,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    yield
    ray.shutdown()


def test_layer_ranges() -> None:
    assert layer_ranges(5, 2) == [(0, 1, 2), (3, 4)]
    assert layer_ranges(2, 8) == [(0,), (1,)]
    assert layer_ranges(3, 1) == [(0, 1, 2)]


def test_split_map_equals_one_process_map(model_dir: Path, cluster: None, tmp_path: Path) -> None:
    one = map_heads(str(model_dir), list(RELATIONS), options=OPTIONS, out=tmp_path / "one",
                    progress=False)  # fmt: skip
    split, tasks = map_split(
        str(model_dir), list(RELATIONS), options=OPTIONS, out=tmp_path / "split", tasks=2,
        progress=False,
    )  # fmt: skip
    assert [t.status for t in tasks] == ["mapped", "mapped"]
    assert sorted(t.layers_computed or 0 for t in tasks) == [1, 1]
    # The assembly computed nothing the tasks finished.
    assert split.manifest["timings"]["layers_computed"] == 0
    for name in (SCORES, CATEGORIES):
        a = pd.read_parquet(one.directory / name)
        b = pd.read_parquet(split.directory / name)
        pd.testing.assert_frame_equal(a, b)
    for key in ("cache_key", "layer_digests"):
        assert one.manifest[key] == split.manifest[key]
    assert one.manifest["model"]["fingerprint"] == split.manifest["model"]["fingerprint"]
    assert not (split.directory / PARTIAL).exists()


def test_a_task_killed_mid_run_keeps_its_finished_layers(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headatlas.scoring.layers as layers

    job = LayerJob(str(model_dir), str(tmp_path / "out"), OPTIONS, RELATIONS, (), (0, 1))
    real = layers.candidate_orders  # once per layer
    calls = []

    def dies_on_the_second_layer(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(1)
        if len(calls) == 2:
            raise SystemExit("worker killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(layers, "candidate_orders", dies_on_the_second_layer)
    with pytest.raises(SystemExit):
        layer_task(job)
    saved = list((tmp_path / "out").glob(f"*/{PARTIAL}/*/layer_0000-*.parquet"))
    assert len(saved) == 1
    monkeypatch.setattr(layers, "candidate_orders", real)
    retry = layer_task(job)  # what Ray's retry runs
    assert retry.status == "mapped" and retry.layers_computed == 1


def test_some_layers_need_an_out_folder_and_real_layers(model_dir: Path) -> None:
    with pytest.raises(OptionError, match="needs an out folder"):
        map_heads(str(model_dir), list(RELATIONS), options=OPTIONS, layers=[0], progress=False)


def test_cli_ray_local_writes_the_one_process_files(
    model_dir: Path, cluster: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from headatlas.cli.main import main

    args = ["map", str(model_dir), "--relations", *RELATIONS, "--k", "5000", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert (
        main([*args, "--out", str(tmp_path / "split"), "--ray", "local", "--ray-tasks", "2"]) == 0
    )
    assert "2 Ray tasks computed 2 layers" in capsys.readouterr().out
    (one,) = (tmp_path / "one").iterdir()
    (split,) = (tmp_path / "split").iterdir()
    for name in (SCORES, CATEGORIES):
        pd.testing.assert_frame_equal(pd.read_parquet(one / name), pd.read_parquet(split / name))
