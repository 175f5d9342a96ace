"""Progress of long stages: a bar on a terminal, a line every few steps with elapsed time and
ETA otherwise, nothing when disabled; the map and the ``forward`` recipe's preparation report
through it."""

from __future__ import annotations

import io
import re

import pytest
from tiny_models import gpt2_tokenizer, tiny_model

from headatlas import MapOptions, map_heads
from headatlas.circuits import ModelCircuits
from headatlas.progress import Progress, format_seconds, track


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_every_few_steps_with_eta() -> None:
    out = io.StringIO()
    with Progress(20, "mapping m", unit="layer", stream=out) as p:
        for _ in range(20):
            p.update()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # every 2 of 20 layers
    assert lines[0].startswith("mapping m: 2/20 layers, ") and "ETA" in lines[0]
    assert lines[-1].startswith("mapping m: 20/20 layers, ") and lines[-1].endswith("done")
    assert "\r" not in out.getvalue()


def test_uneven_totals_still_end_with_the_last_step() -> None:
    out = io.StringIO()
    list(track(range(7), 7, "salient operations of m", unit="layer", stream=out))
    lines = out.getvalue().splitlines()
    assert [re.search(r"(\d+)/7", line).group(1) for line in lines] == [  # type: ignore[union-attr]
        "1", "2", "3", "4", "5", "6", "7",
    ]  # fmt: skip


def test_terminal_gets_a_bar_and_disabled_gets_nothing() -> None:
    term = _Terminal()
    assert list(track(range(3), 3, "validate", stream=term)) == [0, 1, 2]
    assert "validate" in term.getvalue() and "3/3" in term.getvalue()
    assert "ETA" not in term.getvalue()
    quiet = _Terminal()
    assert list(track(range(3), 3, "validate", enabled=False, stream=quiet)) == [0, 1, 2]
    assert quiet.getvalue() == ""


def test_format_seconds() -> None:
    assert [format_seconds(s) for s in (4.4, 65, 3725)] == ["4s", "1m05s", "1h02m"]


def test_map_logs_layers_and_forward_preparation(capsys: pytest.CaptureFixture[str]) -> None:
    """Output that is not a terminal (captured here) gets lines, for the ``forward`` recipe's
    preparation and for the layers."""
    model = tiny_model("gpt2")
    circuits = ModelCircuits.load(model, tokenizer=gpt2_tokenizer())
    options = MapOptions(embedding="forward")
    map_heads(circuits, ["copying"], options=options, hf_model=model, progress=True)
    err = capsys.readouterr().err
    n = circuits.cfg.n_layers
    assert re.search(r"forward recipe: inputs of every layer: \d+/\d+ batches, .*done", err), err
    assert "mapping " in err and f"{n}/{n} layers" in err, err
    map_heads(circuits, ["copying"], options=options, hf_model=model, progress=False)
    assert "layers" not in capsys.readouterr().err
