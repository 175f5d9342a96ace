"""Causal check (MAPS §5): ablating the heads the static map credits with a relation should
hurt the model on that relation more than ablating random heads, and should hurt unrelated
(control) relations little.

For each relation, few-shot prompts (``Relation.prompt_templates``) end where the next token is
the target; accuracy is the share of prompts whose argmax next token is the target's first
token. Heads are ablated by zeroing their z at the last position only (the position that
predicts), added in steps from the highest static score down.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from headatlas.errors import ValidationInputError
from headatlas.relations import Relation
from headatlas.validate.hooks import AttentionHooks, Prefix
from headatlas.validate.options import ValidationOptions
from headatlas.validate.prompts import Prompt, batches, pad_id, text_prompts

Head = tuple[int, int]
CACHE_BYTES = 2 * 2**30
"""Prefix caches kept for reuse across ablations, at most (others are rebuilt when needed)."""


def relation_prompts(
    relation: Relation,
    tokenizer: Any,
    options: ValidationOptions,
    leading_space: bool = True,
) -> list[Prompt]:
    """Few-shot prompts of a relation: a seeded sample of its pairs in each of its templates
    (the first ``options.causal_templates``); the target is the first token of the target."""
    templates = list(relation.prompt_templates)
    if not templates:
        raise ValidationInputError(
            f"relation '{relation.name}' has no prompt templates, so the causal experiment "
            'cannot prompt it: add "prompt_templates" with a <X> slot to its file, or run '
            "--experiment correlative"
        )
    if options.causal_templates is not None:
        templates = templates[: options.causal_templates]
    prefix = " " if leading_space else ""
    pairs = []
    for source, target in relation.pairs:
        ids = tokenizer.encode(prefix + target, add_special_tokens=False)
        if ids:
            pairs.append((source, ids[0]))
    idx = list(range(len(pairs)))
    if options.max_prompts is not None and len(idx) > options.max_prompts:
        idx = sorted(random.Random(options.seed).sample(idx, options.max_prompts))
    words = [pairs[i][0] for i in idx]
    targets = [pairs[i][1] for i in idx]
    return [p for t in templates for p in text_prompts(tokenizer, t, words, targets)]


class PromptSet:
    """A relation's prompts in batches; accuracy under any ablation.

    Ablation edits only the last position, so (when the model allows it) every token before it
    runs once and its key/value cache is reused: each ablation then costs one token per prompt.
    Sliding-window models (Gemma 2/3, Mistral with a window) run whole prompts every time.
    """

    def __init__(self, hooks: AttentionHooks, prompts: Sequence[Prompt], batch_size: int, pad: int):
        self.hooks = hooks
        self.n = len(prompts)
        self.batches = list(batches(prompts, batch_size, pad))
        self._prefixes: list[Prefix] | None = None

    def accuracy(self, ablate: Sequence[Head] = ()) -> float:
        """Share of prompts whose greedy next token is the target, with ``ablate`` heads' z
        zeroed at the last position."""
        zero: dict[int, list[int]] = {}
        for layer, head in ablate:
            zero.setdefault(layer, []).append(head)
        if self.hooks.supports_prefix_cache and self._prefixes is None:
            self._prefixes = [
                self.hooks.prefix(b.input_ids, b.attention_mask, b.read_pos) for b in self.batches
            ]
        correct = 0
        for i, b in enumerate(self.batches):
            if self._prefixes is not None:
                logits = self.hooks.run_last(self._prefixes[i], zero)
            else:
                run = self.hooks.run(b.input_ids, b.attention_mask, b.read_pos, capture=False,
                                     zero=zero)  # fmt: skip
                logits = run.logits
            correct += int((logits.argmax(-1) == b.targets).sum())
        return correct / max(1, self.n)

    def nbytes(self) -> int:
        """Memory held by the cached prefixes (0 when none)."""
        return sum(p.nbytes() for p in self._prefixes or [])

    def release(self) -> None:
        """Drop the cached prefixes (they are rebuilt when needed)."""
        self._prefixes = None


def top_heads(scores: pd.DataFrame, relation: str, m: int) -> list[Head]:
    """The relation's heads with a positive static score, best first (ties: lower layer, head),
    at most m."""
    sub = scores[(scores["relation"] == relation) & (scores["score"] > 0)]
    sub = sub.sort_values(["score", "layer", "head"], ascending=[False, True, True])
    return [(int(r.layer), int(r.head)) for r in sub.head(m).itertuples()]


@dataclass
class CausalResult:
    """One relation's curves and controls."""

    relation: str
    category: str
    n_prompts: int
    base_accuracy: float
    heads: list[Head] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    relation_curve: list[float] = field(default_factory=list)
    random_curves: list[list[float]] = field(default_factory=list)
    controls: dict[str, tuple[float, float]] = field(default_factory=dict)
    """control relation -> (its base accuracy, its accuracy with this relation's heads ablated)."""
    skipped: str | None = None


