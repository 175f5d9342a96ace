"""Evidence behind a score: the pairs a head gets right and a sample it gets wrong, each with
the head's top tokens for the source and the target's rank.

Kept for every (head, relation) whose relation score (kind ``relation``) or suppression score
(kind ``suppression``) is at least the label threshold: the first ``right`` pairs the head gets
right and the first ``wrong`` it gets wrong, in the relation's pair order. Which pairs are
right is the map's kernel's decision (its ranks, read as the layer is scored); only the picked
pairs' source rows are computed again, in full (logits over the whole vocabulary, through the
head's B the kernel formed, if it did), for their exact rank and top tokens: a few dozen rows
per cell against the map's thousands.

Per pair: ``target_rank`` is 1-based under the kernel's tie rule (relation: 1 + the number of
other tokens scoring at least the target; suppression: 1 + the number scoring strictly below
it, counted from the bottom), ``correct`` is ``target_rank <= k`` (what the score counts), and
``top_tokens`` are the head's highest (relation) or lowest (suppression) scoring tokens.
Sources, targets and top tokens are decoded tokens, as scored (with their leading space).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from headatlas.scoring.kernel.count import count_at_least
from headatlas.scoring.kernel.pairs import HeadRows
from headatlas.scoring.plan import ScoringPlan
from headatlas.store import EVIDENCE_COLUMNS

TOP_TOKENS = 5
"""Top tokens kept per evidence row."""


@dataclass(frozen=True)
class EvidenceLimits:
    """What evidence a map keeps; recorded in the manifest (a reused layer's evidence is
    recomputed when these changed)."""

    threshold: float
    right: int
    wrong: int
    top: int = TOP_TOKENS

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict for the manifest."""
        return {
            "threshold": self.threshold,
            "right": self.right,
            "wrong": self.wrong,
            "top": self.top,
        }

    @property
    def enabled(self) -> bool:
        """False when no pair would be kept."""
        return self.right + self.wrong > 0


def empty_evidence() -> pd.DataFrame:
    """An evidence table with no rows."""
    return pd.DataFrame({c: pd.Series(dtype=_DTYPES[c]) for c in EVIDENCE_COLUMNS})


_DTYPES = {
    "model": "str",
    "layer": "int64",
    "head": "int64",
    "relation": "str",
    "source": "str",
    "target": "str",
    "correct": "bool",
    "target_rank": "int64",
    "top_tokens": "object",
    "kind": "str",
}


Found = tuple[str, int, int, bool, int, list[int]]
"""One evidence pair: (relation, source id, target id, correct, target_rank, top token ids)."""


def layer_evidence(
    model: str,
    layer: int,
    heads: Sequence[dict[str, list[Found]]],
    decode: Callable[[list[int]], list[str]],
) -> pd.DataFrame:
    """Evidence rows of one layer from each head's :func:`head_evidence` (kind by kind, then
    head by head); ``decode`` turns token ids into strings."""
    found = [
        (h, *f, kind)
        for kind in KINDS
        for h, per_kind in enumerate(heads)
        for f in per_kind.get(kind, [])
    ]
    if not found:
        return empty_evidence()
    ids = sorted({i for f in found for i in (f[2], f[3], *f[6])})
    text = dict(zip(ids, decode(ids), strict=True))
    rows = [
        (model, layer, h, name, text[s], text[t], ok, rank, [text[i] for i in top], kind)
        for h, name, s, t, ok, rank, top, kind in found
    ]
    return pd.DataFrame(rows, columns=list(EVIDENCE_COLUMNS)).astype(
        {c: d for c, d in _DTYPES.items() if c != "top_tokens"}
    )


KINDS = ("relation", "suppression")
"""Evidence kinds: the relation score's pairs, the suppression score's."""


def head_evidence(
    rows: HeadRows,
    plan: ScoringPlan,
    up: torch.Tensor,
    down: torch.Tensor,
    limits: EvidenceLimits,
) -> dict[str, list[Found]]:
    """One head's evidence per kind: for every relation whose score of that kind is at least
    the threshold, the first ``limits.right`` pairs the head gets right and the first
    ``limits.wrong`` it gets wrong (the kernel's ranks ``up``/``down`` [n_pairs], plan order,
    capped at k, decide which), each with its target rank and top tokens from the source's
    full row (``rows``: the head's rows, through the B the kernel formed, if it did).

    A rank read from the row that lands on the other side of k than the kernel's decision (a
    rounding near-tie at the boundary, between two computations of one logit) is shown at
    the kernel's side (k, or k + 1): ``correct`` always agrees with the score."""
    out: dict[str, list[Found]] = {}
    if not limits.enabled or rows.Z.device.type == "meta":
        return out
    up, down, k = up.cpu(), down.cpu(), plan.pair_k
    starts = [0, *torch.bincount(plan.pair_relation, minlength=len(plan.relations)).cumsum(0)]
    for kind, hit in (("relation", up < k), ("suppression", down < k)):
        means = plan.relation_means(hit)
        picks: list[tuple[int, torch.Tensor]] = []  # (relation, pair indices: right, then wrong)
        for r in range(len(plan.relations)):
            if float(means[r]) < limits.threshold:
                continue
            idx = torch.arange(int(starts[r]), int(starts[r + 1]))
            ok = hit[idx]
            picks.append((r, torch.cat([idx[ok][: limits.right], idx[~ok][: limits.wrong]])))
        if picks:
            out[kind] = _read_pairs(rows, plan, hit, picks, kind, limits.top)
    return out


def _read_pairs(
    rows: HeadRows,
    plan: ScoringPlan,
    hit: torch.Tensor,
    picks: list[tuple[int, torch.Tensor]],
    kind: str,
    top: int,
) -> list[Found]:
    """Target rank and top tokens of the picked pairs, their source rows read in chunks."""
    pairs = torch.cat([p for _, p in picks])
    src = plan.pair_rows[pairs]
    uniq, loc = torch.unique(src, return_inverse=True)
    dev = rows.Z.device
    V = rows.B.shared.vocab
    rank = torch.empty(len(pairs), dtype=torch.int64)
    best = torch.empty(len(pairs), min(top, V), dtype=torch.int64)
    rows.plan(int(uniq.numel()))
    step = rows.chunk()
    for r0 in range(0, int(uniq.numel()), step):
        sel = ((loc >= r0) & (loc < r0 + step)).nonzero().flatten()
        logits = rows.logits(uniq[r0 : r0 + step].to(dev))
        rel = (loc[sel] - r0).to(dev)
        t = logits[rel, plan.pair_targets[pairs[sel]].to(dev)]
        ge = count_at_least(logits, t, rel)
        rank[sel] = (ge if kind == "relation" else V - ge + 1).cpu()
        ids = logits.topk(best.shape[1], dim=1, largest=kind == "relation").indices
        best[sel] = ids[rel].cpu()
    k = plan.pair_k[pairs]
    ok = hit[pairs]
    rank = torch.where(ok, rank.minimum(k), rank.maximum(k + 1))
    names = [plan.relations[r].name for r, p in picks for _ in range(len(p))]
    sources = plan.source_ids[src].tolist()
    return list(
        zip(
            names,
            sources,
            plan.pair_targets[pairs].tolist(),
            ok.tolist(),
            rank.tolist(),
            best.tolist(),
            strict=True,
        )
    )
