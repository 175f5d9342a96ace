"""A chat backend speaking the OpenAI chat-completions protocol, through the official ``openai`` client.

The same protocol is served by hosted APIs and by local servers: vLLM, llama.cpp's
``llama-server``, Ollama's ``/v1``, LM Studio, text-generation-inference. Retries (429, 5xx,
connection errors, timeouts; exponential backoff with jitter; ``Retry-After`` honoured up to two
minutes) are the client's own; this module turns what is left into one-line DescribeErrors.
"""

from __future__ import annotations

import json
import os
from typing import Any

from headatlas.describe.answer import MalformedResponse
from headatlas.describe.protocol import Message
from headatlas.errors import DescribeError

ENV_BASE_URL = "HEADATLAS_LLM_BASE_URL"
ENV_MODEL = "HEADATLAS_LLM_MODEL"
ENV_API_KEY = "HEADATLAS_LLM_API_KEY"
OPENAI_BASE_URL = "https://api.openai.com/v1"


class OpenAIChatBackend:
    """Chat completions from ``{base_url}/chat/completions``.

    Arguments left as None come from the environment: ``HEADATLAS_LLM_BASE_URL`` (else
    ``OPENAI_BASE_URL``, else OpenAI's API when a key is set), ``HEADATLAS_LLM_MODEL`` and
    ``HEADATLAS_LLM_API_KEY`` (else ``OPENAI_API_KEY``). The ``openai`` client retries a request
    ``max_retries`` times on 429, 5xx, connection errors and timeouts. ``json_mode`` sends
    ``response_format={"type": "json_object"}``, which not every server accepts.
    ``max_tokens`` caps the answer's length (unset: the server's default, which for a local
    server such as ``transformers serve`` on a CPU can be minutes of generation).
    """

    kind = "openai"
    concurrent = True

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        json_mode: bool = False,
        max_tokens: int | None = None,
    ) -> None:
        self.api_key = api_key or os.environ.get(ENV_API_KEY) or os.environ.get("OPENAI_API_KEY")
        base_url = base_url or os.environ.get(ENV_BASE_URL) or os.environ.get("OPENAI_BASE_URL")
        if not base_url:
            if not self.api_key:
                raise DescribeError(
                    "no chat server given: pass --base-url or set HEADATLAS_LLM_BASE_URL "
                    "(e.g. http://127.0.0.1:8000/v1 for vLLM, http://127.0.0.1:11434/v1 for "
                    "Ollama), or use --backend transformers for a local model"
                )
            base_url = OPENAI_BASE_URL
        if not base_url.startswith(("http://", "https://")):
            raise DescribeError(
                f"base URL {base_url!r} is not an http(s) URL: pass one like http://127.0.0.1:8000/v1"
            )
        base_url = base_url.rstrip("/")
        if base_url.endswith("/chat/completions"):
            base_url = base_url[: -len("/chat/completions")]
        self.base_url = base_url
        model = model or os.environ.get(ENV_MODEL)
        if not model:
            raise DescribeError(
                "no chat model named: pass --model or set HEADATLAS_LLM_MODEL "
                "(the name the server serves, e.g. gpt-4o-mini or Qwen/Qwen2.5-7B-Instruct)"
            )
        self.name = model
        if timeout <= 0:
            raise DescribeError(f"timeout must be positive, got {timeout}")
        self.timeout = float(timeout)
        self.max_retries = max(0, int(max_retries))
        self.json_mode = json_mode
        if max_tokens is not None and max_tokens < 1:
            raise DescribeError(f"max_tokens must be at least 1, got {max_tokens}")
        self.max_tokens = max_tokens
        self._client = _make_client(self.base_url, self.api_key, self.timeout, self.max_retries)

    @property
    def url(self) -> str:
        """The chat-completions endpoint."""
        return f"{self.base_url}/chat/completions"

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIChatBackend(base_url={self.base_url!r}, model={self.name!r})"

    def params(self) -> dict[str, Any]:
        """Server, temperature and response format: with the prompt, they decide the answer."""
        params: dict[str, Any] = {
            "base_url": self.base_url,
            "temperature": 0,
            "json_mode": self.json_mode,
        }
        if self.max_tokens is not None:  # absent when unset: earlier cache keys stay valid
            params["max_tokens"] = self.max_tokens
        return params

    def request_body(self, messages: list[Message]) -> dict[str, Any]:
        """The JSON body sent for ``messages``."""
        body: dict[str, Any] = {"model": self.name, "messages": messages, "temperature": 0}
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body

    def complete(self, messages: list[Message]) -> str:
        """The answer's text (``choices[0].message.content``), after the client's retries."""
        import openai

        attempts = f"after {self.max_retries + 1} attempts"
        try:
            # The raw reply: a body that is not a chat completion is kept, not coerced.
            response = self._client.chat.completions.with_raw_response.create(
                **self.request_body(messages), extra_headers=self._auth_override()
            )
        except openai.APITimeoutError as exc:
            raise DescribeError(
                f"no answer from {self.url} {attempts} (last: no answer within "
                f"{self.timeout:g} s): raise --timeout for a slow model"
            ) from exc
        except openai.APIConnectionError as exc:
            raise DescribeError(
                f"no answer from {self.url} {attempts} (last: cannot connect: {exc.__cause__ or exc}); "
                "check that the server is up and --base-url"
            ) from exc
        except openai.APIStatusError as exc:
            raise self._status_error(exc, attempts) from exc
        return _completion_text(response.http_response.content)

    def _auth_override(self) -> dict[str, Any]:
        """Without a key, no ``Authorization`` header at all (local servers need none)."""
        if self.api_key:
            return {}
        import openai

        return {"Authorization": openai.Omit()}

    def _status_error(self, exc: Any, attempts: str) -> DescribeError:
        """The DescribeError for an HTTP error status the client gave up on."""
        code = int(exc.status_code)
        message = _server_message(exc.response.content)
        status = f"HTTP {code}: {message}" if message else f"HTTP {code}"
        if code in (401, 403):
            return DescribeError(
                f"the server refused the API key ({status}): set HEADATLAS_LLM_API_KEY "
                "or pass --api-key"
            )
        if code == 404:
            return DescribeError(
                f"{self.url} was not found ({status}): check --base-url (usually ending in /v1) "
                f"and that the server serves model {self.name!r}"
            )
        if code == 429 or code >= 500:
            wait = exc.response.headers.get("Retry-After")
            hint = (
                f"the server asks to wait {wait} s; try again later or lower --concurrency"
                if code == 429 and wait
                else "check that the server is up, or lower --concurrency"
            )
            return DescribeError(f"no answer from {self.url} {attempts} (last: {status}): {hint}")
        return DescribeError(f"{self.url} rejected the request ({status})")


