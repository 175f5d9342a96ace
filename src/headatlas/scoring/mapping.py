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
from headatlas.errors import HeadAtlasError, OptionError, ResultsError
from headatlas.relations import (
    Relation,
    TokenizedRelation,
    require_usable,
    resolve_relations,
    tokenize_relation,
)
from headatlas.scoring.categories import categorize_heads
from headatlas.scoring.options import MapOptions, compute_dtype, resolve_dtype
from headatlas.scoring.plan import RelationPairs, ScoringPlan
from headatlas.scoring.ranks import PairLayout
from headatlas.scoring.relation_scores import layer_ranks, layer_scores
from headatlas.store import (
    CATEGORIES,
    MANIFEST,
    SCORE_COLUMNS,
    SCORES,
    MapResults,
    read_manifest,
    read_table,
    results_folder,
    write_json_atomic,
    write_parquet_atomic,
)
from headatlas.weights import ModelSpec

PARTIAL = "partial"


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
    directory: Path | None, key: str, say: Any
) -> tuple[dict[int, pd.DataFrame], list[str]]:
    """Layer tables of a finished map computed with the same key, and their weight digests
    (empty when there is none, or its files cannot be read: then they are named)."""
    if directory is None or not (directory / MANIFEST).is_file():
        return {}, []
    try:
        old = read_manifest(directory)
    except HeadAtlasError as exc:
        say(f"ignoring the earlier map: {exc}")
        return {}, []
    digests = old.get("layer_digests")
    if old.get("cache_key") != key or not isinstance(digests, list):
        return {}, []
    try:
        scores = read_table(directory / SCORES, SCORE_COLUMNS)
    except ResultsError as exc:
        say(f"recomputing: {exc}")
        return {}, []
    return {int(i): g.reset_index(drop=True) for i, g in scores.groupby("layer")}, digests


def _partial_layer(path: Path, say: Any) -> pd.DataFrame | None:
    """A finished layer's table from an interrupted run; None (and the file removed) when it
    is missing or unreadable."""
    if not path.is_file():
        return None
    try:
        return read_table(path, SCORE_COLUMNS)
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
) -> MapResults:
    """Score every attention head on every relation and label heads by category.

    ``model``: a packaged name (``smollm2``, ``gemma3-270m``), a folder, a ``.gguf`` file, a hub
    id, a ``transformers`` model or an open :class:`ModelCircuits`. ``relations``: built-in
    names or categories (all built-ins when None); ``relation_files``: user relation files.
    With ``out``, results go to ``out/<model-slug>/`` (reused when the inputs match, resumed
    layer by layer after an interruption). ``hf_model``: the ``transformers`` model the
    ``forward`` embedding mode runs (loaded from ``model`` when None). Returns the scores and
    categories as DataFrames.
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
    readout = recipe.bind(circuits, device, compute_dtype(dtype))
    inputs = readout.source_inputs(plan.source_ids, hf_model)
    layout = PairLayout(
        plan.pair_rows,
        plan.pair_targets,
        len(plan.source_ids),
        readout.W_Uf.shape[1],
        k=plan.pair_k,
    )
    layout.to(device)
    # Everything read so far (config, embeddings, unembedding, norms, block-0 MLP) was hashed
    # while it was read; each layer adds the hash of its own tensors below.
    key = _cache_key(circuits.content_fingerprint() + inputs.digest(), options, plan)
    t_prep = time.perf_counter()

    finished, old_digests = _finished_layers(directory, key, say)
    partial = directory / PARTIAL / key if directory is not None else None
    frames: list[pd.DataFrame] = []
    digests: list[str] = []
    layers = range(circuits.cfg.n_layers)
    bar = _progress(layers, progress, summary["display_name"])
    layer_seconds: list[float] = []
    for i in bar:
        t0 = time.perf_counter()
        layer = circuits.layer(i)  # read (and hashed) in any case: reuse needs a true match
        digests.append(layer.digest)
        if i in finished and i < len(old_digests) and old_digests[i] == layer.digest:
            frames.append(finished[i])
            continue
        path = partial / f"layer_{i:04d}-{layer.digest}.parquet" if partial is not None else None
        saved = _partial_layer(path, say) if path is not None else None
        if saved is not None:
            frames.append(saved)
            continue
        layer = layer.to(device, dtype)  # stored in dtype, computed in `compute`
        X = inputs.layer(i).to(device=device, dtype=dtype)
        with torch.no_grad():
            up, down = layer_ranks(layer, X, readout, layout)
        score, sup = layer_scores(plan, up, down)
        frame = _layer_frame(summary["name"], i, plan, score, sup)
        if path is not None:
            write_parquet_atomic(frame, path)
        frames.append(frame)
        layer_seconds.append(time.perf_counter() - t0)
    t_scores = time.perf_counter()
    qk_section = None
    if options.qk:  # the QK circuit: where each head attends (headatlas.scoring.qk)
        from headatlas.scoring.qk import map_qk

        qk_section = map_qk(circuits, options, recipe, directory, hf_model)
    summary["fingerprint"] = circuits.weights_fingerprint(digests)
    if directory is not None and not layer_seconds:
        say(f"reusing the finished map in {directory} (same weights, options and relations)")

    scores = pd.concat(frames, ignore_index=True)[list(SCORE_COLUMNS)]
    categories = categorize_heads(scores, options.threshold, options.use_suppression)
    manifest = {
        "model": summary,
        "options": options.as_dict(),
        "recipe": {**dataclasses.asdict(recipe), "label": recipe.label()},
        "cache_key": key,
        "layer_digests": digests,
        "relations": relations_info,
        "versions": package_versions(),
        "device": str(device),
        "timings": {
            "load_s": round(t_load - t_start, 3),
            "prepare_s": round(t_prep - t_load, 3),
            "scores_s": round(t_scores - t_prep, 3),
            "layers_computed": len(layer_seconds),
            "total_s": round(time.perf_counter() - t_start, 3),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if qk_section is not None:
        manifest["qk"] = qk_section
    if directory is not None:
        manifest = _keep_other_sections(directory, manifest)
        if layer_seconds or len(finished) != len(frames):  # else scores.parquet is current
            write_parquet_atomic(scores, directory / SCORES)
        write_parquet_atomic(categories, directory / CATEGORIES)
        write_json_atomic(manifest, directory / MANIFEST)
        shutil.rmtree(directory / PARTIAL, ignore_errors=True)
    return MapResults(directory or Path("."), manifest, scores, categories)


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
    model: str, layer: int, plan: ScoringPlan, score: torch.Tensor, sup: torch.Tensor
) -> pd.DataFrame:
    H = score.shape[0]
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
                )
            )
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def _progress(it: range, enabled: bool, name: str) -> Any:
    if enabled and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(it, desc=f"mapping {name}", unit="layer")
    return it
