"""MAPS §5's figure: the share of described heads per layer in which the describer saw a pattern."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
from report_fixtures import make_results

from headatlas import store
from headatlas.cli import figure_cmd
from headatlas.errors import ResultsError, TooManyModelsError
from headatlas.report.atlas_html import render_atlas_html
from headatlas.report.pattern_figure import (
    pattern_section_html,
    pattern_shares,
    plot_pattern_shares,
)

# layer 0: 2 ok, 1 unclear, 1 failed -> 2/3; layer 1: all unclear -> 0; layer 2: not described.
STATUSES = {(0, 0): "ok", (0, 1): "unclear", (0, 2): "ok", (0, 3): "failed"}
STATUSES |= {(1, h): "unclear" for h in range(4)}


def write_descriptions(directory: Path, statuses: dict[tuple[int, int], str]) -> None:
    lines = [
        json.dumps({"layer": layer, "head": head, "status": status, "description": "d"})
        for (layer, head), status in statuses.items()
    ]
    # A head outside the model and a line cut short by a kill are ignored.
    lines += [json.dumps({"layer": 9, "head": 0, "status": "ok"}), '{"layer": 2, "hea']
    (directory / store.DESCRIPTIONS).write_text("\n".join(lines) + "\n")


@pytest.fixture
def described(tmp_path: Path) -> Path:
    directory = make_results(tmp_path, 3, 4, display_name="Toy <3>")
    write_descriptions(directory, STATUSES)
    return directory


def test_shares_per_layer(described: Path) -> None:
    table = pattern_shares(described)
    assert table["layer"].tolist() == [0, 1, 2]
    assert table["heads"].tolist() == [4, 4, 4]
    assert table["described"].tolist() == [3, 4, 0]
    assert table["detected"].tolist() == [2, 0, 0]
    assert table["failed"].tolist() == [1, 0, 0]
    assert table["share"].iloc[0] == pytest.approx(2 / 3)
    assert table["share"].iloc[1] == 0.0 and np.isnan(table["share"].iloc[2])


def test_figure_bars_are_the_shares(described: Path, tmp_path: Path) -> None:
    other = make_results(tmp_path / "b", 2, 2, name="toy/other")
    write_descriptions(other, {(0, 0): "ok", (0, 1): "ok", (1, 0): "unclear"})
    out = tmp_path / "fig" / "patterns.svg"
    fig = plot_pattern_shares([described, other], out)
    assert out.is_file() and out.read_text().lstrip().startswith("<?xml")
    first, second = fig.axes[:2]
    assert [p.get_height() for p in first.patches] == pytest.approx([200 / 3, 0, 0])
    assert [p.get_height() for p in second.patches] == pytest.approx([100, 0])
    assert "2 of 7 described heads (29%)" in first.get_title()
    assert "Toy <3>" in first.get_title()


def test_figure_needs_descriptions(tmp_path: Path) -> None:
    bare = make_results(tmp_path, 2, 2)
    with pytest.raises(ResultsError, match=r"headatlas describe .* --all"):
        plot_pattern_shares([bare])
    with pytest.raises(TooManyModelsError):
        plot_pattern_shares([bare] * 7)


def test_cli_patterns_option(described: Path, capsys) -> None:
    parser = argparse.ArgumentParser(prog="headatlas")
    figure_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["figure", str(described), "--patterns"])
    assert args.func(args) == 0
    out = described / "figures" / "pattern-shares.png"
    assert capsys.readouterr().out.strip() == str(out)
    assert out.read_bytes().startswith(b"\x89PNG")


def test_atlas_section(described: Path, tmp_path: Path) -> None:
    section = pattern_section_html(described)
    bars = re.findall(r'data-layer="(\d+)" data-share="([0-9.]+)"', section)
    assert bars == [("0", "0.6667"), ("1", "0.0000")]  # layer 2: no bar, nothing described
    assert "Toy &lt;3&gt;" in section and "<3>" not in section
    page = render_atlas_html([store.load_results(described)])
    assert section.encode("ascii", "xmlcharrefreplace").decode() in page and page.isascii()
    bare = make_results(tmp_path / "bare", 2, 2)
    assert pattern_section_html(bare) == ""
    assert 'class="pattern-shares"' not in render_atlas_html([store.load_results(bare)])
