"""``map_heads``: score every head of a model on every relation, label heads by category, and
store the result. Layers are streamed; each finished layer is saved at once so an interrupted
run resumes where it stopped, and a finished map with the same inputs is reused."""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from headatlas.circuits import ModelCircuits
from headatlas.errors import HeadAtlasError, OptionError, ResultsError, ResultsMismatchError
from headatlas.interrupts import raise_if_interrupted
from headatlas.progress import track
from headatlas.relations import resolve_relations, tokenize_relations
from headatlas.runtime import compute_dtype, resolve_device, resolve_dtype
from headatlas.scoring.categories import categorize_heads
from headatlas.scoring.evidence import EvidenceLimits, empty_evidence, layer_evidence
from headatlas.scoring.layers import LayerScores, score_layers
from headatlas.scoring.null import (
    NULL_COLUMNS,
    class_level_relations,
    null_plan,
    null_scores,
    null_statistics,
)
from headatlas.scoring.options import MapOptions
from headatlas.scoring.plan import RelationPairs, ScoringPlan
from headatlas.scoring.recipe import SourceInputs
from headatlas.scoring.relation_scores import layer_scores
from headatlas.store import (
    CATEGORIES,
    EVIDENCE,
    MANIFEST,
    QK_SCORES,
    SCORE_COLUMNS,
    SCORES,
    LayerCache,
    MapResults,
    check_files,
    read_evidence,
    read_manifest,
    read_table,
    results_folder,
    write_manifest,
    write_parquet_atomic,
)
from headatlas.weights import ModelSpec

PARTIAL = "partial"
TABLE_COLUMNS = (*SCORE_COLUMNS, *NULL_COLUMNS)
"""Columns of the scores table a map writes."""


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape results."""
    import importlib.metadata as md

    versions = {"python": platform.python_version()}
    for pkg in ("headatlas", "torch", "transformers", "gguf", "safetensors", "numpy", "pandas"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = "not installed"
    return versions


def relation_plan(
    circuits: ModelCircuits,
    relations: Sequence[str] | None,
    relation_files: Sequence[str | Path],
    options: MapOptions,
    say: Any,
) -> tuple[ScoringPlan, list[dict[str, Any]], list[str]]:
    """The relations tokenised and filtered to the model's vocabulary: (the scoring plan of
    the usable ones, what the manifest records of each, the words encoded)."""
    rels = resolve_relations(relations, relation_files)
    options.check_for([r.name for r in rels], circuits.cfg.vocab_size)
    prefix = " " if options.leading_space else ""
    words = [prefix + word for rel in rels for pair in rel.pairs for word in pair]
    V = circuits.cfg.vocab_size
    tokenized = tokenize_relations(rels, circuits.encoder(words), options, V, relation_files)
    relations_info: list[dict[str, Any]] = []
    usable: list[RelationPairs] = []
    for tok in tokenized:
        rel = tok.relation
        k = options.k_for(rel.name, rel.copying, V)
        n_out = tok.n_out_of_vocab
        if n_out:
            say(f"{rel.name}: dropped {n_out} pairs with token ids beyond the model's vocabulary")
        info = {
            "name": rel.name,
            "category": rel.category,
            "n_raw": tok.n_raw,
            "n_pairs": len(tok.source_ids),
            "k": k,
            "provenance": rel.provenance,
            "skipped": tok.skip_reason,
            "out_of_vocabulary": n_out,
        }
        relations_info.append(info)
        if tok.skip_reason:
            say(f"skipping relation {tok.skip_reason}")
            continue
        usable.append(RelationPairs(rel.name, rel.category, k, tok.source_ids, tok.target_ids))
    if not usable:
        raise HeadAtlasError(
            "no relation has enough single-token pairs for this tokenizer: pass --first-token, "
            "lower --min-pairs, or give relations with single-token words"
        )
    return ScoringPlan.build(usable), relations_info, words


def _cache_key(weights: str, options: MapOptions, plan: ScoringPlan) -> str:
    """What a layer's scores depend on besides the layer's own tensors: the content of the
    embedding-side tensors (``weights``), the scoring switches and the tokenised pairs."""
    h = hashlib.sha256()
    h.update(weights.encode())
    h.update(options.scoring_key().encode())
    h.update(options.dtype.encode())
    for r in plan.relations:
        h.update(json.dumps([r.name, r.category, r.k, r.source_ids, r.target_ids]).encode())
    return h.hexdigest()[:16]


class _StoredLayers:
    """Layer results a map can reuse: a finished map's in ``directory`` (same key and layer
    digest; its evidence only when kept with the same limits), else the partial store's
    (:class:`LayerCache`, per key and digest, the evidence also per limits)."""

    def __init__(self, directory: Path | None, key: str, limits: EvidenceLimits, say: Any):
        self.finished, self.digests, self.old_evidence = _finished_layers(
            directory, key, limits, say
        )
        self.cache = LayerCache(directory / PARTIAL if directory is not None else None, key, say)
        self.tag = hashlib.sha256(json.dumps(limits.as_dict()).encode()).hexdigest()[:8]

    def _is_finished(self, i: int, digest: str) -> bool:
        return i in self.finished and i < len(self.digests) and self.digests[i] == digest

    def scores(self, i: int, digest: str) -> pd.DataFrame | None:
        """Layer ``i``'s rows of the scores table, or None."""
        if self._is_finished(i, digest):
            return self.finished[i]
        return self.cache.get(i, digest, TABLE_COLUMNS)

    def evidence(self, i: int, digest: str) -> pd.DataFrame | None:
        """Layer ``i``'s evidence under this map's limits, or None."""
        if self._is_finished(i, digest) and self.old_evidence is not None:
            return self.old_evidence.get(i, empty_evidence())
        return self.cache.get(i, digest, kind="evidence", tag=self.tag, read=read_evidence)


