"""One map before and after a change, in one run: the CLI in a fresh process for each side.

"Before" is a git commit of this repository, checked out into a temporary worktree and run
from its sources (``PYTHONPATH``); "after" is this working tree. Both map the same model with
the same flags into their own folders, share the machine's caches (tokenizers, weights) and
start with an empty ``torch.compile`` cache of their own (a first run pays its compilation).
Prints per side the wall time and the manifest's split (prepare, scores, of which null and
evidence), the ratio, and whether the tables are identical (scores and categories must be;
evidence target ranks may differ by rounding near-ties: counted).

    python benchmarks/map_before_after.py --before 1d5f476 [--model gemma3-270m]
        [--flags "--embedding forward"] [--after-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
_RUN = "import sys; from headatlas.cli.main import main; sys.exit(main(sys.argv[1:]))"


def run_map(src: Path, model: str, flags: list[str], out: Path) -> dict[str, float]:
    """``headatlas map`` from the sources under ``src``: wall seconds and manifest timings."""
    env = dict(os.environ, PYTHONPATH=str(src))
    env["TORCHINDUCTOR_CACHE_DIR"] = str(out / "inductor")
    cmd = [sys.executable, "-c", _RUN, "map", model, *flags, "--out", str(out)]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"map failed under {src}:\n{done.stderr[-3000:]}")
    (folder,) = [p.parent for p in out.glob("*/manifest.json")]
    timings = json.loads((folder / "manifest.json").read_text())["timings"]
    return {"wall": wall, **{k: float(v) for k, v in timings.items()}}


def compare(before: Path, after: Path) -> list[str]:
    """Table by table: identical, or what differs."""
    (b,) = [p.parent for p in before.glob("*/manifest.json")]
    (a,) = [p.parent for p in after.glob("*/manifest.json")]
    lines = []
    for name in ("scores", "categories", "evidence"):
        x, y = pd.read_parquet(b / f"{name}.parquet"), pd.read_parquet(a / f"{name}.parquet")
        try:
            pd.testing.assert_frame_equal(x, y)
            lines.append(f"{name}: identical ({len(x)} rows)")
        except AssertionError:
            if name != "evidence" or len(x) != len(y):
                raise SystemExit(f"{name} differ between before and after") from None
            same = (
                x.drop(columns="target_rank")
                .astype(str)
                .equals(y.drop(columns="target_rank").astype(str))
            )
            diff = x["target_rank"] != y["target_rank"]
            lines.append(
                f"evidence: same pairs, tokens and correct flags: {same}; target_rank differs "
                f"in {int(diff.sum())} of {len(x)} rows (largest difference "
                f"{int((x['target_rank'] - y['target_rank']).abs().max())}: rounding near-ties)"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="1d5f476", help="git commit of the 'before' side")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--flags", default="--embedding forward", help="map flags, both sides")
    parser.add_argument("--after-only", action="store_true")
    args = parser.parse_args()
    flags = shlex.split(args.flags)
    print(f"{os.cpu_count()} CPUs; headatlas map {args.model} {args.flags}; ratios from one run")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {}
        if not args.after_only:
            tree = work / "before-tree"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.before],
                check=True,
                capture_output=True,
            )
            try:
                results["before"] = run_map(tree / "src", args.model, flags, work / "before")
            finally:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                    check=False,
                )
        results["after"] = run_map(ROOT / "src", args.model, flags, work / "after")
        print(
            f"{'side':8s} {'wall':>7s} {'prepare':>8s} {'scores':>7s} {'null':>6s} {'evidence':>9s}"
        )
        for side, t in results.items():
            print(
                f"{side:8s} {t['wall']:6.1f}s {t['prepare_s']:7.1f}s {t['scores_s']:6.1f}s "
                f"{t.get('null_s', 0):5.1f}s {t.get('evidence_s', 0):8.1f}s"
            )
        if "before" in results:
            print(
                f"after / before (wall): {results['after']['wall'] / results['before']['wall']:.2f}"
            )
            for line in compare(work / "before", work / "after"):
                print(line)


if __name__ == "__main__":
    main()
