"""Describe heads: salient operations → prompt → chat backend → checked answer → descriptions.jsonl."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from headatlas import store
from headatlas.describe.answer import MalformedAnswer, MalformedResponse, parse_answer
from headatlas.describe.prompt import build_prompt, correction_messages
from headatlas.describe.protocol import ChatBackend, Message
from headatlas.describe.records import (
    RECORD_FIELDS,
    HeadKey,
    append_record,
    read_records,
    write_records,
)
from headatlas.errors import ResultsError

Operations = list[tuple[str, list[str]]]

_SALIENT_COLUMNS = ("layer", "head", "rank", "token", "mappings")
_CACHEABLE = ("ok", "unclear")  # a failed head is tried again on the next run


def load_operations(
    results_dir: str | Path, tokens: int = 15, mappings: int = 5
) -> dict[HeadKey, Operations]:
    """Each head's top ``tokens`` salient operations, each with its first ``mappings`` targets."""
    directory = Path(results_dir)
    manifest = store.read_manifest(directory)  # a clear error for a wrong folder
    path = directory / store.SALIENT
    if not path.is_file():
        raise ResultsError(
            f"{directory} holds no {store.SALIENT}: run `headatlas salient MODEL --all --out OUT` "
            "first, then describe OUT/<model-slug>/"
        )
    if tokens < 1 or mappings < 1:
        raise ResultsError(f"tokens and mappings must be at least 1, got {tokens}, {mappings}")
    if not store.check_files(directory, manifest, [store.SALIENT], require=[store.SALIENT]):
        store.warn(f"{directory / store.MANIFEST} vouches for no file: {path} is unverified")
    table = store.read_table(path, _SALIENT_COLUMNS)
    operations: dict[HeadKey, Operations] = {}
    table = table.sort_values(["layer", "head", "rank"], kind="stable")
    for (layer, head), group in table.groupby(["layer", "head"], sort=True):
        ops = operations.setdefault((int(layer), int(head)), [])
        for token, targets in zip(group["token"].head(tokens), group["mappings"].head(tokens)):
            listed = [] if targets is None else list(targets)
            ops.append((str(token), [str(t) for t in listed[:mappings]]))
    return operations


def cache_key(messages: list[Message], backend: ChatBackend) -> str:
    """sha256 of the prompt, the model, and the backend's answer-deciding parameters."""
    payload = {
        "prompt": messages,
        "model": backend.name,
        "backend": backend.kind,
        "params": backend.params(),
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def describe_head(
    layer: int, head: int, operations: Operations, backend: ChatBackend
) -> dict[str, Any]:
    """The description record of one head.

    A malformed answer is asked for once more (the same prompt after a bad server reply, or the
    prompt plus a short correction after a wrong answer) and then recorded as ``"failed"`` with
    the raw text. DescribeError from the backend (refused key, server down) propagates.
    """
    messages = build_prompt(layer, head, operations)
    record: dict[str, Any] = {
        "layer": int(layer),
        "head": int(head),
        "status": "failed",
        "inputs": "",
        "pattern": "",
        "description": "",
        "raw": "",
        "prompt": messages,
        "model": backend.name,
        "backend": backend.kind,
        "attempts": 0,
        "cache_key": cache_key(messages, backend),
        "error": None,
        "seconds": 0.0,
    }
    started = time.perf_counter()
    request = messages
    for attempt in (1, 2):
        record["attempts"] = attempt
        try:
            raw = backend.complete(request)
            record["raw"] = raw
            answer = parse_answer(raw)
        except MalformedResponse as exc:
            record["raw"], record["error"] = exc.raw, str(exc)
            request = messages
            continue
        except MalformedAnswer as exc:
            record["raw"], record["error"] = exc.raw, f"the answer is not the requested JSON: {exc}"
            request = correction_messages(messages, exc.raw, exc.reason)
            continue
        record.update(
            status=answer.status,
            inputs=answer.inputs,
            pattern=answer.pattern,
            description=answer.description,
            error=None,
        )
        break
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def describe_heads(
    results_dir: str | Path,
    backend: ChatBackend,
    heads: Iterable[tuple[int, int]] | None = None,
    concurrency: int = 4,
    tokens: int = 15,
    mappings: int = 5,
    cache: bool = True,
    progress: bool = True,
) -> pd.DataFrame:
    """Describe ``heads`` (default: every head with salient operations) and store the records.

    Records go to ``results_dir/descriptions.jsonl`` as each head finishes. With ``cache``, a
    head whose stored ok/unclear record has the same cache key is not asked again. Up to
    ``concurrency`` requests run at once when the backend allows it. Returns one row per head:
    the record without its prompt, plus ``cached``.
    """
    directory = Path(results_dir)
    operations = load_operations(directory, tokens=tokens, mappings=mappings)
    if heads is None:
        wanted = sorted(operations)
    else:
        wanted = sorted({(int(layer), int(head)) for layer, head in heads})
        absent = [key for key in wanted if key not in operations]
        if absent:
            shown = ", ".join(f"L{layer}.H{head}" for layer, head in absent[:10])
            raise ResultsError(
                f"{directory / store.SALIENT} has no salient operations for {shown}: "
                f"it covers {len(operations)} heads; re-run `headatlas salient MODEL --all`"
            )
    path = directory / store.DESCRIPTIONS
    records = read_records(path)
    results: dict[HeadKey, dict[str, Any]] = {}
    todo: list[tuple[HeadKey, Operations]] = []
    for key in wanted:
        ops = operations[key]
        stored = records.get(key)
        if (
            cache
            and stored is not None
            and stored.get("status") in _CACHEABLE
            and stored.get("cache_key") == cache_key(build_prompt(*key, ops), backend)
        ):
            results[key] = {**stored, "cached": True}
        else:
            todo.append((key, ops))

    bar = tqdm(total=len(todo), desc="describe", unit="head", disable=not progress or not todo)

    def finish(record: dict[str, Any]) -> None:
        key = (record["layer"], record["head"])
        append_record(path, record)
        records[key] = record
        results[key] = {**record, "cached": False}
        bar.update(1)
        bar.set_postfix_str(f"L{key[0]}.H{key[1]} {record['status']}")

    workers = max(1, int(concurrency)) if backend.concurrent else 1
    try:
        if workers == 1 or len(todo) <= 1:
            for key, ops in todo:
                finish(describe_head(key[0], key[1], ops, backend))
        else:
            _run_pool(todo, backend, workers, finish)
    finally:
        bar.close()
        if todo:
            write_records(path, records)
    columns = [c for c in RECORD_FIELDS if c != "prompt"] + ["cached"]
    rows = [results[key] for key in wanted]
    return pd.DataFrame([{c: row.get(c) for c in columns} for row in rows], columns=columns)


def _run_pool(
    todo: list[tuple[HeadKey, Operations]],
    backend: ChatBackend,
    workers: int,
    finish: Callable[[dict[str, Any]], None],
) -> None:
    """Run ``describe_head`` on ``todo`` with ``workers`` threads, finishing in the caller's thread.

    On the first error no new head starts; heads already running are finished and saved, then
    the error is raised.
    """
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="headatlas-describe")
    pending: set[Future[dict[str, Any]]] = {
        pool.submit(describe_head, key[0], key[1], ops, backend) for key, ops in todo
    }
    error: BaseException | None = None
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                if future.cancelled():
                    continue
                exc = future.exception()
                if exc is not None:
                    if error is None:
                        error = exc
                        for other in pending:
                            other.cancel()
                    continue
                finish(future.result())
        if error is not None:
            raise error
    finally:
        pool.shutdown(wait=error is not None, cancel_futures=True)
