"""Every command against bad inputs and faults (issue 21): wrong paths, wrong kinds of file,
damaged files, interrupted runs, a full disk and unreachable services. Each case asserts
exit status 2 (1 for a sweep whose maps failed, as documented), one stderr line starting
``headatlas: error:``, no traceback, and nothing written or served. Commands run in-process;
the full disk is a real tmpfs (skipped where one cannot be mounted)."""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from tiny_models import gpt2_tokenizer, save_tiny, tiny_model
from tmpfs import mounted_tmpfs

from headatlas.cli.main import COMMANDS, main
from headatlas.store import CATEGORIES, MANIFEST, SALIENT, SCORES, load_results, model_slug

RELS = ("--relations", "copying", "Knowledge")


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class World:
    """A tiny model, its finished map (with salient operations of layer 1), and a map of the
    same model with another relation set."""

    model: Path
    good: Path
    other: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("world")
    model = save_tiny(tiny_model("gpt2"), root / "final")
    gpt2_tokenizer().save_pretrained(model)
    assert main(["map", str(model), "--out", str(root / "out"), *RELS, "--quiet"]) == 0
    args = ["salient", str(model), "--all", "--layers", "1", "--out", str(root / "out")]
    assert main(args) == 0
    out2 = str(root / "out2")
    assert main(["map", str(model), "--out", out2, "--relations", "copying", "--quiet"]) == 0
    slug = model_slug(str(model))
    return World(model, root / "out" / slug, root / "out2" / slug)


def check_error(argv: list[str], capsys: pytest.CaptureFixture[str], code: int = 2) -> str:
    """Run ``argv``; assert the exit code, one error line and no traceback; return the line."""
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert rc == code, (argv, rc, err)
    lines = [line for line in err.splitlines() if line.strip()]
    if code == 2:
        assert len(lines) == 1 and lines[0].startswith("headatlas: error: "), err
        return lines[0]
    return out


