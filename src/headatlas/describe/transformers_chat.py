"""A chat backend running a local ``transformers`` model with greedy decoding.

The default is the packaged SmolLM2-135M-Instruct GGUF: small enough for a CPU and always
available. It is weak and, left free, answers in prose; so by default decoding is constrained
to the answer's JSON schema (:mod:`headatlas.describe.grammar`) and every answer parses. Any
local chat model works the same way (a Hugging Face folder, a ``.gguf`` file, or a hub id
already in the cache).
"""

from __future__ import annotations

import copy
import functools
import threading
from typing import Any

from headatlas.describe.answer_schema import answer_schema, answer_token_budget
from headatlas.describe.grammar import SchemaGrammar
from headatlas.describe.protocol import Message
from headatlas.errors import DescribeError


class TransformersChatBackend:
    """Answers from a local causal LM through its chat template; loaded on first use.

    ``model`` is ``"smollm2"`` (the packaged GGUF), a path to a ``.gguf`` file, a local Hugging
    Face model folder, or a hub id. ``device`` defaults to CUDA when available, else CPU.
    With ``structured`` (the default) decoding follows :func:`answer_schema`, and
    ``max_new_tokens`` defaults to a budget that always fits it; without, it defaults to 200.
    """

    kind = "transformers"
    concurrent = False

    def __init__(
        self,
        model: str = "smollm2",
        max_new_tokens: int | None = None,
        device: str | None = None,
        structured: bool = True,
    ) -> None:
        self.name = model
        self.structured = structured
        budget = answer_token_budget()
        if max_new_tokens is None:
            max_new_tokens = budget if structured else 200
        if max_new_tokens < 1:
            raise DescribeError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if structured and max_new_tokens < budget:
            raise DescribeError(
                f"max_new_tokens={max_new_tokens} could cut a structured answer short: pass at "
                f"least {budget} (or leave it unset), or pass --no-structured"
            )
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None
        self._grammar: SchemaGrammar | None = None
        self._system: tuple[str, Any, Any] | None = None
        self.use_system_cache = True
        """Reuse the system turn's keys and values across answers (off: a full prefill each time)."""

    def __repr__(self) -> str:
        return f"TransformersChatBackend(model={self.name!r})"

    def params(self) -> dict[str, Any]:
        """Decoding settings: with the prompt and model, they decide the answer."""
        params: dict[str, Any] = {"decoding": "greedy", "max_new_tokens": self.max_new_tokens}
        if self.structured:
            params["schema"] = answer_schema()
        return params

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is not None:
            return self._loaded
        import torch

        from headatlas.weights.hf_model import load_causal_lm

        model, tokenizer = load_causal_lm(self.name, with_tokenizer=True, purpose="chat")
        if getattr(tokenizer, "chat_template", None) is None:
            raise DescribeError(
                f"model {self.name!r} has no chat template: use an instruction-tuned chat model"
            )
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = model.to(device).eval()
        if self.structured:
            vocab = int(model.get_output_embeddings().weight.shape[0])
            self._grammar = SchemaGrammar(tokenizer, answer_schema(), vocab)
        self._loaded = (tokenizer, model)
        return self._loaded

    def _system_cache(
        self, tokenizer: Any, model: Any, messages: list[Message], input_ids: Any
    ) -> Any:
        """A fresh copy of the key/value cache of the system turn when ``input_ids`` starts with it.

        Every head's prompt opens with the same system message, so its keys and values are
        computed once and copied for each answer: what a full prefill computes, up to float
        rounding.
        """
        import torch

        if not messages or messages[0]["role"] != "system" or self.use_system_cache is False:
            return None
        system = messages[0]["content"]
        if self._system is None or self._system[0] != system:
            try:
                ids = tokenizer.apply_chat_template(
                    messages[:1],
                    add_generation_prompt=False,
                    return_tensors="pt",
                    return_dict=True,
                )["input_ids"].to(model.device)
            except Exception:  # a template without a system role: no shared prefix to reuse
                self.use_system_cache = False
                return None
            with torch.no_grad():
                out = model(ids, use_cache=True)
            # transformers 5 names the output's cache `cache`; 4.x `past_key_values`.
            cache = out.cache if _cache_argument() == "cache" else out.past_key_values
            self._system = (system, ids, cache)
        _, ids, cache = self._system
        n = ids.shape[1]
        if input_ids.shape[1] <= n or not torch.equal(input_ids[:, :n], ids):
            return None
        return copy.deepcopy(cache)

    def complete(self, messages: list[Message]) -> str:
        """The model's greedy continuation of the chat (schema-constrained when ``structured``),
        special tokens removed."""
        import torch

        with self._lock:
            tokenizer, model = self._load()
            inputs = _apply_template(tokenizer, messages).to(model.device)
            prompt_len = inputs["input_ids"].shape[1]
            extra: dict[str, Any] = {}
            if self._grammar is not None:
                extra["logits_processor"] = [self._grammar.processor(prompt_len)]
            cache = self._system_cache(tokenizer, model, messages, inputs["input_ids"])
            if cache is not None:
                extra[_cache_argument()] = cache
            with torch.no_grad():
                output = model.generate(
                    **inputs,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    eos_token_id=tokenizer.eos_token_id,
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                    **extra,
                )
            text: str = tokenizer.decode(output[0, prompt_len:], skip_special_tokens=True)
            return text.strip()


@functools.cache
def _cache_argument() -> str:
    """The name ``generate`` takes a prefilled cache by (``cache`` from transformers 5 on)."""
    import transformers

    return "cache" if int(transformers.__version__.split(".")[0]) >= 5 else "past_key_values"


def _apply_template(tokenizer: Any, messages: list[Message]) -> Any:
    """Tokenised chat; templates without a system role get the system text in the first turn."""
    kwargs = {"add_generation_prompt": True, "return_tensors": "pt", "return_dict": True}
    try:
        return tokenizer.apply_chat_template(messages, **kwargs)
    except Exception:  # jinja raises its own error types for an unsupported system role
        if not messages or messages[0]["role"] != "system" or len(messages) < 2:
            raise
        system, first, *rest = messages
        merged = {"role": first["role"], "content": f"{system['content']}\n\n{first['content']}"}
        return tokenizer.apply_chat_template([merged, *rest], **kwargs)
