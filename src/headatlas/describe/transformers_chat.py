"""A chat backend running a local ``transformers`` model with greedy decoding.

The default is the packaged SmolLM2-135M-Instruct GGUF: small enough for a CPU and always
available, but weak, so its answers are often unclear or malformed. Any local chat model works
the same way (a Hugging Face folder, a ``.gguf`` file, or a hub id already in the cache).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from headatlas.describe.backends import Message
from headatlas.errors import DescribeError, WeightSourceError


class TransformersChatBackend:
    """Answers from a local causal LM through its chat template; loaded on first use.

    ``model`` is ``"smollm2"`` (the packaged GGUF), a path to a ``.gguf`` file, a local Hugging
    Face model folder, or a hub id. ``device`` defaults to CUDA when available, else CPU.
    """

    kind = "transformers"
    concurrent = False

    def __init__(
        self, model: str = "smollm2", max_new_tokens: int = 200, device: str | None = None
    ) -> None:
        self.name = model
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self._lock = threading.Lock()
        self._loaded: tuple[Any, Any] | None = None

    def __repr__(self) -> str:
        return f"TransformersChatBackend(model={self.name!r})"

    def params(self) -> dict[str, Any]:
        """Decoding settings: with the prompt and model, they decide the answer."""
        return {"decoding": "greedy", "max_new_tokens": self.max_new_tokens}

    def _load(self) -> tuple[Any, Any]:
        if self._loaded is not None:
            return self._loaded
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs: dict[str, Any] = {}
        if self.name == "smollm2":
            from headatlas.weights.packaged import smollm2_path

            path = smollm2_path()
            source, kwargs["gguf_file"] = str(path.parent), path.name
        elif self.name.endswith(".gguf") and Path(self.name).is_file():
            path = Path(self.name)
            source, kwargs["gguf_file"] = str(path.parent), path.name
        else:
            source = self.name
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model: Any = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
        except (OSError, ValueError) as exc:
            raise WeightSourceError(
                f"cannot load chat model {self.name!r} ({exc}): pass 'smollm2', a .gguf file, "
                "a local model folder, or a hub id already downloaded"
            ) from exc
        if getattr(tokenizer, "chat_template", None) is None:
            raise DescribeError(
                f"model {self.name!r} has no chat template: use an instruction-tuned chat model"
            )
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = model.to(device).eval()
        self._loaded = (tokenizer, model)
        return self._loaded

    def complete(self, messages: list[Message]) -> str:
        """The model's greedy continuation of the chat, special tokens removed."""
        import torch

        with self._lock:
            tokenizer, model = self._load()
            inputs = _apply_template(tokenizer, messages).to(model.device)
            prompt_len = inputs["input_ids"].shape[1]
            with torch.no_grad():
                output = model.generate(
                    **inputs,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                )
            text: str = tokenizer.decode(output[0, prompt_len:], skip_special_tokens=True)
            return text.strip()


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
