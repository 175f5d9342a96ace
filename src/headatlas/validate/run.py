"""``validate``: run the inference-time experiments on a model and store them beside its map.

Layout of ``OUT/<model-slug>/validation/``::

    correlative.csv / .md / .png   static vs dynamic Pearson r per relation (+ scatter plot)
    correlative_heads.csv          per head x template x relation: static and dynamic scores
    multi_token.csv / .md          the same for sources of two or more tokens
    causal.csv / .md               accuracy after ablating relation / random heads, controls
    causal_curves.csv / .png       accuracy curves as heads are ablated in steps
    summary.json                   options, per-relation results (for the HTML atlas), timings
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

import headatlas.validate.causal as causal_mod
from headatlas.circuits import ModelCircuits
from headatlas.errors import ValidationInputError
from headatlas.progress import Progress
from headatlas.relations import (
    BUILTIN_NAMES,
    Relation,
    multi_token_pairs,
    resolve_relations,
    tokenize_relations,
)
from headatlas.report.validation_figures import ablation_curves, correlation_scatter
from headatlas.report.validation_tables import (
    causal_markdown,
    correlation_markdown,
    qk_markdown,
)
from headatlas.runtime import resolve_device
from headatlas.scoring.mapping import map_heads
from headatlas.scoring.options import MapOptions
from headatlas.stats import CORRELATION_COLUMNS, causal_summary, correlate, static_matrix
from headatlas.store import (
    MANIFEST,
    MapResults,
    read_manifest,
    results_folder,
    write_json_atomic,
    write_text_atomic,
)
from headatlas.validate.dynamic import (
    DynamicJob,
    HeadReadout,
    dynamic_recipe,
    dynamic_scores,
    heads_table,
    sample_pairs,
)
from headatlas.validate.hooks import AttentionHooks, eval_mode
from headatlas.validate.options import ALL_EXPERIMENTS, EXPERIMENTS, ValidationOptions
from headatlas.weights import ModelSpec
from headatlas.weights.transformers_model import inference_model

VALIDATION = "validation"


@dataclass
class ValidationResults:
    """Tables of the experiments that ran (None for those that did not)."""

    directory: Path | None
    correlative: pd.DataFrame | None = None
    correlative_heads: pd.DataFrame | None = None
    multi_token: pd.DataFrame | None = None
    causal: pd.DataFrame | None = None
    causal_curves: pd.DataFrame | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    """"experiment: relation" -> why it was skipped."""
    qk: Any = None
    """The QK experiment (a :class:`headatlas.validate.qk.QKValidation`), when it ran."""
    summary: dict[str, Any] = field(default_factory=dict)


def validate(
    model: ModelSpec | ModelCircuits = "smollm2",
    relations: Sequence[str] | None = None,
    relation_files: Sequence[str | Path] = (),
    experiments: Sequence[str] = EXPERIMENTS,
    out: str | Path | None = None,
    map_options: MapOptions | None = None,
    options: ValidationOptions | None = None,
    hf_model: torch.nn.Module | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> ValidationResults:
    """Run the validation experiments and (with ``out``) store them in
    ``out/<model-slug>/validation/``.

    The static map comes from :func:`map_heads` with the same ``out`` (a finished map with the
    same inputs is reused). ``hf_model`` is the ``transformers`` model to run; by default it is
    loaded from ``model`` onto ``map_options.device`` (or taken from it, where it is, when
    ``model`` is a torch module or a :class:`ModelCircuits` over one).
    """
    map_options = map_options or MapOptions()
    options = options or ValidationOptions()
    say = log or (lambda msg: print(msg, file=sys.stderr))
    unknown = [e for e in experiments if e not in ALL_EXPERIMENTS]
    if unknown:
        raise ValidationInputError(
            f"unknown experiment '{unknown[0]}': choose from {', '.join(ALL_EXPERIMENTS)}"
        )
    dynamic_recipe(map_options.recipe, options.dynamic_readout)  # raises on an unknown name
    device = resolve_device(map_options.device)  # raises before anything is loaded
    t0 = time.perf_counter()
    circuits = model if isinstance(model, ModelCircuits) else ModelCircuits.load(model)
    if hf_model is None:
        hf_model = inference_model(model, circuits, device)
    rels = resolve_relations(relations, relation_files)
    if "causal" in experiments:
        for rel in rels:
            if not rel.prompt_templates:
                causal_mod.relation_prompts(rel, circuits.tokenizer, options)  # raises
    mapped = _relations_to_map(out, circuits, relations, rels)
    results_map = map_heads(
        circuits, mapped, relation_files, map_options, out=out, progress=progress, log=say
    )
    directory = results_map.directory / VALIDATION if out is not None else None
    res = ValidationResults(directory)
    hooks = AttentionHooks(hf_model, circuits.spec, circuits.cfg)
    timings: dict[str, float] = {"load_and_map_s": round(time.perf_counter() - t0, 2)}
    with eval_mode(hf_model):
        if "correlative" in experiments or "multi-token" in experiments:
            recipe = dynamic_recipe(map_options.recipe, options.dynamic_readout)
            readout = HeadReadout(circuits, recipe).to(hooks.device)
            for exp in ("correlative", "multi-token"):
                if exp in experiments:
                    t1 = time.perf_counter()
                    _run_correlative(
                        exp, circuits, hooks, readout, rels, results_map, map_options, options,
                        res, progress, say,
                    )  # fmt: skip
                    timings[f"{exp}_s"] = round(time.perf_counter() - t1, 2)
        if "causal" in experiments:
            t1 = time.perf_counter()
            _run_causal(
                circuits, hooks, rels, results_map, map_options, options, res, progress, say
            )
            timings["causal_s"] = round(time.perf_counter() - t1, 2)
        if "qk" in experiments:  # the QK circuit (headatlas.validate.qk)
            from headatlas.validate.qk import validate_qk

            t1 = time.perf_counter()
            res.qk = validate_qk(
                circuits, hf_model, map_options.recipe, seed=options.seed, classes=True
            )
            timings["qk_s"] = round(time.perf_counter() - t1, 2)
    res.summary = _summary(results_map, res, map_options, options, experiments, timings)
    if directory is not None:
        _write(res, results_map.display_name)
    return res


def _relations_to_map(
    out: str | Path | None,
    circuits: ModelCircuits,
    relations: Sequence[str] | None,
    asked: Sequence[Relation],
) -> list[str] | None:
    """The relations the static map is made with: the asked ones (``relations``, resolved to
    ``asked`` with the relation files), plus every built-in relation a finished map in ``out``
    already holds, in that map's order. Validating a few relations then reuses the folder's map
    (or re-maps all of them), never replacing a bigger map with a smaller one; a relation of
    that map from a relation file not given now could not be kept: an error."""
    if out is None:
        return None if relations is None else list(relations)
    folder = results_folder(out, str(circuits.summary()["name"]))
    if not (folder / MANIFEST).is_file():
        return None if relations is None else list(relations)
    try:
        held = [str(r["name"]) for r in read_manifest(folder).get("relations", [])]
    except Exception:  # an unreadable manifest: the map reports it and maps again
        return None if relations is None else list(relations)
    names = {r.name for r in asked}
    lost = [n for n in held if n not in names and n not in BUILTIN_NAMES]
    if lost:
        raise ValidationInputError(
            f"{folder} holds a map with relation(s) {', '.join(lost)} from a relation file not "
            "given here, and validating would replace it: pass the same --relations-file "
            "(with the relations to validate), or another --out"
        )
    if all(n in names for n in held):
        return None if relations is None else list(relations)
    builtin_asked = [r.name for r in asked if r.name in BUILTIN_NAMES]
    kept = [n for n in held if n in BUILTIN_NAMES]
    return kept + [n for n in builtin_asked if n not in kept]


def _pairs_for(
    exp: str,
    rel: Relation,
    tokenizer: Any,
    map_options: MapOptions,
    options: ValidationOptions,
    vocab_size: int,
) -> tuple[list[list[int]], list[int], str | None]:
    """(sources as id lists, targets, skip reason) for one relation and experiment: the map's
    single-token pairs (correlative) or multi-token sources (multi-token)."""
    if exp == "multi-token":
        return multi_token_pairs(
            rel, tokenizer, leading_space=map_options.leading_space,
            min_pairs=options.min_multi_token, vocab_size=vocab_size,
        )  # fmt: skip
    tok = tokenize_relations([rel], tokenizer, map_options, vocab_size)[0]
    if tok.skip_reason:
        return [], [], tok.skip_reason
    return [[s] for s in tok.source_ids], list(tok.target_ids), None


def _run_correlative(
    exp: str,
    circuits: ModelCircuits,
    hooks: AttentionHooks,
    readout: HeadReadout,
    rels: Sequence[Relation],
    results_map: MapResults,
    map_options: MapOptions,
    options: ValidationOptions,
    res: ValidationResults,
    progress: bool,
    say: Callable[[str], None],
) -> None:
    L, H = circuits.cfg.n_layers, circuits.cfg.n_heads
    mapped = set(results_map.scores["relation"].unique())
    jobs = []
    for rel in rels:
        if rel.name not in mapped:
            res.skipped[f"{exp}: {rel.name}"] = "not in the static map"
            continue
        sources, targets, why = _pairs_for(
            exp, rel, circuits.tokenizer, map_options, options, circuits.cfg.vocab_size
        )
        if why:
            res.skipped[f"{exp}: {rel.name}"] = why
            say(f"{exp}: skipping {why}")
            continue
        sources, targets = sample_pairs(sources, targets, options.max_prompts, options.seed)
        jobs.append((rel, sources, targets))
    total = sum(len(t) for _, _, t in jobs) * len(options.templates)
    bar = _bar(total, progress, f"{exp} ({len(jobs)} relations)")
    work = [
        DynamicJob(rel.name, t, sources, targets, _k_of(results_map, rel.name))
        for rel, sources, targets in jobs
        for t in options.templates
    ]
    found = dynamic_scores(
        hooks, readout, circuits.tokenizer, work, options.batch_size,
        bar.update if bar is not None else None,
    )  # fmt: skip
    if bar is not None:
        bar.close()
    rows: list[dict[str, Any]] = []
    frames = []
    for rel, _sources, _targets in jobs:
        per_template = [d for d in found if d.relation == rel.name]
        static, static_sup = static_matrix(results_map.scores, rel.name, L, H)
        k = _k_of(results_map, rel.name)
        rows += correlate(rel.name, rel.category, k, static, static_sup, per_template)
        frames.append(heads_table(rel.name, static, static_sup, per_template))
    table = pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
    if exp == "correlative":
        res.correlative = table
        res.correlative_heads = pd.concat(frames, ignore_index=True) if frames else None
    else:
        res.multi_token = table


def _k_of(results_map: MapResults, relation: str) -> int:
    scores = results_map.scores
    return int(scores.loc[scores["relation"] == relation, "k"].iloc[0])


def _run_causal(
    circuits: ModelCircuits,
    hooks: AttentionHooks,
    rels: Sequence[Relation],
    results_map: MapResults,
    map_options: MapOptions,
    options: ValidationOptions,
    res: ValidationResults,
    progress: bool,
    say: Callable[[str], None],
) -> None:
    total_heads = circuits.cfg.n_layers * circuits.cfg.n_heads
    m = options.m_for(total_heads)
    bar = _bar(causal_mod.planned_passes(len(rels), options, m), progress, "causal")
    found = causal_mod.causal_experiment(
        hooks, circuits.tokenizer, rels, results_map.scores, options,
        leading_space=map_options.leading_space, say=say,
        tick=bar.update if bar is not None else None,
    )  # fmt: skip
    if bar is not None:
        bar.close()
    for r in found:
        if r.skipped:
            res.skipped[f"causal: {r.relation}"] = r.skipped
    res.causal = causal_summary(found)
    res.causal_curves = causal_mod.curves_table(found)


def _bar(total: int, enabled: bool, desc: str) -> Progress:
    return Progress(total, desc, unit="pass", enabled=enabled)


def _clean(x: Any) -> Any:
    """JSON-safe scalar (NaN -> None)."""
    if isinstance(x, (float, np.floating)):
        return None if x != x else round(float(x), 4)
    if isinstance(x, np.integer):
        return int(x)
    return x


REL_KEY = {"correlative": "correlative", "multi-token": "multi_token", "causal": "causal"}
"""Experiment name -> its key in a relation's summary entry."""


