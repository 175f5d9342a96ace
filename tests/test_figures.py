"""Static figures: category atlas, per-category series, relation heatmap, and their CLI."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure
from PIL import Image
from report_fixtures import make_results

from headatlas.cli import figure_cmd
from headatlas.errors import (
    HeadAtlasError,
    OutputFormatError,
    ResultsError,
    TooManyModelsError,
    UnknownRelationError,
)
from headatlas.report.category_figure import (
    ALL_CATEGORIES_TITLE,
    plot_category_atlas,
    plot_category_series,
)
from headatlas.report.grid_axes import panel_grid, tick_step
from headatlas.report.head_grids import label_grid
from headatlas.report.palette import LABEL_COLORS, label_order
from headatlas.report.relation_figure import plot_relation, top_heads
from headatlas.scoring.categories import LABELS
from headatlas.store import MapResults, load_results

NO_TRANSLATION = (
    ("name copying", "Algorithmic"),
    ("country to capital", "Knowledge"),
    ("verb to past tense", "Linguistic"),
)


def _results(tmp_path: Path, n_layers: int, n_heads: int, **kw: object) -> MapResults:
    return load_results(make_results(tmp_path, n_layers, n_heads, **kw))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sized(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Results of a given shape and seed, written once per module (80 × 64 takes seconds)."""
    cache: dict[tuple[int, int, int], MapResults] = {}

    def get(n_layers: int, n_heads: int, seed: int = 0) -> MapResults:
        key = (n_layers, n_heads, seed)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"r{n_layers}x{n_heads}s{seed}")
            cache[key] = load_results(
                make_results(folder, n_layers, n_heads, name=f"m{seed}", seed=seed)
            )
        return cache[key]

    return get


def _panels(fig: Figure) -> list:
    """Visible heatmap axes (those holding an image), colorbars excluded."""
    return [
        ax for ax in fig.axes if ax.get_visible() and ax.images and ax.get_label() != "<colorbar>"
    ]


def _legend(fig: Figure) -> tuple[list[str], list[str]]:
    legend = fig.legends[0]
    texts = [t.get_text() for t in legend.get_texts()]
    colors = [to_hex(h.get_facecolor()) for h in legend.legend_handles]  # type: ignore[union-attr]
    return texts, colors


def _cell_color(ax, layer: int, head: int) -> str:
    image = ax.images[0]
    return to_hex(image.to_rgba(image.get_array())[head, layer])


# ---------------------------------------------------------------------------- palette, layout


def test_palette_covers_every_label_in_legend_order() -> None:
    assert tuple(LABEL_COLORS) == LABELS
    assert len(set(LABEL_COLORS.values())) == len(LABELS)
    assert label_order(["Custom", "Knowledge"]) == [*LABELS, "Custom"]


@pytest.mark.parametrize(
    ("n", "shape"), [(1, (1, 1)), (2, (1, 2)), (3, (1, 3)), (4, (2, 2)), (5, (2, 3)), (6, (2, 3))]
)
def test_panel_grid_layouts(n: int, shape: tuple[int, int]) -> None:
    assert panel_grid(n) == shape


def test_panel_grid_rejects_too_many_and_none() -> None:
    with pytest.raises(TooManyModelsError, match="at most 6"):
        panel_grid(7)
    with pytest.raises(TooManyModelsError):
        panel_grid(0)


def test_tick_step_thins_long_axes() -> None:
    assert tick_step(4, 2.0) == 1
    assert 80 / tick_step(80, 7.2) <= 16
    assert 64 / tick_step(64, 5.8) <= 13


# ---------------------------------------------------------------------------- category atlas


