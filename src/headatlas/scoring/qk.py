"""Static QK scores: where each head attends, read from its weights through the recipe.

For a sample of tokens the layer's input x̃ (the recipe's embedding mode, or ``context``:
residuals of the tokens at later positions of random-token contexts) gives every head's queries
and keys (:mod:`headatlas.qk_circuits`). The query of a token at a distance δ after a key sees
q · R(−δ) k; a static reading has no positions, so ``rotary`` chooses how δ is handled:

- ``none``: no rotation (δ = 0);
- ``offsets``: the logit averaged over δ = 1 … ``max_offset`` (linear in k: one key map);
- ``slow``: only the frequency pairs that turn less than a quarter turn over ``max_offset``
  positions, unrotated; the faster pairs are dropped.

Learned absolute positions (GPT-2) are handled on the same switch: ``none`` leaves them out of
the recipe's x̃; ``offsets`` and ``slow`` add their mean over positions 1 … ``max_offset``
(:func:`~headatlas.qk_circuits.mean_position`) to every token's x̃ (in-context inputs carry
their own positions).

Scores per head:

- ``dup_score``: the share of sample tokens whose own key ranks in the top ``top_k`` of their
  query's row over the sample (a head that attends to earlier copies of the current token);
- ``dup_mass``: the attention share a token's query gives its own key in a softmax against
  ``context_keys`` random keys of the sample (mean over tokens): the duplicate-token reading
  as attention mass, as the dynamic score is, rather than a rank;
- ``salient_keys`` / ``salient_queries``: the tokens a head most wants to attend to (keys with
  the highest mean logit over the sample's queries, q̄ · k) and the tokens whose queries most
  want to attend (q · k̄), over the whole vocabulary through the recipe's weights-only x̃;
- ``classes`` / ``class_auc``: key preference per token class (:mod:`headatlas.scoring.
  qk_classes`), the AUC of the class's keys against the sample's keys over the sample's
  queries, with its null from random classes of equal size drawn from the sample
  (``class_null_mean``, ``class_null_max``, ``class_p_value``, ``class_z``), lists aligned
  with ``classes``.

Only [n, n] logits per head for the sample and [V] vectors for the salient tokens: no V × V.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from headatlas.circuits import ModelCircuits
from headatlas.errors import OptionError
from headatlas.qk_circuits import LayerQK, mean_position, read_qk
from headatlas.scoring.recipe import Recipe, embedding_of
from headatlas.store import (
    QK_CLASS_COLUMNS,
    QK_COLUMNS,
    QK_EXTRA_COLUMNS,
    QK_SCORES,
    write_parquet_atomic,
)

if TYPE_CHECKING:
    from headatlas.scoring.options import MapOptions

ROTARY_MODES = ("none", "offsets", "slow")
"""How a static reading handles the rotary position (see the module docstring)."""
QK_INPUTS = ("recipe", "context")
"""Where the sample's x̃ comes from: the recipe's embedding mode, or in-context residuals."""


@dataclass(frozen=True)
class QKOptions:
    """How static QK scores are read (recorded in the manifest beside the OV options)."""

    rotary: str = field(default="offsets", metadata={"choices": ROTARY_MODES})
    """Rotary handling of a static reading: none, offsets (averaged over 1..max_offset) or slow
    (only the slow frequency pairs)."""
    max_offset: int = 128
    """The largest query-key distance the ``offsets`` and ``slow`` readings cover."""
    inputs: str = field(default="recipe", metadata={"choices": QK_INPUTS})
    """x̃ of the sample: recipe (the map's embedding mode) or context (each token's residual
    at a later position of a random-token context: needs a forward pass)."""
    n_tokens: int = 512
    """Sample tokens for the duplicate-token score."""
    top_k: int = 1
    """A token's own key counts when it ranks in the top k of its query's row."""
    context_keys: int = 40
    """Random keys the own key competes with in ``dup_mass`` (the context a query sees)."""
    n_salient: int = 10
    """Salient keys and queries kept per head."""
    seed: int = 0
    """Seed of the token sample (and of the random classes of the class null)."""
    classes: bool = True
    """Also the key preference per token class with its null (needs the tokenizer)."""
    class_null: int = 1000
    """Random classes of equal size per class for the class null (drawn from the sample)."""

    def __post_init__(self) -> None:
        if self.rotary not in ROTARY_MODES:
            raise OptionError(
                f"QK rotary mode '{self.rotary}' is unknown: use one of {', '.join(ROTARY_MODES)}"
            )
        if self.inputs not in QK_INPUTS:
            raise OptionError(
                f"QK inputs '{self.inputs}' are unknown: use one of {', '.join(QK_INPUTS)}"
            )
        if not isinstance(self.classes, bool):
            raise OptionError(f"QK option classes must be True or False, got {self.classes!r}")
        for name in ("max_offset", "n_tokens", "top_k", "context_keys", "n_salient", "class_null"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise OptionError(f"QK option {name} must be a whole number >= 1, got {v!r}")
        if self.top_k > self.n_tokens:
            raise OptionError(
                f"QK option top_k={self.top_k} exceeds n_tokens={self.n_tokens}: lower top_k"
            )

    def replace(self, **changes: Any) -> QKOptions:
        """A copy with some fields changed."""
        return QKOptions(**{**asdict(self), **changes})

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for manifests."""
        return asdict(self)


