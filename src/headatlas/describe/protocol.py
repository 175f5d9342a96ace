"""What the describe step needs from a chat model: the :class:`ChatBackend` protocol.

Backends (``openai_chat``, ``transformers_chat``) import this module; ``backends`` imports them
to choose one by name. Nothing here imports a backend, so there is no import cycle.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

Message = dict[str, str]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""


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