@pytest.mark.parametrize("n_models", [1, 2, 3, 4, 5, 6])
def test_atlas_has_one_panel_per_model_titled_by_display_name(
    tmp_path: Path, n_models: int
) -> None:
    results = [
        _results(tmp_path / str(i), 3 + i, 4, name=f"org/m{i}", display_name=f"Model {i}", seed=i)
        for i in range(n_models)
    ]
    fig = plot_category_atlas(results)
    panels = _panels(fig)
    assert len(panels) == n_models
    assert [ax.get_title() for ax in panels] == [f"Model {i}" for i in range(n_models)]
    assert len(fig.legends) == 1  # one shared legend, none per panel
    assert all(ax.get_legend() is None for ax in panels)


def test_atlas_legend_lists_all_labels_in_order_with_palette_colours(tmp_path: Path) -> None:
    results = _results(tmp_path, 20, 16, seed=2)
    fig = plot_category_atlas([results])
    texts, colors = _legend(fig)
    assert texts == list(LABELS)
    assert colors == [LABEL_COLORS[t] for t in texts]
    present = set(results.categories["label"])
    assert present <= set(texts)
    assert len(present) >= 5  # the fixture exercises most labels


def test_atlas_cells_take_their_label_colour(tmp_path: Path) -> None:
    results = _results(tmp_path, 6, 5, seed=3)
    fig = plot_category_atlas([results])
    ax = _panels(fig)[0]
    for row in results.categories.itertuples():
        assert _cell_color(ax, row.layer, row.head) == LABEL_COLORS[row.label]


@pytest.mark.parametrize(("n_layers", "n_heads"), [(80, 64), (2, 4)])
def test_atlas_axes_span_every_layer_and_head(sized, n_layers: int, n_heads: int) -> None:  # type: ignore[no-untyped-def]
    results = sized(n_layers, n_heads)
    fig = plot_category_atlas([results])
    ax = _panels(fig)[0]
    assert ax.get_xlim() == (-0.5, n_layers - 0.5)
    assert ax.get_ylim() == (-0.5, n_heads - 0.5)
    assert ax.get_xlabel() == "Layer" and ax.get_ylabel() == "Head"
    assert ax.images[0].get_array().shape == (n_heads, n_layers)
    xticks, yticks = ax.get_xticks(), ax.get_yticks()
    assert xticks[0] == 0 and xticks[-1] <= n_layers - 1 and len(xticks) <= 16
    assert yticks[0] == 0 and yticks[-1] <= n_heads - 1 and len(yticks) <= 16


def test_atlas_mixed_shapes_each_panel_spans_its_own_model(tmp_path: Path) -> None:
    big = _results(tmp_path / "a", 32, 16, name="big")
    small = _results(tmp_path / "b", 2, 4, name="small")
    axes = _panels(plot_category_atlas([big, small]))
    assert axes[0].get_xlim() == (-0.5, 31.5) and axes[0].get_ylim() == (-0.5, 15.5)
    assert axes[1].get_xlim() == (-0.5, 1.5) and axes[1].get_ylim() == (-0.5, 3.5)


def test_custom_category_label_gets_an_extra_legend_entry(tmp_path: Path) -> None:
    results = _results(tmp_path, 12, 8, relations=(("my rel", "Custom"),), seed=1)
    assert "Custom" in set(results.categories["label"])
    texts, colors = _legend(plot_category_atlas([results]))
    assert texts == [*LABELS, "Custom"]
    assert colors[-1] not in colors[:-1]


def test_missing_heads_are_drawn_as_missing_not_unclassified(tmp_path: Path) -> None:
    results = _results(tmp_path, 3, 4)
    results.categories = results.categories[
        ~((results.categories["layer"] == 1) & (results.categories["head"] == 2))
    ]
    grid = label_grid(results, label_order([]))
    assert np.isnan(grid[2, 1]) and np.isfinite(grid).sum() == 11


