"""Dynamic QK scores at inference and their correlation with the static ones.

The dynamic duplicate-token score of a head is TransformerLens's: on random-token sequences
repeated once (after the start token), the mean attention from each token of the second copy to
the same token in the first copy. Attention patterns come from the model's own eager attention
(``output_attentions``), so every family's masking, rotary and soft-capping are the model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from headatlas.circuits import ModelCircuits
from headatlas.scoring.qk import ROTARY_MODES, QKOptions, qk_scores, sample_inputs, sample_tokens
from headatlas.scoring.recipe import Recipe, start_token
from headatlas.validate.hooks import eval_mode


def repeated_sequences(
    circuits: ModelCircuits,
    n_seqs: int,
    length: int,
    seed: int,
    start: int | str | None = "auto",
) -> tuple[torch.Tensor, int]:
    """``n_seqs`` random-token sequences of ``length`` tokens repeated once, after the start
    token (``start``: "auto" = the tokenizer's BOS, an id, or None for none): ([n_seqs, T]
    ids, the position of the first copy)."""
    g = torch.Generator().manual_seed(seed)
    V = circuits.cfg.vocab_size
    half = torch.randint(0, V, (n_seqs, length), generator=g)
    cols = [half, half]
    bos = start_token(circuits.tokenizer) if start == "auto" else start
    if bos is not None:
        cols.insert(0, torch.full((n_seqs, 1), int(bos), dtype=torch.int64))
    return torch.cat(cols, 1), int(bos is not None)


def dynamic_duplicate_scores(
    hf_model: Any,
    circuits: ModelCircuits,
    n_seqs: int = 16,
    length: int = 40,
    seed: int = 0,
    batch: int = 8,
    start: int | str | None = "auto",
) -> np.ndarray:
    """Mean attention from the second copy of each token to its first copy, per head:
    [n_layers, n_heads]."""
    ids, first = repeated_sequences(circuits, n_seqs, length, seed, start)
    L, H = circuits.cfg.n_layers, circuits.cfg.n_heads
    total = torch.zeros(L, H, dtype=torch.float64)
    q_pos = torch.arange(first + length, first + 2 * length)
    k_pos = q_pos - length
    device = next(hf_model.parameters()).device
    before = hf_model.config._attn_implementation
    hf_model.set_attn_implementation("eager")
    try:
        with eval_mode(hf_model), torch.no_grad():
            for s in range(0, n_seqs, batch):
                out = hf_model(input_ids=ids[s : s + batch].to(device), output_attentions=True,
                               use_cache=False)  # fmt: skip
                for layer, att in enumerate(out.attentions):  # [B, H, T, T]
                    total[layer] += att[:, :, q_pos, k_pos].double().sum((0, 2)).cpu()
    finally:
        hf_model.set_attn_implementation(before)
    return (total / (n_seqs * length)).numpy()


@dataclass(frozen=True)
class Correlation:
    """Pearson r over heads with a bootstrap interval (heads resampled)."""

    r: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict for summaries."""
        return {"r": self.r, "low": self.low, "high": self.high, "n": self.n}


def pearson_with_interval(
    static: Sequence[float] | np.ndarray,
    dynamic: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
) -> Correlation:
    """Pearson r between two per-head scores and its 95% bootstrap interval."""
    a = np.asarray(static, dtype=np.float64).ravel()
    b = np.asarray(dynamic, dtype=np.float64).ravel()
    r = _pearson(a, b)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    boots = np.array([_pearson(a[i], b[i]) for i in idx])
    boots = boots[np.isfinite(boots)]
    low, high = np.percentile(boots, [2.5, 97.5]) if len(boots) else (np.nan, np.nan)
    return Correlation(float(r), float(low), float(high), len(a))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


DUPLICATE_TARGET = 0.8
"""The r over heads a static duplicate-token reading must reach before heads are labelled by it."""


@dataclass
class QKValidation:
    """The QK experiment: per reading (inputs × rotary mode) the correlation over heads, and
    per head the static scores of every reading beside the dynamic one."""

    correlations: pd.DataFrame
    """inputs, rotary, r, low, high, n_heads, reaches_target."""
    heads: pd.DataFrame
    """layer, head, dynamic, then one static column per reading (``<inputs>/<rotary>``)."""
    best: dict[str, Any]
    """The reading with the highest r (its inputs and rotary mode, r and whether it reaches
    :data:`DUPLICATE_TARGET`)."""


