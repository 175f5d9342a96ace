"""Relations as (source, target) word pairs: 20 built-ins, user files, tokenisation."""

from headatlas.relations.builtin import BUILTIN_BY_CATEGORY, BUILTIN_NAMES, builtin_relations
from headatlas.relations.files import load_relation_file
from headatlas.relations.model import BUILTIN_CATEGORIES, CUSTOM, Relation
from headatlas.relations.resolve import resolve_relations
from headatlas.relations.tokenization import (
    PairRules,
    SupportsEncode,
    TokenizedRelation,
    multi_token_pairs,
    require_usable,
    tokenize_relation,
    tokenize_relations,
)

__all__ = [
    "BUILTIN_BY_CATEGORY",
    "BUILTIN_CATEGORIES",
    "BUILTIN_NAMES",
    "CUSTOM",
    "PairRules",
    "Relation",
    "SupportsEncode",
    "TokenizedRelation",
    "builtin_relations",
    "load_relation_file",
    "multi_token_pairs",
    "require_usable",
    "resolve_relations",
    "tokenize_relation",
    "tokenize_relations",
]