@pytest.mark.parametrize(("n_layers", "n_heads"), [(80, 64), (2, 4)])
@pytest.mark.parametrize("ext", ["png", "svg", "pdf"])
def test_atlas_writes_each_format(
    sized, tmp_path: Path, n_layers: int, n_heads: int, ext: str
) -> None:  # type: ignore[no-untyped-def]
    results = [sized(n_layers, n_heads, seed) for seed in range(2)]
    out = tmp_path / "figs" / f"atlas.{ext}"
    plot_category_atlas(results, out)
    assert out.is_file() and out.stat().st_size > 5_000
    head = out.read_bytes()[:8]
    assert {"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}[ext] in head
    if ext == "png":
        width, height = Image.open(out).size
        assert 600 <= width <= 6_000 and 300 <= height <= 4_000


def test_unsupported_extension_is_refused_before_drawing(tmp_path: Path) -> None:
    results = _results(tmp_path, 2, 4)
    with pytest.raises(OutputFormatError, match=r"\.png, \.svg, \.pdf"):
        plot_category_atlas([results], tmp_path / "atlas.jpg")


# ---------------------------------------------------------------------------- per-category


def test_series_titles_with_translation(tmp_path: Path) -> None:
    fig = plot_category_series(_results(tmp_path, 10, 8))
    titles = [ax.get_title() for ax in _panels(fig)]
    assert titles == [ALL_CATEGORIES_TITLE, "Algorithmic", "Knowledge", "Linguistic", "Translation"]
    assert _panels(fig)[0].get_xlabel() == "layer" and _panels(fig)[0].get_ylabel() == "head"
    texts, _ = _legend(fig)
    assert texts == list(LABELS)


def test_series_leaves_out_translation_when_no_translation_relation_survived(
    tmp_path: Path,
) -> None:
    results = _results(tmp_path, 10, 8, relations=NO_TRANSLATION, skipped=("english to french",))
    titles = [ax.get_title() for ax in _panels(plot_category_series(results))]
    assert titles == [ALL_CATEGORIES_TITLE, "Algorithmic", "Knowledge", "Linguistic"]


def test_series_category_panel_colours_members_and_leaves_background(tmp_path: Path) -> None:
    results = _results(tmp_path, 8, 6, seed=4)
    panels = {ax.get_title(): ax for ax in _panels(plot_category_series(results))}
    for row in results.categories.itertuples():
        members = row.categories.split(",") if row.categories else []
        for category in ("Algorithmic", "Knowledge", "Linguistic", "Translation"):
            expected = LABEL_COLORS[category if category in members else "Unclassified"]
            assert _cell_color(panels[category], row.layer, row.head) == expected
        assert (
            _cell_color(panels[ALL_CATEGORIES_TITLE], row.layer, row.head)
            == LABEL_COLORS[row.label]
        )


@pytest.mark.parametrize(("n_layers", "n_heads"), [(80, 64), (2, 4)])
def test_series_renders_both_sizes(sized, tmp_path: Path, n_layers: int, n_heads: int) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "series.png"
    fig = plot_category_series(sized(n_layers, n_heads), out)
    for ax in _panels(fig):
        assert ax.get_xlim() == (-0.5, n_layers - 0.5) and ax.get_ylim() == (-0.5, n_heads - 0.5)
    width, height = Image.open(out).size
    assert 800 <= width <= 6_000 and 250 <= height <= 2_000


# ---------------------------------------------------------------------------- relation


def test_relation_figure_has_score_and_suppression_panels_on_0_1(tmp_path: Path) -> None:
    results = _results(tmp_path, 12, 8)
    fig = plot_relation(results, "country to capital")
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == ["Relation score", "Suppression score"]
    for ax in panels:
        assert ax.images[0].get_clim() == (0.0, 1.0)
        assert ax.get_xlim() == (-0.5, 11.5) and ax.get_ylim() == (-0.5, 7.5)
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1


def test_relation_figure_annotates_the_top_heads(tmp_path: Path) -> None:
    results = _results(tmp_path, 12, 8, seed=5)
    fig = plot_relation(results, "country to capital")
    rows = results.scores[results.scores["relation"] == "country to capital"]
    for ax, column in zip(_panels(fig), ("score", "suppression_score")):
        best = rows.sort_values(column, ascending=False).head(5)
        expected = [f"L{r.layer}H{r.head} {getattr(r, column):.2f}" for r in best.itertuples()]
        listed = [t.get_text() for t in ax.get_legend().get_texts()]
        assert listed == [f"{i + 1}. {e}" for i, e in enumerate(expected)]
        numbers = sorted(t.get_text() for t in ax.texts)
        assert numbers == ["1", "2", "3", "4", "5"]


def test_top_heads_skips_missing_and_zero() -> None:
    grid = np.array([[np.nan, 0.0], [0.5, 0.9]])
    assert [(h.layer, h.head, h.score) for h in top_heads(grid)] == [(1, 1, 0.9), (0, 1, 0.5)]


@pytest.mark.parametrize(("n_layers", "n_heads"), [(80, 64), (2, 4)])
def test_relation_figure_renders_both_sizes(
    sized, tmp_path: Path, n_layers: int, n_heads: int
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "rel.pdf"
    plot_relation(sized(n_layers, n_heads), "verb to past tense", out)
    assert out.stat().st_size > 5_000


def test_unknown_relation_lists_the_available_ones(tmp_path: Path) -> None:
    results = _results(tmp_path, 2, 4, relations=NO_TRANSLATION, skipped=("english to french",))
    with pytest.raises(UnknownRelationError) as info:
        plot_relation(results, "no such relation")
    message = str(info.value)
    assert "no such relation" in message and "\n" not in message
    for name, _ in NO_TRANSLATION:
        assert name in message
    with pytest.raises(UnknownRelationError, match="skipped"):
        plot_relation(results, "english to french")


# ---------------------------------------------------------------------------- CLI


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="headatlas")
    figure_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["figure", *argv])
    return int(args.func(args))