def _summary(
    results_map: MapResults,
    res: ValidationResults,
    map_options: MapOptions,
    options: ValidationOptions,
    experiments: Sequence[str],
    timings: dict[str, float],
) -> dict[str, Any]:
    """What the HTML atlas shows.

    ``experiments``: the experiments held; ``relations``: per relation its category and one
    entry per experiment (``correlative`` / ``multi_token``: r and p per score kind;
    ``causal``: the summary row); ``skipped``: "experiment: relation" -> why; ``runs``: per
    experiment its options, means, timings and date.
    """
    per_relation: dict[str, dict[str, Any]] = {}
    created = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    runs: dict[str, dict[str, Any]] = {
        exp: {
            "options": options.as_dict(),
            "map_options": map_options.as_dict(),
            "means": {},
            "timings": {
                "load_and_map_s": timings.get("load_and_map_s"),
                "run_s": timings.get(f"{exp}_s"),
            },
            "created": created,
        }
        for exp in experiments
    }
    for exp, table in (("correlative", res.correlative), ("multi-token", res.multi_token)):
        if table is None:
            continue
        for row in table.to_dict("records"):
            entry = per_relation.setdefault(row["relation"], {"category": row["category"]})
            entry.setdefault(REL_KEY[exp], {})[row["score"]] = {
                k: _clean(row[k])
                for k in ("r_without_context", "p_without_context", "r_with_context",
                          "p_with_context", "max_static_score", "n_prompts")
            }  # fmt: skip
        for kind in ("relation", "suppression"):
            sub = table[table["score"] == kind]
            for ctx in ("without_context", "with_context"):
                runs[exp]["means"][f"{kind}_mean_r_{ctx}"] = (
                    _clean(sub[f"r_{ctx}"].mean()) if len(sub) else None
                )
    if res.causal is not None:
        for row in res.causal.to_dict("records"):
            entry = per_relation.setdefault(row["relation"], {"category": row["category"]})
            entry["causal"] = {k: _clean(v) for k, v in row.items() if k not in ("relation",)}
        done = res.causal[res.causal["skipped"] == ""]
        for col in ("drop_relation_heads", "drop_random_mean", "control_drop_mean"):
            runs["causal"]["means"][f"mean_{col}"] = _clean(done[col].mean()) if len(done) else None
    if res.qk is not None:
        runs["qk"]["means"] = {
            "duplicate_token_best": {k: _clean(v) for k, v in res.qk.best.items()}
        }
    return {
        "model": results_map.manifest.get("model", {}).get("name"),
        "experiments": list(experiments),
        "relations": per_relation,
        "skipped": dict(res.skipped),
        "runs": runs,
    }


