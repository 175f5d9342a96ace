"""``calibrate``: choose a model's recipe by evidence.

One correlative run (dynamic scores computed once, cached), static scores under every
candidate recipe on the same sampled pairs the prompts use (candidates that differ only in
the embedding mode share each head's read-out block), then per recipe the mean Pearson r between static and dynamic scores over the
relations (relation and suppression scores, without and with context), per template too, with
bootstrap confidence intervals over heads (the tiled Pearson p-values over heads x templates
overstate significance: the same head appears once per template). The recipe with the highest
mean r (the mean of without- and with-context relation-score r) wins and is recorded in
``OUT/<model-slug>/calibration.json``, which ``map --preset calibrated`` reads.
The statistics are :func:`headatlas.stats.compare_recipes`; the table and figure come from
``headatlas.report.validation_tables`` / ``validation_figures``.

Layout of ``OUT/<model-slug>/calibration/``::

    dynamic.parquet     dynamic scores per relation x template x head (reused when the key matches)
    static.parquet      static scores per recipe x relation x head (on the sampled pairs)
    static_partial/     finished layers of an unfinished run (removed when it completes)
    recipes.csv / .md   the table per recipe (and per template)
    recipes.png         mean r per recipe with 95% bootstrap intervals
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from headatlas.circuits import ModelCircuits
from headatlas.errors import HeadAtlasError, ValidationInputError
from headatlas.relations import resolve_relations, tokenize_relations
from headatlas.report.validation_figures import recipes_figure
from headatlas.report.validation_tables import calibration_markdown
from headatlas.runtime import compute_dtype, resolve_device, resolve_dtype
from headatlas.scoring.layers import score_layers
from headatlas.scoring.options import MapOptions
from headatlas.scoring.plan import RelationPairs, ScoringPlan
from headatlas.scoring.recipe import PRESETS, Recipe, SourceInputs
from headatlas.stats import compare_recipes
from headatlas.store import (
    LayerCache,
    model_slug,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)
from headatlas.validate.dynamic import (
    DynamicJob,
    DynamicScores,
    HeadReadout,
    dynamic_recipe,
    dynamic_scores,
    sample_pairs,
)
from headatlas.validate.hooks import AttentionHooks, eval_mode
from headatlas.validate.options import ValidationOptions
from headatlas.validate.prompts import DEFAULT_TEMPLATES, check_template
from headatlas.weights import ModelSpec
from headatlas.weights.transformers_model import inference_model

CALIBRATION = "calibration"
RECORD = "calibration.json"

CANDIDATES: dict[str, Recipe] = {
    "maps": PRESETS["maps"],
    "mlp0": Recipe(embedding="mlp0"),
    "none": Recipe(embedding="none"),
    "residual": Recipe(embedding="residual"),
    "forward": Recipe(embedding="forward"),
    "context": Recipe(embedding="context"),
}
"""The recipes ``calibrate`` compares by default: the paper's exact formula, and this
project's readout (pre-attention norm, b_V, output gain, final norm) under each embedding
mode."""

CALIBRATION_OPTIONS = ValidationOptions(templates=DEFAULT_TEMPLATES[:2], max_prompts=32)
"""Default correlative settings: two templates, 32 prompts per relation."""


class CalibrationError(HeadAtlasError):
    """No calibration is recorded where one was asked for, or it cannot be read."""


@dataclass
class CalibrationResults:
    """The per-recipe table, its per-template breakdown and the winner."""

    directory: Path | None
    table: pd.DataFrame
    """One row per recipe: mean r (relation / suppression, without / with context), 95% CIs."""
    per_template: pd.DataFrame
    """One row per recipe x template: mean r of relation scores without / with context."""
    per_relation: pd.DataFrame
    """One row per recipe x relation: r of relation scores without / with context."""
    winner: str
    recipes: dict[str, Recipe]
    static: dict[str, pd.DataFrame]
    """Per recipe: static scores (layer, head, relation, k, score, suppression_score)."""
    qk: dict[str, Any] | None = None
    """The QK reading chosen with the winner (headatlas.validate.qk_calibration), when run."""


def calibrate(
    model: ModelSpec | ModelCircuits = "smollm2",
    relations: Sequence[str] | None = None,
    out: str | Path | None = None,
    candidates: Mapping[str, Recipe] | None = None,
    map_options: MapOptions | None = None,
    options: ValidationOptions = CALIBRATION_OPTIONS,
    hf_model: torch.nn.Module | None = None,
    n_boot: int = 1000,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    qk: bool = True,
) -> CalibrationResults:
    """Compare candidate recipes on one correlative run and record the best.

    ``map_options`` give everything but the recipe (k, tokenisation, dtype...); its recipe is
    the base of the dynamic readout (``options.dynamic_readout``), which stays the same for
    every candidate so that they are compared against the same dynamic scores. ``qk``: also
    choose the static QK reading (rotary mode, inputs) through the winner, recorded under
    ``qk`` (:mod:`headatlas.validate.qk_calibration`).
    """
    candidates = dict(candidates or CANDIDATES)
    map_options = map_options or MapOptions()
    say = log or (lambda msg: print(msg, file=sys.stderr))
    for t in options.templates:
        check_template(t)
    if not candidates:
        raise ValidationInputError("calibrate needs at least one candidate recipe")
    device = resolve_device(map_options.device)  # raises before anything is loaded
    circuits = model if isinstance(model, ModelCircuits) else ModelCircuits.load(model)
    if hf_model is None:
        hf_model = inference_model(model, circuits, device)
    summary = circuits.summary()
    directory = Path(out) / model_slug(str(summary["name"])) if out is not None else None
    work = directory / CALIBRATION if directory is not None else None
    L, H = circuits.cfg.n_layers, circuits.cfg.n_heads

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    jobs = _jobs(circuits, relations, map_options, options)
    if not jobs:
        raise ValidationInputError(
            "no relation has enough single-token pairs for this tokenizer: calibrate needs at "
            "least one (lower --min-pairs or pick other relations)"
        )
    dyn = _dynamic(circuits, hf_model, jobs, map_options, options, work, summary, say)
    timings["dynamic_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    partial = work / "static_partial" if work is not None else None
    static = static_scores(circuits, candidates, jobs, map_options, hf_model, say, partial)
    timings["static_s"] = round(time.perf_counter() - t0, 2)
    mapped = list(dict.fromkeys(j.relation for j in jobs))

    table, per_template, per_relation = compare_recipes(static, dyn, L, H, n_boot, options.seed)
    table["label"] = [candidates[n].label() for n in table["recipe"]]
    winner = str(table.sort_values("score", ascending=False)["recipe"].iloc[0])
    res = CalibrationResults(
        directory, table, per_template, per_relation, winner, candidates, static
    )
    if qk:  # the QK reading, chosen through the winning recipe (validate/qk_calibration.py)
        from headatlas.validate.qk_calibration import calibrate_qk

        res.qk = calibrate_qk(circuits, hf_model, candidates[winner], say=say)
    if directory is not None and work is not None:
        _write(res, work, str(summary["display_name"]))
        record = {
            "model": summary["name"],
            "winner": winner,
            "recipe": dataclasses.asdict(candidates[winner]),
            "label": candidates[winner].label(),
            "criterion": "mean of the without- and with-context mean r of relation scores",
            "table": _records(table),
            "relations": mapped,
            "options": options.as_dict(),
            "timings": timings,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        if res.qk is not None:
            record["qk"] = res.qk
        write_json_atomic(record, directory / RECORD)
        if partial is not None:  # the finished layers are in static.parquet now
            shutil.rmtree(partial, ignore_errors=True)
    say(f"calibrate: winner '{winner}' ({candidates[winner].label()})")
    return res


def _jobs(
    circuits: ModelCircuits,
    relations: Sequence[str] | None,
    map_options: MapOptions,
    options: ValidationOptions,
) -> list[DynamicJob]:
    """Per usable relation and template: the sampled single-token pairs and the map's k."""
    V = circuits.cfg.vocab_size
    jobs = []
    for tok in tokenize_relations(resolve_relations(relations), circuits.tokenizer, map_options, V):
        if not tok.usable:
            continue
        rel = tok.relation
        sources, targets = sample_pairs(
            [[s] for s in tok.source_ids], tok.target_ids, options.max_prompts, options.seed
        )
        k = map_options.k_for(rel.name, rel.copying, V)
        jobs += [DynamicJob(rel.name, t, sources, targets, k) for t in options.templates]
    return jobs