def validate_qk(
    circuits: ModelCircuits,
    hf_model: Any,
    recipe: Recipe,
    options: QKOptions | None = None,
    inputs: Sequence[str] = ("recipe", "context"),
    n_seqs: int = 16,
    length: int = 40,
    seed: int = 0,
    start: int | str | None = "auto",
) -> QKValidation:
    """Static duplicate-token scores under every rotary mode (and each of ``inputs``) against
    the dynamic score on repeated random-token sequences: Pearson r over heads with bootstrap
    intervals. The best reading is what ``--qk-rotary`` should be."""
    options = options or QKOptions()
    dyn = dynamic_duplicate_scores(hf_model, circuits, n_seqs, length, seed, start=start)
    L, H = circuits.cfg.n_layers, circuits.cfg.n_heads
    heads = pd.DataFrame({"layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L),
                          "dynamic": dyn.ravel()})  # fmt: skip
    rows: list[dict[str, Any]] = []
    ids = sample_tokens(circuits, options.n_tokens, options.seed)
    for source in inputs:
        opts = options.replace(inputs=source)
        x_of = sample_inputs(circuits, ids, recipe, opts, hf_model, start)
        for rotary in ROTARY_MODES:
            table = qk_scores(circuits, opts.replace(rotary=rotary), recipe, hf_model,
                              salient=False, x_of=x_of)  # fmt: skip
            static = table["dup_score"].to_numpy()
            heads[f"{source}/{rotary}"] = static
            c = pearson_with_interval(static, dyn.ravel(), seed=seed)
            rows.append({"inputs": source, "rotary": rotary, **c.as_dict(),
                         "reaches_target": bool(c.r >= DUPLICATE_TARGET)})  # fmt: skip
    table = pd.DataFrame(rows).rename(columns={"n": "n_heads"})
    top = table.loc[table["r"].fillna(-1).idxmax()]
    best = {"inputs": top["inputs"], "rotary": top["rotary"], "r": float(top["r"]),
            "reaches_target": bool(top["reaches_target"])}  # fmt: skip
    return QKValidation(table, heads, best)


def qk_markdown(v: QKValidation, title: str) -> str:
    """The correlation table as Markdown, with the target verdict."""
    lines = [f"### {title}", "",
             "| inputs | rotary | r | 95% interval | heads |", "|---|---|---|---|---|"]  # fmt: skip
    for row in v.correlations.to_dict("records"):
        lines.append(f"| {row['inputs']} | {row['rotary']} | {row['r']:.3f} | "
                     f"{row['low']:.2f} – {row['high']:.2f} | {row['n_heads']} |")  # fmt: skip
    b = v.best
    verdict = (
        f"reaches the r >= {DUPLICATE_TARGET} target"
        if b["reaches_target"]
        else f"is below the r >= {DUPLICATE_TARGET} target: heads are not labelled by it"
    )
    lines += ["", f"Best reading: {b['inputs']} inputs, rotary {b['rotary']} "
              f"(r = {b['r']:.3f}) {verdict}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def dynamic_class_auc(
    hf_model: Any,
    circuits: ModelCircuits,
    classes: dict[str, list[int]],
    n_seqs: int = 16,
    length: int = 40,
    share: float = 0.25,
    seed: int = 0,
    batch: int = 8,
) -> dict[str, np.ndarray]:
    """Per class, the attention-side AUC per head [n_layers, n_heads]: in random-token prompts
    where a ``share`` of positions hold class tokens, for each query (the second half of the
    prompt) P(attention to a class key > attention to another key), earlier keys only, the
    start token left out (for the ``start`` class: the start token against the others)."""
    from headatlas.scoring.qk_classes import mann_whitney

    g = torch.Generator().manual_seed(seed + 7)
    V = circuits.cfg.vocab_size
    bos = start_token(circuits.tokenizer)
    first = int(bos is not None)
    device = next(hf_model.parameters()).device
    L, H = circuits.cfg.n_layers, circuits.cfg.n_heads
    out: dict[str, np.ndarray] = {}
    before = hf_model.config._attn_implementation
    hf_model.set_attn_implementation("eager")
    try:
        with eval_mode(hf_model), torch.no_grad():
            for name, ids in classes.items():
                seqs = torch.randint(0, V, (n_seqs, length), generator=g)
                is_start = name == "start"
                mask = torch.zeros(n_seqs, length, dtype=torch.bool)
                if not is_start:
                    mask = torch.rand(n_seqs, length, generator=g) < share
                    pick = torch.randint(0, len(ids), (n_seqs, length), generator=g)
                    seqs = torch.where(mask, torch.tensor(ids)[pick], seqs)
                if bos is not None:
                    seqs = torch.cat([torch.full((n_seqs, 1), bos), seqs], 1)
                    mask = torch.cat([torch.full((n_seqs, 1), is_start), mask], 1)
                total = torch.zeros(L, H, dtype=torch.float64)
                count = 0
                for s in range(0, n_seqs, batch):
                    att = hf_model(input_ids=seqs[s : s + batch].to(device),
                                   output_attentions=True, use_cache=False).attentions  # fmt: skip
                    for b in range(att[0].shape[0]):
                        m = mask[s + b]
                        for q in range(first + length // 2, first + length):
                            keys = torch.arange(q)  # earlier keys, the query itself left out
                            if not is_start:
                                keys = keys[keys >= first]
                            cls, other = keys[m[keys]], keys[~m[keys]]
                            if len(cls) == 0 or len(other) == 0:
                                continue
                            for layer in range(L):
                                a = att[layer][b, :, q].double().cpu()  # [H, T]
                                total[layer] += mann_whitney(a[:, cls], a[:, other])
                            count += 1
                out[name] = (total / max(count, 1)).numpy()
    finally:
        hf_model.set_attn_implementation(before)
    return out
