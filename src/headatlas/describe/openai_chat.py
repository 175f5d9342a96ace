"""A chat backend speaking the OpenAI chat-completions protocol over HTTP (standard library only).

The same protocol is served by hosted APIs and by local servers: vLLM, llama.cpp's
``llama-server``, Ollama's ``/v1``, LM Studio, text-generation-inference.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import random
import time
import urllib.error
import urllib.request
from typing import Any, NoReturn

from headatlas.describe.answer import MalformedResponse
from headatlas.describe.backends import Message
from headatlas.errors import DescribeError

ENV_BASE_URL = "HEADATLAS_LLM_BASE_URL"
ENV_MODEL = "HEADATLAS_LLM_MODEL"
ENV_API_KEY = "HEADATLAS_LLM_API_KEY"
OPENAI_BASE_URL = "https://api.openai.com/v1"

# A server asking for a longer pause than this is treated as unavailable rather than waited on.
MAX_RETRY_AFTER_S = 120.0


class _Retryable(Exception):
    """A failure worth another try: 429, 5xx, a refused or dropped connection, a timeout."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIChatBackend:
    """Chat completions from ``{base_url}/chat/completions``.

    Arguments left as None come from the environment: ``HEADATLAS_LLM_BASE_URL`` (else
    ``OPENAI_BASE_URL``, else OpenAI's API when a key is set), ``HEADATLAS_LLM_MODEL`` and
    ``HEADATLAS_LLM_API_KEY`` (else ``OPENAI_API_KEY``). Requests are retried ``max_retries``
    times on 429, 5xx, connection errors and timeouts, waiting ``backoff * 2**i`` seconds plus
    jitter, or what the server's ``Retry-After`` asks for. ``json_mode`` sends
    ``response_format={"type": "json_object"}``, which not every server accepts.
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
        backoff: float = 1.0,
        json_mode: bool = False,
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
        self.backoff = float(backoff)
        self.json_mode = json_mode

    @property
    def url(self) -> str:
        """The chat-completions endpoint."""
        return f"{self.base_url}/chat/completions"

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIChatBackend(base_url={self.base_url!r}, model={self.name!r})"

    def params(self) -> dict[str, Any]:
        """Server, temperature and response format: with the prompt, they decide the answer."""
        return {"base_url": self.base_url, "temperature": 0, "json_mode": self.json_mode}

    def request_body(self, messages: list[Message]) -> dict[str, Any]:
        """The JSON body sent for ``messages``."""
        body: dict[str, Any] = {"model": self.name, "messages": messages, "temperature": 0}
        if self.json_mode:
            body["response_format"] = {"type": "json_object"}
        return body

    def complete(self, messages: list[Message]) -> str:
        """The answer's text (``choices[0].message.content``), after retries as needed."""
        data = json.dumps(self.request_body(messages)).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                return self._post_once(data)
            except _Retryable as exc:
                last = str(exc)
                if attempt == self.max_retries:
                    break
                delay = self.backoff * 2**attempt + random.uniform(0, self.backoff)
                if exc.retry_after is not None:
                    if exc.retry_after > MAX_RETRY_AFTER_S:
                        raise DescribeError(
                            f"{self.url} asks to wait {exc.retry_after:.0f} s ({last}): "
                            "try again later or lower --concurrency"
                        ) from exc
                    delay = max(delay, exc.retry_after)
                time.sleep(delay)
        raise DescribeError(
            f"no answer from {self.url} after {self.max_retries + 1} attempts (last: {last}); "
            "check that the server is up, or raise --timeout for a slow model"
        )

    def _post_once(self, data: bytes) -> str:
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "headatlas",
        }
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            self._raise_for_status(exc)
        except TimeoutError as exc:
            raise _Retryable(f"no answer within {self.timeout:g} s") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Retryable(f"no answer within {self.timeout:g} s") from exc
            raise _Retryable(f"cannot connect: {exc.reason}") from exc
        except (http.client.HTTPException, ConnectionError) as exc:
            raise _Retryable(f"connection failed: {exc!r}") from exc
        return _completion_text(body)

    def _raise_for_status(self, exc: urllib.error.HTTPError) -> NoReturn:
        try:
            raw = exc.read()
        except (OSError, http.client.HTTPException):
            raw = b""
        message = _server_message(raw) or exc.reason or ""
        status = f"HTTP {exc.code}: {message}" if message else f"HTTP {exc.code}"
        if exc.code == 429 or exc.code >= 500:
            raise _Retryable(status, _retry_after(exc.headers.get("Retry-After"))) from exc
        if exc.code in (401, 403):
            raise DescribeError(
                f"the server refused the API key ({status}): set HEADATLAS_LLM_API_KEY "
                "or pass --api-key"
            ) from exc
        if exc.code == 404:
            raise DescribeError(
                f"{self.url} was not found ({status}): check --base-url (usually ending in /v1) "
                f"and that the server serves model {self.name!r}"
            ) from exc
        raise DescribeError(f"{self.url} rejected the request ({status})") from exc


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


def _retry_after(value: str | None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (a number, or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
