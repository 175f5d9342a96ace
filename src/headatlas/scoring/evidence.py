"""Evidence behind a score: the pairs a head gets right and a sample it gets wrong, each with
the head's top tokens for the source and the target's rank.

Kept for every (head, relation) whose relation score (kind ``relation``) or suppression score
(kind ``suppression``) is at least the label threshold: the first ``right`` pairs the head gets
right and the first ``wrong`` it gets wrong, in the relation's pair order. Only those pairs'
source rows are computed, in full (logits over the whole vocabulary), a few dozen rows per cell
against the map's thousands.

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

from headatlas.scoring.kernel.factored import Factored
from headatlas.scoring.plan import ScoringPlan
from headatlas.store import EVIDENCE_COLUMNS

TOP_TOKENS = 5
"""Top tokens kept per evidence row."""

_CHUNK = 64  # source rows per full-logit product


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


def layer_evidence(
    model: str,
    layer: int,
    heads: Sequence[tuple[torch.Tensor, Factored]],
    plan: ScoringPlan,
    scores: pd.DataFrame,
    limits: EvidenceLimits,
    decode: Callable[[list[int]], list[str]],
) -> pd.DataFrame:
    """Evidence rows of one layer: ``heads`` are :func:`~headatlas.scoring.relation_scores.
    head_readouts` (Z over ``plan``'s source rows), ``scores`` the layer's rows of the scores
    table (head, relation, score, suppression_score); ``decode`` turns token ids into strings."""
    if not limits.enabled or not heads or heads[0][0].device.type == "meta":
        return empty_evidence()
    row_of = {int(s): i for i, s in enumerate(plan.source_ids.tolist())}
    by_name = {r.name: r for r in plan.relations}
    found: list[tuple[int, str, int, int, bool, int, list[int], str]] = []
    for kind, column in (("relation", "score"), ("suppression", "suppression_score")):
        cells = scores[scores[column] >= limits.threshold]
        for head, name in zip(cells["head"].tolist(), cells["relation"].tolist(), strict=True):
            rel = by_name.get(name)
            if rel is None:
                continue
            Z, B = heads[int(head)]
            for pair in _cell_pairs(
                Z, B, rel.source_ids, rel.target_ids, rel.k, row_of, kind, limits
            ):
                found.append((int(head), name, *pair, kind))
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


def _cell_pairs(
    Z: torch.Tensor,
    B: Factored,
    sources: Sequence[int],
    targets: Sequence[int],
    k: int,
    row_of: dict[int, int],
    kind: str,
    limits: EvidenceLimits,
) -> list[tuple[int, int, bool, int, list[int]]]:
    """(source, target, correct, target_rank, top ids) of the first ``limits.right`` pairs
    right and the first ``limits.wrong`` wrong, scanning the relation's pairs in chunks."""
    right: list[tuple[int, int, bool, int, list[int]]] = []
    wrong: list[tuple[int, int, bool, int, list[int]]] = []
    top = min(limits.top, B.shape[1])
    for c0 in range(0, len(sources), _CHUNK):
        if len(right) >= limits.right and len(wrong) >= limits.wrong:
            break
        src = list(sources[c0 : c0 + _CHUNK])
        tgt = torch.tensor(targets[c0 : c0 + _CHUNK], device=Z.device)
        rows = torch.tensor([row_of[s] for s in src], device=Z.device)
        logits = (Z[rows] @ B.W) @ B.U  # [c, V]: the same product as the kernel's full rows
        t = logits.gather(1, tgt[:, None])
        if kind == "relation":
            rank = (logits >= t).sum(1)
            best = logits.topk(top, dim=1).indices
        else:
            rank = (logits < t).sum(1) + 1
            best = logits.topk(top, dim=1, largest=False).indices
        for i, (s, r) in enumerate(zip(src, rank.tolist(), strict=True)):
            ok = r <= k
            keep = right if ok else wrong
            if len(keep) < (limits.right if ok else limits.wrong):
                keep.append((s, int(tgt[i]), ok, int(r), best[i].tolist()))
    return right + wrong
