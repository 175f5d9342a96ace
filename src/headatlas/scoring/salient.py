"""Salient operations: the tokens a head amplifies most, and what it maps each of them to.

For a head with OV factors W_V [d, dh], W_O [dh, d] (Gemma's post-attention gain folded into
W_O), a token's salience is how much the head amplifies what it reads of the token,

    σ(t) = ‖u_t W_V W_O‖ / ‖u_t‖,   u_t = norm(x̃_t) with ``pre_norm``, else x̃_t

with x̃ the source embedding the map uses (token embedding for layer 0, effective embedding
MLP0(norm(x)) for layers ≥ 1, per :class:`MapOptions`); the value bias is added to u_t W_V
when ``value_bias`` (b_O too with ``output_bias``). Dividing by ‖u_t‖ rather than ‖x̃_t‖
keeps the norm's rescaling out of σ: otherwise tokens with a small ‖x̃‖ rank high in every
head. The top tokens by σ are the head's salient tokens; each one's mappings are the top
tokens of u_t W_V W_O W_U (the folded unembedding, as in the map).

Fast path. Norms are taken in the d_head space: with G = W_O W_Oᵀ = RᵀR (R from a QR of
W_Oᵀ), ‖z W_O‖² = z G zᵀ = ‖z Rᵀ‖², so a token costs O(dh²) per head once z = u W_V is known,
and z is computed once per KV group and shared by the group's query heads. The norm's
per-token factor is computed once for the whole vocabulary (its gain and bias fold into W_V),
and the effective embedding of the vocabulary is computed once per run.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from headatlas.circuits import LayerOV, ModelCircuits, Norm
from headatlas.errors import HeadAtlasError
from headatlas.progress import track
from headatlas.relations import resolve_relations
from headatlas.runtime import compute_dtype, resolve_device, resolve_dtype
from headatlas.scoring.options import MapOptions
from headatlas.scoring.readout import LayerReadout
from headatlas.scoring.recipe import embedding_of
from headatlas.scoring.salient_match import match_head, relation_matchers
from headatlas.store import (
    MANIFEST,
    SALIENT,
    LayerCache,
    read_manifest,
    results_folder,
    write_manifest,
    write_parquet_atomic,
)
from headatlas.weights import ModelSpec

SALIENT_COLUMNS = [
    "layer",
    "head",
    "rank",
    "token_id",
    "token",
    "sigma",
    "mappings",
    "mapping_ids",
    "matched_relations",
    "token_relations",
]
"""Columns of salient.parquet. ``matched_relations`` (str, "name:share,...", best first) is
the head's summary, repeated on each of its rows; ``token_relations`` (list[str]) the
relations this row's mappings hit."""

PARTIAL = "salient_partial"
_ROWS_PER_CHUNK = 8192
_UNUSED = re.compile(
    r"^(<unused\d*>|\[unused\d*\]|<0x[0-9a-f]{2}>|<extra_id_\d+>|<\|reserved[\w]*\|>)$",
    re.IGNORECASE,
)


class SalientInputError(HeadAtlasError):
    """Bad arguments to the salient-operations pass (layer or head out of range...)."""


# ---- vocabulary ---------------------------------------------------------------------------


@dataclass
class Vocabulary:
    """Decoded strings of a model's vocabulary ids and which ids are left out of rankings."""

    strings: list[str]
    excluded: torch.Tensor  # [V] bool
    reasons: dict[str, int] = field(default_factory=dict)
    """How many ids each reason dropped (an id counts under its first reason)."""

    def summary(self, examples: int = 40) -> dict[str, Any]:
        """What the manifest records: counts per reason and the first excluded tokens."""
        ids = self.excluded.nonzero().flatten().tolist()
        return {
            "n_excluded": len(ids),
            "reasons": dict(self.reasons),
            "examples": [self.strings[i] for i in ids[:examples]],
        }


