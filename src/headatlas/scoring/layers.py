"""The layer loop every scorer shares: :func:`score_layers` reads each layer and gives its
relation and suppression ranks (and the null's hits), computed only when asked for. Pure: no
files, no caching across runs (the callers keep a :class:`~headatlas.store.LayerCache`)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from functools import cached_property
from typing import Protocol

import torch

from headatlas.circuits import LayerOV, ModelCircuits
from headatlas.scoring.kernel.factored import Factored, SharedU
from headatlas.scoring.kernel.layout import PairLayout
from headatlas.scoring.null import null_hits
from headatlas.scoring.plan import ScoringPlan
from headatlas.scoring.recipe import Readout
from headatlas.scoring.relation_scores import (
    candidate_orders,
    head_readouts,
    layer_ranks_multi,
    layer_scores,
)


class LayerInputs(Protocol):
    """Source embeddings per layer (:class:`~headatlas.scoring.recipe.SourceInputs`)."""

    def layer(self, index: int) -> torch.Tensor:
        """x̃ [n_sources, d] of layer ``index``."""
        ...


class _Shared:
    """What every layer's scores share, prepared once per loop: the bound readout, its
    U = [W_Uf; logit bias], and the pair layouts on the readout's device."""

    def __init__(
        self,
        plan: ScoringPlan,
        copies: int,
        readout: Readout,
        storage: torch.dtype,
        null: ScoringPlan | None,
    ) -> None:
        self.plan, self.copies, self.readout, self.storage = plan, copies, readout, storage
        self.device = readout.W_Uf.device
        n, vocab = len(plan.source_ids), readout.W_Uf.shape[1]
        # ``copies`` input sets stacked as source rows: the pairs repeated over each set's rows
        rows = torch.cat([plan.pair_rows + m * n for m in range(copies)])
        self.layout = PairLayout(
            rows, plan.pair_targets.repeat(copies), n * copies, vocab, k=plan.pair_k.repeat(copies)
        ).to(self.device)
        self.null = null
        self.null_layout: PairLayout | None = None
        if null is not None:
            if copies != 1 or not torch.equal(null.source_ids, plan.source_ids):
                raise AssertionError("the null's pairs must share the map's source rows")
            self.null_layout = PairLayout(
                null.pair_rows, null.pair_targets, n, vocab, k=null.pair_k
            ).to(self.device)
        self.U: SharedU = readout.shared()


class LayerScores:
    """One layer's scores. Reading the layer (and hashing it: :attr:`digest`) is all that
    happens up front; heads, ranks and the null's hits are computed on first use, so a
    caller that finds the layer in its cache pays for nothing else."""

    def __init__(
        self, index: int, layer: LayerOV, inputs: Sequence[LayerInputs], shared: _Shared
    ) -> None:
        self.index = index
        self.read = layer
        """The layer as read (CPU, stored dtype)."""
        self.digest: str = layer.digest
        self._inputs = inputs
        self._shared = shared
        self.null_s = 0.0
        """Seconds spent on the null's hits."""

    @property
    def layout(self) -> PairLayout:
        """The pairs the ranks are of (every input set's rows stacked)."""
        return self._shared.layout

    @cached_property
    def layer(self) -> LayerOV:
        """The layer on the readout's device, rounded to the storage dtype."""
        return self.read.to(self._shared.device, self._shared.storage)

    @cached_property
    def sources(self) -> torch.Tensor:
        """x̃ [copies · n_sources, d] of every input set, stacked, on the device."""
        s = self._shared
        X = torch.cat([inp.layer(self.index) for inp in self._inputs])
        return X.to(device=s.device, dtype=s.storage)

    @cached_property
    def heads(self) -> list[tuple[torch.Tensor, Factored]]:
        """Every head's logits kept factored (:func:`head_readouts`)."""
        with torch.no_grad():
            return head_readouts(self.layer, self.sources, self._shared.readout)

    @cached_property
    def orders(self) -> list[torch.Tensor | None]:
        """Each head's candidate columns (:func:`candidate_orders`)."""
        with torch.no_grad():
            return candidate_orders(self.heads)

    @cached_property
    def ranks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Relation and suppression ranks [n_heads, copies · n_pairs] (pruned kernel)."""
        s = self._shared
        with torch.no_grad():
            (ranks,) = layer_ranks_multi(
                self.layer, self.sources, s.readout, [s.layout], self.heads, self.orders
            )
        return ranks

    @cached_property
    def scores(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per input set: relation and suppression scores [n_heads, n_relations]."""
        up, down = self.ranks
        P = len(self._shared.plan.pair_rows)
        plan = self._shared.plan
        return [
            layer_scores(plan, up[:, m * P : (m + 1) * P], down[:, m * P : (m + 1) * P])
            for m in range(self._shared.copies)
        ]

    @cached_property
    def null_hits(self) -> torch.Tensor | None:
        """The null's hits per head [n_heads, ...] (None without a null)."""
        lay = self._shared.null_layout
        if lay is None:
            return None
        t0 = time.perf_counter()
        with torch.no_grad():
            hits = torch.stack(
                [null_hits(Z, B, lay, o) for (Z, B), o in zip(self.heads, self.orders)]
            )
        self.null_s += time.perf_counter() - t0
        return hits


def score_layers(
    circuits: ModelCircuits,
    plan: ScoringPlan,
    inputs: Sequence[LayerInputs],
    readout: Readout,
    storage: torch.dtype | None = None,
    layers: Iterable[int] | None = None,
    null: ScoringPlan | None = None,
) -> Iterator[LayerScores]:
    """Each layer's scores (of ``layers``, default all, in that order) on ``plan``'s pairs.

    ``inputs``: one or more source-embedding sets over ``plan.source_ids`` (several are
    stacked and scored in one kernel call through the same ``readout``: recipes that differ
    only in the embedding mode); ``readout``: the bound recipe, its device and compute dtype
    those of the scores; ``storage``: the dtype layers and sources are rounded to first
    (default: the readout's); ``null``: the null's plan over the same source rows
    (:func:`~headatlas.scoring.null.null_plan`). The shared read-out factor is prepared once
    here and used by every layer.
    """
    shared = _Shared(plan, len(inputs), readout, storage or readout.W_Uf.dtype, null)
    which = range(circuits.cfg.n_layers) if layers is None else layers
    for i in which:
        yield LayerScores(i, circuits.layer(i), inputs, shared)