def _make_client(base_url: str, api_key: str | None, timeout: float, max_retries: int) -> Any:
    """An ``openai.OpenAI`` client for one server."""
    try:
        import openai
    except ImportError as exc:
        raise DescribeError(
            f"the openai backend needs the openai package ({exc}): pip install openai"
        ) from exc
    return openai.OpenAI(
        base_url=base_url,
        # The client insists on a key; without one, requests omit the header (_auth_override).
        api_key=api_key or "unused",
        timeout=timeout,
        max_retries=max_retries,
        default_headers={"User-Agent": "headatlas"},
    )


def _completion_text(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace")
    try:
        reply = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MalformedResponse(f"the server's reply is not JSON ({exc.msg})", text) from exc
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as exc:
        raise MalformedResponse(
            "the server's reply has no choices[0].message.content", text
        ) from exc
    if not isinstance(content, str):
        raise MalformedResponse("the server's choices[0].message.content is not text", text)
    return content


def _server_message(raw: bytes) -> str:
    """The error message in an error body: OpenAI, vLLM, llama.cpp and Ollama shapes, or text."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return text[:300]
    if isinstance(obj, dict):
        for key in ("error", "detail", "message"):
            value = obj.get(key)
            if isinstance(value, dict) and isinstance(value.get("message"), str):
                return str(value["message"])[:300]
            if isinstance(value, str):
                return value[:300]
    return text[:300]
