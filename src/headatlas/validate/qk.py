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
from headatlas.scoring.qk_labels import (
    DUPLICATE_COLUMNS,
    DUPLICATE_TARGET,
    reading_name,
)
from headatlas.scoring.recipe import Recipe, start_token
from headatlas.stats import pearson_with_interval
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
    body = getattr(hf_model, "base_model", hf_model)  # attention only: no logits needed
    before = hf_model.config._attn_implementation
    hf_model.set_attn_implementation("eager")
    try:
        with eval_mode(hf_model), torch.no_grad():
            for s in range(0, n_seqs, batch):
                out = body(input_ids=ids[s : s + batch].to(device), output_attentions=True,
                           use_cache=False)  # fmt: skip
                for layer, att in enumerate(out.attentions):  # [B, H, T, T]
                    total[layer] += att[:, :, q_pos, k_pos].double().sum((0, 2)).cpu()
    finally:
        hf_model.set_attn_implementation(before)
    return (total / (n_seqs * length)).numpy()


@dataclass
class QKValidation:
    """The QK experiment: per reading (inputs × rotary mode) the correlation over heads, and
    per head the static scores of every reading beside the dynamic one."""

    correlations: pd.DataFrame
    """inputs, rotary, score (dup_score: rank; dup_mass: attention share), r, low, high,
    n_heads, reaches_target."""
    heads: pd.DataFrame
    """layer, head, dynamic, then one static column per reading (``<inputs>/<rotary>`` for
    dup_score, ``<inputs>/<rotary>/mass`` for dup_mass)."""
    best: dict[str, Any]
    """The reading with the highest r (its inputs, rotary mode and score column, r and whether
    it reaches :data:`DUPLICATE_TARGET`)."""
    classes: pd.DataFrame | None = None
    """Key preference per token class (:func:`class_correlations`), when asked for."""


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
    classes: bool = False,
) -> QKValidation:
    """Static duplicate-token scores under every rotary mode (and each of ``inputs``) against
    the dynamic score on repeated random-token sequences: Pearson r over heads with bootstrap
    intervals. The best reading is what ``--qk-rotary`` should be. ``classes``: also the key
    preference per token class, read the best way (:func:`class_correlations`)."""
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
            for score in DUPLICATE_COLUMNS:
                static = table[score].to_numpy()
                heads[reading_name(source, rotary, score)] = static
                c = pearson_with_interval(static, dyn.ravel(), seed=seed)
                rows.append({"inputs": source, "rotary": rotary, "score": score, **c.as_dict(),
                             "reaches_target": bool(c.r >= DUPLICATE_TARGET)})  # fmt: skip
    table = pd.DataFrame(rows).rename(columns={"n": "n_heads"})
    top = table.loc[table["r"].fillna(-1).idxmax()]
    best = {"inputs": top["inputs"], "rotary": top["rotary"], "score": top["score"],
            "r": float(top["r"]), "reaches_target": bool(top["reaches_target"])}  # fmt: skip
    per_class = None
    if classes:
        opts = options.replace(inputs=best["inputs"], rotary=best["rotary"])
        per_class = class_correlations(circuits, hf_model, recipe, opts, n_seqs, seed, start)
    return QKValidation(table, heads, best, per_class)


def class_correlations(
    circuits: ModelCircuits,
    hf_model: Any,
    recipe: Recipe,
    options: QKOptions,
    n_seqs: int = 16,
    seed: int = 0,
    start: int | str | None = "auto",
) -> pd.DataFrame:
    """Per token class: static key-preference AUC (class keys against the sample's keys, over
    the sample's queries) against the dynamic AUC (:func:`dynamic_class_auc`), Pearson r over
    heads with bootstrap interval: class, n_tokens, r, low, high, static_mean, dynamic_mean,
    null_mean (the static AUC of random classes of equal size, mean over heads) and heads_p05
    (heads whose static AUC beats the null at p <= 0.05)."""
    from headatlas.qk_circuits import read_qk
    from headatlas.scoring.qk import class_columns, position_shift, sample_and_members
    from headatlas.scoring.qk_classes import token_classes

    classes = token_classes(circuits)
    dyn = dynamic_class_auc(hf_model, circuits, classes, n_seqs=n_seqs, seed=seed)
    ids, where = sample_and_members(circuits, options, classes)
    x_of = sample_inputs(circuits, ids, recipe, options, hf_model, start)
    n = options.n_tokens
    layers: list[dict[str, torch.Tensor]] = []
    shift = position_shift(circuits, options)
    with torch.no_grad():
        for layer in range(circuits.cfg.n_layers):
            X = x_of(layer).float() if shift is None else x_of(layer).float() + shift
            layers.append(class_columns(read_qk(circuits, layer), X, n, where, options,
                                        recipe.pre_norm))  # fmt: skip
    rows = []
    for j, (name, cids) in enumerate(classes.items()):
        col = {c: torch.stack([t[c][:, j] for t in layers]).numpy() for c in layers[0]}
        st = col["class_auc"]
        c = pearson_with_interval(st.ravel(), dyn[name].ravel(), seed=seed)
        rows.append({"class": name, "n_tokens": len(cids), "r": c.r, "low": c.low,
                     "high": c.high, "static_mean": float(st.mean()),
                     "dynamic_mean": float(dyn[name].mean()),
                     "null_mean": float(col["class_null_mean"].mean()),
                     "heads_p05": int((col["class_p_value"] <= 0.05).sum())})  # fmt: skip
    return pd.DataFrame(rows)


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
    body = getattr(hf_model, "base_model", hf_model)  # attention only: no logits needed
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
                    att = body(input_ids=seqs[s : s + batch].to(device),
                               output_attentions=True, use_cache=False).attentions  # fmt: skip
                    stacked = torch.stack(att).double().cpu()  # [L, B, H, T, T]
                    for b in range(stacked.shape[1]):
                        m = mask[s + b]
                        for q in range(first + length // 2, first + length):
                            keys = torch.arange(q)  # earlier keys, the query itself left out
                            if not is_start:
                                keys = keys[keys >= first]
                            cls, other = keys[m[keys]], keys[~m[keys]]
                            if len(cls) == 0 or len(other) == 0:
                                continue
                            a = stacked[:, b, :, q]  # [L, H, T]
                            total += mann_whitney(a[..., cls], a[..., other])
                            count += 1
                out[name] = (total / max(count, 1)).numpy()
    finally:
        hf_model.set_attn_implementation(before)
    return out
