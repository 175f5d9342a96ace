"""Dynamic relation scores at inference (MAPS §5, correlative experiment); their correlation
with the static (weights-only) scores is :func:`headatlas.stats.correlate`.

For a relation and a context template, each source fills the template's ``<X>`` slot and the
model runs once. At the last position every head's output ``z_h · W_O^h`` is read out exactly as
the static map reads the OV circuit: through Gemma 2/3's post-attention gain and the folded
unembedding (final-norm gain, LayerNorm centring), with the map's bias switches and k.

- *with context*: z_h is what the head really computed (attention over the whole prompt);
- *without context*: z_h := the head's value vector at the source position, i.e. the head as
  if it attended to the source token only. It comes from the same pass (hooked values), so no
  second run is needed; unlike the static map its input is the real residual stream at the
  source, not the (effective) token embedding.

The dynamic score is the share of prompts whose target ranks in the top k (suppression: in the
top k of the negated logits), with the map's tie rule.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from headatlas.circuits import ModelCircuits
from headatlas.errors import ValidationInputError
from headatlas.scoring.kernel.batched import batched_ranks
from headatlas.scoring.kernel.candidates import spread_order
from headatlas.scoring.kernel.factored import Factored, SharedU
from headatlas.scoring.kernel.pairs import STAGES
from headatlas.scoring.options import MapOptions, compute_dtype
from headatlas.scoring.recipe import Recipe
from headatlas.validate.hooks import AttentionHooks
from headatlas.validate.prompts import batches, build_prompts, pad_id

_BLOCK_BYTES = 512 * 2**20  # one layer's per-head read-out matrices, at most
_CAPTURE_BYTES = 1 * 2**30  # activations captured before reading them out
_ROWS = 64  # prompts per full read-out product ([h, rows, V] logits)
_ROWS_PRUNED = 4096  # rows per pruned read-out (a first pass of [h, rows, 256 columns])


class HeadReadout:
    """Per-head outputs read through the unembedding the way a recipe reads them (the static
    map's by default; see :func:`dynamic_recipe` for the paper's dynamic readout)."""

    def __init__(
        self,
        circuits: ModelCircuits,
        options: MapOptions | Recipe,
        dtype: torch.dtype = torch.float32,
        pruned: bool = True,
    ):
        self.recipe = options if isinstance(options, Recipe) else options.recipe
        self.dtype = compute_dtype(dtype)
        self.pruned = pruned
        """With k, decide rank < k from a first pass over candidate columns (exact; see
        :func:`headatlas.scoring.kernel.batched.batched_ranks`); off: every row in full."""
        self._order: tuple[torch.Tensor | Factored, torch.Tensor, torch.Tensor] | None = None
        self._shared: SharedU | None = None
        readout = self.recipe.bind(circuits, "cpu", self.dtype)
        self.W_Uf = readout.W_Uf  # [d, V]
        self.W_O: list[torch.Tensor] = []  # per layer [H, dh, d], post-attention gain applied
        self.b_V: list[torch.Tensor | None] = []  # per layer: the b_V the recipe leaves out
        self.offset: list[torch.Tensor | None] = []  # per layer logit offset [V]
        self.kv_group: list[torch.Tensor] = []
        for layer in circuits.layers():
            lr = readout.layer(layer)
            self.W_O.append(lr.W_O)
            self.kv_group.append(lr.kv_group)
            self.b_V.append(lr.left_out_b_V)
            self.offset.append(lr.logit_offset())

    def head_outputs(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """z [B, H, dh] -> each head's output as the residual stream sees it, [B, H, d]."""
        return torch.einsum("bhe,hed->bhd", z.to(self.dtype), self.W_O[layer])

    def blocks(self, layer: int) -> Iterator[tuple[int, int, torch.Tensor | Factored]]:
        """(h0, h1, W_O^h·gain·W_Uf for heads h0..h1-1 [h, dh, V]): the per-head read-out
        matrices, formed once per layer and reused by every prompt (dh instead of d
        multiply-adds per logit), in chunks of at most ~512 MB. Pruned: every head at once,
        kept factored (:class:`Factored`), since only a few columns and rows are read."""
        if self.pruned:
            if self._shared is None or self._shared.U is not self.W_Uf:
                self._shared = SharedU(self.W_Uf)
            yield 0, self.W_O[layer].shape[0], Factored(self.W_O[layer], self._shared)
            return
        W_O = self.W_O[layer]
        H, dh, d = W_O.shape
        V = self.W_Uf.shape[1]
        per = max(1, _BLOCK_BYTES // (dh * V * self.W_Uf.element_size()))
        for h0 in range(0, H, per):
            h1 = min(H, h0 + per)
            yield h0, h1, (W_O[h0:h1].reshape(-1, d) @ self.W_Uf).reshape(h1 - h0, dh, V)

    def to(self, device: torch.device | str) -> HeadReadout:
        """Move every read-out tensor to ``device`` (one call)."""
        self.W_Uf = self.W_Uf.to(device)
        self.W_O = [w.to(device) for w in self.W_O]
        self.b_V = [None if b is None else b.to(device) for b in self.b_V]
        self.offset = [None if o is None else o.to(device) for o in self.offset]
        self.kv_group = [g.to(device) for g in self.kv_group]
        self._order, self._shared = None, None
        return self

    def block_ranks(
        self,
        layer: int,
        block: torch.Tensor | Factored,
        z: torch.Tensor,
        targets: torch.Tensor,
        k: int | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(up, down) ranks [B, h] of each row's target for z [B, h, dh] against a block from
        :meth:`blocks`: up = #others >= target, down = #others < target (the map's tie rule).
        With ``k`` (one, or one per row; and ``pruned``) only rank < k is decided: ranks
        come back capped at k."""
        fresh = self._order is None or self._order[0] is not block
        if self.pruned and fresh and self.W_Uf.device.type != "meta":
            order = spread_order(block, sum(STAGES))
            if not isinstance(block, Factored):
                raise ValueError("the pruned read-out needs factored blocks")
            cols = block.columns(order)
            self._order = (block, order, cols)
        dev = self.W_Uf.device
        up, down = batched_ranks(
            z.to(device=dev, dtype=self.dtype).transpose(0, 1),
            block,
            targets.to(dev),
            k if self.pruned else None,
            self.offset[layer],
            self._order[1] if self.pruned and self._order is not None else None,
            order_columns=self._order[2] if self.pruned and self._order is not None else None,
        )
        return up.T, down.T

    def logits(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Per-head logits [B, H, V] of z [B, H, dh] (the direct product, for checks)."""
        y = self.head_outputs(layer, z) @ self.W_Uf
        offset = self.offset[layer]
        return y if offset is None else y + offset

    def ranks(
        self, layer: int, z: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(up, down) ranks [B, H] of each row's target for every head of a layer."""
        ups, downs = [], []
        for h0, h1, block in self.blocks(layer):
            up, down = self.block_ranks(layer, block, z[:, h0:h1], targets)
            ups.append(up)
            downs.append(down)
        return torch.cat(ups, 1), torch.cat(downs, 1)

    def source_values(self, layer: int, values: torch.Tensor) -> torch.Tensor:
        """The without-context z: each head's KV-group value at the source, [B, H, dh]
        (b_V removed when the map leaves value biases out)."""
        b_V = self.b_V[layer]
        if b_V is not None:
            values = values - b_V.to(values.dtype)
        return values[:, self.kv_group[layer]]


@dataclass
class DynamicScores:
    """One relation under one template: scores [n_layers, n_heads] per variant."""

    relation: str
    template: str
    n_prompts: int
    with_context: np.ndarray
    without_context: np.ndarray
    with_context_suppression: np.ndarray
    without_context_suppression: np.ndarray


@dataclass
class DynamicJob:
    """One relation under one template: the pairs to prompt with and the map's k."""

    relation: str
    template: str
    sources: list[list[int]]
    targets: list[int]
    k: int


def dynamic_scores(
    hooks: AttentionHooks,
    readout: HeadReadout,
    tokenizer: Any,
    jobs: Sequence[DynamicJob],
    batch_size: int = 32,
    tick: Callable[[int], None] | None = None,
    budget_bytes: int = _CAPTURE_BYTES,
) -> list[DynamicScores]:
    """Dynamic scores of every head for each job.

    Jobs are taken in groups whose captured activations fit ``budget_bytes``: every prompt of
    a group runs once (z at the last position, values at the source, all layers), then each
    layer's read-out blocks are formed once and applied to the whole group.
    """
    c = hooks.cfg
    per_prompt = c.n_layers * (c.n_heads + c.n_kv_heads) * c.d_head * 4
    out: list[DynamicScores] = []
    group: list[DynamicJob] = []
    for job in jobs:
        group.append(job)
        if sum(len(j.targets) for j in group) * per_prompt >= budget_bytes:
            out += _score_group(hooks, readout, tokenizer, group, batch_size, tick)
            group = []
    if group:
        out += _score_group(hooks, readout, tokenizer, group, batch_size, tick)
    return out


def _score_group(
    hooks: AttentionHooks,
    readout: HeadReadout,
    tokenizer: Any,
    jobs: Sequence[DynamicJob],
    batch_size: int,
    tick: Callable[[int], None] | None,
) -> list[DynamicScores]:
    captured = capture(hooks, tokenizer, jobs, batch_size, tick)
    return read_out(readout, jobs, captured, hooks.cfg.n_layers, hooks.cfg.n_heads)


Captured = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def capture(
    hooks: AttentionHooks,
    tokenizer: Any,
    jobs: Sequence[DynamicJob],
    batch_size: int,
    tick: Callable[[int], None] | None = None,
) -> Captured:
    """Run every prompt of the jobs once: per job z [L, n, H, dh] at the last position, values
    [L, n, n_kv, dh] at the source, and the targets [n]."""
    captured = []
    for job in jobs:
        prompts = build_prompts(tokenizer, job.template, job.sources, job.targets)
        zs, vs = [], []
        for batch in batches(prompts, batch_size, pad_id(tokenizer)):
            run = hooks.run(batch.input_ids, batch.attention_mask, batch.read_pos, batch.source_pos)
            zs.append(torch.stack(run.z))
            vs.append(torch.stack(run.values))
            if tick is not None:
                tick(len(batch.targets))
        captured.append((torch.cat(zs, 1), torch.cat(vs, 1), torch.tensor(job.targets)))
    return captured


def read_out(
    readout: HeadReadout, jobs: Sequence[DynamicJob], captured: Captured, L: int, H: int
) -> list[DynamicScores]:
    """Dynamic scores of every head from captured activations. Per layer, the rows of every
    job and both variants (with context: z at the last position; without: the value at the
    source) are stacked into one batch, read against the layer's read-out blocks (formed
    once), and counted back per job."""
    K = torch.cat([torch.full((2 * len(c[2]),), j.k) for j, c in zip(jobs, captured, strict=True)])
    T = torch.cat([torch.cat([c[2], c[2]]) for c in captured]) if captured else torch.zeros(0)
    T = T.long()
    # Row segments: job i's with-context rows, then its without-context rows.
    sizes = [len(c[2]) for c in captured for _ in range(2)]
    seg = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes, dtype=torch.long))
    hits = torch.zeros(2, len(sizes), L, H, dtype=torch.float64)  # relation, suppression
    step = _ROWS_PRUNED if readout.pruned else _ROWS
    for layer in range(L):
        Z = torch.cat(
            [
                part
                for z, v, _ in captured
                for part in (z[layer], readout.source_values(layer, v[layer]))
            ]
        )  # [N, H, dh]
        for h0, h1, block in readout.blocks(layer):
            for r0 in range(0, len(T), step):
                r1 = min(len(T), r0 + step)
                up, down = readout.block_ranks(
                    layer, block, Z[r0:r1, h0:h1], T[r0:r1], K[r0:r1] if readout.pruned else None
                )
                k = K[r0:r1, None].to(up.device)
                for which, rank in enumerate((up, down)):
                    hit = (rank < k).double().cpu()  # [rows, h]
                    hits[which, :, layer, h0:h1].index_add_(0, seg[r0:r1], hit)
    out = []
    for i, job in enumerate(jobs):
        n = max(1, len(job.targets))
        acc = {
            "with_context": hits[0, 2 * i],
            "without_context": hits[0, 2 * i + 1],
            "with_context_suppression": hits[1, 2 * i],
            "without_context_suppression": hits[1, 2 * i + 1],
        }
        out.append(
            DynamicScores(
                job.relation,
                job.template,
                len(job.targets),
                **{name: (h / n).numpy() for name, h in acc.items()},
            )
        )
    return out


DYNAMIC_READOUTS = ("map", "paper")
"""How dynamic scores are read out: ``map`` = exactly as the static map's recipe; ``paper`` =
MAPS' dynamic score: the head's output (with its b_V, as computed) through W_U, with no final
norm, no b_O and no unembedding bias."""


def dynamic_recipe(recipe: Recipe, readout: str = "map") -> Recipe:
    """The recipe dynamic scores are read with, given the static map's recipe."""
    if readout == "map":
        return recipe
    if readout == "paper":
        return recipe.replace(
            final_norm=False, output_bias=False, unembed_bias=False, value_bias=True
        )
    raise ValidationInputError(
        f"dynamic readout '{readout}' is unknown: use one of {', '.join(DYNAMIC_READOUTS)}"
    )


def sample_pairs(
    sources: Sequence[Sequence[int]], targets: Sequence[int], limit: int | None, seed: int
) -> tuple[list[list[int]], list[int]]:
    """At most ``limit`` (source, target) pairs, a seeded sample in the original order."""
    idx = list(range(len(targets)))
    if limit is not None and len(idx) > limit:
        idx = sorted(random.Random(seed).sample(idx, limit))
    return [list(sources[i]) for i in idx], [int(targets[i]) for i in idx]


def heads_table(
    relation: str,
    static: np.ndarray,
    static_suppression: np.ndarray,
    per_template: Sequence[DynamicScores],
) -> pd.DataFrame:
    """Per head x template of one relation, its static and dynamic scores side by side (layer,
    head, template, static and dynamic relation and suppression scores): what ``validate``
    writes to ``correlative_heads.csv``. ``static``: [n_layers, n_heads]."""
    L, H = static.shape
    layer, head = np.divmod(np.arange(L * H), H)
    frames = [
        pd.DataFrame(
            {
                "relation": relation,
                "template": d.template,
                "layer": layer,
                "head": head,
                "static_score": static.ravel(),
                "dynamic_with_context": d.with_context.ravel(),
                "dynamic_without_context": d.without_context.ravel(),
                "static_suppression_score": static_suppression.ravel(),
                "dynamic_suppression_with_context": d.with_context_suppression.ravel(),
                "dynamic_suppression_without_context": d.without_context_suppression.ravel(),
            }
        )
        for d in per_template
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