def _finished_layers(
    directory: Path | None, key: str, limits: EvidenceLimits, say: Any
) -> tuple[dict[int, pd.DataFrame], list[str], dict[int, pd.DataFrame] | None]:
    """Layer tables of a finished map computed with the same key, their weight digests and
    their evidence (None when it was kept with other limits or cannot be read: then it is
    recomputed); empty when there is no such map, or its files cannot be read (then they
    are named)."""
    if directory is None or not (directory / MANIFEST).is_file():
        return {}, [], None
    try:
        old = read_manifest(directory)
    except HeadAtlasError as exc:
        say(f"ignoring the earlier map: {exc}")
        return {}, [], None
    digests = old.get("layer_digests")
    if old.get("cache_key") != key or not isinstance(digests, list):
        return {}, [], None
    try:
        if not check_files(directory, old, [SCORES], require=[SCORES]):
            say(
                f"recomputing the earlier map in {directory}: its manifest vouches for no file "
                "(written before file hashes)"
            )
            return {}, [], None
    except ResultsMismatchError as exc:
        say(f"recomputing: {exc}")
        return {}, [], None
    try:
        scores = read_table(directory / SCORES, TABLE_COLUMNS)
    except ResultsError as exc:
        say(f"recomputing: {exc}")
        return {}, [], None
    layers = {int(i): g.reset_index(drop=True) for i, g in scores.groupby("layer")}
    evidence: dict[int, pd.DataFrame] | None = None
    if old.get("evidence", {}).get("limits") == limits.as_dict():
        try:
            check_files(directory, old, [EVIDENCE], require=[EVIDENCE])
            ev = read_evidence(directory / EVIDENCE)
            evidence = {int(i): g.reset_index(drop=True) for i, g in ev.groupby("layer")}
        except ResultsError as exc:
            say(f"recomputing evidence: {exc}")
    return layers, digests, evidence


