"""Most alike heads by OV subspace affinity, written beside a map for the atlas's head pages.

    python scripts/ov_affinity.py RESULTS_DIR [RESULTS_DIR ...]

For each results folder (``headatlas map``) opens the model its manifest names, computes the
affinity of every pair of heads (:mod:`headatlas.report.ov_affinity`: mean squared cosine of
the principal angles between their W_V·W_O output subspaces) and writes each head's most
alike heads to ``RESULTS_DIR/ov_affinity.parquet``; ``headatlas report`` then lists them on
every head page. Prints the seconds each model took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def main() -> None:
    """Write ov_affinity.parquet into each results folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="results folders of headatlas map")
    args = parser.parse_args()

    from headatlas.circuits import ModelCircuits
    from headatlas.report.ov_affinity import write_ov_affinity
    from headatlas.store import load_results

    for directory in args.results:
        results = load_results(directory)
        t0 = time.perf_counter()
        circuits = ModelCircuits.load(str(results.manifest["model"]["name"]))
        t1 = time.perf_counter()
        table = write_ov_affinity(circuits, directory)
        t2 = time.perf_counter()
        print(
            f"{directory}: {len(table)} rows; load {t1 - t0:.1f} s, affinity of every pair of "
            f"{results.n_layers * results.n_heads} heads {t2 - t1:.1f} s"
        )


if __name__ == "__main__":
    main()
