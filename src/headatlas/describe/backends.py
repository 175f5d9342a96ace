"""Choosing a chat backend by name."""

from __future__ import annotations

from headatlas.describe.openai_chat import OpenAIChatBackend
from headatlas.describe.protocol import ChatBackend, Message
from headatlas.describe.transformers_chat import TransformersChatBackend
from headatlas.errors import DescribeError

__all__ = ["BACKENDS", "ChatBackend", "Message", "make_backend"]

BACKENDS = ("openai", "transformers")


def make_backend(
    kind: str,
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    json_mode: bool = False,
    max_new_tokens: int | None = None,
    structured: bool = True,
    device: str | None = None,
) -> ChatBackend:
    """A backend of ``kind``; options that do not apply to it are ignored."""
    if kind == "openai":
        return OpenAIChatBackend(
            base_url=base_url,
            model=model,
            api_key=api_key,
            timeout=timeout,
            json_mode=json_mode,
            max_tokens=max_new_tokens,
        )
    if kind == "transformers":
        return TransformersChatBackend(
            model=model or "smollm2",
            max_new_tokens=max_new_tokens,
            structured=structured,
            device=device,
        )
    raise DescribeError(f"unknown backend {kind!r}: use one of {', '.join(BACKENDS)}")