def test_cli_default_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_results(tmp_path, 4, 4)
    assert _cli([str(d)]) == 0
    assert (d / "figures" / "category-atlas.png").is_file()
    assert _cli([str(d), "--per-category"]) == 0
    assert (d / "figures" / "category-series.png").is_file()
    assert _cli([str(d), "--relation", "country to capital"]) == 0
    assert (d / "figures" / "relation-country-to-capital.png").is_file()
    assert str(d / "figures" / "category-atlas.png") in capsys.readouterr().out


def test_cli_out_picks_format(tmp_path: Path) -> None:
    dirs = [str(make_results(tmp_path / str(i), 3, 4, seed=i)) for i in range(4)]
    out = tmp_path / "four.svg"
    assert _cli([*dirs, "--out", str(out)]) == 0
    assert out.read_bytes().startswith(b"<?xml")


@pytest.mark.parametrize(
    ("make_argv", "error", "needle"),
    [
        (lambda d, t: [str(t / "missing")], ResultsError, "does not exist"),
        (lambda d, t: [str(t)], ResultsError, "manifest.json"),
        (lambda d, t: [str(d), "--out", str(t / "a.gif")], OutputFormatError, ".gif"),
        (lambda d, t: [str(d)] * 7, TooManyModelsError, "at most 6"),
        (lambda d, t: [str(d), str(d), "--per-category"], ResultsError, "one results folder"),
        (lambda d, t: [str(d), "--relation", "nope"], UnknownRelationError, "available"),
    ],
)
def test_cli_bad_input_is_a_one_line_error(tmp_path: Path, make_argv, error, needle) -> None:  # type: ignore[no-untyped-def]
    d = make_results(tmp_path / "r", 2, 4)
    with pytest.raises(error) as info:
        _cli(make_argv(d, tmp_path))
    assert isinstance(info.value, HeadAtlasError)
    assert needle in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------- dot style