def vocabulary(tokenizer: Any, n: int, exclude_special: bool = True) -> Vocabulary:
    """Token strings of ids 0..n-1 and, with ``exclude_special``, the ids to leave out.

    Left out: special ids (``all_special_ids``), added tokens, ids past the tokenizer's end,
    byte-fallback and unused slots (``<0x0A>``, ``<unused12>``, ``[UNUSED]``...), and tokens
    that decode to nothing or to whitespace only.
    """
    size = len(tokenizer)
    known = list(range(min(n, size)))
    strings = list(tokenizer.batch_decode([[i] for i in known])) + [""] * (n - len(known))
    excluded = torch.zeros(n, dtype=torch.bool)
    if not exclude_special:
        return Vocabulary(strings, excluded)
    raw = tokenizer.convert_ids_to_tokens(known)
    special = {int(i) for i in getattr(tokenizer, "all_special_ids", [])}
    added = {int(i) for i in getattr(tokenizer, "get_added_vocab", dict)().values()}
    reasons: dict[str, int] = {}
    for i in range(n):
        if i >= size:
            why = "past the tokenizer's vocabulary"
        elif i in special:
            why = "special"
        elif i in added:
            why = "added"
        elif raw[i] is None or _UNUSED.match(str(raw[i])):
            why = "unused or byte fallback"
        elif not strings[i].strip():
            why = "empty or whitespace"
        else:
            continue
        excluded[i] = True
        reasons[why] = reasons.get(why, 0) + 1
    return Vocabulary(strings, excluded, reasons)


# ---- the fast pass ------------------------------------------------------------------------


@dataclass
class _Inputs:
    """A source embedding of the whole vocabulary, as the layers consume it."""

    normed: torch.Tensor  # [V, d]: norm(x̃) without gain/bias when pre_norm, else x̃
    norms: torch.Tensor  # [V]: ‖x̃‖