def key_weights(qk: LayerQK, options: QKOptions) -> torch.Tensor | None:
    """The per-pair (cos, sin) weights the keys of a layer pass under ``options.rotary``
    (None: no rotation)."""
    if qk.rotary.rot_dims == 0 or options.rotary == "none":
        return None
    offsets = torch.arange(1, options.max_offset + 1)
    slow = math.pi / 2 if options.rotary == "slow" else None
    return qk.rotary.key_map(offsets, slow_only=slow)


def head_logits(
    qk: LayerQK, Xq: torch.Tensor, Xk: torch.Tensor, options: QKOptions, pre_norm: bool = True
) -> torch.Tensor:
    """Static attention logits of every head, queries of Xq [n, d] against keys of Xk [m, d]:
    [H, n, m] (scaled and soft-capped)."""
    q = qk.queries(Xq, pre_norm)
    k = qk.keys(Xk, pre_norm)
    w = key_weights(qk, options)
    if w is not None:
        k = qk.rotary.apply_key_map(k, w)
    return qk.cap(torch.bmm(q, k.transpose(1, 2)) * qk.scale)


def duplicate_scores(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Share of rows whose diagonal entry ranks in the top k of the row, per head: logits
    [H, n, n] -> [H]. Rank = number of entries strictly above the diagonal's."""
    diag = logits.diagonal(dim1=1, dim2=2)  # [H, n]
    above = (logits > diag[..., None]).sum(-1)
    return (above < top_k).to(torch.float64).mean(-1)


def duplicate_mass(logits: torch.Tensor, context_keys: int) -> torch.Tensor:
    """Mean over rows of the softmax share of the diagonal entry against ``context_keys`` keys
    at the row's mean off-diagonal exp-logit, per head: logits [H, n, n] -> [H].
    share = e^d / (e^d + N · mean_{j≠i} e^{l_ij}), in log space."""
    n = logits.shape[-1]
    diag = logits.diagonal(dim1=1, dim2=2)  # [H, n]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    off = logits.masked_fill(eye, -torch.inf).logsumexp(-1) - math.log(n - 1)  # log mean e^l
    rest = off + math.log(context_keys)
    return torch.sigmoid(diag - rest).to(torch.float64).mean(-1)


def sample_tokens(circuits: ModelCircuits, n: int, seed: int) -> torch.Tensor:
    """``n`` distinct token ids drawn uniformly from the vocabulary, the special tokens (ids the
    tokenizer marks special) left out where the tokenizer is loaded."""
    V = circuits.cfg.vocab_size
    g = torch.Generator().manual_seed(seed)
    special: set[int] = set()
    tok = circuits._tokenizer
    if tok is not None:
        special = {int(i) for i in getattr(tok, "all_special_ids", []) if i is not None}
    perm = torch.randperm(V, generator=g)
    keep = perm[~torch.isin(perm, torch.tensor(sorted(special), dtype=perm.dtype))]
    if len(keep) < n:
        raise OptionError(f"QK sample of {n} tokens exceeds the vocabulary of {V}: lower it")
    return keep[:n].sort().values


def context_inputs(
    circuits: ModelCircuits,
    ids: torch.Tensor,
    hf_model: Any,
    seed: int,
    context: int = 16,
    start: int | str | None = "auto",
) -> torch.Tensor:
    """Each layer's input residual at token t placed after ``context`` random tokens (after the
    start token where the tokenizer has one), for every t in ``ids``: [n_layers, n, d].
    In-context residuals, unlike ``[BOS, t]`` alone, carry what a real prompt gives a token.
    ``start``: "auto" = the tokenizer's BOS, an id, or None for no start token."""
    from headatlas.scoring.recipe import start_token

    g = torch.Generator().manual_seed(seed + 1)
    V = circuits.cfg.vocab_size
    n = len(ids)
    pre = torch.randint(0, V, (n, context), generator=g)
    cols = [pre, ids[:, None].to(torch.int64)]
    bos = start_token(circuits.tokenizer) if start == "auto" else start
    if bos is not None:
        cols.insert(0, torch.full((n, 1), int(bos), dtype=torch.int64))
    seqs = torch.cat(cols, 1)
    device = next(hf_model.parameters()).device
    out = torch.empty(circuits.cfg.n_layers, n, circuits.cfg.d_model)
    body = getattr(hf_model, "base_model", hf_model)  # no logits: Gemma's 262k-row head is costly
    with torch.no_grad():
        for s in range(0, n, 64):
            res = body(input_ids=seqs[s : s + 64].to(device), output_hidden_states=True,
                       use_cache=False)  # fmt: skip
            for layer in range(circuits.cfg.n_layers):
                out[layer, s : s + 64] = res.hidden_states[layer][:, -1].float().cpu()
    return out


def sample_inputs(
    circuits: ModelCircuits,
    ids: torch.Tensor,
    recipe: Recipe,
    options: QKOptions,
    hf_model: Any = None,
    start: int | str | None = "auto",
) -> Callable[[int], torch.Tensor]:
    """x̃ [n, d] of the sample ``ids`` for each layer, as a function of the layer index."""
    if options.inputs == "context":
        if hf_model is None:
            from headatlas.weights.transformers_model import inference_model

            hf_model = inference_model(circuits, circuits, torch.device("cpu"))
        ctx = context_inputs(circuits, ids, hf_model, options.seed, start=start)
        return lambda layer: ctx[layer]
    from headatlas.scoring.recipe import SourceInputs

    inputs = SourceInputs(recipe, circuits, ids, hf_model, start)
    return inputs.layer


def qk_scores(
    circuits: ModelCircuits,
    options: QKOptions | None = None,
    recipe: Recipe | None = None,
    hf_model: Any = None,
    layers: Sequence[int] | None = None,
    salient: bool = True,
    start: int | str | None = "auto",
    x_of: Callable[[int], torch.Tensor] | None = None,
    classes: Mapping[str, Sequence[int]] | None = None,
) -> pd.DataFrame:
    """Static QK scores of every head (columns :data:`headatlas.store.QK_COLUMNS`, then
    :data:`~headatlas.store.QK_EXTRA_COLUMNS` and :data:`~headatlas.store.QK_CLASS_COLUMNS`),
    one row per head. ``hf_model`` and ``start``
    are for the inputs that run the model (``context``, and the recipe's ``forward`` mode);
    ``classes``: class name -> token ids for the key preference and its null (None: none, the
    class columns hold empty lists); ``x_of``: x̃ per layer when already formed, of the
    sample then the classes' members (:func:`sample_and_members`)."""
    options = options or QKOptions()
    recipe = recipe or Recipe()
    ids, where = sample_and_members(circuits, options, classes)
    n = options.n_tokens
    if x_of is None:
        x_of = sample_inputs(circuits, ids, recipe, options, hf_model, start)
    vocab_x: dict[str, torch.Tensor] = {}
    rows: list[dict[str, Any]] = []
    shift = position_shift(circuits, options)
    for layer in layers if layers is not None else range(circuits.cfg.n_layers):
        qk = read_qk(circuits, layer)
        X = x_of(layer).float()
        if shift is not None:
            X = X + shift
        with torch.no_grad():
            logits = head_logits(qk, X[:n], X[:n], options, recipe.pre_norm)
            dup = duplicate_scores(logits, options.top_k)
            mass = duplicate_mass(logits, options.context_keys)
            keys, queries = (
                salient_tokens(circuits, qk, X[:n], recipe, options, vocab_x)
                if salient
                else ([[]] * qk.n_heads, [[]] * qk.n_heads)
            )
            prefs = class_columns(qk, X, n, where, options, recipe.pre_norm) if where else {}
        for h in range(qk.n_heads):
            row = {"model": circuits.source.name, "layer": layer, "head": h,
                   "dup_score": float(dup[h]), "dup_mass": float(mass[h]),
                   "salient_keys": keys[h],
                   "salient_queries": queries[h], "classes": list(where)}  # fmt: skip
            for col in QK_CLASS_COLUMNS[1:]:
                row[col] = [float(v) for v in prefs[col][h]] if where else []
            rows.append(row)
    return pd.DataFrame(rows, columns=[*QK_COLUMNS, *QK_EXTRA_COLUMNS, *QK_CLASS_COLUMNS])


def position_shift(circuits: ModelCircuits, options: QKOptions) -> torch.Tensor | None:
    """What the reading adds to the recipe's x̃ for learned absolute positions: their mean over
    1..max_offset under the ``offsets`` and ``slow`` readings of a model that has them, else
    None (rotary models, ``none``, in-context inputs)."""
    if options.inputs != "recipe" or options.rotary == "none":
        return None
    return mean_position(circuits, options.max_offset)


def sample_and_members(
    circuits: ModelCircuits, options: QKOptions, classes: Mapping[str, Sequence[int]] | None
) -> tuple[torch.Tensor, dict[str, list[int]]]:
    """The token ids whose x̃ the QK scores read: the sample (:func:`sample_tokens`), then each
    class member not in it; and per class the rows of its members in those ids."""
    sample = sample_tokens(circuits, options.n_tokens, options.seed)
    if not classes:
        return sample, {}
    row = {int(t): i for i, t in enumerate(sample.tolist())}
    extra = sorted({int(t) for ids in classes.values() for t in ids} - set(row))
    row.update({t: len(sample) + j for j, t in enumerate(extra)})
    ids = torch.cat([sample, torch.tensor(extra, dtype=sample.dtype)])
    return ids, {name: [row[int(t)] for t in members] for name, members in classes.items()}


def class_columns(
    qk: LayerQK,
    X: torch.Tensor,
    n: int,
    where: Mapping[str, Sequence[int]],
    options: QKOptions,
    pre_norm: bool = True,
) -> dict[str, torch.Tensor]:
    """Per class (in ``where``'s order: rows of X holding its members; the first ``n`` rows are
    the sample), the key-preference AUC of every head and its null: QK_CLASS_COLUMNS[1:] ->
    [H, n_classes]."""
    from headatlas.scoring.qk_classes import class_null, key_aucs

    a = key_aucs(qk, X[:n], X, X[:n], options, pre_norm)  # [H, rows]
    cols: dict[str, list[torch.Tensor]] = {c: [] for c in QK_CLASS_COLUMNS[1:]}
    for rows in where.values():
        auc = a[:, list(rows)].mean(-1)
        cols["class_auc"].append(auc)
        null = class_null(auc, a[:, :n], len(rows), options.class_null, options.seed)
        for name, value in null.items():
            cols[name].append(value)
    return {c: torch.stack(v, 1) for c, v in cols.items()}


def salient_tokens(
    circuits: ModelCircuits,
    qk: LayerQK,
    X: torch.Tensor,
    recipe: Recipe,
    options: QKOptions,
    cache: dict[str, torch.Tensor],
) -> tuple[list[list[int]], list[list[int]]]:
    """Per head, the ``n_salient`` keys with the highest mean logit over the sample's queries
    (q̄ · k over the vocabulary) and the queries with the highest mean logit over the sample's
    keys (q · k̄). The vocabulary's x̃ is the recipe's weights-only mode (``forward`` and ``context`` read
    as ``residual``), computed once per mode in ``cache``."""
    mode = recipe.mode_of(qk.layer)
    mode = "residual" if mode in ("forward", "context") else mode
    shift = position_shift(circuits, options)
    key = f"{mode}+positions" if shift is not None else mode
    if key not in cache:
        V = circuits.cfg.vocab_size
        E = embedding_of(circuits, circuits.embed(torch.arange(V)), mode)
        cache[key] = E if shift is None else E + shift
    E = cache[key]
    w = key_weights(qk, options)
    q_mean = qk.queries(X, recipe.pre_norm).mean(1)  # [H, dh]
    k_samp = qk.keys(X, recipe.pre_norm)
    if w is not None:
        k_samp = qk.rotary.apply_key_map(k_samp, w)
    k_mean = k_samp.mean(1)  # [H, dh]
    keys: list[list[int]] = [[] for _ in range(qk.n_heads)]
    queries: list[list[int]] = [[] for _ in range(qk.n_heads)]
    n = options.n_salient
    key_best = torch.full((qk.n_heads, n), -torch.inf)
    key_ids = torch.zeros((qk.n_heads, n), dtype=torch.int64)
    qry_best, qry_ids = key_best.clone(), key_ids.clone()
    for s in range(0, E.shape[0], 16384):
        u = E[s : s + 16384]
        u = qk.attn_norm(u) if recipe.pre_norm else u
        key_score = _key_scores(qk, u, q_mean, w)
        qry_score = _query_scores(qk, u, k_mean)
        ids = torch.arange(s, s + u.shape[0])
        for best, where, score in ((key_best, key_ids, key_score), (qry_best, qry_ids, qry_score)):
            both = torch.cat([best, score], 1)
            both_ids = torch.cat([where, ids.expand(qk.n_heads, -1)], 1)
            top = both.topk(n, dim=1)
            best.copy_(top.values)
            where.copy_(both_ids.gather(1, top.indices))
    for h in range(qk.n_heads):
        keys[h] = [int(i) for i in key_ids[h]]
        queries[h] = [int(i) for i in qry_ids[h]]
    return keys, queries


def _key_scores(
    qk: LayerQK, u: torch.Tensor, q_mean: torch.Tensor, w: torch.Tensor | None
) -> torch.Tensor:
    """q̄_h · map(k) for the keys of normed inputs u [n, d]: [H, n]. Without a key norm k is
    linear in u and q̄ · map(k) = mapᵀ(q̄) · k, so one [d, H] product serves every token."""
    if qk.k_norm is not None:
        k = qk.keys(u, pre_norm=False)
        if w is not None:
            k = qk.rotary.apply_key_map(k, w)
        return torch.einsum("hne,he->hn", k, q_mean)
    q_t = q_mean if w is None else qk.rotary.apply_key_map(q_mean, torch.stack([w[0], -w[1]]))
    W_K = qk.W_K.to(u).repeat_interleave(qk.group_size, 0)  # [H, d, dh]
    score = u @ torch.einsum("hde,he->dh", W_K, q_t)  # [n, H]
    if qk.b_K is not None:
        score = score + (qk.b_K.to(u).repeat_interleave(qk.group_size, 0) * q_t).sum(-1)
    return score.T


def _query_scores(qk: LayerQK, u: torch.Tensor, k_mean: torch.Tensor) -> torch.Tensor:
    """q · k̄_h for the queries of normed inputs u [n, d]: [H, n] (one [d, H] product when
    there is no query norm)."""
    if qk.q_norm is not None:
        return torch.einsum("hne,he->hn", qk.queries(u, pre_norm=False), k_mean)
    score = u @ torch.einsum("hde,he->dh", qk.W_Q.to(u), k_mean)
    if qk.b_Q is not None:
        score = score + (qk.b_Q.to(u) * k_mean).sum(-1)
    return score.T


def map_qk(
    circuits: ModelCircuits,
    options: MapOptions,
    recipe: Recipe,
    directory: Path | None,
    hf_model: Any = None,
) -> dict[str, Any]:
    """The map's QK step (``MapOptions.qk``): static QK scores of every head through the map's
    recipe, written to ``directory/qk_scores.parquet``; returns the manifest's ``qk`` section,
    with the agreement of its reading with inference where calibrate measured it beside the
    map (``directory/calibration.json``; :mod:`headatlas.scoring.qk_labels`)."""
    import time

    t0 = time.perf_counter()
    qk_options = QKOptions(
        rotary=options.qk_rotary, inputs="context" if options.qk_context else "recipe"
    )
    classes = None
    if qk_options.classes:
        from headatlas.scoring.qk_classes import token_classes

        classes = token_classes(circuits)
    table = qk_scores(circuits, qk_options, recipe, hf_model, classes=classes)
    from headatlas.scoring.qk_labels import agreement_of, read_qk_calibration

    record = read_qk_calibration(directory) if directory is not None else None
    section: dict[str, Any] = {
        "options": qk_options.as_dict(),
        "agreement": agreement_of(record, qk_options.inputs, qk_options.rotary),
        "file": QK_SCORES,
        "rows": len(table),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if directory is not None:
        write_parquet_atomic(table, directory / QK_SCORES)
    return section
