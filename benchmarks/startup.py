"""Start-up cost of `headatlas map`: wall time of a fresh process mapping a tiny model (2 layers,
4 heads, d_model 64, the real GPT-2 vocabulary of 50257 tokens, saved as safetensors with its
tokenizer), first run with empty caches vs repeats; then the same for SmolLM2 (the default
model: the first run also converts its GGUF tokenizer), unless ``--tiny-only``.

Each run is a new `headatlas map DIR --out NEW` process (nothing reused: a new results folder
every time); the first run also gets an empty HEADATLAS_CACHE (site-packages keep the bytecode
pip compiled at install, as on a fresh machine). The map's own timings are printed per run.

    PYTHONPATH=src python benchmarks/startup.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_SCRIPT = shutil.which("headatlas")
HEADATLAS = (
    [_SCRIPT] if _SCRIPT else [sys.executable, "-c", "from headatlas.cli.main import main; main()"]
)


def build_model(folder: Path) -> Path:
    """The tiny GPT-2 with the real GPT-2 tokenizer, saved into ``folder``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from headatlas.weights.packaged import gpt2_tokenizer

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50257, n_embd=64, n_layer=2, n_head=4, n_positions=128)
    GPT2LMHeadModel(cfg).eval().save_pretrained(folder)
    (folder / "tok").mkdir()
    gpt2_tokenizer(folder / "tok").save_pretrained(folder)
    shutil.rmtree(folder / "tok", ignore_errors=True)
    return folder


def run_map(model: Path | str, out: Path, env: dict[str, str]) -> tuple[float, dict]:
    """Wall seconds of one `headatlas map` process, and its manifest's timings."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        [*HEADATLAS, "map", str(model), "--out", str(out), "--quiet"],
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"headatlas map failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    manifest = next(out.glob("*/manifest.json"))
    return wall, json.loads(manifest.read_text()).get("timings", {})


def import_seconds(env: dict[str, str]) -> float:
    """Seconds `import headatlas.cli.main` takes in a fresh process."""
    code = "import time; t=time.perf_counter(); import headatlas.cli.main; print(time.perf_counter()-t)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return float(out.stdout.strip() or "nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tiny-only", action="store_true", help="skip the SmolLM2 runs")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build_model(work / "tiny-gpt2")
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="2")
        imp = import_seconds(env)
        print(f"import headatlas.cli.main: {imp:.2f} s")
        for name, target in [(str(model), "tiny model")] + (
            [] if args.tiny_only else [("smollm2", "SmolLM2")]
        ):
            first_env = dict(env, HEADATLAS_CACHE=str(work / f"cache-{target}"))
            wall, timings = run_map(name, work / "o0", first_env)
            shutil.rmtree(work / "o0")
            print(f"{target}: first run (empty caches): {wall:.2f} s wall; map timings {timings}")
            walls = []
            for i in range(args.repeats):
                w, timings = run_map(name, work / "o1", first_env)
                shutil.rmtree(work / "o1")
                walls.append(w)
                print(f"{target}: repeat {i + 1}: {w:.2f} s wall; map timings {timings}")
            warm = min(walls)
            print(
                f"{target}: first / warm = {wall / warm:.2f} (target <= 1.2); warm {warm:.2f} s, "
                f"first {wall:.2f} s (tiny model target < 5 s; seconds are noisy on a shared CPU)"
            )


if __name__ == "__main__":
    main()