STATIC_COLUMNS = ("layer", "head", "relation", "k", "score", "suppression_score")
"""Columns of each recipe's static scores."""


def static_scores(
    circuits: ModelCircuits,
    candidates: Mapping[str, Recipe],
    jobs: Sequence[DynamicJob],
    map_options: MapOptions,
    hf_model: torch.nn.Module | None = None,
    say: Callable[[str], None] = lambda _m: None,
    partial: Path | None = None,
) -> dict[str, pd.DataFrame]:
    """Static scores of every head under each candidate recipe, on the pairs the dynamic run
    prompts with (so both sides score the same pairs). Columns: :data:`STATIC_COLUMNS`.

    Candidates that read out alike (same norms, biases, gain; only the embedding mode differs)
    share each head's read-out block W_O·W_U: their source rows are stacked into one kernel call.
    ``partial``: where finished layers are kept (a :class:`LayerCache`) so an interrupted run
    resumes.
    """
    seen: dict[str, DynamicJob] = {}
    for j in jobs:
        seen.setdefault(j.relation, j)
    rels = [
        RelationPairs(j.relation, "", j.k, [s[0] for s in j.sources], list(j.targets))
        for j in seen.values()
    ]
    plan = ScoringPlan.build(rels)
    device = resolve_device(map_options.device)
    dtype = resolve_dtype(map_options.dtype)
    groups: dict[Recipe, list[str]] = {}
    for name, recipe in candidates.items():
        groups.setdefault(recipe.replace(embedding="mlp0", embedding_layer0=False), []).append(name)
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in candidates}
    for shared, names in groups.items():
        say(f"calibrate: static scores of {', '.join(names)} ({len(plan.pair_rows)} pairs)")
        readout = shared.bind(circuits, device, compute_dtype(dtype))
        inputs = [SourceInputs(candidates[m], circuits, plan.source_ids, hf_model) for m in names]
        weights = circuits.content_fingerprint() + "".join(inp.digest() for inp in inputs)
        recipes = [candidates[m].key_fields() for m in names]
        cache = LayerCache(partial, _static_key(weights, recipes, map_options.dtype, plan), say)
        for layer in score_layers(circuits, plan, inputs, readout, dtype):
            frame = cache.get(layer.index, layer.digest, ("recipe", *STATIC_COLUMNS))
            if frame is None:
                frame = _static_frame(layer.index, names, plan, layer.scores)
                cache.put(layer.index, layer.digest, frame)
            for name, rows in frame.groupby("recipe", sort=False):
                frames[str(name)].append(rows)
    return {
        name: pd.concat(f, ignore_index=True)[list(STATIC_COLUMNS)] for name, f in frames.items()
    }


