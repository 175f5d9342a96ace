"""`headatlas map [MODEL]`: score every head on every relation, label heads, store results."""

from __future__ import annotations

import argparse

from headatlas.cli.common import (
    add_method_args,
    add_model_source_args,
    add_relation_file_args,
    calibrated_qk,
    calibrated_recipe,
    open_circuits,
    options_from_args,
)
from headatlas.scoring.categories import LABELS
from headatlas.scoring.mapping import map_heads
from headatlas.store import MapResults


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register `headatlas map`."""
    p = sub.add_parser("map", help="map every attention head of a model (default: smollm2)")
    p.add_argument(
        "model",
        nargs="?",
        default="smollm2",
        help="packaged name (smollm2, gemma3-270m), folder, .gguf file or hub id",
    )
    p.add_argument(
        "--relations",
        nargs="*",
        default=None,
        metavar="NAME",
        help="built-in relations or categories (default: all; the option with no name scores only --relations-file relations)",
    )
    add_relation_file_args(p)
    p.add_argument(
        "--out",
        default="atlas",
        help="results folder; results go to OUT/<model-slug>/ (default: atlas)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS",
        help="split the layers over Ray tasks: 'local' (a cluster on this machine), 'auto' or "
        "a cluster address; OUT must be reachable from every worker (default: one process)",
    )
    p.add_argument(
        "--ray-tasks",
        type=int,
        default=None,
        metavar="N",
        help="with --ray: layer ranges (default: one per cluster CPU)",
    )
    add_model_source_args(p)
    add_method_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Map the model and print a summary."""
    circuits = open_circuits(args)
    options = options_from_args(
        args, calibrated_recipe(args, circuits), calibrated_qk(args, circuits)
    )
    if args.ray:
        from headatlas.sweep.split import map_split

        results, tasks = map_split(
            str(circuits.source.name),
            relations=args.relations,
            relation_files=args.relations_file,
            options=options,
            out=args.out,
            ray_address=args.ray,
            tasks=args.ray_tasks,
            progress=not args.quiet,
        )
        computed = sum(t.layers_computed or 0 for t in tasks)
        print(f"{len(tasks)} Ray tasks computed {computed} layers")
    else:
        results = map_heads(
            circuits,
            relations=args.relations,
            relation_files=args.relations_file,
            options=options,
            out=args.out,
            progress=not args.quiet,
        )
    if not args.quiet:
        print(summary_text(results))
    print(f"results: {results.directory}")
    return 0


def summary_text(results: MapResults) -> str:
    """Heads per category and the top head per relation, as plain text."""
    m = results.manifest
    lines = [
        f"{results.display_name}: {m['model']['n_layers']} layers x {m['model']['n_heads']} heads, "
        f"{len(m['relations']) - sum(1 for r in m['relations'] if r['skipped'])} relations scored "
        f"in {m['timings']['total_s']:.1f} s",
        "",
        "heads per category:",
    ]
    counts = results.categories["label"].value_counts()
    for label in [*LABELS, *sorted(set(counts.index) - set(LABELS))]:
        if label in counts:
            lines.append(f"  {label:<14} {int(counts[label]):>5}")
    lines += ["", "top head per relation (score / suppression):"]
    s = results.scores
    for rel, group in s.groupby("relation", sort=False):
        best = group.loc[group["score"].idxmax()]
        best_sup = group.loc[group["suppression_score"].idxmax()]
        lines.append(
            f"  {rel:<22} L{int(best.layer)}H{int(best['head'])} {best.score:.2f}   "
            f"L{int(best_sup.layer)}H{int(best_sup['head'])} {best_sup.suppression_score:.2f}"
            f"  (k={int(best.k)}, {int(best.n_pairs)} pairs)"
        )
    null = m.get("null", {})
    if null.get("permutations"):
        t = m["timings"]
        lines += [
            "",
            f"null: {null['permutations']} target permutations per relation, "
            f"{t['null_s']:.1f} s of {t['scores_s']:.1f} s scoring; label rule {null['label_rule']}",
        ]
        if m.get("relations_class_level"):
            lines.append(
                "  class-level (shuffled targets reach the threshold): "
                + ", ".join(m["relations_class_level"])
            )
    skipped = [r for r in m["relations"] if r["skipped"]]
    if skipped:
        lines += ["", "skipped relations:"]
        lines += [f"  {r['skipped']}" for r in skipped]
    from headatlas.scoring.qk_labels import qk_summary

    lines += qk_summary(results)  # the QK reading's agreement; labels only where it holds
    return "\n".join(lines)
