"""What the describe step needs from a chat model, and how a backend is chosen by name."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from headatlas.errors import DescribeError

Message = dict[str, str]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

BACKENDS = ("openai", "transformers")


@runtime_checkable
class ChatBackend(Protocol):
    """A chat model that answers a list of messages with text."""

    name: str
    """The model's name as recorded with each description."""

    kind: str
    """The backend's kind as recorded with each description: ``"openai"`` or ``"transformers"``."""

    concurrent: bool
    """Whether ``complete`` may run in several threads at once."""

    def params(self) -> dict[str, Any]:
        """Everything besides the prompt that decides the answer (part of the cache key)."""
        ...

    def complete(self, messages: list[Message]) -> str:
        """The model's answer text.

        Raises DescribeError for failures the user must fix, MalformedResponse for a reply that
        is not a chat completion.
        """
        ...


def make_backend(
    kind: str,
    *,
    model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float = 60.0,
    json_mode: bool = False,
    max_new_tokens: int = 200,
) -> ChatBackend:
    """A backend of ``kind``; options that do not apply to it are ignored."""
    if kind == "openai":
        from headatlas.describe.openai_chat import OpenAIChatBackend

        return OpenAIChatBackend(
            base_url=base_url, model=model, api_key=api_key, timeout=timeout, json_mode=json_mode
        )
    if kind == "transformers":
        from headatlas.describe.transformers_chat import TransformersChatBackend

        return TransformersChatBackend(model=model or "smollm2", max_new_tokens=max_new_tokens)
    raise DescribeError(f"unknown backend {kind!r}: use one of {', '.join(BACKENDS)}")