class SalientPass:
    """Salient operations of any head of one model, sharing vocabulary-wide work across
    heads and layers. Build once, then call :meth:`layer`."""

    def __init__(
        self,
        circuits: ModelCircuits,
        options: MapOptions | None = None,
        exclude_special: bool = True,
    ):
        self.circuits = circuits
        self.options = options or MapOptions()
        self.device = resolve_device(self.options.device)
        self.dtype = compute_dtype(resolve_dtype(self.options.dtype))
        self.n_vocab = circuits.W_E.shape[0]
        self.recipe = self.options.recipe
        costly = sorted({self.recipe.mode_of(0), self.recipe.mode_of(1)} & {"forward", "context"})
        if costly:
            raise SalientInputError(
                f"salient operations rank the whole vocabulary, which the '{costly[0]}' embedding "
                "mode cannot afford (a forward pass per token): use mlp0, none or residual"
            )
        self.readout = self.recipe.bind(circuits, self.device, self.dtype)
        self.W_Uf = self.readout.W_Uf  # [d, V']
        self.logit_offset: torch.Tensor | None = self.readout.logit_bias
        n_targets = self.W_Uf.shape[1]
        self.vocab = vocabulary(circuits.tokenizer, max(self.n_vocab, n_targets), exclude_special)
        self.source_excluded = self.vocab.excluded[: self.n_vocab].to(self.device)
        self.target_excluded = self.vocab.excluded[:n_targets].to(self.device)
        self._inputs: dict[tuple[str, str, float], _Inputs] = {}
        self.prepare_s = 0.0

    # -- inputs shared by every layer -------------------------------------------------------
    def inputs(self, layer: LayerOV) -> _Inputs:
        """The vocabulary's source embedding for a layer, normalised (computed once)."""
        norm = layer.attn_norm
        key = (
            self.recipe.mode_of(layer.layer),
            norm.kind if self.recipe.pre_norm else "none",
            norm.eps,
        )
        if key not in self._inputs:
            t0 = time.perf_counter()
            self._inputs[key] = self._build_inputs(key[0], key[1], norm.eps)
            self.prepare_s += time.perf_counter() - t0
        return self._inputs[key]

    def _build_inputs(self, mode: str, kind: str, eps: float) -> _Inputs:
        c = self.circuits
        work = torch.float64 if self.dtype == torch.float64 else torch.float32
        normed, norms = [], []
        with torch.no_grad():
            for start in range(0, self.n_vocab, _ROWS_PER_CHUNK):
                ids = torch.arange(start, min(self.n_vocab, start + _ROWS_PER_CHUNK))
                x = embedding_of(c, c.embed(ids).to(work), mode)
                norms.append(x.norm(dim=-1))
                if kind != "none":  # the norm without its gain and bias (folded into W_V)
                    x = Norm(kind, None, None, eps)(x)
                normed.append(x)
        return _Inputs(
            torch.cat(normed).to(device=self.device, dtype=self.dtype),
            torch.cat(norms).to(device=self.device, dtype=self.dtype),
        )

    # -- one layer ----------------------------------------------------------------------------
    def sigma(self, layer: LayerOV, heads: Sequence[int]) -> torch.Tensor:
        """σ [len(heads), V] of the given heads (unmasked)."""
        heads = list(heads)
        groups, sig = self._group_sigma(layer, self.readout.layer(layer), heads)
        gs = layer.group_size
        rows = [groups.index(layer.kv_group(h)) * gs + h % gs for h in heads]
        return sig[rows]

    def _input_norms(self, lr: LayerReadout, d: int) -> tuple[torch.Tensor, ...] | None:
        """(γ², γβ, ‖β‖²) of the pre-attention norm (γ² alone without a bias), or None without
        ``pre_norm``: ‖u‖² = x̂²·γ² + 2 x̂·(γβ) + ‖β‖² for u = norm(x̃) = x̂·γ + β."""
        n = lr.in_norm
        if n is None:
            return None
        g = n.scale(d).to(device=self.device, dtype=self.dtype)
        if n.bias is None:
            return (g.square(),)
        b = n.bias.to(g)
        return g.square(), g * b, b.square().sum()

    def _group_sigma(
        self, layer: LayerOV, lr: LayerReadout, heads: Sequence[int]
    ) -> tuple[list[int], torch.Tensor]:
        """(KV groups of ``heads``, σ [n_groups · group_size, V] of every query head of them)."""
        inp = self.inputs(layer)
        W_V, c, W_O, b_O = lr.W_V, lr.c, lr.W_O, lr.b_O
        gs = layer.group_size
        groups = sorted({layer.kv_group(h) for h in heads})
        members = [g * gs + j for g in groups for j in range(gs)]  # query heads, group-major
        ng, d, dh = len(groups), W_V.shape[1], W_V.shape[2]
        # G = W_O W_Oᵀ = E Λ Eᵀ (eigh, float64): ‖z W_O‖² = z G zᵀ = ‖z L‖², L = E Λ^½ [dh, dh].
        # With a bias: z W_O + b = (z L + s) Pᵀ + b⊥, P = W_Oᵀ E Λ^-½, s = Pᵀb, so
        # ‖z W_O + b‖² = ‖z L + s‖² + ‖b‖² - ‖s‖².
        W64 = W_O[members].double()
        lam, E = torch.linalg.eigh(W64 @ W64.transpose(1, 2))  # [m, dh], [m, dh, dh]
        lam = lam.clamp_min(0)
        L = (E * lam.sqrt()[:, None, :]).to(self.dtype)
        # each group's heads' L side by side: [ng, dh, gs·dh]
        L_cat = L.view(ng, gs, dh, dh).permute(0, 2, 1, 3).reshape(ng, dh, gs * dh)
        shift = rest = None
        if b_O is not None:
            proj = torch.einsum("med,d,mej->mj", W64, b_O.double(), E)  # Eᵀ W_O b  [m, dh]
            keep = lam > lam.amax(-1, keepdim=True) * 1e-12
            s = torch.where(keep, proj / lam.clamp_min(1e-300).sqrt(), torch.zeros_like(proj))
            rest = (b_O.double().pow(2).sum() - s.pow(2).sum(-1)).clamp_min(0)
            rest = rest.to(self.dtype).view(ng, gs, 1)
            shift = s.to(self.dtype).view(ng, 1, gs, dh)
        W_cat = W_V[groups].permute(1, 0, 2).reshape(d, ng * dh)  # [d, ng·dh]
        c_cat = None if c is None else c[groups].reshape(1, -1)
        sq = torch.empty(ng, gs, self.n_vocab, device=self.device, dtype=self.dtype)
        # σ's denominator is the norm of what W_V reads: u = norm(x̃) = x̂·γ + β with pre_norm,
        # ‖u‖² = x̂²·γ² + 2 x̂·(γβ) + ‖β‖²; else x̃ itself
        scale = self._input_norms(lr, d)
        norms = inp.norms if scale is None else torch.empty_like(inp.norms)
        for start in range(0, self.n_vocab, _ROWS_PER_CHUNK):
            stop = min(self.n_vocab, start + _ROWS_PER_CHUNK)
            n = stop - start
            xs = inp.normed[start:stop]
            if scale is not None:
                u2 = xs.square() @ scale[0]
                if len(scale) == 3:
                    u2 += 2 * (xs @ scale[1]) + scale[2]
                norms[start:stop] = u2.clamp_min(0).sqrt()
            Z = xs @ W_cat  # [n, ng·dh]
            if c_cat is not None:
                Z += c_cat
            Y = torch.bmm(Z.view(n, ng, dh).transpose(0, 1), L_cat).view(ng, n, gs, dh)
            if shift is not None:
                Y += shift
            sq[:, :, start:stop] = torch.einsum("gnwe,gnwe->gwn", Y, Y)  # squared norms
        if rest is not None:
            sq += rest
        sig = torch.where(norms > 0, sq.sqrt() / norms.clamp_min(1e-30), 0.0)
        return groups, sig.view(ng * gs, self.n_vocab)

    def layer(
        self,
        layer: LayerOV,
        heads: Sequence[int] | None = None,
        tokens: int = 15,
        mappings: int = 5,
    ) -> list[dict[str, Any]]:
        """Rows (layer, head, rank, token_id, token, sigma, mappings, mapping_ids) of the
        given heads (default: all) of one layer."""
        heads = list(range(layer.n_heads)) if heads is None else list(heads)
        H, T = len(heads), tokens
        with torch.no_grad():
            lr = self.readout.layer(layer)
            W_V, c, W_O, b_O = lr.W_V, lr.c, lr.W_O, lr.b_O
            groups, sig = self._group_sigma(layer, lr, heads)
            gs = layer.group_size
            sig = sig[[groups.index(layer.kv_group(h)) * gs + h % gs for h in heads]]
            ranked = sig.masked_fill(self.source_excluded, float("-inf"))
            top_sigma, top_ids = ranked.topk(T, dim=1)  # [H, T]
            kv = [layer.kv_group(h) for h in heads]
            U = self.inputs(layer).normed[top_ids.flatten()].view(H, T, -1)
            Zt = torch.bmm(U, W_V[kv])  # [H, T, dh]
            if c is not None:
                Zt += c[kv][:, None, :]
            Y = torch.bmm(Zt, W_O[heads]).view(H * T, -1)  # [H·T, d]
            if b_O is not None:
                Y += b_O
            logits = Y @ self.W_Uf  # [H·T, V']
            if self.logit_offset is not None:
                logits += self.logit_offset
            logits.masked_fill_(self.target_excluded, float("-inf"))
            map_ids = logits.topk(mappings, dim=1).indices.view(H, T, mappings).tolist()
        strings = self.vocab.strings
        top_list, sigma_list = top_ids.tolist(), top_sigma.tolist()
        rows = []
        for i, h in enumerate(heads):
            for r in range(T):
                t = top_list[i][r]
                targets = map_ids[i][r]
                rows.append(
                    {
                        "layer": layer.layer,
                        "head": h,
                        "rank": r,
                        "token_id": t,
                        "token": strings[t],
                        "sigma": sigma_list[i][r],
                        "mappings": [strings[m] for m in targets],
                        "mapping_ids": targets,
                    }
                )
        return rows


