"""A real HTTP server on 127.0.0.1 speaking the chat-completions protocol, scriptable for tests.

Each POST to ``/v1/chat/completions`` takes the next scripted behaviour (or the default when the
script is empty) and is recorded (headers, JSON body, start and end times) so tests can assert
what was sent, how many requests were made and how many ran at once. Handlers never block for
longer than the delays they are given, and stopping the server releases slow ones at once.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """A normal chat completion whose message content is ``content`` (or ``content(body)``)."""

    content: str | Callable[[dict[str, Any]], str]
    delay: float = 0.0


@dataclass
class Status:
    """An error status with a JSON (or given text) body and extra headers."""

    code: int
    message: str = "error"
    headers: dict[str, str] = field(default_factory=dict)
    text: str | None = None


@dataclass
class Raw:
    """A 200 reply with this exact body (e.g. not JSON, or JSON without choices)."""

    body: str


@dataclass
class Slow:
    """Answer only after ``seconds`` (beyond a client's timeout), then reply normally."""

    seconds: float
    then: Reply | None = None


Behaviour = Reply | Status | Raw | Slow


@dataclass
class Recorded:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: Any
    started: float
    ended: float = 0.0


def _title(name: str) -> str:
    """``content-type`` → ``Content-Type``."""
    return "-".join(part.capitalize() for part in name.split("-"))


def answer_json(inputs: str, pattern: str, description: str) -> str:
    """A well-formed answer's content."""
    return json.dumps({"inputs": inputs, "pattern": pattern, "description": description})


def default_answer(body: dict[str, Any]) -> str:
    """A valid answer naming the head the prompt asks about (found in the user message)."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    first_line = user.split("\n", 1)[0]
    return answer_json(
        "countries", "country to capital", f"Maps countries to capitals ({first_line})"
    )


def completion(content: str, model: str = "test-model") -> dict[str, Any]:
    """A chat-completions reply object."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


class ChatServer:
    """The server; use as a context manager. ``url`` is the base URL ending in ``/v1``."""

    def __init__(self, default: Behaviour | None = None) -> None:
        self.default: Behaviour = default or Reply(default_answer)
        self.script: deque[Behaviour] = deque()
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def push(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, in order."""
        with self._lock:
            self.script.extend(behaviours)

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _next(self) -> Behaviour:
        with self._lock:
            return self.script.popleft() if self.script else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                data = self.rfile.read(length)
                try:
                    body = json.loads(data)
                except json.JSONDecodeError:
                    body = data.decode("utf-8", "replace")
                # Header names are case-insensitive; record them as Title-Case (HTTP clients differ).
                headers = {_title(name): value for name, value in self.headers.items()}
                record = Recorded(self.path, headers, body, time.monotonic())
                with server._lock:
                    server.requests.append(record)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                self._counted = True
                try:
                    self._respond(server._next(), body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a timeout test)
                finally:
                    self._done()
                    record.ended = time.monotonic()

            def _done(self) -> None:
                # A request stops being in flight before its answer is written: once the client
                # has the answer it may send the next request before this thread runs on.
                if getattr(self, "_counted", False):
                    self._counted = False
                    with server._lock:
                        server.in_flight -= 1

            def _respond(self, behaviour: Behaviour, body: Any) -> None:
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if isinstance(behaviour, Slow):
                    if server._stop.wait(behaviour.seconds):
                        return
                    behaviour = behaviour.then or Reply(default_answer)
                if isinstance(behaviour, Reply):
                    if behaviour.delay:
                        server._stop.wait(behaviour.delay)
                    content = behaviour.content
                    text = content(body) if callable(content) else content
                    self._send(200, completion(text, str(body.get("model", ""))))
                elif isinstance(behaviour, Status):
                    payload = behaviour.text
                    if payload is None:
                        payload = json.dumps({"error": {"message": behaviour.message}})
                    self._send(behaviour.code, payload, behaviour.headers)
                else:
                    self._send(200, behaviour.body)

            def _send(self, code: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self._done()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler
