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
import torch

from headatlas.circuits import ModelCircuits
from headatlas.scoring.recipe import start_token
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