def _dots(fig: Figure) -> list:
    """Visible axes drawn in the dot style (those holding a scatter)."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.collections]


def test_dots_one_per_head_in_its_label_colour_unclassified_small(tmp_path: Path) -> None:
    results = _results(tmp_path, 6, 5, seed=3)
    fig = plot_category_atlas([results], style="dots")
    (ax,) = _dots(fig)
    dots = ax.collections[0]
    where = {tuple(xy): i for i, xy in enumerate(dots.get_offsets().tolist())}
    assert len(where) == 6 * 5
    colors, sizes = dots.get_facecolors(), dots.get_sizes()
    for row in results.categories.itertuples():
        i = where[(row.layer, row.head)]
        assert to_hex(colors[i]) == LABEL_COLORS[row.label]
        small = row.label == "Unclassified"
        assert sizes[i] == pytest.approx(sizes.max() / 4 if small else sizes.max())
    assert ax.get_xlabel() == "Layer" and ax.get_ylabel() == "Head"


@pytest.mark.parametrize(("n_layers", "n_heads"), [(80, 64), (2, 4)])
def test_dots_stay_readable_and_apart(sized, tmp_path: Path, n_layers: int, n_heads: int) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "dots.png"
    fig = plot_category_atlas([sized(n_layers, n_heads)], out, style="dots")
    (ax,) = _dots(fig)
    assert ax.get_xlim() == (-0.5, n_layers - 0.5) and ax.get_ylim() == (-0.5, n_heads - 0.5)
    box = ax.get_window_extent()  # pixels at the figure's dpi
    pitch_pt = 72 / fig.dpi * min(box.width / n_layers, box.height / n_heads)
    diameter_pt = float(np.sqrt(ax.collections[0].get_sizes().max()))
    assert 2.5 <= diameter_pt < pitch_pt  # visible, and neighbours do not touch
    assert len(ax.get_xticks()) <= 16 and len(ax.get_yticks()) <= 16
    width, height = Image.open(out).size
    assert 300 <= width <= 3_000 and 300 <= height <= 2_000


def test_series_in_dots_with_a_caption(sized, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    caption = "random weights: few heads are labelled"
    fig = plot_category_series(sized(80, 64), tmp_path / "s.png", style="dots", caption=caption)
    axes = _dots(fig)
    assert axes[0].get_title() == ALL_CATEGORIES_TITLE and len(axes) >= 4
    assert all(len(ax.collections[0].get_offsets()) == 80 * 64 for ax in axes)
    assert fig._supxlabel is not None and fig._supxlabel.get_text() == caption  # type: ignore[attr-defined]


def test_a_long_caption_is_wrapped_to_the_figure_width(tmp_path: Path) -> None:
    """A caption wider than the figure was cut at both edges (the class-level note of two
    models in one line); it is wrapped instead, every word kept."""
    caption = " ".join(f"model-{i}: noun_pronoun;" for i in range(12))
    fig = plot_category_atlas([_results(tmp_path, 2, 2)], caption=caption)
    text = fig._supxlabel.get_text()  # type: ignore[attr-defined]
    lines = text.split("\n")
    assert len(lines) > 1 and all(len(line) <= fig.get_figwidth() * 9 for line in lines)
    assert text.split() == caption.split()


def test_unknown_style_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OutputFormatError, match="style 'bars'"):
        plot_category_atlas([_results(tmp_path, 2, 2)], style="bars")


def test_cli_style_dots_and_caption(tmp_path: Path) -> None:
    dirs = [str(make_results(tmp_path / str(i), 3 + i, 4, seed=i)) for i in range(4)]
    assert _cli([*dirs, "--style", "dots", "--caption", "four shapes"]) == 0
    assert (Path(dirs[0]) / "figures" / "category-atlas-dots.png").is_file()
    assert _cli([dirs[0], "--per-category", "--style", "dots"]) == 0
    assert (Path(dirs[0]) / "figures" / "category-series-dots.png").is_file()
