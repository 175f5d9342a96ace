"""``calibrate``: choose a model's recipe by evidence.

One correlative run (dynamic scores computed once, cached), static scores under every
candidate recipe on the same sampled pairs the prompts use (candidates that differ only in
the embedding mode share each head's read-out block), then per recipe the mean Pearson r between static and dynamic scores over the
relations (relation and suppression scores, without and with context), per template too, with
bootstrap confidence intervals over heads (the tiled Pearson p-values over heads x templates
overstate significance: the same head appears once per template). The recipe with the highest
mean r (the mean of without- and with-context relation-score r) wins and is recorded in
``OUT/<model-slug>/calibration.json``, which ``map --preset calibrated`` reads.

Layout of ``OUT/<model-slug>/calibration/``::

    dynamic.parquet     dynamic scores per relation x template x head (reused when the key matches)
    static.parquet      static scores per recipe x relation x head (on the sampled pairs)
    recipes.csv / .md   the table per recipe (and per template)
    recipes.png         mean r per recipe with 95% bootstrap intervals
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from headatlas.circuits import ModelCircuits
from headatlas.errors import HeadAtlasError, ValidationInputError
from headatlas.relations import resolve_relations
from headatlas.scoring.kernel.layout import PairLayout
from headatlas.scoring.mapping import resolve_device
from headatlas.scoring.options import MapOptions, resolve_dtype
from headatlas.scoring.plan import RelationPairs, ScoringPlan
from headatlas.scoring.recipe import PRESETS, Recipe, SourceInputs
from headatlas.scoring.relation_scores import layer_ranks, layer_scores
from headatlas.store import (
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
    static_matrix,
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

_DYN = ("without_context", "with_context")


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
) -> CalibrationResults:
    """Compare candidate recipes on one correlative run and record the best.

    ``map_options`` give everything but the recipe (k, tokenisation, dtype...); its recipe is
    the base of the dynamic readout (``options.dynamic_readout``), which stays the same for
    every candidate so that they are compared against the same dynamic scores.
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
    static = static_scores(circuits, candidates, jobs, map_options, hf_model, say)
    timings["static_s"] = round(time.perf_counter() - t0, 2)
    mapped = list(dict.fromkeys(j.relation for j in jobs))

    table, per_template, per_relation = compare(static, dyn, L, H, n_boot, options.seed)
    table["label"] = [candidates[n].label() for n in table["recipe"]]
    winner = str(table.sort_values("score", ascending=False)["recipe"].iloc[0])
    res = CalibrationResults(
        directory, table, per_template, per_relation, winner, candidates, static
    )
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
        write_json_atomic(record, directory / RECORD)
    say(f"calibrate: winner '{winner}' ({candidates[winner].label()})")
    return res


def _jobs(
    circuits: ModelCircuits,
    relations: Sequence[str] | None,
    map_options: MapOptions,
    options: ValidationOptions,
) -> list[DynamicJob]:
    """Per usable relation and template: the sampled single-token pairs and the map's k."""
    from headatlas.validate.run import _pairs_for

    V = circuits.cfg.vocab_size
    jobs = []
    for rel in resolve_relations(relations):
        sources, targets, why = _pairs_for(
            "correlative", rel, circuits.tokenizer, map_options, options
        )
        kept = [(s, t) for s, t in zip(sources, targets) if s[0] < V and t < V]
        if why or len(kept) < map_options.min_pairs:
            continue
        sources, targets = sample_pairs(
            [s for s, _ in kept], [t for _, t in kept], options.max_prompts, options.seed
        )
        k = map_options.k_for(rel.name, rel.copying, V)
        jobs += [DynamicJob(rel.name, t, sources, targets, k) for t in options.templates]
    return jobs


