"""Which relations a head's salient operations agree with.

A relation *applies* to a salient token when the token is one of its sources (compared as
words: stripped of leading space, case-folded) or when the relation has a known transform that
is defined for the token (copying: any word; first/last letter: alphabetic words of two or
more letters; next year: four-digit numbers). A salient token *hits* the relation when one of
its top mappings is a target of that source, or the transform of the token. A head's score
for a relation is hits / applicable over its salient tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from headatlas.relations import Relation

MIN_HITS = 2
"""A relation is listed for a head only when at least this many salient tokens hit it."""
MIN_SHARE = 0.1
"""... and when at least this share of the tokens it applies to hit it."""


def word_key(text: str) -> str:
    """A token or word compared as a word: surrounding space stripped, case-folded."""
    return text.strip().casefold()


def _is_word(key: str) -> bool:
    return len(key) >= 2 and key.isalpha()


def _identity(key: str) -> str:
    return key


def _is_year(key: str) -> bool:
    return len(key) == 4 and key.isascii() and key.isdigit()


# name -> (applies to a token key, the token's transformed key)
_TRANSFORMS: dict[str, tuple[Callable[[str], bool], Callable[[str], str]]] = {
    "copying": (bool, _identity),
    "word_first_letter": (_is_word, lambda k: k[0]),
    "word_last_letter": (_is_word, lambda k: k[-1]),
    "year_following": (_is_year, lambda k: str(int(k) + 1)),
}


@dataclass(frozen=True)
class RelationMatcher:
    """One relation as a test on (token, its mappings)."""

    name: str
    targets: dict[str, frozenset[str]]
    """Source word key -> target word keys, from the relation's pairs."""
    transform: tuple[Callable[[str], bool], Callable[[str], str]] | None

    def applies(self, key: str) -> bool:
        """Whether the relation says anything about this token."""
        return key in self.targets or (self.transform is not None and self.transform[0](key))

    def hits(self, key: str, mapping_keys: Sequence[str]) -> bool:
        """Whether one of the mappings is what the relation maps the token to."""
        wanted = set(self.targets.get(key, ()))
        if self.transform is not None and self.transform[0](key):
            wanted.add(self.transform[1](key))
        return any(m in wanted for m in mapping_keys)


def relation_matchers(relations: Sequence[Relation]) -> list[RelationMatcher]:
    """Matchers for relations; copying relations (e.g. name_copying) test for the token
    itself among its mappings, on their own sources."""
    out = []
    for rel in relations:
        targets: dict[str, set[str]] = {}
        for source, target in rel.pairs:
            targets.setdefault(word_key(source), set()).add(word_key(target))
        transform = _TRANSFORMS.get(rel.name)
        if transform is None and rel.copying:
            # applies on the relation's sources only; the target of a copy is the token itself
            transform = (frozenset(targets).__contains__, _identity)
        frozen = {k: frozenset(v) for k, v in targets.items()}
        out.append(RelationMatcher(rel.name, frozen, transform))
    return out


def match_head(
    matchers: Sequence[RelationMatcher],
    tokens: Sequence[str],
    mappings: Sequence[Sequence[str]],
    min_hits: int = MIN_HITS,
    min_share: float = MIN_SHARE,
) -> tuple[str, list[list[str]]]:
    """(head summary "name:share,..." best first, relations hit by each salient token)."""
    keys = [word_key(t) for t in tokens]
    mapped = [[word_key(m) for m in ms] for ms in mappings]
    per_token: list[list[str]] = [[] for _ in tokens]
    scored: list[tuple[float, str]] = []
    for m in matchers:
        applicable = hits = 0
        for i, key in enumerate(keys):
            if not m.applies(key):
                continue
            applicable += 1
            if m.hits(key, mapped[i]):
                hits += 1
                per_token[i].append(m.name)
        if hits >= min_hits and hits / applicable >= min_share:
            scored.append((hits / applicable, m.name))
    scored.sort(key=lambda s: (-s[0], s[1]))
    return ",".join(f"{name}:{share:.2f}" for share, name in scored), per_token
