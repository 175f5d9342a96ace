"""What a sweep maps: models and revisions from the command line and from spec files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from headatlas.errors import OptionError
from headatlas.sweep import SweepEntry, sweep_entries


def test_words_files_and_repeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local-model").mkdir()
    (tmp_path / "smollm2").mkdir()  # a folder named like a packaged model: the name wins
    (tmp_path / "a.txt").write_text("# models\nsmollm2\norg/x@step10  # early\n\n")
    (tmp_path / "b.toml").write_text(
        'models = ["local-model", {model = "org/x", revisions = ["step10", "step20"]}]\n'
    )
    (tmp_path / "c.json").write_text(json.dumps({"models": [{"model": "org/y"}]}))
    entries = sweep_entries(["a.txt", "b.toml", "c.json", "smollm2"])
    assert entries == [
        SweepEntry("smollm2"),
        SweepEntry("org/x", "step10"),
        SweepEntry(str(tmp_path / "local-model")),
        SweepEntry("org/x", "step20"),
        SweepEntry("org/y"),
    ]
    assert [e.step for e in entries] == [None, 10, None, 20, None]
    assert SweepEntry("org/z", "stage1-step-700-tokens3B").step == 700
    assert entries[1].spec == "org/x@step10"


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("bad.toml", "models = [", "does not parse"),
        ("empty.json", "{}", "needs a non-empty 'models' list"),
        ("item.json", '{"models": [3]}', "each item of 'models'"),
        ("revs.toml", 'models = [{model = "o/x", revisions = "step1"}]', "must be a list"),
    ],
)
def test_bad_spec_files_are_one_line(tmp_path: Path, name: str, text: str, needle: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(OptionError, match=needle) as err:
        sweep_entries([str(tmp_path / name)])
    assert "\n" not in str(err.value) and name in str(err.value)


def test_missing_spec_file_and_empty_sweep(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="does not exist"):
        sweep_entries([str(tmp_path / "nope.toml")])
    (tmp_path / "blank.txt").write_text("# nothing\n")
    with pytest.raises(OptionError, match="names no model"):
        sweep_entries([str(tmp_path / "blank.txt")])


def test_two_maps_for_one_results_folder_are_refused(tmp_path: Path) -> None:
    from headatlas.store import model_slug
    from headatlas.sweep import run_sweep

    for parent in ("a", "b"):
        (tmp_path / parent / "model").mkdir(parents=True)
    # Two folders of one name get results folders of their own (issue 12)...
    assert model_slug(str(tmp_path / "a" / "model")) != model_slug(str(tmp_path / "b" / "model"))
    # ...and one folder named twice would still share one: refused.
    one = str(tmp_path / "a" / "model")
    entries = sweep_entries([one, one + "/"])
    with pytest.raises(OptionError, match="would both write OUT/model-") as err:
        run_sweep(entries, tmp_path / "out", ray="off")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()  # refused before anything was written
