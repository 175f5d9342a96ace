"""The interactive HTML atlas: offline, interactive, and inert to hostile strings.

Browser tests drive a real headless Chromium through Playwright; when it cannot be launched
they skip with the reason printed.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from report_fixtures import (
    DEFAULT_RELATIONS,
    AtlasPage,
    launch_chromium,
    make_dynamic,
    make_results,
    make_validation,
    page_score,
)

from headatlas.cli import report_cmd
from headatlas.errors import OutputFormatError, ResultsError, TooManyModelsError
from headatlas.report.atlas_html import atlas_data, embed_json, render_atlas_html
from headatlas.report.head_pages import (
    KINDS,
    MAX_PAIRS_PER_RELATION,
    MAX_WRONG_PER_RELATION,
    evidence_by_head,
    similar_heads,
)
from headatlas.report.head_qk import class_columns, extra_columns, qk_data
from headatlas.report.ov_affinity import OV_AFFINITY
from headatlas.store import (
    EVIDENCE,
    EVIDENCE_COLUMNS,
    QK_SCORES,
    MapResults,
    load_results,
    write_parquet_atomic,
)

EVIL_RELATION = "<img src=x onerror=alert(1)>"
EVIL_TOKEN = "<script>alert(1)</script>"
BREAKOUT = "</script><!--<script>alert(2)</script>"
CATEGORIES = ("Algorithmic", "Knowledge", "Linguistic", "Translation")
RELATIONS = tuple(
    (EVIL_RELATION if i == 3 else BREAKOUT if i == 7 else f"relation {i:02d}", CATEGORIES[i % 4])
    for i in range(20)
)
ONLY_VALIDATED = "<i>only validated</i>"


# ---------------------------------------------------------------------------- without a browser


def make_qk(
    directory: Path,
    n_layers: int,
    n_heads: int,
    classes: bool = True,
    inputs: str = "recipe",
    rotary: str = "offsets",
    validation: tuple[list[Any], list[Any]] | None = None,
) -> Path:
    """Write qk_scores.parquet (dup score (i % 7) / 7; salient ids i, i + 1, ...; with
    ``classes`` an auc_countries column with its null and p), the manifest's qk section and,
    with ``validation``, validation/qk.csv and qk_classes.csv rows."""
    n = n_layers * n_heads
    i = np.arange(n)
    table = pd.DataFrame(
        {
            "model": "m",
            "layer": i // n_heads,
            "head": i % n_heads,
            "dup_score": (i % 7) / 7,
            "salient_keys": [[int(j + t) for t in range(10)] for j in i],
            "salient_queries": [[int(j + 100 + t) for t in range(3)] for j in i],
        }
    )
    if classes:
        table["auc_countries"] = 0.5 + (i % 5) / 10
        table["auc_countries_null_max"] = 0.55
        table["auc_countries_p"] = 0.25
        table["auc_start"] = 0.9
    write_parquet_atomic(table, directory / QK_SCORES)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["qk"] = {"options": {"inputs": inputs, "rotary": rotary}, "file": QK_SCORES}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    if validation is not None:
        (directory / "validation").mkdir(exist_ok=True)
        pd.DataFrame(validation[0], columns=["inputs", "rotary", "r"]).to_csv(
            directory / "validation" / "qk.csv", index=False
        )
        pd.DataFrame(validation[1], columns=["class", "r"]).to_csv(
            directory / "validation" / "qk_classes.csv", index=False
        )
    return directory


def test_qk_extra_columns_pair_nulls_with_their_reading() -> None:
    table = pd.DataFrame(
        columns=["model", "layer", "head", "dup_score", "salient_keys", "salient_queries",
                 "auc_countries", "auc_countries_null_max", "auc_countries_p", "auc_cities",
                 "auc_cities_null_mean", "orphan_null", "label"]
    ).astype({"auc_countries": float, "auc_countries_null_max": float, "auc_countries_p": float,
              "auc_cities": float, "auc_cities_null_mean": float, "orphan_null": float,
              "label": str})  # fmt: skip
    assert extra_columns(table) == [
        ("auc_countries", ["auc_countries_null_max", "auc_countries_p"]),
        ("auc_cities", ["auc_cities_null_mean"]),
        ("orphan_null", []),
    ]


def test_the_maps_class_lists_become_one_column_per_class_with_its_null() -> None:
    """qk_scores.parquet keeps each head's class AUCs, nulls, p-values and z as lists in the
    order of ``classes`` (store.QK_CLASS_COLUMNS): the page spreads them into ``auc_<class>``
    columns, each grouped with its own null, p-value and z, through a parquet round trip."""
    import tempfile

    from headatlas.store import QK_CLASS_COLUMNS

    names = ["countries", "years"]
    rows = []
    for h in range(3):
        rows.append({"layer": 0, "head": h, "dup_score": 0.1 * h, "classes": names,
                     **{c: [0.5 + 0.1 * h + 0.01 * j for j in range(2)]
                        for c in QK_CLASS_COLUMNS[1:]}})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        pd.DataFrame(rows).to_parquet(Path(tmp) / "qk.parquet")
        table = pd.read_parquet(Path(tmp) / "qk.parquet")
    spread = class_columns(table)
    groups = dict(extra_columns(spread))
    for j, name in enumerate(names):
        assert groups[f"auc_{name}"] == [
            f"auc_{name}_null_mean",
            f"auc_{name}_null_max",
            f"auc_{name}_p_value",
            f"auc_{name}_z",
        ]
        assert spread[f"auc_{name}"].tolist() == [float(v[j]) for v in table["class_auc"]]
    assert "classes" not in spread.columns and len(spread) == len(table)
    plain = table.drop(columns=["classes"])
    assert class_columns(plain).equals(plain)


def test_qk_data_reads_scores_tokens_and_validation(tmp_path: Path) -> None:
    d = make_qk(
        make_results(tmp_path, 3, 4),
        3,
        4,
        validation=([["recipe", "offsets", 0.85], ["context", "none", 0.5]],
                    [["countries", 0.9], ["start", 0.2]]),
    )  # fmt: skip
    data = qk_data(load_results(d), decode=lambda ids: [f"t{t}" for t in ids])
    assert data is not None
    assert data["dup"] == [round((i % 7) / 7 * 1000) for i in range(12)]
    assert data["keys"]["5"] == [f"t{5 + t}" for t in range(8)]  # at most 8 shown
    assert data["queries"]["0"] == ["t100", "t101", "t102"]
    names = [x[0] for x in data["extra"]]
    assert names == ["auc_countries", "auc_start"]
    assert [c[0] for c in data["extra"][0][2]] == ["auc_countries_null_max", "auc_countries_p"]
    assert data["extra"][0][1][3] == 800 and data["extra"][0][2][0][1][3] == 550
    checks = data["checks"]
    assert checks["dup"] == {"r": 0.85, "target": 0.8, "ok": True,
                             "source": "validate --experiment qk"}  # fmt: skip
    assert checks["classes"]["r"] == pytest.approx(0.55) and checks["classes"]["ok"] is False
    assert checks["classes"]["per_class"] == {"countries": 0.9, "start": 0.2}
    # without a tokenizer the ids are shown as such; without the table there is no QK side
    assert atlas_data(load_results(d))["qk"]["keys"]["1"][0] == "#1"
    assert atlas_data(load_results(make_results(tmp_path / "none", 2, 2)))["qk"] is None


def test_line_in_words_says_a_validated_duplicate_token_head_attends_to_copies(
    tmp_path: Path,
) -> None:
    ok = make_qk(
        make_results(tmp_path / "a", 3, 4), 3, 4, validation=([["recipe", "offsets", 0.9]], [])
    )
    words = atlas_data(load_results(ok))["words"]
    extra = " Attends to earlier copies of the current token (duplicate-token 0.86)."
    assert words[6].endswith(extra)  # (6 % 7) / 7 = 0.857
    assert words[3].endswith(".") and "copies of the current" not in words[3]  # 0.43 < 0.5
    bad = make_qk(
        make_results(tmp_path / "b", 3, 4), 3, 4, validation=([["recipe", "offsets", 0.5]], [])
    )
    assert not any("copies of the current" in w for w in atlas_data(load_results(bad))["words"])


@pytest.mark.parametrize(
    ("name", "inputs", "dup", "classes"),
    [
        ("gemma3-270m", "recipe", (0.78, False), (0.08, False)),  # docs/qk.md: misses both
        ("smollm2", "context", (0.943, True), (0.743, True)),
        ("smollm2", "recipe", (0.806, True), (None, None)),  # classes not measured that way
        ("org/other", "recipe", (None, None), (None, None)),
    ],
)
def test_qk_checks_of_the_packaged_models(
    tmp_path: Path, name: str, inputs: str, dup: Any, classes: Any
) -> None:
    d = make_qk(make_results(tmp_path, 2, 2, name=name), 2, 2, inputs=inputs)
    data = qk_data(load_results(d), decode=lambda ids: [str(t) for t in ids])
    assert data is not None
    got = data["checks"]
    assert (got["dup"]["r"], got["dup"]["ok"]) == dup
    assert (got["classes"]["r"], got["classes"]["ok"]) == classes


def test_embed_json_cannot_end_the_script_element() -> None:
    obj = {"a": [BREAKOUT, EVIL_TOKEN, "-->", "&amp;", "\u2028", "caf\u00e9"]}
    text = embed_json(obj)
    assert json.loads(text) == obj
    for bad in ("</", "<!--", "-->", "<script", "<"):
        assert bad not in text
    assert text.isascii()


def test_atlas_data_is_compact_and_indexed_by_layer_times_heads(tmp_path: Path) -> None:
    results = load_results(make_results(tmp_path, 3, 4, seed=1))
    data = atlas_data(results)
    n = 3 * 4
    assert len(data["label"]) == n and len(data["cats"]) == n
    assert len(data["score"]) == len(data["relations"]) == len(data["supp"])
    row = results.scores.iloc[5]
    r = data["relations"].index(row["relation"])
    i = int(row["layer"]) * 4 + int(row["head"])
    assert data["score"][r][i] == round(row["score"] * 1000)
    assert data["supp"][r][i] == round(row["suppression_score"] * 1000)
    labels = results.categories.set_index(["layer", "head"])["label"]
    assert data["labels"][data["label"][2 * 4 + 3]] == labels[(2, 3)]
    assert data["salient"] == {} and data["descriptions"] == {}


def test_page_is_self_contained_ascii_with_a_strict_csp(tmp_path: Path) -> None:
    d = make_results(tmp_path, 4, 4, relations=RELATIONS, salient=True, tokens=(EVIL_TOKEN,))
    page = render_atlas_html([load_results(d)])
    assert page.isascii()
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", page)
    assert "@import" not in page and "url(" not in page
    assert page.count("</script>") == 2  # ours: the data block and the code block
    assert page.count("<script") == 2
    assert "default-src 'none'" in page and "unsafe-inline" not in page


def test_too_many_models_and_bad_extension(tmp_path: Path) -> None:
    results = load_results(make_results(tmp_path, 2, 4))
    with pytest.raises(TooManyModelsError):
        render_atlas_html([results] * 7)
    parser = argparse.ArgumentParser()
    report_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["report", str(results.directory), "--out", str(tmp_path / "a.txt")])
    with pytest.raises(OutputFormatError, match="html"):
        args.func(args)


def test_cli_writes_default_atlas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = make_results(tmp_path, 2, 4)
    parser = argparse.ArgumentParser()
    report_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["report", str(d)])
    assert args.func(args) == 0
    assert (d / "atlas.html").is_file()
    assert str(d / "atlas.html") in capsys.readouterr().out


def test_atlas_data_carries_the_validation_summary(tmp_path: Path) -> None:
    d = make_results(tmp_path, 2, 4)
    assert atlas_data(load_results(d))["validation"] is None
    summary = make_validation(d)
    v = atlas_data(load_results(d))["validation"]
    assert v["experiments"] == summary["experiments"]
    assert set(v["relations"]) == set(summary["relations"])
    name = "country to capital"
    assert v["relations"][name]["correlative"] == summary["relations"][name]["correlative"]
    assert v["relations"][name]["causal"]["skipped"] == "base accuracy is 0"
    assert v["skipped"] == [[k, w] for k, w in summary["skipped"].items()]
    json.dumps(v, allow_nan=False)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "[1, 2]",
        '{"relations": [1, 2]}',
        "\xff\xfe",
    ],
)
def test_unreadable_validation_summary_gives_no_section(tmp_path: Path, text: str) -> None:
    d = make_results(tmp_path, 2, 4)
    (d / "validation").mkdir()
    (d / "validation" / "summary.json").write_bytes(text.encode("latin-1"))
    assert atlas_data(load_results(d))["validation"] is None
    render_atlas_html([load_results(d)])


def test_odd_validation_values_are_cleaned(tmp_path: Path) -> None:
    d = make_results(tmp_path, 2, 4)
    (d / "validation").mkdir()
    (d / "validation" / "summary.json").write_text(
        '{"relations": {"a": {"category": 3, "correlative": {"relation": {"r_without_context": NaN,'
        ' "p_without_context": "0.1", "r_with_context": true, "n_prompts": 7}, "suppression": 1},'
        ' "causal": {"base_accuracy": Infinity, "controls": ["x"], "m": 4}}, "b": 5},'
        ' "skipped": [1]}'
    )
    v = atlas_data(load_results(d))["validation"]
    a = v["relations"]["a"]
    assert list(v["relations"]) == ["a"] and v["skipped"] == [] and v["experiments"] == []
    assert a["category"] == "" and list(a["correlative"]) == ["relation"]
    corr = a["correlative"]["relation"]
    assert corr["r_without_context"] is None and corr["p_without_context"] is None
    assert corr["r_with_context"] is None and corr["n_prompts"] == 7
    assert a["causal"]["base_accuracy"] is None and a["causal"]["controls"] == ""
    assert a["causal"]["m"] == 4 and a["multi_token"] == {}
    assert "NaN" not in render_atlas_html([load_results(d)])


# ---------------------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_chromium()


@pytest.fixture(scope="module")
def atlas(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[MapResults]]:
    """An atlas of an 80 × 64 model with 20 relations (hostile names included), evidence, null
    columns, one class-level relation, a validation summary of 12 relations plus one unmapped
    relation and dynamic scores of 3, and a toy model with none of these."""
    root = tmp_path_factory.mktemp("atlas")
    big = make_results(
        root, 80, 64, relations=RELATIONS, name="org/Big", seed=3, salient=True,
        descriptions=True, tokens=(EVIL_TOKEN, " Paris", BREAKOUT), evidence=True, null=True,
        class_level=(RELATIONS[2][0],),
    )  # fmt: skip
    make_validation(big, RELATIONS[:12], seed=3, extra=((ONLY_VALIDATED, "Knowledge"),))
    make_dynamic(big, [r for r, _ in RELATIONS[:3]], 80, 64)
    make_qk(
        big,
        80,
        64,
        validation=([["recipe", "offsets", 0.85]], [["countries", 0.9], ["start", 0.2]]),
    )
    n = 80 * 64
    write_parquet_atomic(
        pd.DataFrame({"layer": np.repeat(np.arange(80), 64 * 2), "head": np.tile(np.repeat(np.arange(64), 2), 80),
                      "rank": 64, "other_layer": (np.arange(n * 2) // 2 // 64 + 1) % 80,
                      "other_head": np.tile([3, 4], n), "affinity": np.tile([0.9, 0.4], n),
                      "chance": 0.111}),
        big / OV_AFFINITY,
    )  # fmt: skip
    small = make_results(root, 2, 4, name="tiny", seed=1)
    results = [load_results(big), load_results(small)]
    out = root / "atlas.html"
    out.write_text(render_atlas_html(results))
    return out, results


Page = AtlasPage


@pytest.fixture
def page(browser: Any, atlas: tuple[Path, list[MapResults]]) -> Iterator[Page]:
    opened = Page(browser, atlas[0])
    yield opened
    opened.close()


_fmt = page_score


def _head_scores(results: MapResults, layer: int, head: int) -> Any:
    s = results.scores
    return s[(s["layer"] == layer) & (s["head"] == head)].sort_values("score", ascending=False)


@pytest.mark.browser
def test_loads_from_file_without_network(page: Page, atlas: tuple[Path, list[MapResults]]) -> None:
    size_mb = atlas[0].stat().st_size / 1e6
    print(f"atlas of 5,120 heads x 20 relations: {size_mb:.1f} MB, loaded in {page.load_s:.2f} s")
    assert page.requests, "no request recorded at all"
    for url in page.requests:
        assert url == page.url or url.startswith("data:"), url
    assert page.page.locator("#model-0 .cell").count() == 80 * 64
    assert page.page.locator("#model-1 .cell").count() == 2 * 4
    assert page.load_s < 30  # loose: timings are printed above, not asserted tightly


@pytest.mark.browser
def test_hover_shows_label_and_top_scores(page: Page, atlas: tuple[Path, list[MapResults]]) -> None:
    results = atlas[1][0]
    layer, head = 10, 5
    page.cell(0, layer, head, 64).hover()
    tooltip = page.page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    text = tooltip.inner_text()
    label = results.categories.set_index(["layer", "head"])["label"][(layer, head)]
    assert f"L{layer} H{head}" in text and label in text
    top = _head_scores(results, layer, head).iloc[0]
    first_row = tooltip.locator("tbody tr").first
    assert first_row.locator("td.rel").inner_text() == top["relation"]
    assert first_row.locator("td.score").inner_text() == _fmt(top["score"])
    assert first_row.locator("td.supp").inner_text() == _fmt(top["suppression_score"])
    page.page.mouse.move(1490, 990)
    assert not tooltip.is_visible()


@pytest.mark.browser
def test_click_pins_every_score_and_salient_operations(
    page: Page, atlas: tuple[Path, list[MapResults]]
) -> None:
    results = atlas[1][0]
    layer, head = 33, 17
    page.cell(0, layer, head, 64).click()
    side = page.page.locator("#model-0 aside.side")
    rows = side.locator("table.scores tbody tr")
    assert rows.count() == len(RELATIONS)
    shown = {
        rows.nth(k).locator("td.rel").inner_text(): (
            rows.nth(k).locator("td.score").inner_text(),
            rows.nth(k).locator("td.supp").inner_text(),
        )
        for k in range(rows.count())
    }
    for r in _head_scores(results, layer, head).itertuples():
        assert shown[r.relation] == (_fmt(r.score), _fmt(r.suppression_score))
    assert "What it writes (OV): salient operations" in side.inner_text()
    assert side.locator("ul.salient li").count() == 3
    assert "Description" in side.inner_text()
    # Still pinned after the mouse leaves; a second click unpins.
    page.page.mouse.move(1490, 990)
    assert rows.count() == len(RELATIONS)
    page.cell(0, layer, head, 64).click()
    assert side.locator("table.scores").count() == 0


@pytest.mark.browser
def test_relation_select_recolours_grid_and_suppression_toggle(
    page: Page, atlas: tuple[Path, list[MapResults]]
) -> None:
    results = atlas[1][0]
    data = atlas_data(results)
    r = data["relations"].index("relation 01")
    scores, supp = data["score"][r], data["supp"][r]
    i = next(k for k in range(80 * 64) if abs(scores[k] - supp[k]) > 300)
    cell = page.page.locator(f"#model-0 .cell[data-i='{i}']")
    scale = page.page.locator("#model-0 .scale")
    before = page.background(cell)
    assert not scale.is_visible()
    page.page.select_option("#model-0 .colour-by", str(r))
    after = page.background(cell)
    assert after != before
    assert scale.is_visible() and "relation 01" in scale.inner_text()
    page.page.locator("#model-0 .supp-toggle").check()
    assert page.background(cell) != after
    assert "Suppression" in scale.inner_text()
    page.page.select_option("#model-0 .colour-by", "-1")
    assert page.background(cell) == before


@pytest.mark.browser
def test_category_filters_dim_other_heads(page: Page, atlas: tuple[Path, list[MapResults]]) -> None:
    cats = atlas[1][0].categories
    data = atlas_data(atlas[1][0])
    unclassified = cats[cats["label"] == "Unclassified"].iloc[0]
    classified = cats[cats["label"] != "Unclassified"].iloc[0]
    u = page.cell(0, int(unclassified["layer"]), int(unclassified["head"]), 64)
    c = page.cell(0, int(classified["layer"]), int(classified["head"]), 64)
    opacity = "e => getComputedStyle(e).opacity"
    assert u.evaluate(opacity) == "1"
    page.page.locator("#model-0 input.label-filter[value='Unclassified']").uncheck()
    assert float(u.evaluate(opacity)) < 0.5 and c.evaluate(opacity) == "1"
    shown = page.page.locator("#model-0 .shown").inner_text()
    assert shown.startswith(f"{(cats['label'] != 'Unclassified').sum()} of 5120")
    page.page.locator("#model-0 input.label-filter[value='Unclassified']").check()
    # "Implements Translation": heads without a translation relation dim.
    k = data["categories"].index("Translation")
    page.page.select_option("#model-0 .impl-filter", str(k))
    dimmed = page.page.evaluate(
        "() => Array.from(document.querySelectorAll('#model-0 .cell.dim')).map(e => +e.dataset.i)"
    )
    expected = [i for i in range(80 * 64) if not data["cats"][i] & (1 << k)]
    assert sorted(dimmed) == expected


@pytest.mark.browser
def test_hostile_strings_render_as_text(page: Page, atlas: tuple[Path, list[MapResults]]) -> None:
    p = page.page
    options = p.locator("#model-0 .colour-by option").all_inner_texts()
    assert EVIL_RELATION in options and BREAKOUT in options
    # Pin a head whose salient tokens and mappings carry the payloads.
    p.locator("#model-0 .cell[data-i='0']").click()
    side_text = p.locator("#model-0 aside.side").inner_text()
    assert EVIL_TOKEN in side_text and EVIL_RELATION in side_text
    assert BREAKOUT in side_text and "<b>x</b>" in side_text
    p.locator("#model-0 .cell[data-i='1']").hover()
    p.wait_for_timeout(100)
    assert p.evaluate("document.querySelectorAll('img, b, iframe, object, embed').length") == 0
    assert p.evaluate("document.scripts.length") == 2
    live = p.content()
    assert "<img src" not in live and "<b>x</b>" not in live
    assert page.dialogs == []


@pytest.mark.browser
def test_csp_blocks_scripts_injected_after_load(page: Page) -> None:
    # Defence in depth: only the page's own script (allowed by hash) may run.
    ran = page.page.evaluate(
        """() => { const s = document.createElement('script');
                   s.textContent = 'window.__injected = 1'; document.body.appendChild(s);
                   return window.__injected === 1; }"""
    )
    assert ran is False


@pytest.mark.browser
def test_tabs_switch_models(page: Page) -> None:
    p = page.page
    assert p.locator("#model-0").is_visible() and not p.locator("#model-1").is_visible()
    p.get_by_role("tab", name="tiny").click()
    assert p.locator("#model-1").is_visible() and not p.locator("#model-0").is_visible()
    p.locator("#model-1 .cell[data-i='3']").click()
    assert "L0 H3" in p.locator("#model-1 aside.side").inner_text()
    assert "Salient" not in p.locator("#model-1 aside.side").inner_text()


def _num(x: float | None) -> str:
    """How the page writes a validation number."""
    return "\u2013" if x is None else f"{x:.3f}"


def _pval(p: float | None) -> str:
    return "\u2013" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


@pytest.mark.browser
def test_choosing_a_relation_shows_its_validation(
    page: Page, atlas: tuple[Path, list[MapResults]]
) -> None:
    p = page.page
    results = atlas[1][0]
    summary = json.loads((results.directory / "validation" / "summary.json").read_text())
    relations = atlas_data(results)["relations"]
    panel = p.locator("#model-0 .validation-panel")
    assert not panel.is_visible()  # coloured by label: nothing to show
    p.select_option("#model-0 .colour-by", str(relations.index(EVIL_RELATION)))
    assert panel.is_visible()
    assert EVIL_RELATION in panel.locator(".vtitle").inner_text()
    entry = summary["relations"][EVIL_RELATION]
    for exp, kind in [
        ("correlative", "relation"),
        ("correlative", "suppression"),
        ("multi_token", "relation"),
        ("multi_token", "suppression"),
    ]:
        c = entry[exp][kind]
        row = panel.locator(f"tr.{exp}-{kind}")
        assert row.locator("td.r-without").inner_text() == _num(c["r_without_context"])
        assert row.locator("td.p-without").inner_text() == _pval(c["p_without_context"])
        assert row.locator("td.r-with").inner_text() == _num(c["r_with_context"])
        assert row.locator("td.p-with").inner_text() == _pval(c["p_with_context"])
        assert row.locator("td.n-prompts").inner_text() == str(c["n_prompts"])
    causal = entry["causal"]
    text = panel.inner_text()
    assert (
        f"accuracy {_num(causal['base_accuracy'])} \u2192 {_num(causal['accuracy_relation_heads'])}"
        in text
    )
    random = f"{_num(causal['accuracy_random_mean'])} \u00b1 {_num(causal['accuracy_random_sd'])}"
    assert random in text
    assert f"{_num(causal['control_base_accuracy'])} \u2192" in text
    assert f"Controls ({RELATIONS[11][0]}, {RELATIONS[0][0]})" in text
    # Null r values (a constant side) and a skipped ablation.
    p.select_option("#model-0 .colour-by", str(relations.index(RELATIONS[1][0])))
    assert panel.locator("tr.correlative-relation td.r-without").inner_text() == "\u2013"
    assert "No control relation" in panel.inner_text()
    p.select_option("#model-0 .colour-by", str(relations.index(RELATIONS[2][0])))
    assert "skipped (base accuracy is 0)" in panel.inner_text()
    p.select_option("#model-0 .colour-by", str(relations.index(RELATIONS[12][0])))
    assert "not validated" in panel.inner_text()  # the summary covers relations 00-11
    p.select_option("#model-0 .colour-by", "-1")
    assert not panel.is_visible()
    assert p.evaluate("document.querySelectorAll('img, b, i, iframe').length") == 0


@pytest.mark.browser
def test_validation_section_lists_every_relation_collapsed(
    page: Page, atlas: tuple[Path, list[MapResults]]
) -> None:
    p = page.page
    results = atlas[1][0]
    summary = json.loads((results.directory / "validation" / "summary.json").read_text())
    details = p.locator("#model-0 details.validation")
    assert details.count() == 1 and details.get_attribute("open") is None
    rows = details.locator("tbody tr")
    assert not rows.first.is_visible()
    details.locator("summary").click()
    assert rows.count() == len(summary["relations"])
    shown = {
        rows.nth(k).locator("td.rel").inner_text(): (
            rows.nth(k).locator("td.r-without").inner_text(),
            rows.nth(k).locator("td.drop-relation").inner_text(),
            rows.nth(k).locator("td.drop-random").inner_text(),
        )
        for k in range(rows.count())
    }
    for name, entry in summary["relations"].items():
        c, a = entry["correlative"]["relation"], entry["causal"]
        expected = (_num(c["r_without_context"]), _num(a["drop_relation_heads"]))
        assert shown[name] == (*expected, _num(a["drop_random_mean"]))
    assert EVIL_RELATION in shown and BREAKOUT in shown and ONLY_VALIDATED in shown
    assert "<b>few</b>" in details.inner_text()
    # A row of a mapped relation colours the grid by it.
    rows.filter(has_text="relation 05").first.click()
    assert p.locator("#model-0 .colour-by").input_value() == str(
        atlas_data(results)["relations"].index("relation 05")
    )
    assert "relation 05" in p.locator("#model-0 .validation-panel .vtitle").inner_text()
    assert p.evaluate("document.querySelectorAll('img, b, i, iframe').length") == 0
    assert page.dialogs == []


@pytest.mark.browser
def test_model_without_validation_has_no_validation_section(page: Page) -> None:
    p = page.page
    p.get_by_role("tab", name="tiny").click()
    p.select_option("#model-1 .colour-by", "1")
    assert p.locator("#model-1 .validation-panel").count() == 0
    assert p.locator("#model-1 details.validation").count() == 0
    assert "Validation" not in p.locator("#model-1").inner_text()


# ---------------------------------------------------------------------------- head pages


def _labelled_head(results: MapResults, relation: str) -> tuple[int, int]:
    """A head scoring ≥ 0.3 on ``relation`` (so it has evidence), away from the edges."""
    s = results.scores
    rows = s[(s["relation"] == relation) & (s["score"] >= 0.3) & (s["layer"].between(1, 78))]
    row = rows[rows["head"].between(1, 62)].iloc[0]
    return int(row["layer"]), int(row["head"])


def test_head_page_data_without_extras_is_empty(tmp_path: Path) -> None:
    data = atlas_data(load_results(make_results(tmp_path, 2, 4)))
    assert data["evidence"] == {} and data["null"] is None and data["dynamic"] is None
    assert data["qk"] is None and data["alike_ov"] is None
    assert data["class_level"] == [] and len(data["words"]) == 8 and len(data["similar"]) == 8


def test_head_page_data_carries_evidence_null_and_dynamic(tmp_path: Path) -> None:
    relation = DEFAULT_RELATIONS[2][0]
    d = make_results(tmp_path, 3, 4, evidence=True, null=True, class_level=(relation,))
    make_dynamic(d, [relation], 3, 4)
    results = load_results(d)
    data = atlas_data(results)
    r = data["relations"].index(relation)
    assert data["class_level"] == [relation]
    s = results.scores
    row = s[s["relation"] == relation].iloc[7]
    i = int(row["layer"]) * 4 + int(row["head"])
    assert data["null"]["max"][r][i] == round(row["null_max"] * 1000)
    assert data["null"]["p"][r][i] == round(row["p_value"] * 10000)
    assert data["null"]["z"][r][i] == round(row["z"] * 100)
    # dynamic: the mean of the two templates (see make_dynamic)
    assert data["dynamic"]["relations"] == [r]
    assert data["dynamic"]["without"][0][i] == round(((i % 10) / 10 + 0.05) * 1000)
    assert data["dynamic"]["with"][0][i] == round(((i % 10) / 10 + 0.05) * 500)
    evidence = pd.read_parquet(d / EVIDENCE)
    for key, pairs in data["evidence"].items():
        layer, head = divmod(int(key), 4)
        mine = evidence[(evidence["layer"] == layer) & (evidence["head"] == head)]
        for rel, kind in {(p[0], p[1]) for p in pairs}:
            group = [p for p in pairs if (p[0], p[1]) == (rel, kind)]
            want = mine[
                (mine["relation"] == data["relations"][rel]) & (mine["kind"] == KINDS[kind])
            ]
            assert len(group) == min(len(want), MAX_PAIRS_PER_RELATION)
            assert [p[4] for p in group] == sorted((p[4] for p in group), reverse=True)
    assert sum(len(v) for v in data["evidence"].values()) == len(evidence)


def test_evidence_with_missing_columns_is_a_results_error(tmp_path: Path) -> None:
    d = make_results(tmp_path, 2, 4)
    pd.DataFrame({"layer": [0], "head": [0]}).to_parquet(d / EVIDENCE)
    with pytest.raises(ResultsError, match="lacks column"):
        atlas_data(load_results(d))


def test_similar_heads_match_a_brute_force_cosine() -> None:
    rng = np.random.default_rng(0)
    score, supp = rng.random((5, 30)), rng.random((5, 30))
    score[:, 4] = np.nan
    supp[:, 4] = 0  # head 4: all missing or zero, so it has no neighbours and is nobody's
    got = similar_heads(score, supp, k=3)
    v = np.nan_to_num(np.concatenate([score, supp]).T)
    assert got[4] == []
    for i in (0, 7, 29):
        cos = [
            (float(v[i] @ v[j] / np.linalg.norm(v[i]) / np.linalg.norm(v[j])), j)
            for j in range(30)
            if j not in (i, 4)
        ]
        best = sorted(cos, reverse=True)[:3]
        assert got[i][0::2] == [j for _, j in best]
        assert got[i][1::2] == [round(c * 1000) for c, _ in best]


@pytest.mark.browser
def test_pinned_head_shows_words_evidence_null_dynamic_and_alike(
    page: Page, atlas: tuple[Path, list[MapResults]]
) -> None:
    results = atlas[1][0]
    data = atlas_data(results)
    relation = RELATIONS[2][0]  # class-level, validated with dynamic scores, has evidence
    layer, head = _labelled_head(results, relation)
    i = layer * 64 + head
    page.cell(0, layer, head, 64).click()
    side = page.page.locator("#model-0 aside.side")
    assert side.locator("p.words").inner_text() == data["words"][i]
    assert relation.split(" ")[0] in data["words"][i] or "class-level" in data["words"][i]
    row = side.locator("table.scores tbody tr").filter(has_text=relation).first
    s = results.scores
    cell = s[(s["layer"] == layer) & (s["head"] == head) & (s["relation"] == relation)].iloc[0]
    assert row.locator("td.null-max").inner_text() == _fmt(cell["null_max"])
    assert row.locator("td.p-value").inner_text() == _pval(round(cell["p_value"] * 1e4) / 1e4)
    assert "class-level" in (row.get_attribute("class") or "")
    assert "class-level relation" in side.inner_text()
    dyn = (i % 10) / 10 + 0.05
    assert row.locator("td.dyn-without").inner_text() == _fmt(dyn)
    assert row.locator("td.dyn-with").inner_text() == _fmt(dyn / 2)
    other = side.locator("table.scores tbody tr").filter(has_text=RELATIONS[15][0]).first
    assert other.locator("td.dyn-without").inner_text() == "\u2013"  # not validated
    # Evidence: every kept pair, with its mark, source and top tokens as text.
    groups: dict[tuple[int, int], list[Any]] = {}
    for e in data["evidence"][str(i)]:
        groups.setdefault((e[0], e[1]), []).append(e)

    def value(g: tuple[int, int]) -> int:
        return int((data["supp"] if g[1] else data["score"])[g[0]][i])

    order = sorted(groups, key=lambda g: (-value(g), g[1], g[0]))  # best score first
    evidence = [e for g in order for e in groups[g]]
    assert side.locator(".evidence .ev-rel").all_inner_texts() == [
        ("suppresses " if g[1] else "") + f"{data['relations'][g[0]]} ({value(g) / 1000:.3f})"
        for g in order
    ]
    items = side.locator(".evidence li")
    assert items.count() == len(evidence)
    marks = items.locator(".mark").all_inner_texts()
    assert marks == ["\u2713" if e[4] else "\u2717" for e in evidence]
    first = items.first.locator(".tok").all_inner_texts()
    assert first[0] == evidence[0][2] and first[1 : 1 + len(evidence[0][6])] == evidence[0][6]
    # Most alike heads: listed with their cosine; clicking one pins it.
    alike = data["similar"][i]
    links = side.locator("ul.similar button.head-link")
    assert links.count() == len(alike) // 2 == 5
    j = alike[0]
    assert links.first.inner_text() == f"L{j // 64} H{j % 64}"
    links.first.click()
    assert side.locator(".head-title").inner_text() == f"L{j // 64} H{j % 64}"


@pytest.mark.browser
def test_pinned_head_shows_what_it_reads_and_alike_by_ov_subspace(page: Page) -> None:
    layer, head = 2, 5
    i = layer * 64 + head
    page.cell(0, layer, head, 64).click()
    side = page.page.locator("#model-0 aside.side")
    qk = side.locator(".qk")
    assert "What it reads (QK" in qk.locator("h3").inner_text()
    assert "recipe inputs, rotary offsets" in qk.locator("h3").inner_text()
    dup = qk.locator("tr.qk-dup")
    assert dup.locator("td.score").inner_text() == _fmt((i % 7) / 7)
    assert "validated" in (dup.get_attribute("class") or "").split()
    assert dup.locator("td.status").inner_text() == (
        "validated: r 0.85 \u2265 0.80 (this map's validate --experiment qk)"
    )
    rows = qk.locator("tr.qk-extra")
    assert rows.count() == 2
    countries = rows.filter(has_text="auc_countries")
    assert countries.locator("td.score").inner_text() == _fmt(0.5 + (i % 5) / 10)
    assert countries.locator("td.more").inner_text() == (
        "auc_countries_null_max 0.550, auc_countries_p 0.250"
    )
    # the classes' mean r (0.55) misses 0.7: every class column is unvalidated here
    assert (
        countries.locator("td.status").inner_text().startswith("unvalidated on this model: r 0.55")
    )
    start = rows.filter(has_text="auc_start")
    assert "unvalidated" in start.locator("td.status").inner_text()
    assert "not used for labels" in qk.locator("p.qk-note").inner_text()
    assert qk.locator(".qk-keys .tok").all_inner_texts() == [f"#{i + t}" for t in range(8)]
    assert qk.locator(".qk-queries .tok").all_inner_texts() == [f"#{i + 100 + t}" for t in range(3)]
    # most alike by OV subspace affinity, best first, with the chance level
    alike = side.locator("ul.alike-ov li")
    assert alike.count() == 2
    assert "chance 0.111" in side.inner_text()
    assert alike.first.inner_text().split() == [f"L{layer + 1}", "H3", "0.900"]
    alike.first.locator("button.head-link").click()
    assert side.locator(".head-title").inner_text() == f"L{layer + 1} H3"


@pytest.mark.browser
def test_search_finds_qk_salient_keys(page: Page) -> None:
    search = page.page.locator("#model-0 input.search")
    search.fill("#5")
    items = page.page.locator("#model-0 ul.search-results li")
    assert items.count() >= 1 and "reads (QK keys)" in items.first.inner_text()


@pytest.mark.browser
def test_arrow_keys_move_between_heads(page: Page) -> None:
    p = page.page
    side = p.locator("#model-0 aside.side .head-title")
    page.cell(0, 10, 5, 64).click()
    for key, expected in [
        ("ArrowRight", "L11 H5"),
        ("ArrowUp", "L11 H6"),
        ("ArrowDown", "L11 H5"),
        ("ArrowDown", "L11 H4"),
        ("ArrowLeft", "L10 H4"),
    ]:
        p.keyboard.press(key)
        assert side.inner_text() == expected, key
    assert p.locator("#model-0 .cell.pinned").get_attribute("data-i") == str(10 * 64 + 4)
    page.cell(0, 0, 0, 64).click()
    p.keyboard.press("ArrowLeft")
    p.keyboard.press("ArrowDown")
    assert side.inner_text() == "L0 H0"  # clamped at the edges
    p.locator("#model-0 input.search").click()
    p.keyboard.press("ArrowRight")  # typing in the search box moves the caret, not the head
    assert side.inner_text() == "L0 H0"


@pytest.mark.browser
def test_search_finds_heads_relations_and_tokens(
    page: Page, atlas: tuple[Path, list[MapResults]]
) -> None:
    p = page.page
    data = atlas_data(atlas[1][0])
    search = p.locator("#model-0 input.search")
    results = p.locator("#model-0 ul.search-results")
    search.fill("l12h2")
    search.press("Enter")
    assert p.locator("#model-0 aside.side .head-title").inner_text() == "L12 H2"
    search.fill("relation_05")
    r = data["relations"].index("relation 05")
    results.locator("button.rel-link").first.click()
    assert p.locator("#model-0 .colour-by").input_value() == str(r)
    best = max(range(80 * 64), key=lambda k: (data["score"][r][k], -k))
    assert (
        results.locator("button.head-link")
        .first.inner_text()
        .startswith(f"L{best // 64} H{best % 64} ")
    )
    search.fill("paris")  # salient token " Paris", case and spaces ignored
    hits = results.locator("button.head-link")
    assert 0 < hits.count() <= 12
    j = int(hits.first.get_attribute("data-i") or -1)
    assert any(op[0].strip() == "Paris" for op in data["salient"][str(j)]) or any(
        e[2].strip().lower() == "paris" for e in data["evidence"].get(str(j), [])
    )
    search.fill(EVIL_TOKEN)
    assert "nothing matches" not in results.inner_text()
    search.fill("zzz-no-such-thing")
    assert results.inner_text() == "nothing matches"
    assert p.evaluate("document.querySelectorAll('img, b, iframe').length") == 0


@pytest.mark.browser
def test_deep_links_open_a_head_and_follow_the_pin(
    browser: Any, atlas: tuple[Path, list[MapResults]]
) -> None:
    opened = AtlasPage(browser, atlas[0], "#tiny/L1H3")
    p = opened.page
    try:
        assert p.locator("#model-1").is_visible() and not p.locator("#model-0").is_visible()
        assert p.locator("#model-1 aside.side .head-title").inner_text() == "L1 H3"
        p.evaluate("location.hash = '#org/Big/L12H2'")
        p.wait_for_function("document.querySelector('#model-0').classList.contains('active')")
        assert p.locator("#model-0 aside.side .head-title").inner_text() == "L12 H2"
        # by results folder name too
        p.evaluate("location.hash = '#tiny/L0H1'")
        p.wait_for_function("document.querySelector('#model-1').classList.contains('active')")
        assert p.locator("#model-1 aside.side .head-title").inner_text() == "L0 H1"
        # pinning (click, keys) writes the head into the address
        p.locator("#model-1 .cell[data-i='2']").click()
        assert p.evaluate("location.hash") == "#tiny/L0H2"
        p.keyboard.press("ArrowRight")
        assert p.evaluate("location.hash") == "#tiny/L1H2"
        p.evaluate("location.hash = '#nonsense/L99H99'")
        p.wait_for_timeout(50)
        assert p.locator("#model-1 aside.side .head-title").inner_text() == "L1 H2"
    finally:
        opened.close()


@pytest.mark.browser
def test_head_page_without_extras_degrades(page: Page) -> None:
    p = page.page
    p.get_by_role("tab", name="tiny").click()
    p.locator("#model-1 .cell[data-i='5']").click()
    side = p.locator("#model-1 aside.side")
    text = side.inner_text()
    assert "Evidence" not in text and "null max" not in text and "dyn." not in text
    assert "class-level" not in text
    assert "What it reads" not in text and "OV subspace" not in text
    assert side.locator("p.words").count() == 1
    assert side.locator("ul.similar li").count() > 0


def test_evidence_keeps_wrong_pairs_beside_many_right_ones(tmp_path: Path) -> None:
    results = load_results(make_results(tmp_path, 2, 4))
    relation = DEFAULT_RELATIONS[0][0]
    rows = [
        ("m", 1, 2, relation, f"s{j}", f"t{j}", j % 3 != 0, 1 + j, [f"t{j}"], "relation")
        for j in range(12)  # 8 right, 4 wrong, interleaved
    ]
    table = pd.DataFrame(rows, columns=list(EVIDENCE_COLUMNS))
    pairs = evidence_by_head(table, results, [relation])[str(1 * 4 + 2)]
    right = [p[2] for p in pairs if p[4]]
    wrong = [p[2] for p in pairs if not p[4]]
    n_wrong = MAX_WRONG_PER_RELATION
    assert right == ["s1", "s2", "s4", "s5", "s7", "s8"][: MAX_PAIRS_PER_RELATION - n_wrong]
    assert wrong == ["s0", "s3", "s6", "s9"][:n_wrong]
    assert [p[4] for p in pairs] == [1] * len(right) + [0] * len(wrong)
