"""Nothing a user sees changes: hashes of every recipe's outputs, run through the CLI.

A refactor (issue 22) must leave every number the tool writes as it was. This script maps
both packaged models under every recipe (the ``maps`` preset and each embedding mode of the
default recipe) on a few relations of every category, with the QK scores on, then runs the
salient operations of two layers and the correlative validation (dynamic scores) on SmolLM2,
and prints one hash per table. Run it on the code before and after (``--src``) and compare::

    python benchmarks/refactor_guard.py --src /path/to/old/src --json before.json
    python benchmarks/refactor_guard.py --json after.json --compare before.json

It drives the ``headatlas`` command line in fresh processes, so it reads the same before and
after whatever the Python API became. Hashes cover every column, rounded to 12 digits.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

RELATIONS = ["copying", "year_following", "country_capital", "adjective_antonym", "english_french"]
RECIPES: dict[str, list[str]] = {
    "maps": ["--preset", "maps"],
    "mlp0": ["--embedding", "mlp0"],
    "none": ["--embedding", "none"],
    "residual": ["--embedding", "residual"],
    "forward": ["--embedding", "forward"],
    "context": ["--embedding", "context"],
}
MODELS = ["smollm2", "gemma3-270m"]


def _frame_hash(t: pd.DataFrame, digits: int) -> str:
    """Hash of a table: every column, rows in stored order, floats rounded to ``digits``."""
    for c in t.columns:
        if t[c].dtype.kind == "f":
            t[c] = t[c].round(digits)
    return hashlib.sha256(t.to_csv(index=False).encode()).hexdigest()[:16]


def table_hash(path: Path) -> str:
    """Hash of a parquet table (floats rounded to 12 digits)."""
    return _frame_hash(pd.read_parquet(path), 12)


def csv_hash(path: Path) -> str:
    """Hash of a CSV table (floats rounded to 10 digits)."""
    return _frame_hash(pd.read_csv(path), 10)


def run(cmd: list[str], env: dict[str, str]) -> float:
    """Run a headatlas command; seconds taken."""
    t0 = time.perf_counter()
    full = [
        sys.executable,
        "-c",
        "import sys; from headatlas.cli.main import main; sys.exit(main())",
        *cmd,
    ]
    done = subprocess.run(full, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def tables(folder: Path) -> dict[str, str]:
    """Hashes of every parquet and CSV table in a results folder (recursively)."""
    out: dict[str, str] = {}
    for p in sorted(folder.rglob("*.parquet")):
        if "partial" in p.parts:
            continue
        out[str(p.relative_to(folder))] = table_hash(p)
    for p in sorted(folder.rglob("*.csv")):
        out[str(p.relative_to(folder))] = csv_hash(p)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", help="the headatlas sources to run (default: the installed package)")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES))
    ap.add_argument("--json", help="write the hashes here")
    ap.add_argument("--compare", help="a JSON written before: print what differs, exit 1 if any")
    ap.add_argument("--no-validate", action="store_true", help="skip the dynamic scores")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = str(Path(args.src).resolve())
    env.setdefault("OMP_NUM_THREADS", "2")
    hashes: dict[str, str] = {}
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="guard-") as tmp:
        for model in args.models:
            for name in args.recipes:
                out = Path(tmp) / f"{model}-{name}"
                cmd = [
                    "map",
                    model,
                    "--out",
                    str(out),
                    "--quiet",
                    "--qk",
                    "--relations",
                    *RELATIONS,
                ]
                seconds[f"{model}/{name}/map"] = run(cmd + RECIPES[name], env)
                if name == "maps" and model == "smollm2":
                    cmd = ["salient", model, "--all", "--layers", "0", "20", "--out", str(out)]
                    seconds[f"{model}/{name}/salient"] = run([*cmd, "--embedding", "mlp0"], env)
                if name in ("maps", "residual") and model == "smollm2" and not args.no_validate:
                    cmd = [
                        "validate",
                        model,
                        "--out",
                        str(out),
                        "--quiet",
                        "--experiment",
                        "correlative",
                        "--relations",
                        "country_capital",
                        "year_following",
                        "--max-prompts",
                        "40",
                    ]
                    seconds[f"{model}/{name}/validate"] = run(cmd + RECIPES[name], env)
                for key, h in tables(out).items():
                    hashes[f"{model}/{name}/{key}"] = h
                print(f"{model} {name}: {seconds[f'{model}/{name}/map']:.0f} s", flush=True)
    for k, v in hashes.items():
        print(f"{v}  {k}")
    if args.json:
        Path(args.json).write_text(json.dumps({"hashes": hashes, "seconds": seconds}, indent=1))
    if args.compare:
        before = json.loads(Path(args.compare).read_text())["hashes"]
        ran = {f"{m}/{r}/" for m in args.models for r in args.recipes}
        before = {k: v for k, v in before.items() if any(k.startswith(p) for p in ran)}
        keys = set(before) | set(hashes)
        diff = sorted(k for k in keys if before.get(k) != hashes.get(k))
        for k in diff:
            print(f"DIFFERS {k}: before {before.get(k)} after {hashes.get(k)}")
        print(f"{len(keys) - len(diff)} of {len(keys)} tables identical")
        raise SystemExit(1 if diff else 0)


if __name__ == "__main__":
    main()
