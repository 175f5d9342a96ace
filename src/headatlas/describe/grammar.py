"""Constrained greedy decoding: a ``transformers`` logits processor that follows a JSON schema.

llguidance (guidance-ai) compiles the schema into a token-level matcher; at each step the tokens
that would leave the grammar are masked out of the logits, so greedy decoding can only produce
an answer the schema allows, and the end-of-sequence token only once the answer is complete.
See docs/describe.md for why llguidance was chosen (CPU speed, maintenance).
"""

from __future__ import annotations

import json
from typing import Any

from headatlas.errors import DescribeError

# Fixed separators: the answer's length stays bounded (no free whitespace between tokens).
_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _llguidance() -> Any:
    try:
        import llguidance
        import llguidance.hf
        import llguidance.torch
    except ImportError as exc:
        raise DescribeError(
            f"structured decoding needs llguidance ({exc}): pip install llguidance, "
            "or pass --no-structured"
        ) from exc
    return llguidance


class SchemaGrammar:
    """A JSON schema compiled for one tokenizer; :meth:`processor` starts one answer."""

    def __init__(self, tokenizer: Any, schema: dict[str, Any], vocab_size: int) -> None:
        llg = _llguidance()
        self._llg = llg
        # The model's logits may be wider than the tokenizer's vocabulary (padded embeddings).
        self.ll_tokenizer = llg.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.grammar = llg.LLMatcher.grammar_from_json_schema(
            json.dumps({**schema, "x-guidance": _LAYOUT})
        )
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(
            self.grammar, self.ll_tokenizer
        )
        if is_error:
            raise DescribeError(f"the answer schema does not compile: {'; '.join(messages)}")
        self.vocab_size = vocab_size

    def processor(self, prompt_len: int) -> GrammarLogitsProcessor:
        """A fresh logits processor for one answer whose prompt has ``prompt_len`` tokens."""
        matcher = self._llg.LLMatcher(self.ll_tokenizer, self.grammar)
        return GrammarLogitsProcessor(matcher, prompt_len, self.vocab_size)


class GrammarLogitsProcessor:
    """Masks every token the grammar does not allow next (batch of one, as ``generate`` calls it)."""

    def __init__(self, matcher: Any, prompt_len: int, vocab_size: int) -> None:
        import llguidance.torch as llt

        self.matcher = matcher
        self.prompt_len = prompt_len
        self._llt = llt
        self._bitmask = llt.allocate_token_bitmask(1, vocab_size)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """``scores`` [1, vocab] with disallowed tokens set to -inf."""
        # From the second step on, the token chosen last step enters the grammar.
        stepped = input_ids.shape[1] > self.prompt_len
        if stepped and not self.matcher.consume_token(int(input_ids[0, -1])):
            raise DescribeError(
                f"the decoder left the answer grammar ({self.matcher.get_error()}): "
                "report this with the model name"
            )
        self._llt.fill_next_token_bitmask(self.matcher, self._bitmask, 0)
        self._llt.apply_token_bitmask_inplace(scores, self._bitmask.to(scores.device))
        return scores

    @property
    def finished(self) -> bool:
        """Whether the grammar has reached its end (only end-of-sequence remains allowed)."""
        return bool(self.matcher.is_stopped())