def static_scores(
    circuits: ModelCircuits,
    candidates: Mapping[str, Recipe],
    jobs: Sequence[DynamicJob],
    map_options: MapOptions,
    hf_model: torch.nn.Module | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, pd.DataFrame]:
    """Static scores of every head under each candidate recipe, on the pairs the dynamic run
    prompts with (so both sides score the same pairs). Columns as the map's scores table.

    Candidates that read out alike (same norms, biases, gain; only the embedding mode differs)
    share each head's read-out block W_O·W_U: their source rows are stacked into one kernel call.
    """
    seen: dict[str, DynamicJob] = {}
    for j in jobs:
        seen.setdefault(j.relation, j)
    rels = [
        RelationPairs(j.relation, "", j.k, [s[0] for s in j.sources], list(j.targets))
        for j in seen.values()
    ]
    plan = ScoringPlan.build(rels)
    n = len(plan.source_ids)
    device = resolve_device(map_options.device)
    dtype = resolve_dtype(map_options.dtype)
    groups: dict[Recipe, list[str]] = {}
    for name, recipe in candidates.items():
        groups.setdefault(recipe.replace(embedding="mlp0", embedding_layer0=False), []).append(name)
    rows: dict[str, list[tuple[Any, ...]]] = {name: [] for name in candidates}
    for shared, names in groups.items():
        say(f"calibrate: static scores of {', '.join(names)} ({len(plan.pair_rows)} pairs)")
        readout = shared.bind(circuits, device, dtype)
        inputs = [SourceInputs(candidates[m], circuits, plan.source_ids, hf_model) for m in names]
        M = len(names)
        stacked = torch.cat([plan.pair_rows + m * n for m in range(M)])
        V = readout.W_Uf.shape[1]
        layout = PairLayout(stacked, plan.pair_targets.repeat(M), n * M, V, k=plan.pair_k.repeat(M))
        layout.to(device)
        P = len(plan.pair_rows)
        for i in range(circuits.cfg.n_layers):
            layer = circuits.layer(i)
            X = torch.cat([inp.layer(i) for inp in inputs]).to(device=device, dtype=dtype)
            with torch.no_grad():
                up, down = layer_ranks(layer, X, readout, layout)
            for m, name in enumerate(names):
                sc, sup = layer_scores(
                    plan, up[:, m * P : (m + 1) * P], down[:, m * P : (m + 1) * P]
                )
                rows[name] += [
                    (i, h, rel.name, rel.k, float(sc[h, r]), float(sup[h, r]))
                    for h in range(sc.shape[0])
                    for r, rel in enumerate(plan.relations)
                ]
    columns = ["layer", "head", "relation", "k", "score", "suppression_score"]
    return {name: pd.DataFrame(r, columns=columns) for name, r in rows.items()}


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
    recipe = dynamic_recipe(map_options.recipe(), options.dynamic_readout)
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


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of x, y [B, n]; 0 where x is constant (a static map that
    scores every head alike carries no signal), NaN where y is."""
    xc = x - x.mean(1, keepdims=True)
    yc = y - y.mean(1, keepdims=True)
    sx = np.sqrt((xc * xc).sum(1))
    sy = np.sqrt((yc * yc).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(1) / (sx * sy)
    r = np.where(sx == 0, 0.0, r)
    return np.where(sy == 0, np.nan, r)


def compare(
    maps: Mapping[str, pd.DataFrame],
    dyn: Sequence[DynamicScores],
    n_layers: int,
    n_heads: int,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(table per recipe, table per recipe x template, table per recipe x relation).

    Per relation, r is Pearson's over heads x templates (as ``validate`` computes it); a
    relation whose dynamic scores are constant (no head ever promotes the target) is left out
    of every recipe's mean; a recipe whose static scores are constant gets r = 0 there. The
    95% interval resamples heads (the same draw for every relation and template).
    """
    N = n_layers * n_heads
    rng = np.random.default_rng(seed)
    boot = rng.integers(0, N, size=(n_boot, N))
    by_rel: dict[str, list[DynamicScores]] = {}
    for d in dyn:
        by_rel.setdefault(d.relation, []).append(d)
    templates = list(dict.fromkeys(d.template for d in dyn))
    rows, tpl_rows, rel_rows = [], [], []
    for name, scores in maps.items():
        row: dict[str, Any] = {"recipe": name}
        boots: dict[str, list[np.ndarray]] = {}
        for kind, suffix in (("relation", ""), ("suppression", "_suppression")):
            for ctx in _DYN:
                key = f"{kind}_{ctx}"
                rs, bs = [], []
                per_tpl: dict[str, list[float]] = {t: [] for t in templates}
                for rel, ds in by_rel.items():
                    static, static_sup = static_matrix(scores, rel, n_layers, n_heads)
                    x = (static if kind == "relation" else static_sup).ravel()
                    ys = np.stack([getattr(d, ctx + suffix).ravel() for d in ds])  # [T, N]
                    r = _pearson_rows(np.tile(x, len(ds))[None], ys.reshape(1, -1))[0]
                    if np.isnan(r):
                        continue
                    rs.append(r)
                    xb = x[boot]  # [B, N]
                    yb = ys[:, boot].transpose(1, 0, 2).reshape(n_boot, -1)  # [B, T·N]
                    bs.append(_pearson_rows(np.tile(xb, len(ds)), yb))
                    for d, y in zip(ds, ys, strict=True):
                        rt = _pearson_rows(x[None], y[None])[0]
                        if not np.isnan(rt):
                            per_tpl[d.template].append(rt)
                    if kind == "relation":
                        rel_rows.append({"recipe": name, "relation": rel, "context": ctx, "r": r})
                row[f"{key}_mean_r"] = float(np.mean(rs)) if rs else float("nan")
                row[f"{key}_n_relations"] = len(rs)
                if bs:
                    with warnings.catch_warnings():  # a draw may leave a relation constant
                        warnings.simplefilter("ignore", RuntimeWarning)
                        means = np.nanmean(np.stack(bs), 0)  # [B]
                        lo, hi = np.nanpercentile(means, [2.5, 97.5])
                else:
                    lo = hi = float("nan")
                row[f"{key}_ci_low"], row[f"{key}_ci_high"] = float(lo), float(hi)
                boots[key] = bs
                if kind == "relation":
                    for t, vals in per_tpl.items():
                        tpl_rows.append(
                            {
                                "recipe": name,
                                "template": t,
                                "context": ctx,
                                "mean_r": float(np.mean(vals)) if vals else float("nan"),
                                "n_relations": len(vals),
                            }
                        )
        static_best = scores.groupby(["layer", "head"])["score"].max()
        row["heads_at_threshold"] = int((static_best >= 0.15).sum())
        row["score"] = np.nanmean(
            [row["relation_without_context_mean_r"], row["relation_with_context_mean_r"]]
        )
        rows.append(row)
    per_rel = pd.DataFrame(rel_rows)
    if len(per_rel):
        per_rel = per_rel.pivot_table(
            index=["recipe", "relation"], columns="context", values="r"
        ).reset_index()
        per_rel.columns.name = None
    return pd.DataFrame(rows), pd.DataFrame(tpl_rows), per_rel


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


