"""Keeping the pairs whose source and target are single tokens of a given tokenizer.

MAPS reads a head's OV map row for one source token and ranks one target token, so a pair is
usable only when both words are one token (with a leading space, as inside a sentence).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from headatlas.errors import RelationFileError
from headatlas.relations.model import Relation


class SupportsEncode(Protocol):
    """Anything with a Hugging Face style ``encode`` (tokenizers of transformers)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


@dataclass(frozen=True)
class TokenizedRelation:
    """A relation's pairs as token ids of one tokenizer.

    Attributes:
        relation: The relation that was tokenized.
        source_ids: Source token id of each kept pair.
        target_ids: Target token id of each kept pair, aligned with ``source_ids``.
        kept: The kept (source, target) words, aligned with the ids.
        n_raw: Number of pairs in the relation before filtering.
        skip_reason: None when usable, else a sentence saying why too few pairs survived.
    """

    relation: Relation
    source_ids: list[int]
    target_ids: list[int]
    kept: tuple[tuple[str, str], ...]
    n_raw: int
    skip_reason: str | None

    @property
    def usable(self) -> bool:
        """True when enough pairs survived to score the relation."""
        return self.skip_reason is None


def tokenize_relation(
    relation: Relation,
    tokenizer: SupportsEncode,
    *,
    leading_space: bool = True,
    first_token: bool = False,
    min_pairs: int = 30,
) -> TokenizedRelation:
    """Token ids of the pairs whose source (and target) encode to a single token.

    Args:
        relation: The pairs to encode.
        tokenizer: Encodes text without special tokens.
        leading_space: Prefix each word with a space (the in-sentence form of the word).
        first_token: Keep multi-token targets, using their first token; the source must
            still be one token.
        min_pairs: Fewer surviving pairs than this set ``skip_reason``.
    """
    prefix = " " if leading_space else ""
    source_ids: list[int] = []
    target_ids: list[int] = []
    kept: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()
    n_digit_sources = n_digit_split = 0
    for source, target in relation.pairs:
        s_ids = tokenizer.encode(prefix + source, add_special_tokens=False)
        if source.isdigit():
            n_digit_sources += 1
            n_digit_split += len(s_ids) > 1
        if len(s_ids) != 1:
            continue
        t_ids = tokenizer.encode(prefix + target, add_special_tokens=False)
        if not t_ids or (len(t_ids) > 1 and not first_token):
            continue
        key = (s_ids[0], t_ids[0])
        if key in seen:
            continue
        seen.add(key)
        source_ids.append(key[0])
        target_ids.append(key[1])
        kept.append((source, target))
    n_raw = len(relation.pairs)
    reason = None
    if len(kept) < min_pairs:
        # A tokenizer that splits numbers into digits can never give a single-token year.
        mostly_numbers = n_digit_sources * 2 >= n_raw
        numbers_split = n_digit_split > 0 and n_digit_split * 2 >= n_digit_sources
        why = " (it splits numbers into digits)" if mostly_numbers and numbers_split else ""
        hint = "use" if first_token else "try first_token mode or"
        reason = (
            f"{relation.name}: only {len(kept)} of {n_raw} pairs are single tokens for this "
            f"tokenizer{why}; need {min_pairs} — {hint} a relation file with single-token words"
        )
    return TokenizedRelation(
        relation=relation,
        source_ids=source_ids,
        target_ids=target_ids,
        kept=tuple(kept),
        n_raw=n_raw,
        skip_reason=reason,
    )


def require_usable(tokenized: TokenizedRelation, path: str | Path | None = None) -> None:
    """Raise :class:`RelationFileError` when no pair of a (user) relation survived."""
    if tokenized.kept:
        return
    where = f"relation file {path}" if path is not None else f"relation '{tokenized.relation.name}'"
    raise RelationFileError(
        f"{where}: none of its {tokenized.n_raw} pairs survives tokenisation (source and target "
        "must each be one token with a leading space); use common single-token words or "
        "first_token mode"
    )
