"""The layer loop every scorer shares: :func:`score_layers` reads each layer and gives its
relation and suppression ranks (and the null's hits and the evidence's pairs, from the same
full rows), computed only when asked for. Pure: no
files, no caching across runs (the callers keep a :class:`~headatlas.store.LayerCache`)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import torch

from headatlas.circuits import LayerOV, ModelCircuits
from headatlas.scoring.evidence import EvidenceLimits, Found, head_evidence
from headatlas.scoring.kernel.factored import Factored, SharedU
from headatlas.scoring.kernel.layout import PairLayout
from headatlas.scoring.kernel.pairs import (
    HeadRows,
    RowBuffers,
    RowJob,
    finish,
    first_pass,
    full_rows,
)
from headatlas.scoring.null import hits_of, null_first_pass
from headatlas.scoring.plan import ScoringPlan
from headatlas.scoring.recipe import Readout
from headatlas.scoring.relation_scores import candidate_orders, head_readouts, layer_scores


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
        evidence: EvidenceLimits | None = None,
    ) -> None:
        self.plan, self.copies, self.readout, self.storage = plan, copies, readout, storage
        if evidence is not None and copies != 1:
            raise AssertionError("evidence is kept for one input set")
        self.evidence = evidence
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
        self.buffers = RowBuffers()
        """The full rows' logits and formed B, reused by every head of every layer."""


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
        """Seconds spent on the null's first pass (its full rows are shared with the map's)."""
        self.evidence_s = 0.0
        """Seconds spent reading the evidence's rows."""

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
    def _computed(self) -> _Computed:
        """Head by head: the first passes of the map's pairs and the null's, one pass of full
        rows for the rows either left undecided (each row computed once), the ranks, then
        the evidence's rows through the same formed B (one head's B held at a time)."""
        s = self._shared
        out = _Computed()
        kk = s.layout.k_for(None, s.device)
        with torch.no_grad():
            for (Z, B), order in zip(self.heads, self.orders, strict=True):
                up, down, alive = first_pass(Z, B, s.layout, kk, order=order)
                jobs = [RowJob(s.layout, alive, up, down)]
                if s.null_layout is not None:
                    t0 = time.perf_counter()
                    n_up, n_alive = null_first_pass(Z, B, s.null_layout, order)
                    jobs.append(RowJob(s.null_layout, n_alive, n_up, None, "null"))
                    self.null_s += time.perf_counter() - t0
                rows = HeadRows(Z, B, s.buffers)
                full_rows(rows, jobs)
                up, down = finish(s.layout, kk, up, down)
                out.up.append(up)
                out.down.append(down)
                if s.null_layout is not None:
                    out.null.append(hits_of(s.null_layout, n_up))
                if s.evidence is not None:
                    t0 = time.perf_counter()
                    out.evidence.append(head_evidence(rows, s.plan, up, down, s.evidence))
                    self.evidence_s += time.perf_counter() - t0
        return out

    @property
    def ranks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Relation and suppression ranks [n_heads, copies · n_pairs] (pruned kernel)."""
        c = self._computed
        return torch.stack(c.up), torch.stack(c.down)

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

    @property
    def null_hits(self) -> torch.Tensor | None:
        """The null's hits per head [n_heads, ...] (None without a null)."""
        if self._shared.null_layout is None:
            return None
        return torch.stack(self._computed.null)

    @property
    def evidence(self) -> list[dict[str, list[Found]]] | None:
        """Each head's evidence (:func:`~headatlas.scoring.evidence.head_evidence`; None when
        not asked for)."""
        if self._shared.evidence is None:
            return None
        return self._computed.evidence


@dataclass
class _Computed:
    """A layer's per-head results (:attr:`LayerScores._computed`)."""

    up: list[torch.Tensor] = field(default_factory=list)
    down: list[torch.Tensor] = field(default_factory=list)
    null: list[torch.Tensor] = field(default_factory=list)
    evidence: list[dict[str, list[Found]]] = field(default_factory=list)


def score_layers(
    circuits: ModelCircuits,
    plan: ScoringPlan,
    inputs: Sequence[LayerInputs],
    readout: Readout,
    storage: torch.dtype | None = None,
    layers: Iterable[int] | None = None,
    null: ScoringPlan | None = None,
    evidence: EvidenceLimits | None = None,
) -> Iterator[LayerScores]:
    """Each layer's scores (of ``layers``, default all, in that order) on ``plan``'s pairs.

    ``inputs``: one or more source-embedding sets over ``plan.source_ids`` (several are
    stacked and scored in one kernel call through the same ``readout``: recipes that differ
    only in the embedding mode); ``readout``: the bound recipe, its device and compute dtype
    those of the scores; ``storage``: the dtype layers and sources are rounded to first
    (default: the readout's); ``null``: the null's plan over the same source rows
    (:func:`~headatlas.scoring.null.null_plan`); ``evidence``: what evidence to keep
    (:attr:`LayerScores.evidence`, one input set only). The shared read-out factor is prepared
    once here and used by every layer.
    """
    storage = storage or readout.W_Uf.dtype
    shared = _Shared(plan, len(inputs), readout, storage, null, evidence)
    which = range(circuits.cfg.n_layers) if layers is None else layers
    for i in which:
        yield LayerScores(i, circuits.layer(i), inputs, shared)