def _static_key(weights: str, recipes: list[dict[str, Any]], dtype: str, plan: ScoringPlan) -> str:
    """What a layer's static scores depend on besides its own tensors."""
    pairs = [[r.name, r.k, r.source_ids, r.target_ids] for r in plan.relations]
    data = json.dumps([weights, recipes, dtype, pairs], sort_keys=True, default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


def _static_frame(
    layer: int,
    names: Sequence[str],
    plan: ScoringPlan,
    scores: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> pd.DataFrame:
    """One layer's static scores of each recipe in ``names`` (rows tagged by recipe)."""
    rows = [
        (name, layer, h, rel.name, rel.k, float(sc[h, r]), float(sup[h, r]))
        for name, (sc, sup) in zip(names, scores, strict=True)
        for h in range(sc.shape[0])
        for r, rel in enumerate(plan.relations)
    ]
    return pd.DataFrame(rows, columns=["recipe", *STATIC_COLUMNS])


def model_digest(model: torch.nn.Module) -> str:
    """Content hash of every parameter and buffer of the model that runs (dynamic scores depend
    on all of them, not only on the tensors a static map reads)."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _dynamic(
    circuits: ModelCircuits,
    hf_model: torch.nn.Module,
    jobs: list[DynamicJob],
    map_options: MapOptions,
    options: ValidationOptions,
    work: Path | None,
    summary: dict[str, Any],
    say: Callable[[str], None],
) -> list[DynamicScores]:
    """Dynamic scores of every job (relation x template), computed once and cached."""
    recipe = dynamic_recipe(map_options.recipe, options.dynamic_readout)
    key = hashlib.sha256(
        json.dumps(
            [
                model_digest(hf_model),
                recipe.key_fields(),
                [[j.relation, j.template, j.sources, j.targets, j.k] for j in jobs],
            ],
        ).encode()
    ).hexdigest()[:16]
    cache = work / "dynamic.parquet" if work is not None else None
    if cache is not None and cache.is_file():
        old = pd.read_parquet(cache)
        if len(old) and str(old["key"].iloc[0]) == key:
            say(f"calibrate: reusing the dynamic scores in {cache}")
            return _from_frame(old, circuits.cfg.n_layers, circuits.cfg.n_heads)
    say(f"calibrate: dynamic scores of {len(jobs)} relation x template runs ({recipe.label()})")
    hooks = AttentionHooks(hf_model, circuits.spec, circuits.cfg)
    readout = HeadReadout(circuits, recipe)
    with eval_mode(hf_model):
        found = dynamic_scores(hooks, readout, circuits.tokenizer, jobs, options.batch_size)
    if cache is not None:
        frame = _to_frame(found)
        frame["key"] = key
        write_parquet_atomic(frame, cache)
    return found


def _to_frame(found: Sequence[DynamicScores]) -> pd.DataFrame:
    rows = []
    for d in found:
        L, H = d.with_context.shape
        layer, head = np.divmod(np.arange(L * H), H)
        rows.append(
            pd.DataFrame(
                {
                    "relation": d.relation,
                    "template": d.template,
                    "n_prompts": d.n_prompts,
                    "layer": layer,
                    "head": head,
                    **{
                        name: getattr(d, name).ravel()
                        for name in (
                            "with_context",
                            "without_context",
                            "with_context_suppression",
                            "without_context_suppression",
                        )
                    },
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def _from_frame(frame: pd.DataFrame, L: int, H: int) -> list[DynamicScores]:
    out = []
    for (rel, tpl), g in frame.groupby(["relation", "template"], sort=False):
        g = g.sort_values(["layer", "head"])
        arrays = {
            name: g[name].to_numpy(float).reshape(L, H)
            for name in (
                "with_context",
                "without_context",
                "with_context_suppression",
                "without_context_suppression",
            )
        }
        out.append(DynamicScores(str(rel), str(tpl), int(g["n_prompts"].iloc[0]), **arrays))
    return out


def read_calibration(directory: str | Path) -> Recipe:
    """The winning recipe recorded in ``directory/calibration.json`` (a model's results
    folder, ``OUT/<model-slug>``)."""
    path = Path(directory) / RECORD
    if not path.is_file():
        raise CalibrationError(
            f"no calibration in {Path(directory)}: run `headatlas calibrate MODEL --out "
            f"{Path(directory).parent}` first"
        )
    try:
        data = json.loads(path.read_text())
        return Recipe(**data["recipe"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CalibrationError(
            f"{path} is not a calibration record ({exc}); re-run calibrate"
        ) from exc


def _write(res: CalibrationResults, work: Path, title: str) -> None:
    work.mkdir(parents=True, exist_ok=True)
    frames = [df.assign(recipe=name) for name, df in res.static.items()]
    write_parquet_atomic(pd.concat(frames, ignore_index=True), work / "static.parquet")
    res.table.to_csv(work / "recipes.csv", index=False)
    res.per_template.to_csv(work / "recipes_per_template.csv", index=False)
    res.per_relation.to_csv(work / "recipes_per_relation.csv", index=False)
    write_text_atomic(calibration_markdown(res, f"Recipes for {title}"), work / "recipes.md")
    recipes_figure(res, work / "recipes.png", f"Recipes for {title}")


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
        for r in df.to_dict("records")
    ]