def table_markdown(res: CalibrationResults, title: str) -> str:
    """The per-recipe table (and per-template means) as Markdown."""
    t = res.table
    lines = [
        f"# {title}",
        "",
        "Mean Pearson r between static and dynamic scores over relations (r per relation over "
        "heads x templates); [95% bootstrap interval over heads]. Winner: "
        f"**{res.winner}**.",
        "",
        "| recipe | switches | r w/o context | r with context | suppression r w/o | "
        "suppression r with | heads >= 0.15 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in t.itertuples():
        cells = []
        for key in (
            "relation_without_context",
            "relation_with_context",
            "suppression_without_context",
            "suppression_with_context",
        ):
            m, lo, hi = (getattr(row, f"{key}_{s}") for s in ("mean_r", "ci_low", "ci_high"))
            cells.append(f"{_f(m)} [{_f(lo)}, {_f(hi)}]")
        lines.append(
            f"| {row.recipe} | {row.label} | {' | '.join(cells)} | {row.heads_at_threshold} |"
        )
    n = int(t["relation_without_context_n_relations"].max()) if len(t) else 0
    lines += [
        "",
        f"Relations with a non-constant dynamic score: {n}.",
        "",
        "Per template (relation scores):",
        "",
    ]
    lines += ["| recipe | template | r w/o context | r with context |", "|---|---|---:|---:|"]
    pt = res.per_template
    if len(pt):
        wide = pt.pivot_table(index=["recipe", "template"], columns="context", values="mean_r")
        for (recipe, tpl), vals in wide.iterrows():
            lines.append(
                f"| {recipe} | {tpl} | {_f(vals.get('without_context', np.nan))} | "
                f"{_f(vals.get('with_context', np.nan))} |"
            )
    return "\n".join(lines) + "\n"


def recipes_plot(res: CalibrationResults, path: Path, title: str) -> None:
    """Mean r per recipe, without and with context, with 95% bootstrap intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = res.table
    x = np.arange(len(t))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(t) + 2), 3.8))
    for i, (ctx, name) in enumerate(zip(_DYN, ("without context", "with context"), strict=True)):
        m = t[f"relation_{ctx}_mean_r"].to_numpy(float)
        lo = m - t[f"relation_{ctx}_ci_low"].to_numpy(float)
        hi = t[f"relation_{ctx}_ci_high"].to_numpy(float) - m
        ax.bar(x + (i - 0.5) * 0.38, m, 0.38, yerr=[lo, hi], capsize=3, label=name)
    ax.set_xticks(x, [f"{r}{' *' if r == res.winner else ''}" for r in t["recipe"]])
    ax.set_ylabel("mean r (static vs dynamic)")
    ax.set_ylim(min(0.0, float(np.nanmin(t["relation_without_context_mean_r"])) - 0.05), 1.0)
    ax.axhline(0, color="0.5", lw=0.6)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{title}  (* = chosen)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write(res: CalibrationResults, work: Path, title: str) -> None:
    work.mkdir(parents=True, exist_ok=True)
    frames = [df.assign(recipe=name) for name, df in res.static.items()]
    write_parquet_atomic(pd.concat(frames, ignore_index=True), work / "static.parquet")
    res.table.to_csv(work / "recipes.csv", index=False)
    res.per_template.to_csv(work / "recipes_per_template.csv", index=False)
    res.per_relation.to_csv(work / "recipes_per_relation.csv", index=False)
    write_text_atomic(table_markdown(res, f"Recipes for {title}"), work / "recipes.md")
    recipes_plot(res, work / "recipes.png", f"Recipes for {title}")


def _records(df: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
        for r in df.to_dict("records")
    ]


def _f(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}"
