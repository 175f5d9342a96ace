"""Prompts for the validation experiments: a template with a ``<X>`` slot filled by a source.

The prompt is tokenised in pieces, ``before | source | after``, so the source occupies exactly
the tokens it has on its own (the same token ids as in the static map) and its position is
known without searching. Batches are right-padded: with causal attention no real token sees a
pad, so no position ids need shifting; each row is read at its last real position.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from headatlas.errors import ValidationInputError

SLOT = "<X>"

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "No <X> means no",
    "The story of <X> contains",
    "This is a document about <X>",
    "When I think about <X> I think about",
)
"""The four context templates of MAPS' correlative experiment."""


@dataclass
class Prompt:
    """One tokenised prompt: ``ids`` and where its (last) source token sits."""

    ids: list[int]
    source_pos: int
    target: int
    """Token id whose score/accuracy is measured (the target's first token)."""


@dataclass
class Batch:
    """Right-padded prompts: ids and mask [B, T], read and source positions [B], targets [B]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    read_pos: torch.Tensor
    source_pos: torch.Tensor
    targets: torch.Tensor


def check_template(template: str) -> str:
    """A template must hold exactly one ``<X>``."""
    if template.count(SLOT) != 1:
        raise ValidationInputError(
            f"template {template!r} must contain the slot {SLOT} exactly once, e.g. "
            f"'The story of {SLOT} contains'"
        )
    return template


def _bos(tokenizer: Any) -> list[int]:
    """The tokenizer's start token, when it adds one to plain text."""
    with_special = tokenizer.encode("a", add_special_tokens=True)
    plain = tokenizer.encode("a", add_special_tokens=False)
    if len(with_special) > len(plain) and with_special[-len(plain) :] == plain:
        return list(with_special[: len(with_special) - len(plain)])
    return []


def build_prompts(
    tokenizer: Any,
    template: str,
    sources: Sequence[Sequence[int]],
    targets: Sequence[int],
) -> list[Prompt]:
    """Fill ``template`` with each source's token ids; the source's last token is recorded.

    The text before the slot is encoded without its trailing spaces (the source ids carry
    their own leading space, as in the map); the text after is encoded as is.
    """
    before, after = check_template(template).split(SLOT)
    pre = _bos(tokenizer) + (
        tokenizer.encode(before.rstrip(), add_special_tokens=False) if before.strip() else []
    )
    post = tokenizer.encode(after, add_special_tokens=False) if after else []
    out = []
    for src, tgt in zip(sources, targets, strict=True):
        ids = pre + list(src) + post
        out.append(Prompt(ids, len(pre) + len(src) - 1, int(tgt)))
    return out


def text_prompts(
    tokenizer: Any, template: str, words: Sequence[str], targets: Sequence[int]
) -> list[Prompt]:
    """Fill ``template`` with source words as text and tokenise the whole prompt (few-shot
    prompts of the causal experiment; the source position is the prompt's last source token,
    found by encoding the text up to the end of the source)."""
    before, after = check_template(template).split(SLOT)
    bos = _bos(tokenizer)
    out = []
    for word, tgt in zip(words, targets, strict=True):
        head = tokenizer.encode(before + word, add_special_tokens=False)
        ids = tokenizer.encode(before + word + after, add_special_tokens=False)
        out.append(Prompt(bos + ids, len(bos) + len(head) - 1, int(tgt)))
    return out


def batches(prompts: Sequence[Prompt], size: int, pad_id: int = 0) -> Iterator[Batch]:
    """Right-padded batches of at most ``size`` prompts, in order."""
    for i in range(0, len(prompts), size):
        chunk = prompts[i : i + size]
        T = max(len(p.ids) for p in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for r, p in enumerate(chunk):
            ids[r, : len(p.ids)] = torch.tensor(p.ids)
            mask[r, : len(p.ids)] = 1
        yield Batch(
            input_ids=ids,
            attention_mask=mask,
            read_pos=torch.tensor([len(p.ids) - 1 for p in chunk]),
            source_pos=torch.tensor([p.source_pos for p in chunk]),
            targets=torch.tensor([p.target for p in chunk]),
        )


def pad_id(tokenizer: Any) -> int:
    """A token id to pad with (never read: padding is masked and sits after the last token)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0