def map_heads(
    model: ModelSpec | ModelCircuits = "smollm2",
    relations: Sequence[str] | None = None,
    relation_files: Sequence[str | Path] = (),
    options: MapOptions | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    log: Any = None,
    hf_model: Any = None,
    layers: Sequence[int] | None = None,
) -> MapResults:
    """Score every attention head on every relation and label heads by category.

    ``model``: a packaged name (``smollm2``, ``gemma3-270m``), a folder, a ``.gguf`` file, a hub
    id, a ``transformers`` model or an open :class:`ModelCircuits`. ``relations``: built-in
    names or categories (all built-ins when None); ``relation_files``: user relation files.
    With ``out``, results go to ``out/<model-slug>/`` (reused when the inputs match, resumed
    layer by layer after an interruption). ``hf_model``: the ``transformers`` model the
    ``forward`` embedding mode runs (loaded from ``model`` when None). Returns the scores and
    categories as DataFrames.

    ``layers`` (with ``out``): compute only these layers, each saved to the results folder's
    partial store as a one-process map saves it, and write no final files; the returned
    results hold those layers' scores, no categories, and a manifest with ``cache_key`` and
    ``timings.layers_computed``. A later full map of the same inputs reuses them (this is how
    :func:`headatlas.sweep.split.map_split` spreads one model over Ray tasks).
    """
    options = options or MapOptions()
    say = log or (lambda msg: print(msg, file=sys.stderr))
    t_start = time.perf_counter()
    circuits = model if isinstance(model, ModelCircuits) else ModelCircuits.load(model)
    summary = circuits.summary()
    t_load = time.perf_counter()

    plan, relations_info, words = relation_plan(circuits, relations, relation_files, options, say)
    directory = results_folder(out, str(summary["name"])) if out is not None else None
    todo = _layers_to_compute(layers, circuits.cfg.n_layers, directory)
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype)
    recipe = options.recipe
    # The sources' inputs first (only their embedding rows, block 0's MLP dropped after),
    # then the folded unembedding: the two are never held at once.
    inputs = SourceInputs(
        recipe, circuits, plan.source_ids, hf_model, options.forward_start(), progress
    )
    forward_prefix = None
    if recipe.embedding in ("forward", "context"):
        forward_prefix = forward_prefix_record(inputs.start, recipe.embedding == "context")
        say(f"{recipe.embedding} embedding: each source token runs as {forward_prefix['sequence']}")
    readout = recipe.bind(circuits, device, compute_dtype(dtype))
    n_perm = options.null_permutations
    null = null_plan(plan.relations, n_perm, options.null_seed) if n_perm else None
    limits = EvidenceLimits(options.threshold, options.evidence_right, options.evidence_wrong)
    # Everything read so far (config, embeddings, unembedding, norms, block-0 MLP) was hashed
    # while it was read; each layer adds the hash of its own tensors (its digest).
    key = _cache_key(circuits.content_fingerprint() + inputs.digest(), options, plan)
    stored = _StoredLayers(directory, key, limits, say)
    t_prep = time.perf_counter()

    keep = limits if limits.enabled else None
    scored = score_layers(circuits, plan, [inputs], readout, dtype, todo, null, keep)
    bar = track(scored, len(todo), f"mapping {summary['display_name']}", "layer", progress)
    decode = _decoder(circuits, words)
    done = _map_layers(bar, stored, plan, null, n_perm, limits, str(summary["name"]), decode)
    t_scores = time.perf_counter()
    if layers is not None:  # a share of a split map: saved in the partial store, nothing final
        part = pd.concat(done.frames, ignore_index=True)[list(TABLE_COLUMNS)]
        info: dict[str, Any] = {"cache_key": key, "layers": list(todo)}
        info["layer_digests"] = done.digests
        info["timings"] = {"layers_computed": done.computed}
        return MapResults(directory or Path("."), info, part, pd.DataFrame())
    qk_section = None
    if options.qk:  # the QK circuit: where each head attends (headatlas.scoring.qk)
        from headatlas.scoring.qk import map_qk

        qk_section = map_qk(circuits, options, recipe, directory, hf_model)
    summary["fingerprint"] = circuits.weights_fingerprint(done.digests)
    if directory is not None and not done.computed:
        say(f"reusing the finished map in {directory} (same weights, options and relations)")

    scores = pd.concat(done.frames, ignore_index=True)[list(TABLE_COLUMNS)]
    evidence = done.evidence
    evidence_table = pd.concat(evidence, ignore_index=True) if evidence else empty_evidence()
    categories = categorize_heads(
        scores, options.threshold, options.use_suppression, options.label_rule, options.null_alpha
    )
    manifest: dict[str, Any] = {
        "model": summary,
        "options": options.as_dict(recipe=False),
        "recipe": recipe.record(),
        "cache_key": key,
        "layer_digests": done.digests,
        "relations": relations_info,
        "null": {
            "permutations": n_perm,
            "seed": options.null_seed,
            "label_rule": options.label_rule,
            "alpha": options.null_alpha,
            "columns": list(NULL_COLUMNS),
        },
        "relations_class_level": class_level_relations(scores, options.threshold),
        "evidence": {"limits": limits.as_dict(), "rows": len(evidence_table)},
        "versions": package_versions(),
        "device": str(device),
        "timings": {
            "load_s": round(t_load - t_start, 3),
            "prepare_s": round(t_prep - t_load, 3),
            "scores_s": round(t_scores - t_prep, 3),
            "null_s": round(done.null_s, 3),
            "evidence_s": round(done.evidence_s, 3),
            "layers_computed": done.computed,
            "total_s": round(time.perf_counter() - t_start, 3),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if forward_prefix is not None:
        manifest["forward_prefix"] = forward_prefix
    if qk_section is not None:
        manifest["qk"] = qk_section
    results = MapResults(directory or Path("."), manifest, scores, categories, evidence_table)
    if directory is not None:
        # scores.parquet is rewritten unless every layer came from it unchanged
        rewrite = bool(done.computed) or len(stored.finished) != len(done.frames)
        results.manifest = _write_map(results, rewrite, qk_section is not None)
        stored.cache.clear()
    return results


@dataclass
class _MappedLayers:
    """Every layer's rows of the scores and evidence tables, and what it cost."""

    frames: list[pd.DataFrame] = field(default_factory=list)
    evidence: list[pd.DataFrame] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)
    computed: int = 0
    """Layers whose scores were computed (not reused)."""
    null_s: float = 0.0
    evidence_s: float = 0.0


def _map_layers(
    scored: Iterable[LayerScores],
    stored: _StoredLayers,
    plan: ScoringPlan,
    null: ScoringPlan | None,
    n_perm: int,
    limits: EvidenceLimits,
    name: str,
    decode: Any,
) -> _MappedLayers:
    """The scores and evidence of each layer: reused from ``stored`` when it holds them, else
    computed and saved there at once (so an interrupted map resumes after it)."""
    done = _MappedLayers()
    for s in scored:
        raise_if_interrupted()  # a Ctrl-C a library swallowed during the last layer
        done.digests.append(s.digest)  # every layer is read and hashed: reuse needs a true match
        frame = stored.scores(s.index, s.digest)
        ev = stored.evidence(s.index, s.digest) if frame is not None else None
        if frame is None:
            frame = _layer_frame(name, s.index, plan, s.ranks, null, s.null_hits, n_perm)
            stored.cache.put(s.index, s.digest, frame)
            done.computed += 1
            done.null_s += s.null_s
        if ev is None:
            t0 = time.perf_counter()
            found = s.evidence  # computed with the ranks (again if the scores were reused)
            ev = empty_evidence() if found is None else layer_evidence(name, s.index, found, decode)
            done.evidence_s += s.evidence_s + time.perf_counter() - t0
            stored.cache.put(s.index, s.digest, ev, "evidence", stored.tag)
        done.frames.append(frame)
        done.evidence.append(ev)
    return done


def _write_map(results: MapResults, rewrite_scores: bool, qk: bool) -> dict[str, Any]:
    """Write a finished map's tables, then the manifest that vouches for them (returned as
    written)."""
    directory = results.directory
    manifest = _keep_other_sections(directory, results.manifest)
    if rewrite_scores:
        write_parquet_atomic(results.scores, directory / SCORES)
    assert results.evidence is not None
    write_parquet_atomic(results.evidence, directory / EVIDENCE)
    write_parquet_atomic(results.categories, directory / CATEGORIES)
    written = [SCORES, CATEGORIES, EVIDENCE, *([QK_SCORES] if qk else [])]
    return write_manifest(directory, manifest, written)  # last


def forward_prefix_record(start: int | None, context: bool = False) -> dict[str, Any]:
    """What the manifest records of the ``forward`` (or ``context``) mode's prefix: the start
    token id (None: none) and the sequence each source token runs as."""
    body = "*c, s" if context else "s"
    return {
        "start_token": start,
        "sequence": f"[{body}]" if start is None else f"[{start}, {body}]",
    }


def _keep_other_sections(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Sections other steps added (salient, validation...) survive a new map of the same
    weights."""
    if not (directory / MANIFEST).is_file():
        return manifest
    try:
        old = read_manifest(directory)
    except HeadAtlasError:
        return manifest
    if old.get("model", {}).get("fingerprint") != manifest["model"]["fingerprint"]:
        return manifest
    return {**{k: v for k, v in old.items() if k not in manifest}, **manifest}


def _layer_frame(
    model: str,
    layer: int,
    plan: ScoringPlan,
    ranks: tuple[torch.Tensor, torch.Tensor],
    null: ScoringPlan | None,
    null_hits: torch.Tensor | None,
    n_perm: int,
) -> pd.DataFrame:
    """One layer's rows of the scores table from the map's ranks (and the null's hits)."""
    score, sup = layer_scores(plan, *ranks)
    H, R = score.shape
    n_pairs = torch.tensor([len(r.source_ids) for r in plan.relations])
    if null is not None and null_hits is not None:
        stats = null_statistics(score, null_scores(null, null_hits, H, R, n_perm), n_pairs)
    else:
        nan = torch.full((H, R), float("nan"), dtype=torch.float64)
        stats = {c: nan for c in NULL_COLUMNS}
    rows = []
    for h in range(H):
        for r, rel in enumerate(plan.relations):
            rows.append(
                (
                    model,
                    layer,
                    h,
                    rel.name,
                    rel.category,
                    rel.k,
                    len(rel.source_ids),
                    float(score[h, r]),
                    float(sup[h, r]),
                    *(float(stats[c][h, r]) for c in NULL_COLUMNS),
                )
            )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def _decoder(circuits: ModelCircuits, words: Sequence[str]) -> Any:
    """Token ids -> their strings, one each, with the tokenizer the map encoded with."""

    found: list[Any] = []

    def decode(ids: list[int]) -> list[str]:
        if not found:
            enc = circuits.encoder(words)
            found.append(enc if hasattr(enc, "decode") else circuits.tokenizer)
        return [str(found[0].decode([i])) for i in ids]

    return decode


def _layers_to_compute(
    layers: Sequence[int] | None, n_layers: int, directory: Path | None
) -> list[int]:
    """Every layer, or the asked ones (in order, each once) after checking them."""
    if layers is None:
        return list(range(n_layers))
    if directory is None:
        raise OptionError("a map of some layers needs an out folder to save them: pass out=")
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad:
        raise OptionError(
            f"layers {bad} are outside the model's {n_layers} layers: give 0..{n_layers - 1}"
        )
    return sorted(set(layers))
