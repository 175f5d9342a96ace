"""Parse and check a chat model's answer: the first JSON object in it, with string fields."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from headatlas.errors import HeadAtlasError

FIELDS = ("inputs", "pattern", "description")
UNCLEAR = "unclear"


class MalformedAnswer(HeadAtlasError):
    """The model's answer is not the requested JSON object; ``raw`` is what it said.

    Raised inside the describe step, which retries once and then records the head as failed.
    """

    def __init__(self, reason: str, raw: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.raw = raw


class MalformedResponse(MalformedAnswer):
    """The server's reply is not a chat completion (no JSON, or no ``choices[0].message.content``)."""


@dataclass(frozen=True)
class Answer:
    """A checked description; ``status`` is ``"unclear"`` when the model saw no pattern."""

    status: Literal["ok", "unclear"]
    inputs: str
    pattern: str
    description: str


def first_json_object(text: str) -> dict[str, object] | None:
    """The first ``{...}`` in ``text`` that parses as a JSON object, wherever it sits.

    Fences (```json ... ```) and prose around the object are skipped.
    """
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pass
        else:
            if isinstance(value, dict):
                return value
        start = text.find("{", start + 1)
    return None


def parse_answer(raw: str) -> Answer:
    """The description in ``raw``, or MalformedAnswer saying what is wrong with it."""
    obj = first_json_object(raw)
    if obj is None:
        raise MalformedAnswer("it holds no JSON object", raw)
    description = obj.get("description")
    if not isinstance(description, str):
        raise MalformedAnswer('"description" is missing or not a string', raw)
    if description.strip().rstrip(".").strip().lower() == UNCLEAR:
        return Answer(status="unclear", inputs="", pattern="", description="Unclear")
    for field in ("inputs", "pattern"):
        value = obj.get(field)
        if not isinstance(value, str):
            raise MalformedAnswer(f'"{field}" is missing or not a string', raw)
    if not description.strip():
        raise MalformedAnswer('"description" is empty', raw)
    return Answer(
        status="ok",
        inputs=str(obj["inputs"]).strip(),
        pattern=str(obj["pattern"]).strip(),
        description=description.strip(),
    )
