"""Key preference for token classes: how strongly a head's queries prefer keys of a class
(first names, countries, cities, numbers, adjectives, verbs, punctuation, function words, the
start token) over random keys, as an AUC (0.5 = no preference).

Static: the sample's queries (x̃ through the recipe) against the class's keys and the sample's
keys, the rotary handled as in :mod:`headatlas.scoring.qk`; per query the Mann-Whitney AUC of
class keys against random keys, averaged over queries. The classes are built from the built-in
relation data and the tokenizer: single-token words only, with a leading space (the start
token and punctuation as the tokenizer spells them).
"""

from __future__ import annotations

from typing import Any

import torch

from headatlas.circuits import ModelCircuits
from headatlas.qk_circuits import LayerQK
from headatlas.scoring.qk import QKOptions, head_logits
from headatlas.scoring.recipe import start_token

_FROM_RELATIONS = {
    "first_names": ("name_copying", 0),
    "countries": ("country_capital", 0),
    "cities": ("country_capital", 1),
    "adjectives": ("adjective_comparative", 0),
    "verbs": ("verb_past_tense", 0),
}
"""Class -> (built-in relation, side: 0 sources, 1 targets)."""
FUNCTION_WORDS = ("the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "on", "with",
                  "as", "was", "at", "by", "from", "or", "an", "be", "this", "which", "but",
                  "not", "are", "his", "her", "they", "we", "you")  # fmt: skip
PUNCTUATION = (".", ",", "!", "?", ";", ":", "-", "(", ")", '"', "'", " .", " ,", " -", " (",
               " \"", "\n")  # fmt: skip
MAX_CLASS = 128


def token_classes(circuits: ModelCircuits, max_size: int = MAX_CLASS) -> dict[str, list[int]]:
    """Class name -> token ids (at most ``max_size``, the first single-token words)."""
    from headatlas.relations import resolve_relations

    tok = circuits.tokenizer
    V = circuits.cfg.vocab_size

    def single(words: Any, space: bool = True) -> list[int]:
        ids: list[int] = []
        for w in words:
            enc = tok.encode((" " + w) if space else w, add_special_tokens=False)
            if len(enc) == 1 and enc[0] < V and enc[0] not in ids:
                ids.append(int(enc[0]))
        return ids[:max_size]

    classes: dict[str, list[int]] = {}
    rels = {
        r.name: r for r in resolve_relations(sorted({n for n, _ in _FROM_RELATIONS.values()}), [])
    }
    for name, (rel, side) in _FROM_RELATIONS.items():
        classes[name] = single(p[side] for p in rels[rel].pairs)
    classes["numbers"] = single([str(n) for n in range(1700, 2030)] + [str(n) for n in range(100)])
    if len(classes["numbers"]) < 10:  # tokenizers that split numbers into digits
        classes["numbers"] = single([str(n) for n in range(10)], space=False)
    classes["function_words"] = single(FUNCTION_WORDS)
    classes["punctuation"] = single(PUNCTUATION, space=False)
    bos = start_token(tok)
    if bos is not None:
        classes["start"] = [bos]
    return {k: v for k, v in classes.items() if v}


def class_auc(
    qk: LayerQK,
    Xq: torch.Tensor,
    Xc: torch.Tensor,
    Xr: torch.Tensor,
    options: QKOptions,
    pre_norm: bool = True,
) -> torch.Tensor:
    """Per head, the mean over queries Xq [n, d] of P(logit of a class key Xc [c, d] > logit of
    a random key Xr [r, d]) (ties count half): [H]."""
    sc = head_logits(qk, Xq, Xc, options, pre_norm)  # [H, n, c]
    sr = head_logits(qk, Xq, Xr, options, pre_norm)  # [H, n, r]
    return mann_whitney(sc, sr).mean(-1)


def mann_whitney(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """P(a > b) + P(a = b)/2 per row, for a [..., c] against b [..., r] -> [...]."""
    bs = b.sort(-1).values.contiguous()
    below = torch.searchsorted(bs, a.contiguous(), right=False)  # b < a
    upto = torch.searchsorted(bs, a.contiguous(), right=True)  # b <= a
    wins = below.double() + 0.5 * (upto - below).double()
    return wins.sum(-1) / (a.shape[-1] * b.shape[-1])


def key_aucs(
    qk: LayerQK,
    Xq: torch.Tensor,
    Xk: torch.Tensor,
    Xr: torch.Tensor,
    options: QKOptions,
    pre_norm: bool = True,
) -> torch.Tensor:
    """Per head and key of Xk [m, d], the mean over queries Xq [n, d] of P(its logit > the
    logit of a random key of Xr [r, d]) (ties count half): [H, m]. A class's AUC is the mean of
    its members' (the same number as :func:`class_auc`), so any set of keys is scored at once."""
    sk = head_logits(qk, Xq, Xk, options, pre_norm)  # [H, n, m]
    sr = head_logits(qk, Xq, Xr, options, pre_norm).sort(-1).values.contiguous()  # [H, n, r]
    below = torch.searchsorted(sr, sk.contiguous(), right=False)
    upto = torch.searchsorted(sr, sk.contiguous(), right=True)
    wins = below.double() + 0.5 * (upto - below).double()
    return wins.mean(1) / sr.shape[-1]


CLASS_NULL_COLUMNS = ("class_null_mean", "class_null_max", "class_p_value", "class_z")
"""The null's columns of qk_scores.parquet, each a list aligned with ``classes``."""


def null_draws(pool: int, size: int, n_draws: int, seed: int) -> torch.Tensor:
    """``n_draws`` random classes of ``size`` distinct indices into a pool of ``pool`` keys
    (drawn with replacement only when the class is larger than the pool), seeded by
    (seed, size): [n_draws, size]."""
    g = torch.Generator().manual_seed(seed * 100_003 + size)
    if size > pool:
        return torch.randint(0, pool, (n_draws, size), generator=g)
    return torch.rand(n_draws, pool, generator=g).argsort(1)[:, :size]


def class_null(
    auc: torch.Tensor, pool_aucs: torch.Tensor, size: int, n_draws: int, seed: int
) -> dict[str, torch.Tensor]:
    """A class's AUC [H] against random classes of the same ``size`` drawn from the pool of
    random keys (their per-key AUCs ``pool_aucs`` [H, P], :func:`key_aucs`): null mean and max,
    empirical p = (1 + #{null >= auc}) / (1 + n_draws) and z = (auc − null mean) / null std."""
    draws = pool_aucs[:, null_draws(pool_aucs.shape[1], size, n_draws, seed)].mean(-1)  # [H, R]
    mean, std = draws.mean(-1), draws.std(-1)
    return {
        "class_null_mean": mean,
        "class_null_max": draws.max(-1).values,
        "class_p_value": (1 + (draws >= auc[:, None]).sum(-1)).double() / (1 + n_draws),
        "class_z": (auc - mean) / std.clamp_min(1e-9),
    }