# ---- public API ---------------------------------------------------------------------------


def _check_counts(tokens: int, mappings: int, vocab: Vocabulary) -> None:
    available = int((~vocab.excluded).sum())
    if not 1 <= tokens <= available:
        raise SalientInputError(f"tokens must be between 1 and {available}, got {tokens}")
    if not 1 <= mappings <= available:
        raise SalientInputError(f"mappings must be between 1 and {available}, got {mappings}")


def _circuits(model: ModelSpec | ModelCircuits) -> ModelCircuits:
    return model if isinstance(model, ModelCircuits) else ModelCircuits.load(model)


def salient_operations(
    model_or_circuits: ModelSpec | ModelCircuits,
    layer: int,
    head: int,
    tokens: int = 15,
    mappings: int = 5,
    options: MapOptions | None = None,
    exclude_special: bool = True,
    relations: Sequence[str] | None = None,
    relation_files: Sequence[str | Path] = (),
) -> pd.DataFrame:
    """One head's top ``tokens`` salient tokens, most salient first, with their top
    ``mappings`` targets.

    Columns: rank, token_id, token, sigma, mappings (list[str]), mapping_ids (list[int]),
    token_relations (relations each row's mappings hit). ``df.attrs`` holds
    ``matched_relations`` (the head's summary, "name:share,..."), ``excluded`` (what
    ``exclude_special`` left out) and ``options``.
    """
    circuits = _circuits(model_or_circuits)
    cfg = circuits.cfg
    if not 0 <= layer < cfg.n_layers:
        raise SalientInputError(
            f"layer {layer} is out of range: the model has layers 0..{cfg.n_layers - 1}"
        )
    if not 0 <= head < cfg.n_heads:
        raise SalientInputError(
            f"head {head} is out of range: the model has heads 0..{cfg.n_heads - 1} per layer"
        )
    sp = SalientPass(circuits, options, exclude_special)
    _check_counts(tokens, mappings, sp.vocab)
    rows = sp.layer(circuits.layer(layer), [head], tokens, mappings)
    matchers = relation_matchers(resolve_relations(relations, relation_files))
    summary, per_token = match_head(
        matchers, [r["token"] for r in rows], [r["mappings"] for r in rows]
    )
    df = pd.DataFrame(rows).drop(columns=["layer", "head"])
    df["token_relations"] = per_token
    df.attrs.update(
        matched_relations=summary,
        excluded=sp.vocab.summary(),
        options=sp.options.as_dict(),
        layer=layer,
        head=head,
    )
    return df