def no_files(folder: Path) -> None:
    """Nothing was written (served) under ``folder``."""
    written = [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []
    assert written == []


# ------------------------------------------------------------ results folders, every reader

Damage = Callable[[Path], Path]
"""Takes a copy of a finished results folder, damages it, returns the folder to pass."""


def _write(name: str, data: str | bytes) -> Damage:
    def damage(d: Path) -> Path:
        path = d / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
        return d

    return damage


def _remove(name: str) -> Damage:
    def damage(d: Path) -> Path:
        (d / name).unlink()
        return d

    return damage


def _truncate(name: str) -> Damage:
    def damage(d: Path) -> Path:
        data = (d / name).read_bytes()
        (d / name).write_bytes(data[: len(data) // 2])
        return d

    return damage


def _edit_table(name: str) -> Damage:
    def damage(d: Path) -> Path:
        df = pd.read_parquet(d / name)
        df = df.iloc[::-1].reset_index(drop=True)  # same rows, same columns, other order
        df.to_parquet(d / name, index=False)
        return d

    return damage


def _missing(d: Path) -> Path:
    return d.parent / "no-such-folder"


def _regular_file(d: Path) -> Path:
    shutil.rmtree(d)
    d.write_text("a file, not a results folder\n")
    return d


def _empty(d: Path) -> Path:
    shutil.rmtree(d)
    d.mkdir()
    return d


def _manifest_folder(d: Path) -> Path:
    (d / MANIFEST).unlink()
    (d / MANIFEST).mkdir()
    return d


def _interrupted(d: Path) -> Path:
    """What a map killed before its first write leaves: finished layers under partial/."""
    for name in (MANIFEST, SCORES, CATEGORIES, SALIENT):
        (d / name).unlink()
    (d / "partial" / "key").mkdir(parents=True)
    shutil.copy(d.parent.parent / "layer.parquet", d / "partial" / "key" / "layer_0000-x.parquet")
    return d


def _half_new(d: Path) -> Path:
    shutil.copy(d.parent.parent / "other_scores.parquet", d / SCORES)
    return d


def _scores_other_columns(d: Path) -> Path:
    pd.DataFrame({"a": [1, 2]}).to_parquet(d / SCORES, index=False)
    return d


def _model_layers(value: object) -> Damage:
    def damage(d: Path) -> Path:
        manifest = json.loads((d / MANIFEST).read_text())
        manifest["model"]["n_layers"] = value
        (d / MANIFEST).write_text(json.dumps(manifest))
        return d

    return damage


FOLDER_DAMAGES: dict[str, Damage] = {
    "missing-folder": _missing,
    "regular-file": _regular_file,
    "empty-folder": _empty,
    "interrupted-map": _interrupted,
    "manifest-missing": _remove(MANIFEST),
    "manifest-a-folder": _manifest_folder,
    "manifest-invalid-json": _write(MANIFEST, '{"model": {'),
    "manifest-list": _write(MANIFEST, "[]"),
    "manifest-empty-object": _write(MANIFEST, "{}"),
    "manifest-null": _write(MANIFEST, "null"),
    "manifest-string": _write(MANIFEST, '"manifest"'),
    "manifest-binary": _write(MANIFEST, b"\xff\xfe\x00\x89PNG"),
    "manifest-layers-text": _model_layers("two"),
    "manifest-layers-zero": _model_layers(0),
    "manifest-files-list": _write(
        MANIFEST, '{"model": {"n_layers": 2, "n_heads": 2}, "files": []}'
    ),
}
"""Damages every reader of a folder must refuse."""

TABLE_DAMAGES: dict[str, Damage] = {
    "scores-missing": _remove(SCORES),
    "scores-edited": _edit_table(SCORES),
    "scores-truncated": _truncate(SCORES),
    "scores-text": _write(SCORES, "layer,head,score\n0,0,1\n"),
    "scores-other-columns": _scores_other_columns,
    "scores-half-new": _half_new,
    "categories-missing": _remove(CATEGORIES),
    "categories-edited": _edit_table(CATEGORIES),
    "categories-empty-file": _write(CATEGORIES, ""),
}
"""Damages to the map's own tables (readers of the map refuse them)."""

SALIENT_DAMAGES: dict[str, Damage] = {
    "salient-missing": _remove(SALIENT),
    "salient-edited": _edit_table(SALIENT),
    "salient-truncated": _truncate(SALIENT),
}
"""Damages to the salient table (describe refuses them)."""

Reader = Callable[[Path, Path, Path], list[str]]
"""(folder, a good folder, where outputs go) -> argv."""

MAP_READERS: dict[str, Reader] = {
    "figure": lambda d, good, o: ["figure", str(d), "--out", str(o / "f.png")],
    "figure-per-category": lambda d, good, o: [
        "figure",
        str(d),
        "--per-category",
        "--out",
        str(o / "f.png"),
    ],
    "report": lambda d, good, o: ["report", str(d), "--out", str(o / "a.html")],
    "diff-a": lambda d, good, o: ["diff", str(d), str(good), "--table", str(o / "d.parquet")],
    "diff-b": lambda d, good, o: ["diff", str(good), str(d), "--figure", str(o / "d.png")],
    "export": lambda d, good, o: ["export", str(d), str(o / "ds")],
    "export-headvis": lambda d, good, o: ["export", str(d), str(o / "hv"), "--format", "headvis"],
}
"""Commands that read a finished map."""


def _describe(d: Path, good: Path, o: Path) -> list[str]:
    url = f"http://127.0.0.1:{closed_port()}/v1"
    return ["describe", str(d), "--all", "--backend", "openai", "--base-url", url, "--model", "m"]


READER_CASES = [
    pytest.param(reader, damage, id=f"{reader}-{damage}")
    for reader in MAP_READERS
    for damage in (*FOLDER_DAMAGES, *TABLE_DAMAGES)
] + [
    pytest.param("describe", damage, id=f"describe-{damage}")
    for damage in (*FOLDER_DAMAGES, *SALIENT_DAMAGES)
]


@pytest.fixture
def damaged_copy(world: World, tmp_path: Path) -> Callable[[str], Path]:
    def make(damage: str) -> Path:
        (tmp_path / "store").mkdir()
        folder = tmp_path / "store" / world.good.name
        shutil.copytree(world.good, folder)
        shutil.copy(world.other / SCORES, tmp_path / "other_scores.parquet")
        shutil.copy(world.good / SCORES, tmp_path / "layer.parquet")
        fn = {**FOLDER_DAMAGES, **TABLE_DAMAGES, **SALIENT_DAMAGES}[damage]
        return fn(folder)

    return make


@pytest.mark.parametrize(("reader", "damage"), READER_CASES)
def test_reader_refuses_a_damaged_folder(
    reader: str,
    damage: str,
    world: World,
    tmp_path: Path,
    damaged_copy: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = damaged_copy(damage)
    outputs = tmp_path / "outputs"
    build = MAP_READERS.get(reader, _describe)
    check_error(build(folder, world.good, outputs), capsys)
    no_files(outputs)
    if reader == "describe":
        assert not (folder / "descriptions.jsonl").exists() if folder.is_dir() else True


@pytest.mark.parametrize("damage", [*FOLDER_DAMAGES, *TABLE_DAMAGES])
def test_map_recomputes_over_a_damaged_folder(
    damage: str,
    world: World,
    damaged_copy: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``map`` never serves a damaged folder: it recomputes (equal to the clean run) or, where
    the folder path itself is unusable, stops with one error line."""
    folder = damaged_copy(damage)
    if damage == "missing-folder":
        return  # nothing to damage: an ordinary first map
    argv = ["map", str(world.model), "--out", str(folder.parent), *RELS, "--quiet"]
    if damage == "regular-file":
        line = check_error(argv, capsys)
        assert "is a file, not a folder" in line
        return
    if damage == "manifest-a-folder":
        check_error(argv, capsys)
        return
    capsys.readouterr()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if damage.startswith("scores") or damage == "interrupted-map":
        assert "reusing the finished map" not in err
    again, clean = load_results(folder), load_results(world.good)
    pd.testing.assert_frame_equal(again.scores, clean.scores)
    pd.testing.assert_frame_equal(again.categories, clean.categories)


# ------------------------------------------------------------ model inputs, every model command

ModelMaker = Callable[[Path, Path], str]
"""(a good model folder, a scratch folder) -> the MODEL argument."""


def _bad_model_folder(change: Callable[[Path], None]) -> ModelMaker:
    def make(good: Path, scratch: Path) -> str:
        folder = scratch / "model"
        shutil.copytree(good, folder)
        change(folder)
        return str(folder)

    return make


def _garbage(name: str, data: bytes) -> Callable[[Path], None]:
    return lambda f: (f / name).write_bytes(data)


def _cut(name: str) -> Callable[[Path], None]:
    def change(f: Path) -> None:
        data = (f / name).read_bytes()
        (f / name).write_bytes(data[: len(data) // 3])

    return change


def _text_file(good: Path, scratch: Path) -> str:
    (scratch / "notes.txt").write_text("not a model\n")
    return str(scratch / "notes.txt")


def _garbage_gguf(good: Path, scratch: Path) -> str:
    (scratch / "model.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 40)
    return str(scratch / "model.gguf")


def _empty_folder(good: Path, scratch: Path) -> str:
    (scratch / "empty").mkdir()
    return str(scratch / "empty")


BAD_MODELS: dict[str, ModelMaker] = {
    "model-missing-path": lambda good, scratch: str(scratch / "no" / "model"),
    "model-text-file": _text_file,
    "model-empty-folder": _empty_folder,
    "model-garbage-gguf": _garbage_gguf,
    "model-config-list": _bad_model_folder(_garbage("config.json", b"[]")),
    "model-config-invalid": _bad_model_folder(_garbage("config.json", b'{"model_type": ')),
    "model-weights-cut": _bad_model_folder(_cut("model.safetensors")),
    "model-weights-garbage": _bad_model_folder(_garbage("model.safetensors", b"\x00" * 64)),
}

MODEL_COMMANDS: dict[str, Callable[[str, Path], list[str]]] = {
    "info": lambda m, o: ["info", m],
    "map": lambda m, o: ["map", m, "--out", str(o), *RELS, "--quiet"],
    "salient": lambda m, o: ["salient", m, "--all", "--layers", "1", "--out", str(o)],
    "salient-head": lambda m, o: ["salient", m, "--layer", "1", "--head", "0"],
    "validate": lambda m, o: ["validate", m, "--out", str(o), "--relations", "copying"],
    "calibrate": lambda m, o: ["calibrate", m, "--out", str(o), "--relations", "copying"],
    "sweep": lambda m, o: ["sweep", m, "--ray", "off", "--out", str(o), "--quiet"],
}


@pytest.mark.parametrize("command", MODEL_COMMANDS)
@pytest.mark.parametrize("bad", BAD_MODELS)
def test_model_command_refuses_a_bad_model(
    command: str, bad: str, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = BAD_MODELS[bad](world.model, tmp_path)
    outputs = tmp_path / "outputs"
    argv = MODEL_COMMANDS[command](model, outputs)
    if command == "sweep":  # documented: exit 1 and the failed map named on stdout
        out = check_error(argv, capsys, code=1)
        assert "failed" in out
        assert not [p for p in outputs.rglob("*.parquet") if p.parent.name != "sweep"]
        return
    check_error(argv, capsys)
    no_files(outputs)


# ------------------------------------------------------------ outputs: a file on the path, full disk

OutputCommand = Callable[[World, Path], list[str]]
"""(the world, an output location) -> argv writing there."""

OUTPUT_COMMANDS: dict[str, OutputCommand] = {
    "map": lambda w, o: ["map", str(w.model), "--out", str(o), *RELS, "--quiet"],
    "salient": lambda w, o: ["salient", str(w.model), "--all", "--layers", "1", "--out", str(o)],
    "validate": lambda w, o: ["validate", str(w.model), "--out", str(o), "--relations", "copying"],
    "figure": lambda w, o: ["figure", str(w.good), "--out", str(o / "f.png")],
    "figure-pdf": lambda w, o: ["figure", str(w.good), "--per-category", "--out", str(o / "f.pdf")],
    "report": lambda w, o: ["report", str(w.good), "--out", str(o / "a.html")],
    "diff-table": lambda w, o: ["diff", str(w.good), str(w.other), "--table", str(o / "d.parquet")],
    "diff-figure": lambda w, o: ["diff", str(w.good), str(w.other), "--figure", str(o / "d.png")],
    "export": lambda w, o: ["export", str(w.good), str(o / "ds")],
}


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_output_under_a_regular_file_says_so(
    command: str, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "taken"
    blocker.write_text("a file\n")
    line = check_error(OUTPUT_COMMANDS[command](world, blocker / "sub"), capsys)
    assert f"{blocker} is a file, not a folder" in line
    assert blocker.read_text() == "a file\n"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs filled to the last byte (skipped where none can be mounted)."""
    with mounted_tmpfs(tmp_path / "small") as mount:
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        with open(mount / "filler", "wb") as f:
            f.write(b"\0" * free)
        yield mount


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_full_disk_names_the_path_and_free_space(
    command: str, world: World, full_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = check_error(OUTPUT_COMMANDS[command](world, full_disk / "out"), capsys)
    assert str(full_disk / "out") in line and "free space" in line
    left = [p for p in full_disk.rglob("*") if p.is_file() and p.name != "filler"]
    assert left == []  # no 0-byte image, no temporary file, no half table


# ------------------------------------------------------------ unreachable services, bad records


def test_sweep_with_an_unreachable_ray_address(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("ray")
    address = f"127.0.0.1:{closed_port()}"
    argv = ["sweep", str(world.model), "--out", str(tmp_path), "--ray", address]
    line = check_error([*argv, "--ray-timeout", "2"], capsys)
    assert address in line


@pytest.mark.parametrize("command", ["info", "map", "salient-head"])
def test_hub_id_with_the_hub_unreachable(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HEADATLAS_HUB_TIMEOUT", "2")
    line = check_error(MODEL_COMMANDS[command]("someorg/not-cached", tmp_path / "o"), capsys)
    assert "unreachable" in line


def test_describe_with_the_backend_unreachable(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / world.good.name
    shutil.copytree(world.good, folder)
    line = check_error(_describe(folder, world.good, tmp_path), capsys)
    assert "127.0.0.1" in line


@pytest.mark.parametrize("text", ["[]", "null", '{"recipe": []}', '{"recipe": {"x": 1}}', "{"])
def test_calibrated_preset_with_a_damaged_calibration(
    text: str, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / world.good.name
    shutil.copytree(world.good, folder)
    (folder / "calibration.json").write_text(text)
    argv = ["map", str(world.model), "--out", str(tmp_path), "--preset", "calibrated", "--quiet"]
    assert "calibration" in check_error(argv, capsys)


@pytest.mark.parametrize("text", ["[]", "null", '{"entries": []}', '{"entries": {"x": 1}}', "{"])
def test_sweep_over_a_damaged_ledger_maps_again(
    text: str, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "sweep.json").write_text(text)
    argv = ["sweep", str(world.model), "--ray", "off", "--out", str(tmp_path), "--quiet"]
    argv += [*RELS, "--no-views"]
    capsys.readouterr()
    assert main(argv) == 0
    assert "Traceback" not in capsys.readouterr().err
    done = load_results(tmp_path / world.good.name)
    pd.testing.assert_frame_equal(done.scores, load_results(world.good).scores)


@pytest.mark.parametrize("text", ["[]", "null", '{"relations": []}', '{"relations": {"a": 1}}'])
def test_report_over_a_damaged_validation_summary_leaves_it_out(
    text: str, world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / world.good.name
    shutil.copytree(world.good, folder)
    (folder / "validation").mkdir()
    (folder / "validation" / "summary.json").write_text(text)
    capsys.readouterr()
    assert main(["report", str(folder), "--out", str(tmp_path / "a.html")]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert (tmp_path / "a.html").stat().st_size > 0


def test_every_command_is_in_the_sweep() -> None:
    covered = {argv(Path("x"), Path("y"), Path("z"))[0] for argv in MAP_READERS.values()}
    covered |= {"describe"}
    covered |= {build("m", Path("o"))[0] for build in MODEL_COMMANDS.values()}
    assert set(COMMANDS) <= covered, set(COMMANDS) - covered


# ------------------------------------------------------------ recipe switches and old spellings


@pytest.mark.parametrize(
    "argv",
    [
        ["salient", "{model}", "--layer", "1", "--head", "0", "--preset", "calibrated"],
        ["map", "{model}", "--out", "{out}", "--no-effective-embedding", "--embedding", "mlp0"],
        ["salient", "{model}", "--layer", "1", "--head", "0", "--embedding", "forward"],
    ],
    ids=["salient-calibrated-without-out", "effective-embedding-contradicted", "salient-forward"],
)
def test_recipe_switches_that_cannot_work_are_one_line_errors(
    argv: list[str], world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a.format(model=world.model, out=tmp_path) for a in argv]
    line = check_error(argv, capsys)
    assert any(w in line for w in ("--out", "--embedding none", "forward")), line


def test_salient_takes_the_old_relation_file_spelling_with_a_note(
    world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rel = tmp_path / "r.json"
    rel.write_text('{"name": "mine", "category": "Linguistic", "pairs": [["the", "of"]]}')
    head = ["salient", str(world.model), "--layer", "1", "--head", "0", "--preset", "maps"]
    capsys.readouterr()
    assert main([*head, "--relations-file", str(rel)]) == 0
    new = capsys.readouterr()
    assert main([*head, "--relation-file", str(rel)]) == 0
    old = capsys.readouterr()
    assert old.out == new.out
    assert "note: --relation-file is deprecated, use --relations-file" in old.err
    assert "deprecated" not in new.err
