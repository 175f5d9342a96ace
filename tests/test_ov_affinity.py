"""OV subspace affinity (report/ov_affinity.py) on tiny models: exact against principal angles
of the dense W_V·W_O·diag(g), and 1 for two heads that share a subspace by construction."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from report_fixtures import make_results
from tiny_models import tiny_model

from headatlas.circuits import ModelCircuits
from headatlas.report.atlas_html import atlas_data
from headatlas.report.ov_affinity import (
    AFFINITY_COLUMNS,
    OV_AFFINITY,
    alike_by_head,
    model_affinity,
    top_alike,
    write_ov_affinity,
)
from headatlas.store import load_results


def _dense_affinity(c: ModelCircuits) -> np.ndarray:
    """Mean squared cosine of the principal angles of the dense OV matrices' row spaces."""
    spaces = []
    for ov in c.layers():
        g = ov.out_gain(ov.W_O.shape[-1]).double()
        for h in range(ov.n_heads):
            M = (ov.head_W_V(h).double() @ ov.W_O[h].double() * g).numpy()
            spaces.append(scipy.linalg.orth(M.T))  # row space, [d, r]
    n = len(spaces)
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            angles = scipy.linalg.subspace_angles(spaces[i], spaces[j])
            out[i, j] = float(np.mean(np.cos(angles) ** 2))
    return out


@pytest.mark.parametrize("name", ["llama-gqa", "gemma3", "gpt2"])
def test_affinity_equals_principal_angles_of_the_dense_ov(name: str) -> None:
    c = ModelCircuits.load(tiny_model(name))
    got, ranks = model_affinity(c)
    want = _dense_affinity(c)
    assert got.shape == want.shape == (c.cfg.n_layers * c.cfg.n_heads,) * 2
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (ranks == min(c.cfg.d_head, c.cfg.d_model)).all()
    np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-6)


def _shared_subspace_model() -> torch.nn.Module:
    """Tiny Llama (MHA) whose layer-1 head 2 writes into layer-0 head 1's subspace (its W_O
    rows are an invertible mix of head 1's), and head 3 of layer 1 into half of it."""
    model = copy.deepcopy(tiny_model("llama-mha-bias"))
    dh = model.config.hidden_size // model.config.num_attention_heads
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        w0 = model.model.layers[0].self_attn.o_proj.weight  # [d, H * dh]
        w1 = model.model.layers[1].self_attn.o_proj.weight
        src = w0[:, dh : 2 * dh].clone()  # layer 0 head 1: columns of o_proj
        mix = torch.randn(dh, dh, generator=gen) + 4 * torch.eye(dh)
        w1[:, 2 * dh : 3 * dh] = src @ mix
        half = torch.randn(dh, dh, generator=gen)
        half[:, dh // 2 :] = 0  # only half of head 1's directions, rank dh / 2
        w1[:, 3 * dh : 4 * dh] = src @ half
    return model


def test_two_heads_sharing_a_subspace_by_construction_are_most_alike() -> None:
    c = ModelCircuits.load(_shared_subspace_model())
    H, d = c.cfg.n_heads, c.cfg.d_model
    affinity, ranks = model_affinity(c)
    a, b, half = 0 * H + 1, 1 * H + 2, 1 * H + 3
    assert affinity[a, b] == pytest.approx(1.0, abs=1e-6)
    assert ranks[half] == c.cfg.d_head // 2
    # half of a's directions: contained in a's subspace, so affinity 1 over the smaller rank
    assert affinity[a, half] == pytest.approx(1.0, abs=1e-6)
    others = [affinity[a, j] for j in range(len(ranks)) if j not in (a, b, half)]
    assert max(others) < 0.6  # random 16-dim subspaces of R^64: about 16 / 64
    table = top_alike(affinity, ranks, H, d, k=2)
    assert list(table.columns) == list(AFFINITY_COLUMNS)
    mine = table[(table["layer"] == 0) & (table["head"] == 1)]
    assert {(int(r.other_layer), int(r.other_head)) for r in mine.itertuples()} == {(1, 2), (1, 3)}
    assert mine["chance"].iloc[0] == pytest.approx(c.cfg.d_head / d)


def test_affinity_table_reaches_the_atlas(tmp_path: Path) -> None:
    c = ModelCircuits.load(_shared_subspace_model())
    d = make_results(tmp_path, c.cfg.n_layers, c.cfg.n_heads)
    write_ov_affinity(c, d)
    assert (d / OV_AFFINITY).is_file()
    results = load_results(d)
    alike = alike_by_head(results)
    assert alike is not None
    a = 1  # layer 0 head 1
    assert alike[a][0] in (1 * 4 + 2, 1 * 4 + 3) and alike[a][1] == 1000
    assert alike[a][-1] == round(1000 * c.cfg.d_head / c.cfg.d_model)  # chance level, last
    assert atlas_data(results)["alike_ov"] == alike
    assert atlas_data(load_results(make_results(tmp_path / "other", 2, 4)))["alike_ov"] is None
