"""Evidence kept by the map (issue 20): per (head, relation) scoring at least the threshold, the
pairs the head gets right and a sample it gets wrong, with its top tokens and the target's
rank, checked against the plain per-head reference; reused, recomputed and resumed like the
scores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from tiny_models import gpt2_tokenizer, save_tiny, tiny_model

from headatlas.circuits import ModelCircuits
from headatlas.scoring.mapping import map_heads
from headatlas.scoring.options import MapOptions
from headatlas.scoring.plan import source_embeddings
from headatlas.scoring.reference import reference_rows
from headatlas.store import EVIDENCE, EVIDENCE_COLUMNS, load_results, model_slug

OPTS = MapOptions(k=2000, threshold=0.04, evidence_right=4, evidence_wrong=3)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    save_tiny(tiny_model("gpt2"), folder)
    gpt2_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def mapped(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    out = tmp_path_factory.mktemp("out")
    return map_heads(ModelCircuits.load(folder), ["copying"], options=OPTS, out=out, progress=False)


def test_evidence_schema_and_bounds(mapped: Any) -> None:
    ev = mapped.evidence
    assert list(ev.columns) == list(EVIDENCE_COLUMNS)
    on_disk = pd.read_parquet(mapped.directory / EVIDENCE)
    assert len(on_disk) == len(ev) == mapped.manifest["evidence"]["rows"] > 0
    assert set(ev["kind"]) <= {"relation", "suppression"}
    assert ev["target_rank"].ge(1).all() and ev["correct"].dtype == bool
    assert all(len(t) == 5 and all(isinstance(x, str) for x in t) for t in on_disk["top_tokens"])
    s = mapped.scores.set_index(["layer", "head", "relation"])
    for (layer, head, rel, kind), g in ev.groupby(["layer", "head", "relation", "kind"]):
        row = s.loc[(layer, head, rel)]
        score = row["score"] if kind == "relation" else row["suppression_score"]
        assert score >= OPTS.threshold  # only cells at the threshold keep evidence
        right, wrong = int(g["correct"].sum()), int((~g["correct"]).sum())
        n_right = round(score * row["n_pairs"])
        assert right == min(OPTS.evidence_right, n_right)  # the kernel's count agrees
        assert wrong == min(OPTS.evidence_wrong, row["n_pairs"] - n_right)
        assert (g["correct"] == (g["target_rank"] <= row["k"])).all()
    # Every cell at the threshold has evidence.
    cells = mapped.scores[mapped.scores["score"] >= OPTS.threshold]
    kept = ev[ev["kind"] == "relation"].groupby(["layer", "head", "relation"]).size()
    assert len(kept) == len(cells)


def test_evidence_ranks_and_top_tokens_match_the_plain_reference(folder: Path, mapped: Any) -> None:
    circuits = ModelCircuits.load(folder)
    tok = circuits.tokenizer
    ev = mapped.evidence
    checked = exact = 0
    for (layer, head, kind), g in ev.groupby(["layer", "head", "kind"]):
        g = g.head(6)
        src = torch.tensor([tok.encode(s, add_special_tokens=False)[0] for s in g["source"]])
        tgt = torch.tensor([tok.encode(t, add_special_tokens=False)[0] for t in g["target"]])
        X = source_embeddings(circuits, src, OPTS)[min(int(layer), 1)]
        rows = reference_rows(circuits, circuits.layer(int(layer)), int(head), X, OPTS)
        t = rows.gather(1, tgt[:, None])
        if kind == "relation":
            rank = (rows >= t).sum(1)
            best = rows.topk(5, dim=1).indices
        else:
            rank = (rows < t).sum(1) + 1
            best = rows.topk(5, dim=1, largest=False).indices
        # float32 factored (the map) vs float64 plain (the reference): a competitor within
        # rounding of the target may fall on either side.
        diff = (torch.tensor(g["target_rank"].tolist()) - rank).abs()
        assert diff.max() <= 2
        exact += int((diff == 0).sum())
        expected = [[tok.decode([i]) for i in b] for b in best.tolist()]
        assert [list(x) for x in g["top_tokens"]] == expected
        checked += len(g)
    assert checked > 10 and exact >= 0.8 * checked


def test_evidence_is_reused_then_recomputed_for_other_limits(
    folder: Path, mapped: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    out = mapped.directory.parent
    again = map_heads(
        ModelCircuits.load(folder), ["copying"], options=OPTS, out=out, progress=False
    )
    assert again.manifest["timings"]["layers_computed"] == 0
    assert again.manifest["timings"]["evidence_s"] == 0
    pd.testing.assert_frame_equal(again.evidence, mapped.evidence)
    # Another threshold relabels the reused scores and recomputes only the evidence.
    lower = MapOptions(k=2000, threshold=0.0, evidence_right=4, evidence_wrong=3)
    low = map_heads(ModelCircuits.load(folder), ["copying"], options=lower, out=out, progress=False)
    assert low.manifest["timings"]["layers_computed"] == 0
    assert len(low.evidence) > len(mapped.evidence)
    assert low.manifest["evidence"]["limits"]["threshold"] == 0.0
    pd.testing.assert_frame_equal(load_results(low.directory).evidence, low.evidence)
    fresh = map_heads(ModelCircuits.load(folder), ["copying"], options=lower, progress=False)
    pd.testing.assert_frame_equal(fresh.evidence, low.evidence)


def test_evidence_resumes_with_the_layers(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import headatlas.scoring.mapping as mapping

    original = mapping.layer_evidence
    calls: list[int] = []

    def stop_in_layer_1(*args: Any, **kw: Any) -> Any:
        if args[1] == 1:
            raise KeyboardInterrupt
        calls.append(args[1])
        return original(*args, **kw)

    monkeypatch.setattr(mapping, "layer_evidence", stop_in_layer_1)
    with pytest.raises(KeyboardInterrupt):
        map_heads(
            ModelCircuits.load(folder), ["copying"], options=OPTS, out=tmp_path, progress=False
        )
    monkeypatch.setattr(mapping, "layer_evidence", original)
    partial = tmp_path / model_slug(str(folder)) / "partial"
    assert len(list(partial.rglob("evidence_0000-*.parquet"))) == 1
    # Layer 1's scores were saved before its evidence: only its evidence is recomputed.
    res = map_heads(
        ModelCircuits.load(folder), ["copying"], options=OPTS, out=tmp_path, progress=False
    )
    assert res.manifest["timings"]["layers_computed"] == 0
    fresh = map_heads(ModelCircuits.load(folder), ["copying"], options=OPTS, progress=False)
    pd.testing.assert_frame_equal(res.evidence, fresh.evidence)
    pd.testing.assert_frame_equal(res.scores, fresh.scores)