def _run_key(
    weights: str, options: MapOptions, params: dict[str, Any], relations: list[str]
) -> str:
    h = hashlib.sha256()
    h.update(weights.encode())
    h.update(options.scoring_key().encode())
    h.update(options.dtype.encode())
    h.update(json.dumps([params, relations], sort_keys=True).encode())
    return h.hexdigest()[:16]


def all_salient_operations(
    model: ModelSpec | ModelCircuits = "smollm2",
    tokens: int = 15,
    mappings: int = 5,
    options: MapOptions | None = None,
    exclude_special: bool = True,
    relations: Sequence[str] | None = None,
    relation_files: Sequence[str | Path] = (),
    layers: Iterable[int] | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], Any] | None = None,
) -> pd.DataFrame:
    """Salient operations of every head (of ``layers``, default all), with relation matches.

    With ``out``, the table goes to ``out/<model-slug>/salient.parquet`` beside the map, and
    the manifest there gains a "salient" section (options, excluded tokens, timings); a
    minimal manifest is created when the map has not been run. Finished layers are kept in
    ``salient_partial/`` so an interrupted run resumes. Columns: :data:`SALIENT_COLUMNS`.
    """
    say = log or (lambda msg: print(msg, file=sys.stderr))
    t_start = time.perf_counter()
    circuits = _circuits(model)
    summary = circuits.summary()
    n_layers = circuits.cfg.n_layers
    which = list(range(n_layers)) if layers is None else sorted(set(layers))
    bad = [i for i in which if not 0 <= i < n_layers]
    if bad:
        raise SalientInputError(
            f"layer {bad[0]} is out of range: the model has layers 0..{n_layers - 1}"
        )
    rels = resolve_relations(relations, relation_files)
    matchers = relation_matchers(rels)
    sp = SalientPass(circuits, options, exclude_special)
    _check_counts(tokens, mappings, sp.vocab)
    params = {"tokens": tokens, "mappings": mappings, "exclude_special": exclude_special}
    if sp.recipe.embedding != "none":
        circuits.block0_mlp()  # read now, so the key below covers it
    # Content hash of what the pass read so far (embeddings, unembedding, block-0 MLP); each
    # layer's own tensors are hashed as they are read below.
    key = _run_key(circuits.content_fingerprint(), sp.options, params, [r.name for r in rels])
    directory = results_folder(out, str(summary["name"])) if out is not None else None
    cache = LayerCache(directory / PARTIAL if directory is not None else None, key, say)
    t_prep = time.perf_counter()

    frames = []
    digests: list[str] = []
    computed = 0
    for i in _progress(which, progress, str(summary["display_name"])):
        layer = circuits.layer(i)
        digests.append(layer.digest)
        kept = cache.get(i, layer.digest, SALIENT_COLUMNS)
        if kept is not None:
            frames.append(kept)
            continue
        rows = sp.layer(layer, None, tokens, mappings)
        frame = pd.DataFrame(rows)
        head_summary: list[str] = []
        token_rels: list[list[str]] = []
        for _, group in frame.groupby("head", sort=True):
            s, per_token = match_head(matchers, group["token"].tolist(), group["mappings"].tolist())
            head_summary += [s] * len(group)
            token_rels += per_token
        frame["matched_relations"] = head_summary
        frame["token_relations"] = token_rels
        frame = frame[SALIENT_COLUMNS]
        cache.put(i, layer.digest, frame)
        frames.append(frame)
        computed += 1
    table = pd.concat(frames, ignore_index=True)[SALIENT_COLUMNS]
    if len(digests) == n_layers:  # every layer read: the fingerprint a map would record
        summary["fingerprint"] = circuits.weights_fingerprint(digests)
    t_end = time.perf_counter()
    section = {
        "tokens": tokens,
        "mappings": mappings,
        "exclude_special": exclude_special,
        "options": sp.options.as_dict(),
        "relations": [r.name for r in rels],
        "layers": which,
        "excluded": sp.vocab.summary(),
        "timings": {
            "load_s": round(t_prep - t_start, 3),
            "embeddings_s": round(sp.prepare_s, 3),
            "layers_s": round(t_end - t_prep - sp.prepare_s, 3),
            "layers_computed": computed,
            "total_s": round(t_end - t_start, 3),
        },
        "run_key": key,
        "fingerprint": summary.get("fingerprint"),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    table.attrs["salient"] = section
    if directory is not None:
        write_parquet_atomic(table, directory / SALIENT)
        manifest: dict[str, Any] = {"model": summary, "options": sp.options.as_dict()}
        if (directory / MANIFEST).is_file():
            try:
                manifest = read_manifest(directory)
            except HeadAtlasError:
                say(f"{directory / MANIFEST} is unreadable; writing a fresh one")
        manifest["salient"] = section
        write_manifest(directory, manifest, [SALIENT])  # last: it vouches for the table
        cache.clear()
    return table


def _progress(it: list[int], enabled: bool, name: str) -> Any:
    return track(it, len(it), f"salient operations of {name}", unit="layer", enabled=enabled)
