"""Dynamic relation scores at inference, and their correlation with the static (weights-only)
scores (MAPS §5, correlative experiment).

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
import warnings
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
        self.recipe = options if isinstance(options, Recipe) else options.recipe()
        self.dtype = compute_dtype(dtype)
        self.pruned = pruned
        """With k, decide rank < k from a first pass over candidate columns (exact; see
        :func:`headatlas.scoring.kernel.batched.batched_ranks`); off: every row in full."""
        self._order: tuple[torch.Tensor | Factored, torch.Tensor, torch.Tensor] | None = None
        self._shared: SharedU | None = None
        readout = self.recipe.bind(circuits, "cpu", self.dtype)
        self.W_Uf = readout.W_Uf  # [d, V]
        self.W_O: list[torch.Tensor] = []  # per layer [H, dh, d], post-attention gain applied
        self.b_V: list[torch.Tensor | None] = []
        self.offset: list[torch.Tensor | None] = []  # per layer logit offset [V]
        self.kv_group: list[torch.Tensor] = []
        for layer in circuits.layers():
            W_O, _ = readout.output_map(layer)
            self.W_O.append(W_O)
            self.kv_group.append(torch.arange(layer.n_heads) // layer.group_size)
            self.b_V.append(layer.b_V)
            self.offset.append(readout.logit_offset(layer))

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
        if not self.recipe.value_bias and b_V is not None:
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


def _pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Pearson r and two-sided p; NaN when either side is constant."""
    from scipy.stats import pearsonr

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pearsonr(x, y)
    return float(res.statistic), float(res.pvalue)


CORRELATION_COLUMNS = [
    "relation",
    "category",
    "score",
    "r_without_context",
    "p_without_context",
    "r_with_context",
    "p_with_context",
    "max_static_score",
    "max_dynamic_without_context",
    "max_dynamic_with_context",
    "n_heads",
    "n_templates",
    "n_prompts",
    "k",
]


def correlate(
    relation: str,
    category: str,
    k: int,
    static: np.ndarray,
    static_suppression: np.ndarray,
    per_template: Sequence[DynamicScores],
) -> tuple[list[dict[str, Any]], pd.DataFrame]:
    """Pearson r between static and dynamic scores over all heads x templates.

    Returns the table rows (one for relation scores, one for suppression scores) and the
    per-head long table (layer, head, template, static and dynamic scores).
    """
    rows = []
    for kind, stat, suffix in (
        ("relation", static, ""),
        ("suppression", static_suppression, "_suppression"),
    ):
        x = np.concatenate([stat.ravel() for _ in per_template])
        row: dict[str, Any] = {"relation": relation, "category": category, "score": kind}
        for ctx in ("without_context", "with_context"):
            y = np.concatenate([getattr(d, ctx + suffix).ravel() for d in per_template])
            row[f"r_{ctx}"], row[f"p_{ctx}"] = _pearson(x, y)
            row[f"max_dynamic_{ctx}"] = float(y.max()) if len(y) else float("nan")
        row.update(
            max_static_score=float(stat.max()),
            n_heads=int(stat.size),
            n_templates=len(per_template),
            n_prompts=int(sum(d.n_prompts for d in per_template)),
            k=k,
        )
        rows.append(row)
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
    heads = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return [{c: r[c] for c in CORRELATION_COLUMNS} for r in rows], heads


def static_matrix(scores: pd.DataFrame, relation: str, n_layers: int, n_heads: int) -> tuple[
    np.ndarray, np.ndarray
]:  # fmt: skip
    """A relation's static (score, suppression_score) as [n_layers, n_heads] arrays."""
    sub = scores[scores["relation"] == relation]
    out = np.zeros((2, n_layers, n_heads))
    layers, heads = sub["layer"].to_numpy(int), sub["head"].to_numpy(int)
    out[0, layers, heads] = sub["score"].to_numpy(float)
    out[1, layers, heads] = sub["suppression_score"].to_numpy(float)
    return out[0], out[1]


def correlation_markdown(table: pd.DataFrame, title: str) -> str:
    """The correlation table as Markdown (relation scores first, then suppression)."""
    lines = [
        f"# {title}",
        "",
        "Pearson r between static (weights-only) and dynamic (inference) scores over all "
        "heads x templates; p two-sided.",
        "",
        "| relation | category | score | r without context | p | r with context | p "
        "| max static | max dyn. w/o ctx | max dyn. w/ ctx | prompts |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in table.sort_values(["score", "relation"]).itertuples():
        lines.append(
            f"| {row.relation} | {row.category} | {row.score} | {_f(row.r_without_context)} | "
            f"{_p(row.p_without_context)} | {_f(row.r_with_context)} | {_p(row.p_with_context)} "
            f"| {row.max_static_score:.2f} | {row.max_dynamic_without_context:.2f} | "
            f"{row.max_dynamic_with_context:.2f} | {row.n_prompts} |"
        )
    for kind in ("relation", "suppression"):
        sub = table[table["score"] == kind]
        if len(sub):
            lines.append("")
            lines.append(
                f"Mean r ({kind} scores, {len(sub)} relations): without context "
                f"{_f(sub['r_without_context'].mean())}, with context "
                f"{_f(sub['r_with_context'].mean())}."
            )
    return "\n".join(lines) + "\n"


def _f(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}"


def _p(x: float) -> str:
    return "n/a" if x != x else f"{x:.1e}"


def scatter_plot(heads: pd.DataFrame, path: Any, title: str) -> None:
    """Static vs dynamic relation scores, one point per head x template x relation; one panel
    without and one with context."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharex=True, sharey=True)
    relations = sorted(heads["relation"].unique()) if len(heads) else []
    cmap = plt.get_cmap("tab20")
    for ax, col, name in zip(
        axes,
        ("dynamic_without_context", "dynamic_with_context"),
        ("without context", "with context"),
        strict=True,
    ):
        for i, rel in enumerate(relations):
            sub = heads[heads["relation"] == rel]
            ax.scatter(sub["static_score"], sub[col], s=6, alpha=0.5, color=cmap(i % 20), label=rel)
        ax.plot([0, 1], [0, 1], color="0.6", lw=0.8, ls="--")
        ax.set_title(f"dynamic score {name}")
        ax.set_xlabel("static score (weights only)")
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
    axes[0].set_ylabel("dynamic score (inference)")
    if relations:
        axes[1].legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