def causal_experiment(
    hooks: AttentionHooks,
    tokenizer: Any,
    relations: Sequence[Relation],
    scores: pd.DataFrame,
    options: ValidationOptions,
    leading_space: bool = True,
    say: Callable[[str], None] = lambda _m: None,
    tick: Callable[[int], None] | None = None,
) -> list[CausalResult]:
    """Accuracy curves for every relation (that the map scored) as its top heads are ablated,
    against random heads and control relations."""
    cfg = hooks.cfg
    all_heads = [(l_, h) for l_ in range(cfg.n_layers) for h in range(cfg.n_heads)]
    m_cap = options.m_for(len(all_heads))
    pad = pad_id(tokenizer)
    bs = options.batch_size
    mapped = set(scores["relation"].unique())

    sets: dict[str, PromptSet] = {}
    results: dict[str, CausalResult] = {}
    kept, kept_names = 0, set[str]()  # bytes of prefix caches kept for reuse, and whose
    for rel in relations:
        ps = PromptSet(hooks, relation_prompts(rel, tokenizer, options, leading_space), bs, pad)
        sets[rel.name] = ps
        res = CausalResult(rel.name, rel.category, ps.n, ps.accuracy())
        if tick is not None:
            tick(1)
        if rel.name not in mapped:
            res.skipped = "not in the static map (too few single-token pairs)"
        else:
            res.heads = top_heads(scores, rel.name, m_cap)
            if not res.heads:
                res.skipped = "no head has a positive static score"
        results[rel.name] = res
        if not res.skipped and kept + ps.nbytes() <= CACHE_BYTES:
            kept += ps.nbytes()
            kept_names.add(rel.name)
        else:
            ps.release()

    for name, res in results.items():
        if res.skipped:
            say(f"causal: skipping {name}: {res.skipped}")
            continue
        m = len(res.heads)
        res.steps = options.steps_for(m)
        curve = [res.base_accuracy]
        for s in res.steps[1:]:
            curve.append(sets[name].accuracy(res.heads[:s]))
            if tick is not None:
                tick(1)
        res.relation_curve = curve
        others = [h for h in all_heads if h not in set(res.heads)]
        rng = random.Random(f"{options.seed}:{name}")
        for _ in range(options.random_draws):
            draw = rng.sample(others, min(m, len(others)))
            rc = [res.base_accuracy]
            for s in res.steps[1:]:
                rc.append(sets[name].accuracy(draw[:s]))
                if tick is not None:
                    tick(1)
            res.random_curves.append(rc)
        if name not in kept_names:
            sets[name].release()
        for control in _controls(name, results, options):
            after = sets[control].accuracy(res.heads)
            if control not in kept_names:
                sets[control].release()
            res.controls[control] = (results[control].base_accuracy, after)
            if tick is not None:
                tick(1)
    return list(results.values())


def _controls(
    name: str, results: Mapping[str, CausalResult], options: ValidationOptions
) -> list[str]:
    """Relations whose top heads overlap this one's by < control_max_overlap (shared heads over
    the smaller set) and whose base accuracy is within control_max_acc_gap; closest base
    accuracy first."""
    me = results[name]
    mine = set(me.heads)
    found = []
    for other, res in results.items():
        if other == name or res.skipped:
            continue
        # share of the smaller head set: a few shared heads can be all of a small set
        overlap = len(mine & set(res.heads)) / max(1, min(len(mine), len(res.heads)))
        gap = abs(res.base_accuracy - me.base_accuracy)
        if overlap < options.control_max_overlap and gap <= options.control_max_acc_gap:
            found.append((gap, other))
    return [other for _, other in sorted(found)[: options.max_controls]]


def planned_passes(n_relations: int, options: ValidationOptions, m: int) -> int:
    """Rough count of accuracy evaluations (for a progress bar)."""
    steps = len(options.steps_for(m)) - 1
    return n_relations * (1 + steps * (1 + options.random_draws) + options.max_controls)


def curves_table(results: Sequence[CausalResult]) -> pd.DataFrame:
    """Long table: relation, condition (relation / random / control), draw, control relation,
    n_ablated, accuracy."""
    rows = []
    for r in results:
        if r.skipped:
            continue
        for s, acc in zip(r.steps, r.relation_curve, strict=True):
            rows.append((r.relation, "relation", -1, "", s, acc))
        for i, curve in enumerate(r.random_curves):
            for s, acc in zip(r.steps, curve, strict=True):
                rows.append((r.relation, "random", i, "", s, acc))
        for control, (base, after) in r.controls.items():
            rows.append((r.relation, "control", -1, control, 0, base))
            rows.append((r.relation, "control", -1, control, len(r.heads), after))
    columns = ["relation", "condition", "draw", "control_relation", "n_ablated", "accuracy"]
    return pd.DataFrame(rows, columns=columns)
