"""TransformerLens 3.x HookedTransformers into `map_heads`. TransformerLens 4.x (what PyPI
installs) removed HookedTransformer, so 3.9.0 is installed with pip at test setup into the test
cache (``$HEADATLAS_TEST_CACHE``, default ``~/.cache/headatlas-tests``; nothing of it is
committed) and the check runs in a subprocess that imports it first
(tests/hooked_transformer_check.py). Skipped when PyPI cannot be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TL3 = "transformer-lens==3.9.0"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tl3_path() -> Path:
    root = os.environ.get("HEADATLAS_TEST_CACHE") or Path.home() / ".cache" / "headatlas-tests"
    target = Path(root) / TL3.replace("==", "-")
    if not (target / "transformer_lens" / "HookedTransformer.py").is_file():
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target",
             str(target), TL3, "better-abc"],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            pytest.skip(f"cannot install {TL3} from PyPI: {done.stderr.strip()[-300:]}")
    return target


def test_hooked_transformer_maps_like_the_weights_on_disk(tl3_path: Path, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tl3_path), str(ROOT / "src"), str(ROOT / "tests")]),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "hooked_transformer_check.py"), str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    found = json.loads(lines[-1][len("RESULT ") :])
    assert found["tl_file"].startswith(str(tl3_path))  # 3.x, not an installed 4.x
    # GPT-2 layout: TransformerLens's converter HF -> TL, ours TL -> HF: the same map.
    assert found["gpt2_scores_equal"] and found["gpt2_max_diff"] == 0.0
    assert found["gpt2_nonzero"] > 0.5  # k = 5000: the random heads' scores are not all zero
    assert found["source"]["class"] == "HookedTransformer" and found["source"]["layout"] == "gpt2"
    assert found["source"]["transformer_lens"] == "3.9.0"
    # Llama layout with GQA (_W_K/_W_V): the same circuits, effective embedding included.
    assert found["llama_max_diff"] == 0.0 and found["llama_n_kv"] == 2
    # Processed weights (fold_ln, centring: from_pretrained's default) are refused with the fix.
    assert "from_pretrained_no_processing" in found["processed"]
