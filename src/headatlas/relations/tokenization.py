"""Keeping the pairs whose source and target are single tokens of a given tokenizer (and, given
the model's vocabulary size, ids the model has a row for).

MAPS reads a head's OV map row for one source token and ranks one target token, so a pair is
usable only when both words are one token (with a leading space, as inside a sentence). The map,
``validate`` and ``calibrate`` all tokenise through :func:`tokenize_relations` (the multi-token
experiment through :func:`multi_token_pairs`), so they score and prompt the same pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from headatlas.errors import RelationFileError
from headatlas.relations.model import Relation


class SupportsEncode(Protocol):
    """Anything with a Hugging Face style ``encode`` (tokenizers of transformers)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


class PairRules(Protocol):
    """How pairs are tokenised and how many must survive (``MapOptions`` is one)."""

    @property
    def leading_space(self) -> bool:
        """Prefix each word with a space (the in-sentence form of the word)."""
        ...

    @property
    def first_token(self) -> bool:
        """Keep multi-token targets, using their first token."""
        ...

    @property
    def min_pairs(self) -> int:
        """Fewer surviving pairs than this make a relation unusable."""
        ...


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
        n_out_of_vocab: Single-token pairs dropped because an id is beyond the model's
            vocabulary (a tokenizer may know added tokens the model has no row for).
    """

    relation: Relation
    source_ids: list[int]
    target_ids: list[int]
    kept: tuple[tuple[str, str], ...]
    n_raw: int
    skip_reason: str | None
    n_out_of_vocab: int = 0

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
    vocab_size: int | None = None,
) -> TokenizedRelation:
    """Token ids of the pairs whose source (and target) encode to a single token.

    Args:
        relation: The pairs to encode.
        tokenizer: Encodes text without special tokens.
        leading_space: Prefix each word with a space (the in-sentence form of the word).
        first_token: Keep multi-token targets, using their first token; the source must
            still be one token.
        min_pairs: Fewer surviving pairs than this set ``skip_reason``.
        vocab_size: The model's vocabulary size: pairs with an id at or beyond it are
            dropped (counted in ``n_out_of_vocab``). None: no such check.
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
    n_out = 0
    if vocab_size is not None:
        inside = [
            i
            for i, (s, t) in enumerate(zip(source_ids, target_ids))
            if s < vocab_size and t < vocab_size
        ]
        n_out = len(source_ids) - len(inside)
        source_ids = [source_ids[i] for i in inside]
        target_ids = [target_ids[i] for i in inside]
        kept = [kept[i] for i in inside]
        if reason is None and len(kept) < min_pairs:
            reason = (
                f"{relation.name}: only {len(kept)} pairs have token ids inside the model's "
                f"vocabulary of {vocab_size}; need {min_pairs}"
            )
    return TokenizedRelation(
        relation=relation,
        source_ids=source_ids,
        target_ids=target_ids,
        kept=tuple(kept),
        n_raw=n_raw,
        skip_reason=reason,
        n_out_of_vocab=n_out,
    )


def tokenize_relations(
    relations: Sequence[Relation],
    tokenizer: SupportsEncode,
    rules: PairRules,
    vocab_size: int | None = None,
    files: Sequence[str | Path] = (),
) -> list[TokenizedRelation]:
    """Tokenise every relation by ``rules`` (single tokens, inside ``vocab_size``): what the
    map scores and ``validate`` / ``calibrate`` prompt with. A user relation (from one of
    ``files``) with no surviving pair is a :class:`RelationFileError`."""
    file_by_name = {Path(f).stem: f for f in files}
    out = []
    for rel in relations:
        tok = tokenize_relation(
            rel,
            tokenizer,
            leading_space=rules.leading_space,
            first_token=rules.first_token,
            min_pairs=rules.min_pairs,
            vocab_size=vocab_size,
        )
        if rel.provenance.startswith("user file"):
            require_usable(tok, file_by_name.get(rel.name))
        out.append(tok)
    return out


def multi_token_pairs(
    relation: Relation,
    tokenizer: SupportsEncode,
    *,
    leading_space: bool = True,
    min_pairs: int = 10,
    vocab_size: int | None = None,
) -> tuple[list[list[int]], list[int], str | None]:
    """The pairs whose source is two or more tokens and whose target is one (``validate``'s
    multi-token experiment): (source id lists, target ids, None) or ([], [], why) when fewer
    than ``min_pairs`` survive. ``vocab_size`` drops pairs with an id beyond the model's
    vocabulary."""
    prefix = " " if leading_space else ""
    sources: list[list[int]] = []
    targets: list[int] = []
    seen: set[tuple[tuple[int, ...], tuple[int, ...]]] = set()
    for s, t in relation.pairs:
        s_ids = tokenizer.encode(prefix + s, add_special_tokens=False)
        t_ids = tokenizer.encode(prefix + t, add_special_tokens=False)
        key = (tuple(s_ids), tuple(t_ids))
        if len(s_ids) < 2 or len(t_ids) != 1 or key in seen:
            continue
        if vocab_size is not None and max(*s_ids, t_ids[0]) >= vocab_size:
            continue
        seen.add(key)
        sources.append(list(s_ids))
        targets.append(t_ids[0])
    if len(sources) < min_pairs:
        why = (
            f"{relation.name}: only {len(sources)} pairs have a multi-token source and a "
            f"single-token target; need {min_pairs}"
        )
        return [], [], why
    return sources, targets, None


def require_usable(tokenized: TokenizedRelation, path: str | Path | None = None) -> None:
    """Raise :class:`RelationFileError` when no pair of a (user) relation survived
    tokenisation (pairs dropped only for being beyond the model's vocabulary are a skip
    reason, not this error)."""
    if tokenized.kept or tokenized.n_out_of_vocab:
        return
    where = f"relation file {path}" if path is not None else f"relation '{tokenized.relation.name}'"
    raise RelationFileError(
        f"{where}: none of its {tokenized.n_raw} pairs survives tokenisation (source and target "
        "must each be one token with a leading space); use common single-token words or "
        "first_token mode"
    )
