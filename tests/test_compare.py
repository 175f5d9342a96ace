"""``headatlas diff`` and the cross-model views, on real maps of tiny random models: two
checkpoints of one model (hub revisions in a local hub cache) and a model of another family."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from fake_hub import add_revision
from tiny_models import gpt2_tokenizer, save_tiny, tiny_model

from headatlas import MapOptions, MapResults, load_results, map_heads
from headatlas.cli.main import main
from headatlas.compare import diff_maps
from headatlas.compare.cross_model import checkpoint_evolution, depth_profile, relation_by_model
from headatlas.compare.diff import IncomparableMapsError
from headatlas.report.sweep_views import write_sweep_views
from headatlas.sweep.ledger import write_combined
from headatlas.sweep.spec import SweepEntry

RELATIONS = ["copying", "country_capital", "english_french"]
HUB = "tiny-org/ckpt"
STEPS = ("step100", "step2000")
# Random weights rank targets at random: with k = 5000 of 50257 a score is about 0.1 give or
# take a few hundredths, so at a 0.1 threshold heads differ between checkpoints.
OPTIONS = MapOptions(k=5000)
THRESHOLD = 0.1


def _gpt2(seed: int, n_layer: int = 2) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=50257, n_embd=64, n_layer=n_layer, n_head=4, n_positions=64)
    return GPT2LMHeadModel(cfg).eval()


def _save(model: torch.nn.Module, folder: Path) -> Path:
    save_tiny(model, folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def maps(tmp_path_factory: pytest.TempPathFactory) -> dict[str, MapResults]:
    root = tmp_path_factory.mktemp("compare")
    cache = root / "hub-cache"
    for i, step in enumerate(STEPS):
        add_revision(cache, HUB, step, _save(_gpt2(40 + i), root / step))
    out = root / "store"
    found: dict[str, MapResults] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_CACHE", str(cache))
        mp.setenv("HF_HUB_OFFLINE", "1")
        for step in STEPS:
            found[step] = map_heads(
                f"{HUB}@{step}", RELATIONS, options=OPTIONS, out=out, progress=False
            )
    found["pythia"] = map_heads(
        str(_save(tiny_model("pythia-parallel"), root / "pythia")), RELATIONS, options=OPTIONS,
        out=out, progress=False,
    )  # fmt: skip
    found["deeper"] = map_heads(
        str(_save(_gpt2(50, n_layer=3), root / "deeper")), RELATIONS, options=OPTIONS, out=out,
        progress=False,
    )  # fmt: skip
    return found


def test_diff_lists_gained_and_lost_heads_from_the_scores(maps: dict[str, MapResults]) -> None:
    a, b = maps["step100"], maps["step2000"]
    d = diff_maps(a, b, THRESHOLD)
    assert len(d.heads) == len(a.scores) == len(b.scores)
    row = d.heads.set_index(["relation", "layer", "head"])
    for _, s in a.scores.iterrows():
        r = row.loc[(s["relation"], s["layer"], s["head"])]
        assert r["score_a"] == s["score"]
        assert r["delta"] == pytest.approx(r["score_b"] - r["score_a"])
        expect = {
            (True, True): "kept", (False, True): "gained", (True, False): "lost",
            (False, False): "none",
        }[(r["score_a"] >= THRESHOLD, r["score_b"] >= THRESHOLD)]  # fmt: skip
        assert r["change"] == expect
    summary = d.summary().set_index("relation")
    for rel in RELATIONS:
        sa = a.scores[a.scores["relation"] == rel]
        sb = b.scores[b.scores["relation"] == rel]
        assert summary.loc[rel, "heads_a"] == (sa["score"] >= THRESHOLD).sum()
        assert summary.loc[rel, "heads_b"] == (sb["score"] >= THRESHOLD).sum()
        assert summary.loc[rel, "heads_b"] - summary.loc[rel, "heads_a"] == (
            summary.loc[rel, "n_gained"] - summary.loc[rel, "n_lost"]
        )
        assert summary.loc[rel, "max_b"] == sb["score"].max()
    assert set(d.heads["change"]) >= {"gained", "lost", "none"}  # the test can see each case
    assert diff_maps(a, b).threshold == OPTIONS.threshold  # default: A's own threshold


def test_diff_refuses_maps_of_different_shapes(maps: dict[str, MapResults]) -> None:
    with pytest.raises(IncomparableMapsError, match=r"2x4 heads .* 3x4") as err:
        diff_maps(maps["step100"], maps["deeper"])
    assert "\n" not in str(err.value)


def test_cli_diff_prints_table_and_writes_figure_and_table(
    maps: dict[str, MapResults], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = maps["step100"].directory, maps["step2000"].directory
    table = tmp_path / "heads.csv"
    fig = tmp_path / "diff.svg"
    args = ["diff", str(a), str(b), "--threshold", "0.11", "--table", str(table)]
    assert main([*args, "--figure", str(fig)]) == 0
    out = capsys.readouterr().out
    assert "ckpt@step100 -> ckpt@step2000" in out
    assert all(rel in out for rel in RELATIONS)
    written = pd.read_csv(table)
    expect = diff_maps(maps["step100"], maps["step2000"], 0.11).heads
    pd.testing.assert_frame_equal(written, expect, check_dtype=False)
    assert fig.read_text().lstrip().startswith("<?xml")
    assert main(["diff", str(a), str(maps["deeper"].directory)]) == 2
    assert "diff compares maps of one architecture" in capsys.readouterr().err


@pytest.fixture(scope="module")
def combined(maps: dict[str, MapResults]) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    finished = [(SweepEntry(HUB, s), str(maps[s].directory)) for s in STEPS]
    finished.append((SweepEntry(str(maps["pythia"].directory)), str(maps["pythia"].directory)))
    out = maps["pythia"].directory.parent
    paths = write_combined(out, finished)
    assert paths is not None
    folders = {e.spec: d for e, d in finished}
    written = write_sweep_views(out / "sweep", folders, THRESHOLD)
    return pd.read_parquet(paths[0]), pd.read_parquet(paths[1]), written[-1]


def test_relation_by_model_matches_each_map(
    maps: dict[str, MapResults], combined: tuple[pd.DataFrame, pd.DataFrame, Path]
) -> None:
    scores = combined[0]
    best, count = relation_by_model(scores, THRESHOLD)
    assert list(best.columns) == [f"{HUB}@{s}" for s in STEPS] + [str(maps["pythia"].directory)]
    for step in STEPS:
        own = maps[step].scores.groupby("relation")["score"]
        for rel in RELATIONS:
            assert best.loc[rel, f"{HUB}@{step}"] == own.max()[rel]
            assert count.loc[rel, f"{HUB}@{step}"] == (own.get_group(rel) >= THRESHOLD).sum()


def test_depth_profile_shares_count_heads(
    maps: dict[str, MapResults], combined: tuple[pd.DataFrame, pd.DataFrame, Path]
) -> None:
    cats = combined[1]
    prof = depth_profile(cats, bins=2)
    entry = f"{HUB}@step100"
    own = maps["step100"].categories
    for category in prof["category"].unique():
        for layer, b in ((0, 0), (1, 1)):  # 2 layers: relative depth 0 and 1
            heads = own[own["layer"] == layer]
            expect = (
                heads["categories"].str.split(",").apply(lambda c, cat=category: cat in c).mean()
            )
            got = prof[(prof["entry"] == entry) & (prof["category"] == category)]
            assert got[got["bin"] == b]["share"].iloc[0] == pytest.approx(expect)
    assert prof["share"].between(0, 1).all()


def test_checkpoint_evolution_follows_the_top_head(
    maps: dict[str, MapResults], combined: tuple[pd.DataFrame, pd.DataFrame, Path]
) -> None:
    evo = checkpoint_evolution(combined[0], top=1)
    assert set(evo["model"]) == {HUB}  # the pythia folder has no steps
    assert sorted(evo["step"].unique()) == [100, 2000]
    for step, name in ((100, "step100"), (2000, "step2000")):
        got = evo[evo["step"] == step].set_index("relation")["score"]
        own = maps[name].scores.groupby("relation")["score"].max()
        pd.testing.assert_series_equal(got.sort_index(), own.sort_index(), check_names=False)


def test_sweep_page_is_self_contained(
    combined: tuple[pd.DataFrame, pd.DataFrame, Path], maps: dict[str, MapResults]
) -> None:
    page = combined[2]
    text = page.read_text()
    assert text.isascii()
    assert "default-src 'none'" in text
    assert len(re.findall(r'<img alt="[^"]*" src="data:image/png;base64,', text)) == 3
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    for name in ("relations_by_model.png", "depth_profile.png", "checkpoint_evolution.png"):
        assert (page.parent / name).stat().st_size > 1000
    assert "ckpt@step2000" in text
    links = re.findall(r'<a href="\.\./([^"]+)/">', text)
    assert len(links) == 3
    for link in links:  # every map's row links its results folder
        assert load_results(page.parent.parent / link).n_layers == 2


@pytest.mark.browser
def test_sweep_page_renders_in_chromium_without_csp_errors(
    combined: tuple[pd.DataFrame, pd.DataFrame, Path],
) -> None:
    from report_fixtures import launch_chromium

    browser_gen = launch_chromium()
    browser = next(browser_gen)
    try:
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(combined[2].as_uri())
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        assert len(widths) == 3 and all(w > 100 for w in widths)
        # The page's own stylesheet applied (allowed by its hash): table cells have borders.
        border = page.eval_on_selector("td", "e => getComputedStyle(e).borderTopStyle")
        assert border == "solid"
        assert not errors, errors
    finally:
        next(browser_gen, None)  # runs the generator to its end: closes Chromium
