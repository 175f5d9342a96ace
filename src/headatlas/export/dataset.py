"""A results folder as a Hugging Face dataset: ``data/<table>.parquet`` per table present, the
map's ``manifest.json``, and a dataset card whose YAML header declares one config per table, so
``datasets.load_dataset(OUT, "scores")`` works and ``hf upload USER/NAME OUT --repo-type
dataset`` publishes it as it is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from headatlas.export.options import prepare_out
from headatlas.export.tables import COLUMN_DOCS, present_tables, spec_of
from headatlas.store import load_results, write_json_atomic, write_text_atomic

DATA = "data"


def export_dataset(directory: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write the map in ``directory`` (a model's results folder) as a dataset folder ``out``."""
    results = load_results(directory)
    # A table without rows (evidence of a map that labels no head) is left out: `datasets`
    # cannot load a config from an empty parquet file.
    tables = {name: df for name, df in present_tables(results.directory).items() if len(df)}
    target = prepare_out(out, overwrite)
    (target / DATA).mkdir(exist_ok=True)
    for name, df in tables.items():
        df.to_parquet(target / DATA / f"{name}.parquet", index=False)
    write_json_atomic(results.manifest, target / "manifest.json")
    write_text_atomic(dataset_card(results.manifest, tables), target / "README.md")
    return target


def _yaml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def card_header(manifest: dict[str, Any], names: list[str]) -> str:
    """The YAML front matter: one config per table, ``scores`` the default."""
    model = manifest.get("model", {})
    lines = [
        "---",
        f"pretty_name: {_yaml_str('headatlas map of ' + str(model.get('display_name', '')))}",
        "tags:",
        "- interpretability",
        "- attention-heads",
        "- headatlas",
        "configs:",
    ]
    for name in names:
        lines += [
            f"- config_name: {name}",
            "  data_files:",
            "  - split: train",
            f"    path: {DATA}/{name}.parquet",
        ]
        if name == "scores":
            lines.append("  default: true")
    lines.append("---")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def dataset_card(manifest: dict[str, Any], tables: dict[str, pd.DataFrame]) -> str:
    """The dataset card: model, revision, weights fingerprint, recipe, options, relations with
    their provenance, and each table's rows and columns."""
    model = manifest.get("model", {})
    source = model.get("source", {}) or {}
    recipe = manifest.get("recipe", {}) or {}
    options = manifest.get("options", {}) or {}
    names = list(tables)
    out = [card_header(manifest, names), ""]
    out.append(f"# headatlas map of {model.get('display_name', model.get('name', ''))}")
    out += [
        "",
        "What every attention head of the model does, read from its weights alone (MAPS, "
        "Elhelo & Geva 2025), written by `headatlas map` and exported by `headatlas export`.",
        "",
        "```python",
        "import datasets",
        f'scores = datasets.load_dataset("PATH_OR_REPO", "{names[0]}", split="train")',
        "```",
        "",
        "## Model",
        "",
        "| field | value |",
        "|---|---|",
    ]
    rows = [
        ("name", model.get("name")),
        ("display name", model.get("display_name")),
        ("source", source.get("kind")),
        (
            "revision",
            source.get("revision")
            or model.get("revision")
            or "(none: default branch, local files or packaged)",
        ),
        ("commit", source.get("commit") or model.get("commit") or "(none)"),
        ("architecture", model.get("architecture")),
        (
            "shape",
            f"{model.get('n_layers')} layers × {model.get('n_heads')} heads "
            f"({model.get('n_kv_heads')} KV), d_model {model.get('d_model')}, "
            f"d_head {model.get('d_head')}, vocabulary {model.get('vocab_size')}",
        ),
        ("weights fingerprint", model.get("fingerprint")),
        ("headatlas", manifest.get("versions", {}).get("headatlas")),
        ("created", manifest.get("created")),
    ]
    out += [f"| {k} | `{_cell(v)}` |" for k, v in rows]
    out += ["", "## Recipe and options", ""]
    out.append(f"Recipe: `{_cell(recipe.get('label'))}`.")
    out.append("")
    out += ["| option | value |", "|---|---|"]
    out += [f"| {k} | `{_cell(v)}` |" for k, v in {**recipe, **options}.items() if k != "label"]
    out += ["", "## Relations", ""]
    out += [
        "| relation | category | pairs | k | skipped | provenance |",
        "|---|---|---|---|---|---|",
    ]
    for rel in manifest.get("relations", []):
        out.append(
            f"| {_cell(rel.get('name'))} | {_cell(rel.get('category'))} | "
            f"{_cell(rel.get('n_pairs'))} | {_cell(rel.get('k'))} | "
            f"{_cell(rel.get('skipped') or '')} | {_cell(rel.get('provenance'))} |"
        )
    out += ["", "## Tables", ""]
    for name, df in tables.items():
        out += [f"### `{name}`", "", f"{len(df)} rows, one per {spec_of(name).row}.", ""]
        out += ["| column | type | meaning |", "|---|---|---|"]
        for col in df.columns:
            out.append(f"| `{col}` | {df[col].dtype} | {_cell(COLUMN_DOCS.get(col, ''))} |")
        out.append("")
    out += [
        "`manifest.json` is the map's manifest as `headatlas map` wrote it (options, relations, "
        "package versions, per-layer weight digests).",
        "",
    ]
    return "\n".join(out)
