"""The JSON schema every constrained answer follows, and the token budget that always fits it.

A full answer is ``{"inputs": ..., "pattern": ..., "description": ...}``; an answer with no
pattern is ``{"description": "Unclear"}``. Strings are bounded, start with a visible character
and hold no quote, backslash or control character, so every answer allowed by the schema parses
with :func:`headatlas.describe.answer.parse_answer`, and its length in bytes is bounded too:
since every token is at least one byte, :func:`answer_token_budget` new tokens always suffice for
the grammar to reach its end.
"""

from __future__ import annotations

import json
from typing import Any

FIELD_MAX_CHARS = {"inputs": 32, "pattern": 48, "description": 96}
"""Longest allowed text of each field, in characters: short answers decode fast on a CPU."""

# One visible first character, then any character but a quote, backslash, control character or
# angle bracket (a small model otherwise copies the prompt's "<what kind of input tokens>").
_FIRST = r'[^"\\<>\x00-\x20]'
_REST = r'[^"\\<>\x00-\x1f]'
_MAX_BYTES_PER_CHAR = 4  # UTF-8


def _bounded_text(max_chars: int) -> dict[str, Any]:
    return {"type": "string", "pattern": f"^{_FIRST}{_REST}{{0,{max_chars - 1}}}$"}


def answer_schema(field_max_chars: dict[str, int] | None = None) -> dict[str, Any]:
    """The JSON schema of an answer: the three bounded fields, or ``{"description": "Unclear"}``."""
    limits = {**FIELD_MAX_CHARS, **(field_max_chars or {})}
    full = {
        "type": "object",
        "properties": {name: _bounded_text(limits[name]) for name in FIELD_MAX_CHARS},
        "required": list(FIELD_MAX_CHARS),
        "additionalProperties": False,
    }
    unclear = {
        "type": "object",
        "properties": {"description": {"const": "Unclear"}},
        "required": ["description"],
        "additionalProperties": False,
    }
    return {"anyOf": [full, unclear]}


def answer_token_budget(field_max_chars: dict[str, int] | None = None) -> int:
    """New tokens that always fit a schema answer, plus the end-of-sequence token.

    The longest answer is the full object with every field at its limit, every character four
    UTF-8 bytes; a compact JSON rendering of it bounds the bytes, and a token is at least a byte.
    """
    limits = {**FIELD_MAX_CHARS, **(field_max_chars or {})}
    longest = json.dumps({name: "x" * limits[name] for name in FIELD_MAX_CHARS})
    structure = len(longest.encode("utf-8")) - sum(limits.values())
    return structure + _MAX_BYTES_PER_CHAR * sum(limits.values()) + 1
