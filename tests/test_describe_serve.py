"""The `openai` describe backend end to end against a real OpenAI-compatible server on loopback:
`transformers serve` (transformers[serving]) serving the packaged SmolLM2. Faults (timeouts,
5xx, malformed answers) stay with the scripted double in test_describe.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_describe import make_results

from headatlas import store
from headatlas.cli.main import main
from headatlas.describe.openai_chat import OpenAIChatBackend
from headatlas.describe.run import describe_heads

pytestmark = pytest.mark.real
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

STARTUP_S = 420  # the model loads in the server's engine process: minutes on a busy 2-core CPU
ANSWER_S = 600.0
MAX_TOKENS = 160


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def served_models(url: str) -> list[str]:
    with urllib.request.urlopen(f"{url}/models", timeout=5) as resp:
        return [m["id"] for m in json.load(resp)["data"]]


@pytest.fixture(scope="module")
def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged SmolLM2 as a local Hugging Face folder (the inference model headatlas builds
    from the GGUF, with its tokenizer and chat template): `transformers serve` loads it in
    seconds, where it parses the GGUF itself in minutes."""
    from headatlas.weights.hf_model import load_causal_lm

    model, tokenizer = load_causal_lm("smollm2", with_tokenizer=True)
    folder = tmp_path_factory.mktemp("smollm2-hf")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    assert (folder / "chat_template.jinja").is_file()
    return folder


@pytest.fixture(scope="module")
def server(smollm2_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`transformers serve` on a free loopback port, pinned to SmolLM2; yields its /v1 URL."""
    exe = Path(sys.executable).with_name("transformers")
    if not exe.is_file():
        pytest.skip("the `transformers` command is not installed next to this Python")
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [str(exe), "serve", str(smollm2_folder), "--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*cmd, "--device", "cpu"], stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # its engine process is in this group: stopped with it
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"transformers serve exited ({proc.returncode}):\n{log.read_text()[-2000:]}"
                )
            try:
                served_models(url)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"transformers serve not up after {STARTUP_S} s:\n{log.read_text()[-2000:]}"
                    )
                time.sleep(2)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def backend(url: str, model: str) -> OpenAIChatBackend:
    return OpenAIChatBackend(
        base_url=url, model=model, timeout=ANSWER_S, max_retries=0, max_tokens=MAX_TOKENS
    )


def test_openai_backend_gets_an_answer_from_transformers_serve(
    server: str, smollm2_folder: Path
) -> None:
    assert served_models(server) == [str(smollm2_folder)]
    chat = backend(server, str(smollm2_folder))
    answer = chat.complete([{"role": "user", "content": "What is the capital of France?"}])
    assert isinstance(answer, str) and answer.strip()
    assert "Paris" in answer  # SmolLM2-135M-Instruct knows this one (greedy, temperature 0)


def test_describe_through_transformers_serve(
    server: str, smollm2_folder: Path, tmp_path: Path
) -> None:
    """`headatlas describe` with the openai backend, over HTTP, to the real model: a record is
    stored with the model's raw answer, whatever the 135M model makes of the task.
    `transformers serve` ignores `response_format` (no JSON mode), and the 135M model rarely
    writes the requested JSON unconstrained: then the head is recorded as failed, with its
    answer, and the command exits 1 ("every head failed"), as with any server."""
    results = make_results(tmp_path / "tiny", heads=[(0, 0)], n_tokens=5, n_mappings=3)
    rc = main(
        [
            "describe", str(results), "--layer", "0", "--head", "0",
            "--base-url", server, "--model", str(smollm2_folder),
            "--timeout", str(ANSWER_S), "--max-new-tokens", str(MAX_TOKENS),
        ]
    )  # fmt: skip
    assert rc in (0, 1)
    [record] = [json.loads(x) for x in (results / store.DESCRIPTIONS).read_text().splitlines()]
    assert record["backend"] == "openai" and record["model"] == str(smollm2_folder)
    assert record["status"] in {"ok", "unclear", "failed"} and record["attempts"] >= 1
    assert record["raw"].strip()  # the server's answer, kept as it came
    assert (rc == 1) == (record["status"] == "failed")
    # Re-running asks nothing when the answer was usable (cached by prompt, model and server).
    if record["status"] != "failed":
        again = describe_heads(results, backend(server, str(smollm2_folder)), progress=False)
        assert again["cached"].all()
