"""The pruned exact kernel equals the full one (ranks capped at k, hence identical scores),
the tie rule holds under rounding, and every kernel keeps its outputs on its inputs' device
(checked on the ``meta`` device, which has no values and mixes with nothing)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from test_scoring import random_plan
from tiny_models import tiny_model

from headatlas.circuits import ModelCircuits
from headatlas.scoring.kernel.batched import batched_ranks
from headatlas.scoring.kernel.factored import Factored, SharedU
from headatlas.scoring.kernel.layout import PairLayout
from headatlas.scoring.kernel.pairs import pair_ranks
from headatlas.scoring.options import MapOptions, compute_dtype
from headatlas.scoring.plan import source_embeddings
from headatlas.scoring.relation_scores import layer_ranks, layer_scores
from headatlas.validate.dynamic import DynamicJob, HeadReadout, read_out


def _random_case(seed: int, n: int = 60, r: int = 6, d: int = 12, V: int = 700):
    """Rounded values (many exact ties), a duplicated target column, shared sources."""
    g = torch.Generator().manual_seed(seed)
    Z = torch.randn(n, r, generator=g).round(decimals=1)
    W = torch.randn(r, d, generator=g).round(decimals=1)
    U = torch.randn(d, V, generator=g).round(decimals=1)
    U[:, 5] = U[:, 7]  # two tokens with the same logit in every row
    U[:, 100:200] *= 0.01  # column norms that vary: the per-column rounding bound differs
    rows = torch.randint(0, n, (3 * n,), generator=g)
    rows[:n] = torch.arange(n)
    tgt = torch.randint(0, V, (3 * n,), generator=g)
    tgt[:10] = 7
    k = torch.randint(1, 12, (3 * n,), generator=g)
    return Z, W, U, rows, tgt, k


def _capped(full: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.minimum(full, k)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pruned_equals_full_capped_at_k(seed: int) -> None:
    Z, W, U, rows, tgt, k = _random_case(seed)
    n, V = Z.shape[0], U.shape[1]
    B = W @ U
    exact = pair_ranks(Z, Factored.plain(B), PairLayout(rows, tgt, n, V))  # every row in full
    logits = Z[rows] @ B
    t = logits.gather(1, tgt[:, None])
    assert torch.equal(exact[0], (logits >= t).sum(1) - 1)
    assert torch.equal(exact[1], (logits < t).sum(1))
    for readout in (Factored.plain(B), Factored(W, SharedU(U))):
        for stages in ((16,), (8, 64), (4, 32, 10_000)):
            for column_bound in (True, False):
                layout = PairLayout(rows, tgt, n, V, k=k)
                up, down = pair_ranks(Z, readout, layout, stages=stages, column_bound=column_bound)
                assert torch.equal(up, _capped(exact[0], k))
                assert torch.equal(down, _capped(exact[1], k))


def test_pruned_kernel_decides_most_pairs_from_the_first_pass() -> None:
    import headatlas.scoring.kernel.pairs as ranks

    g = torch.Generator().manual_seed(4)
    Z, B = torch.randn(400, 16, generator=g), torch.randn(16, 5000, generator=g)
    rows, tgt = torch.arange(400), torch.randint(0, 5000, (400,), generator=g)
    seen: list[int] = []
    original = ranks.full_rows

    def spy(head, jobs):  # type: ignore[no-untyped-def]
        (job,) = jobs
        seen.append(job.layout.n_pairs if job.pairs is None else int(job.pairs.numel()))
        return original(head, jobs)

    ranks.full_rows = spy
    try:
        pair_ranks(Z, Factored.plain(B), PairLayout(rows, tgt, 400, 5000, k=10))
    finally:
        ranks.full_rows = original
    assert seen and seen[0] < 40  # under 10% of pairs need their full row


def test_the_per_column_bound_decides_at_least_the_per_row_bound() -> None:
    import headatlas.scoring.kernel.pairs as ranks

    g = torch.Generator().manual_seed(7)
    Z, W = torch.randn(300, 16, generator=g), torch.randn(16, 40, generator=g)
    U = torch.randn(40, 6000, generator=g) * torch.rand(6000, generator=g).square()
    rows, tgt = torch.arange(300), torch.randint(0, 6000, (300,), generator=g)
    B = Factored(W, SharedU(U))
    left = {}
    original = ranks.full_rows
    for column_bound in (False, True):

        def spy(head, jobs, key=column_bound):  # type: ignore[no-untyped-def]
            (job,) = jobs
            left[key] = job.layout.n_pairs if job.pairs is None else int(job.pairs.numel())
            return original(head, jobs)

        ranks.full_rows = spy
        try:
            got = pair_ranks(Z, B, PairLayout(rows, tgt, 300, 6000, k=5), column_bound=column_bound)
        finally:
            ranks.full_rows = original
        exact = pair_ranks(Z, B, PairLayout(rows, tgt, 300, 6000))
        assert torch.equal(got[0], exact[0].clamp(max=5))
        assert torch.equal(got[1], exact[1].clamp(max=5))
    assert left[True] <= left[False]


def test_target_logit_comes_from_the_same_product_as_its_competitors() -> None:
    # Every column equals the target's: all V-1 others tie with it, whatever the rounding.
    g = torch.Generator().manual_seed(5)
    Z = torch.randn(30, 7, generator=g)
    col = torch.randn(7, 1, generator=g) * 1e3
    B = Factored.plain(col.expand(7, 300).contiguous())
    tgt = torch.randint(0, 300, (30,), generator=g)
    layout = PairLayout(torch.arange(30), tgt, 30, 300)
    up, down = pair_ranks(Z, B, layout)
    assert up.tolist() == [299] * 30 and down.tolist() == [0] * 30
    up, down = pair_ranks(Z, B, PairLayout(torch.arange(30), tgt, 30, 300, k=3))
    assert up.tolist() == [3] * 30 and down.tolist() == [0] * 30


@pytest.mark.parametrize("variant", ["llama-gqa", "gemma3", "phi"])
def test_layer_scores_pruned_equal_full_rows(variant: str) -> None:
    circuits = ModelCircuits.load(tiny_model(variant))
    plan = random_plan(circuits.cfg.vocab_size, 400, seed=3)
    for options in (MapOptions(), MapOptions(output_bias=True, unembed_bias=True)):
        X0, Xe = source_embeddings(circuits, plan.source_ids, options)
        readout = options.recipe.bind(circuits)
        args = (plan.pair_rows, plan.pair_targets, len(plan.source_ids), readout.W_Uf.shape[1])
        layout, full = PairLayout(*args, k=plan.pair_k), PairLayout(*args)
        for i in range(circuits.cfg.n_layers):
            layer = circuits.layer(i)
            X = X0 if i == 0 else Xe
            new = layer_ranks(layer, X, readout, layout)
            old = layer_ranks(layer, X, readout, full)  # every row in full: exact ranks
            assert torch.equal(new[0], torch.minimum(old[0], plan.pair_k))
            assert torch.equal(new[1], torch.minimum(old[1], plan.pair_k))
            s_new, s_old = layer_scores(plan, *new), layer_scores(plan, *old)
            assert torch.equal(s_new[0], s_old[0]) and torch.equal(s_new[1], s_old[1])


def test_dynamic_read_out_pruned_equals_full() -> None:
    circuits = ModelCircuits.load(tiny_model("gemma3"))
    options = MapOptions(output_bias=True, unembed_bias=True)
    new, old = HeadReadout(circuits, options), HeadReadout(circuits, options, pruned=False)
    g = torch.Generator().manual_seed(6)
    c = circuits.cfg
    z = (torch.randn(50, c.n_heads, c.d_head, generator=g) * 4).round(decimals=1)
    targets = torch.randint(0, c.vocab_size, (50,), generator=g)
    for layer in range(c.n_layers):
        for h0, h1, block in new.blocks(layer):
            exact = old.block_ranks(layer, block, z[:, h0:h1], targets)
            for k in (1, 3, 10):
                up, down = new.block_ranks(layer, block, z[:, h0:h1], targets, k)
                assert torch.equal(up, exact[0].clamp(max=k))
                assert torch.equal(down, exact[1].clamp(max=k))
    # and through a small first pass that leaves rows undecided
    block = next(new.blocks(0))[2]
    zz = z[:, : block.shape[0]].transpose(0, 1).contiguous()
    full = batched_ranks(zz, block, targets, None)
    part = batched_ranks(zz, block, targets, 2, stages=(3,))
    assert torch.equal(part[0], full[0].clamp(max=2)) and torch.equal(part[1], full[1].clamp(max=2))
    # one k per row, later stages on the undecided cells only, and full rows both through a
    # formed B_h (heads with many undecided cells) and stacked through the shared U (few)
    k_rows = torch.tensor([1, 3, 10, 25] * 12 + [2, 7])
    for stages in ((3,), (3, 5, 40), (40, 200)):
        up, down = batched_ranks(zz, block, targets, k_rows, stages=stages)
        assert torch.equal(up, torch.minimum(full[0], k_rows)), stages
        assert torch.equal(down, torch.minimum(full[1], k_rows)), stages


def test_read_out_stacks_jobs_and_equals_the_full_read_out() -> None:
    circuits = ModelCircuits.load(tiny_model("llama-gqa"))
    c = circuits.cfg
    g = torch.Generator().manual_seed(11)
    jobs, captured = [], []
    for i, (n, k) in enumerate(((7, 1), (30, 10), (12, 3))):
        z = torch.randn(c.n_layers, n, c.n_heads, c.d_head, generator=g) * 3
        v = torch.randn(c.n_layers, n, c.n_kv_heads, c.d_head, generator=g) * 3
        targets = torch.randint(0, c.vocab_size, (n,), generator=g)
        jobs.append(DynamicJob(f"r{i}", "t <X>", [[0]] * n, targets.tolist(), k))
        captured.append((z, v, targets))
    options = MapOptions()
    new = read_out(HeadReadout(circuits, options), jobs, captured, c.n_layers, c.n_heads)
    old = read_out(
        HeadReadout(circuits, options, pruned=False), jobs, captured, c.n_layers, c.n_heads
    )
    for a, b in zip(new, old, strict=True):
        assert a.n_prompts == b.n_prompts
        for name in ("with_context", "without_context"):
            for suffix in ("", "_suppression"):
                x, y = getattr(a, name + suffix), getattr(b, name + suffix)
                assert x.shape == (c.n_layers, c.n_heads) and np.array_equal(x, y)
    assert any(d.with_context.any() for d in new)  # some hits, not all-zero scores


def test_kernels_keep_every_output_on_the_meta_device() -> None:
    """Device mixing would raise here: a meta tensor combines with no CPU tensor."""
    circuits = ModelCircuits.load(tiny_model("gemma3"))
    plan = random_plan(circuits.cfg.vocab_size, 100, seed=1)
    meta = torch.device("meta")
    for options in (MapOptions(), MapOptions(output_bias=True, unembed_bias=True)):
        _, Xe = source_embeddings(circuits, plan.source_ids, options)
        readout_meta = options.recipe.bind(circuits, meta)
        V = readout_meta.W_Uf.shape[1]
        layout = PairLayout(
            plan.pair_rows, plan.pair_targets, len(plan.source_ids), V, k=plan.pair_k
        ).to(meta)
        layer = circuits.layer(1)  # on the CPU: layer_ranks moves it with one .to()
        up, down = layer_ranks(layer, Xe, readout_meta, layout)
        assert up.device == meta and down.device == meta
    readout = HeadReadout(circuits, MapOptions(output_bias=True)).to(meta)
    c = circuits.cfg
    z = torch.zeros(4, c.n_heads, c.d_head, device=meta)
    for h0, h1, block in readout.blocks(0):
        up, down = readout.block_ranks(0, block, z[:, h0:h1], torch.zeros(4, dtype=torch.long), 3)
        assert up.device == meta and down.device == meta
    assert readout.logits(0, z).device == meta


def test_ranks_are_computed_in_float32_whatever_the_storage_dtype() -> None:
    assert compute_dtype(torch.bfloat16) == torch.float32
    assert compute_dtype(torch.float16) == torch.float32
    assert compute_dtype(torch.float64) == torch.float64


def test_compiled_counting_kernel_equals_the_eager_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Big work goes through a torch.compile'd kernel; it must count exactly as eager torch.
    from headatlas.scoring.kernel import count

    g = torch.Generator().manual_seed(11)
    S = torch.randn(40, 300, generator=g).round(decimals=1)  # many exact ties
    loc = torch.randint(0, 40, (90,), generator=g)
    t = S[loc, torch.randint(0, 300, (90,), generator=g)]
    cases = {
        "full rows": lambda: count.count_at_least(S, t, loc),
        "whole rows": lambda: count.count_at_least(S[loc], t),
    }
    monkeypatch.setattr(count, "COMPILE_ABOVE", 10**12)
    eager = {name: f() for name, f in cases.items()}
    monkeypatch.setattr(count, "COMPILE_ABOVE", 0)
    for name, f in cases.items():
        got, want = f(), eager[name]
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True)), name
    if os.environ.get("HEADATLAS_NO_COMPILE") != "1":  # the compiled kernels did run
        assert count._COMPILED["count_rows"] is not count._eager_rows
        assert count._COMPILED["count"] is not count._eager


def test_a_ctrl_c_while_compiling_is_delivered_after_it() -> None:
    # torch.compile catches what is raised while it compiles; a Ctrl-C then must not be lost.
    import signal

    from headatlas.scoring.kernel import count

    before = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a CLI process
    try:
        finished = []
        with pytest.raises(KeyboardInterrupt), count._interrupt_after():
            os.kill(os.getpid(), signal.SIGINT)
            finished.append(True)  # the guarded work runs to its end first
        assert finished == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, before)
