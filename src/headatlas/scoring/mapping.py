"""``map_heads``: score every head of a model on every relation, label heads by category, and
store the result. Layers are streamed; each finished layer is saved at once so an interrupted
run resumes where it stopped, and a finished map with the same inputs is reused."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from headatlas.circuits import ModelCircuits
from headatlas.errors import HeadAtlasError, OptionError, ResultsError, ResultsMismatchError
from headatlas.progress import track
from headatlas.relations import (
    Relation,
    TokenizedRelation,
    require_usable,
    resolve_relations,
    tokenize_relation,
)
from headatlas.scoring.categories import categorize_heads
from headatlas.scoring.evidence import EvidenceLimits, empty_evidence, layer_evidence
from headatlas.scoring.kernel.layout import PairLayout
from headatlas.scoring.null import (
    NULL_COLUMNS,
    class_level_relations,
    null_hits,
    null_plan,
    null_scores,
    null_statistics,
)
from headatlas.scoring.options import MapOptions, compute_dtype, resolve_dtype
from headatlas.scoring.plan import RelationPairs, ScoringPlan
from headatlas.scoring.recipe import SourceInputs
from headatlas.scoring.relation_scores import (
    candidate_orders,
    head_readouts,
    layer_ranks_multi,
    layer_scores,
)
from headatlas.store import (
    CATEGORIES,
    EVIDENCE,
    MANIFEST,
    QK_SCORES,
    SCORE_COLUMNS,
    SCORES,
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


def resolve_device(name: str) -> torch.device:
    """'auto' -> the first CUDA GPU when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise OptionError(f"device '{name}' is not valid: use auto, cpu, cuda or cuda:N") from exc
    if device.type == "meta":
        raise OptionError(
            f"device '{name}' holds no values, so nothing can be scored on it: use cpu or cuda"
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(
            f"device '{name}' asked for, but no CUDA GPU is available: use --device cpu"
        )
    return device


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


def tokenize_all(
    relations: Sequence[Relation],
    tokenizer: Any,
    options: MapOptions,
    files: Sequence[str | Path] = (),
) -> list[TokenizedRelation]:
    """Tokenise every relation; user files with no surviving pair are an error."""
    file_by_name = {Path(f).stem: f for f in files}
    out = []
    for rel in relations:
        tok = tokenize_relation(
            rel,
            tokenizer,
            leading_space=options.leading_space,
            first_token=options.first_token,
            min_pairs=options.min_pairs,
        )
        if rel.provenance.startswith("user file"):
            require_usable(tok, file_by_name.get(rel.name))
        out.append(tok)
    return out


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


def _partial_layer(path: Path, say: Any) -> pd.DataFrame | None:
    """A finished layer's table from an interrupted run; None (and the file removed) when it
    is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return read_table(path, TABLE_COLUMNS)
    except ResultsError as exc:
        say(f"recomputing layer: {exc}")
        path.unlink(missing_ok=True)
        return None


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

    rels = resolve_relations(relations, relation_files)
    options.check_for([r.name for r in rels], circuits.cfg.vocab_size)
    prefix = " " if options.leading_space else ""
    words = [prefix + word for rel in rels for pair in rel.pairs for word in pair]
    tokenized = tokenize_all(rels, circuits.encoder(words), options, relation_files)
    relations_info: list[dict[str, Any]] = []
    usable: list[RelationPairs] = []
    V = circuits.cfg.vocab_size
    for tok in tokenized:
        rel = tok.relation
        k = options.k_for(rel.name, rel.copying, V)
        # A tokenizer may know ids the model has no embedding row for (added tokens).
        kept = [(s, t) for s, t in zip(tok.source_ids, tok.target_ids) if s < V and t < V]
        n_out = len(tok.source_ids) - len(kept)
        if n_out:
            say(f"{rel.name}: dropped {n_out} pairs with token ids beyond the model's vocabulary")
            reason = tok.skip_reason
            if reason is None and len(kept) < options.min_pairs:
                reason = (
                    f"{rel.name}: only {len(kept)} pairs have token ids inside the model's "
                    f"vocabulary of {V}; need {options.min_pairs}"
                )
            tok = dataclasses.replace(
                tok,
                source_ids=[s for s, _ in kept],
                target_ids=[t for _, t in kept],
                skip_reason=reason,
            )
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
    plan = ScoringPlan.build(usable)
    directory = results_folder(out, str(summary["name"])) if out is not None else None

    device = resolve_device(options.device)
    dtype = resolve_dtype(options.dtype)
    recipe = options.recipe()
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
    layout = PairLayout(
        plan.pair_rows,
        plan.pair_targets,
        len(plan.source_ids),
        readout.W_Uf.shape[1],
        k=plan.pair_k,
    )
    layout.to(device)
    n_perm = options.null_permutations
    null = null_plan(plan.relations, n_perm, options.null_seed) if n_perm else None
    null_layout = None
    if null is not None:
        if not torch.equal(null.source_ids, plan.source_ids):
            raise AssertionError("the null's pairs must share the map's source rows")
        null_layout = PairLayout(
            null.pair_rows, null.pair_targets, len(null.source_ids), layout.vocab, k=null.pair_k
        ).to(device)
    limits = EvidenceLimits(options.threshold, options.evidence_right, options.evidence_wrong)
    tag = hashlib.sha256(json.dumps(limits.as_dict()).encode()).hexdigest()[:8]
    decode = _decoder(circuits, words)
    # Everything read so far (config, embeddings, unembedding, norms, block-0 MLP) was hashed
    # while it was read; each layer adds the hash of its own tensors below.
    key = _cache_key(circuits.content_fingerprint() + inputs.digest(), options, plan)
    t_prep = time.perf_counter()

    finished, old_digests, old_evidence = _finished_layers(directory, key, limits, say)
    partial = directory / PARTIAL / key if directory is not None else None
    frames: list[pd.DataFrame] = []
    evidence: list[pd.DataFrame] = []
    digests: list[str] = []
    null_s = evidence_s = 0.0
    todo = _layers_to_compute(layers, circuits.cfg.n_layers, directory)
    bar = _progress(todo, progress, summary["display_name"])
    layer_seconds: list[float] = []
    for i in bar:
        t0 = time.perf_counter()
        layer = circuits.layer(i)  # read (and hashed) in any case: reuse needs a true match
        digests.append(layer.digest)
        path = partial / f"layer_{i:04d}-{layer.digest}.parquet" if partial is not None else None
        ev_path = (
            partial / f"evidence_{i:04d}-{layer.digest}-{tag}.parquet"
            if partial is not None
            else None
        )
        if i in finished and i < len(old_digests) and old_digests[i] == layer.digest:
            frame: pd.DataFrame | None = finished[i]
            ev = (old_evidence or {}).get(i, empty_evidence()) if old_evidence is not None else None
        else:
            frame = _partial_layer(path, say) if path is not None else None
            ev = None
            if frame is not None and ev_path is not None and ev_path.is_file():
                try:
                    ev = read_evidence(ev_path)
                except ResultsError as exc:
                    say(f"recomputing evidence: {exc}")
        if frame is not None and ev is not None:
            frames.append(frame)
            evidence.append(ev)
            continue
        layer = layer.to(device, dtype)  # stored in dtype, computed in `compute`
        X = inputs.layer(i).to(device=device, dtype=dtype)
        with torch.no_grad():
            heads = head_readouts(layer, X, readout)
            if frame is None:
                orders = candidate_orders(heads)
                ranks = layer_ranks_multi(layer, X, readout, [layout], heads, orders)[0]
                hits = None
                if null is not None and null_layout is not None:
                    t1 = time.perf_counter()
                    hits = torch.stack(
                        [null_hits(Z, B, null_layout, o) for (Z, B), o in zip(heads, orders)]
                    )
                    null_s += time.perf_counter() - t1
                frame = _layer_frame(summary["name"], i, plan, ranks, null, hits, n_perm)
                layer_seconds.append(time.perf_counter() - t0)
                if path is not None:
                    write_parquet_atomic(frame, path)
            t1 = time.perf_counter()
            ev = layer_evidence(summary["name"], i, heads, plan, frame, limits, decode)
            evidence_s += time.perf_counter() - t1
        if ev_path is not None:
            write_parquet_atomic(ev, ev_path)
        frames.append(frame)
        evidence.append(ev)
    t_scores = time.perf_counter()
    if layers is not None:  # a share of a split map: saved in the partial store, nothing final
        part = pd.concat(frames, ignore_index=True)[list(TABLE_COLUMNS)]
        info = {"cache_key": key, "layers": list(todo), "layer_digests": digests}
        info["timings"] = {"layers_computed": len(layer_seconds)}
        return MapResults(directory or Path("."), info, part, pd.DataFrame())
    qk_section = None
    if options.qk:  # the QK circuit: where each head attends (headatlas.scoring.qk)
        from headatlas.scoring.qk import map_qk

        qk_section = map_qk(circuits, options, recipe, directory, hf_model)
    summary["fingerprint"] = circuits.weights_fingerprint(digests)
    if directory is not None and not layer_seconds:
        say(f"reusing the finished map in {directory} (same weights, options and relations)")

    scores = pd.concat(frames, ignore_index=True)[list(TABLE_COLUMNS)]
    evidence_table = pd.concat(evidence, ignore_index=True) if evidence else empty_evidence()
    categories = categorize_heads(
        scores, options.threshold, options.use_suppression, options.label_rule, options.null_alpha
    )
    class_level = class_level_relations(scores, options.threshold)
    manifest: dict[str, Any] = {
        "model": summary,
        "options": options.as_dict(),
        "recipe": {**dataclasses.asdict(recipe), "label": recipe.label()},
        "cache_key": key,
        "layer_digests": digests,
        "relations": relations_info,
        "null": {
            "permutations": n_perm,
            "seed": options.null_seed,
            "label_rule": options.label_rule,
            "alpha": options.null_alpha,
            "columns": list(NULL_COLUMNS),
        },
        "relations_class_level": class_level,
        "evidence": {"limits": limits.as_dict(), "rows": len(evidence_table)},
        "versions": package_versions(),
        "device": str(device),
        "timings": {
            "load_s": round(t_load - t_start, 3),
            "prepare_s": round(t_prep - t_load, 3),
            "scores_s": round(t_scores - t_prep, 3),
            "null_s": round(null_s, 3),
            "evidence_s": round(evidence_s, 3),
            "layers_computed": len(layer_seconds),
            "total_s": round(time.perf_counter() - t_start, 3),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if forward_prefix is not None:
        manifest["forward_prefix"] = forward_prefix
    if qk_section is not None:
        manifest["qk"] = qk_section
    if directory is not None:
        manifest = _keep_other_sections(directory, manifest)
        if layer_seconds or len(finished) != len(frames):  # else scores.parquet is current
            write_parquet_atomic(scores, directory / SCORES)
        write_parquet_atomic(evidence_table, directory / EVIDENCE)
        write_parquet_atomic(categories, directory / CATEGORIES)
        written = [SCORES, CATEGORIES, EVIDENCE, *([QK_SCORES] if qk_section is not None else [])]
        manifest = write_manifest(directory, manifest, written)  # last
        shutil.rmtree(directory / PARTIAL, ignore_errors=True)
    return MapResults(directory or Path("."), manifest, scores, categories, evidence_table)


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


def _progress(it: list[int], enabled: bool, name: str) -> Any:
    return track(it, len(it), f"mapping {name}", unit="layer", enabled=enabled)