def merge_summaries(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` over ``old``: experiments run now replace their earlier results, others stay
    (so separate ``--experiment`` runs build one summary). A different model, or a summary
    in another layout, is replaced."""
    if (
        old.get("model") != new.get("model")
        or not isinstance(old.get("experiments"), list)
        or not isinstance(old.get("relations"), dict)
        or not isinstance(old.get("runs"), dict)
    ):
        return new
    ran = set(new["experiments"])
    dropped = {REL_KEY.get(e, e) for e in ran}
    relations: dict[str, dict[str, Any]] = {}
    for name, entry in old["relations"].items():
        kept = {k: v for k, v in entry.items() if k not in dropped}
        if set(kept) - {"category"}:
            relations[name] = kept
    for name, entry in new["relations"].items():
        relations.setdefault(name, {}).update(entry)
    skipped = {k: v for k, v in old.get("skipped", {}).items() if k.split(": ", 1)[0] not in ran}
    return {
        "model": new["model"],
        "experiments": [e for e in ALL_EXPERIMENTS if e in ran or e in old["experiments"]],
        "relations": relations,
        "skipped": {**skipped, **new["skipped"]},
        "runs": {**old["runs"], **new["runs"]},
    }


def _write(res: ValidationResults, name: str) -> None:
    d = res.directory
    assert d is not None
    d.mkdir(parents=True, exist_ok=True)
    if res.correlative is not None:
        _csv(res.correlative, d / "correlative.csv")
        write_text_atomic(
            correlation_markdown(res.correlative, f"{name}: static vs dynamic scores"),
            d / "correlative.md",
        )
        if res.correlative_heads is not None:
            _csv(res.correlative_heads, d / "correlative_heads.csv")
            correlation_scatter(res.correlative_heads, d / "correlative.png", name)
    if res.multi_token is not None:
        _csv(res.multi_token, d / "multi_token.csv")
        write_text_atomic(
            correlation_markdown(res.multi_token, f"{name}: multi-token sources"),
            d / "multi_token.md",
        )
    if res.causal is not None:
        _csv(res.causal, d / "causal.csv")
        write_text_atomic(
            causal_markdown(res.causal, f"{name}: ablating relation heads"),
            d / "causal.md",
        )
    if res.causal_curves is not None:
        _csv(res.causal_curves, d / "causal_curves.csv")
        ablation_curves(res.causal_curves, d / "causal.png", name)
    if res.qk is not None:
        _csv(res.qk.correlations, d / "qk.csv")
        _csv(res.qk.heads, d / "qk_heads.csv")
        if res.qk.classes is not None:
            _csv(res.qk.classes, d / "qk_classes.csv")
        write_text_atomic(qk_markdown(res.qk, f"{name}: QK duplicate-token score"), d / "qk.md")
    path = d / "summary.json"
    summary = res.summary
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError, KeyError, AttributeError):
            # an unreadable old summary is replaced
            summary = merge_summaries(json.loads(path.read_text()), summary)
    write_json_atomic(summary, path)


def _csv(df: pd.DataFrame, path: Path) -> None:
    write_text_atomic(df.to_csv(index=False), path)
