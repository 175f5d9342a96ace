#!/usr/bin/env bash
# Installs everything, then runs lint, format check, type check and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PY=${PYTHON:-python3}
echo "== ruff check"; $PY -m ruff check src tests benchmarks
echo "== ruff format --check"; $PY -m ruff format --check src tests benchmarks
echo "== mypy"; $PY -m mypy
# Two pytest workers, one torch thread each: two threads per worker on two cores would
# oversubscribe OpenMP, whose spinning threads slow everything several-fold.
echo "== pytest"; OMP_NUM_THREADS=1 $PY -m pytest -q -n 2 --dist loadfile --durations=15 "$@"
