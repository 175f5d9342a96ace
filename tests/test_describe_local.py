"""The local transformers describer: schema-constrained decoding makes every answer parse.

A tiny random Llama with SmolLM2's real tokenizer and chat template answers garbage, yet every
answer follows the schema; the system-turn cache gives the same answers as a full prefill.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from headatlas.describe import MalformedAnswer, TransformersChatBackend, build_prompt, parse_answer
from headatlas.describe.answer_schema import FIELD_MAX_CHARS, answer_schema, answer_token_budget
from headatlas.errors import DescribeError

OPS = [(" France", [" Paris", " French"]), (" Italy", [" Rome"]), ("\u202e`", ["<|im_end|>", '"'])]


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory, smollm2_tokenizer) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer and chat template, saved as a folder."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(smollm2_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=smollm2_tokenizer.eos_token_id,
    )
    folder = tmp_path_factory.mktemp("tiny_chat")
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    smollm2_tokenizer.save_pretrained(folder)
    return folder


def test_schema_answers_parse_and_fit_the_budget() -> None:
    schema = answer_schema()
    full, unclear = schema["anyOf"]
    assert full["required"] == ["inputs", "pattern", "description"]
    assert unclear["properties"]["description"] == {"const": "Unclear"}
    for name, limit in FIELD_MAX_CHARS.items():
        pattern = re.compile(full["properties"][name]["pattern"])
        assert pattern.fullmatch("x" * limit) and not pattern.fullmatch("x" * (limit + 1))
        assert not pattern.fullmatch(" leading space") and not pattern.fullmatch('a"b')
        assert not pattern.fullmatch("<what kind>") and not pattern.fullmatch("")
    longest = json.dumps(
        {name: "\U0001f642" * n for name, n in FIELD_MAX_CHARS.items()}, ensure_ascii=False
    )
    assert len(longest.encode()) < answer_token_budget()
    assert parse_answer(json.dumps({n: "x" * k for n, k in FIELD_MAX_CHARS.items()})).status == "ok"


def test_random_model_answers_always_parse(tiny_chat_model: Path) -> None:
    backend = TransformersChatBackend(model=str(tiny_chat_model), device="cpu")
    assert backend.structured and backend.max_new_tokens == answer_token_budget()
    for head in range(2):
        raw = backend.complete(build_prompt(4, head, OPS[head:]))
        answer = parse_answer(raw)  # raises MalformedAnswer if the grammar let anything through
        assert answer.status in {"ok", "unclear"}
        if answer.status == "ok":
            assert 0 < len(answer.description) <= FIELD_MAX_CHARS["description"]
            assert 0 < len(answer.inputs) <= FIELD_MAX_CHARS["inputs"]
    assert backend.params()["schema"] == answer_schema()


def test_free_decoding_of_a_random_model_does_not_parse(tiny_chat_model: Path) -> None:
    """Without the grammar the same model's answer is not JSON: the constraint does the work."""
    backend = TransformersChatBackend(
        model=str(tiny_chat_model), device="cpu", structured=False, max_new_tokens=24
    )
    assert "schema" not in backend.params()
    raw = backend.complete(build_prompt(4, 0, OPS))
    with pytest.raises(MalformedAnswer):
        parse_answer(raw)


def test_system_turn_cache_gives_the_same_answers(tiny_chat_model: Path) -> None:
    cached = TransformersChatBackend(model=str(tiny_chat_model), device="cpu")
    full = TransformersChatBackend(model=str(tiny_chat_model), device="cpu")
    full.use_system_cache = False
    for head in range(2):
        messages = build_prompt(1, head, OPS[: head + 1])
        assert cached.complete(messages) == full.complete(messages)
    assert cached._system is not None and full._system is None


def test_budget_too_small_for_the_schema_is_refused() -> None:
    with pytest.raises(
        DescribeError, match=r"could cut a structured answer short.*--no-structured"
    ):
        TransformersChatBackend(max_new_tokens=40)
    assert TransformersChatBackend(max_new_tokens=40, structured=False).max_new_tokens == 40
