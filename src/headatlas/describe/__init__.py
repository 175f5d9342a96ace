"""Describe attention heads in words: their salient operations shown to a chat LLM.

Data path: ``salient.parquet`` → :func:`build_prompt` → a :class:`ChatBackend` →
:func:`parse_answer` → ``descriptions.jsonl``; :func:`describe_heads` runs it for many heads.
"""

from __future__ import annotations

from headatlas.describe.answer import Answer, MalformedAnswer, MalformedResponse, parse_answer
from headatlas.describe.backends import make_backend
from headatlas.describe.openai_chat import OpenAIChatBackend
from headatlas.describe.prompt import build_prompt
from headatlas.describe.protocol import ChatBackend
from headatlas.describe.run import cache_key, describe_head, describe_heads, load_operations
from headatlas.describe.transformers_chat import TransformersChatBackend

__all__ = [
    "Answer",
    "ChatBackend",
    "MalformedAnswer",
    "MalformedResponse",
    "OpenAIChatBackend",
    "TransformersChatBackend",
    "build_prompt",
    "cache_key",
    "describe_head",
    "describe_heads",
    "load_operations",
    "make_backend",
    "parse_answer",
]
