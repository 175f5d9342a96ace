"""The recipe: how a head is read, in one place.

A recipe says how a head's input x̃ is formed for each layer and how its output reaches the
vocabulary:

    x̃_s  = the source embedding of the layer (``embedding`` mode, below)
    z    = norm1_l(x̃_s) · W_V + b_V          (``pre_norm``, ``value_bias``)
    y    = z · W_O · γ_post  + b_O · γ_post    (``output_gain``: Gemma 2/3; ``output_bias``)
    row  = final_norm(y) · W_U + b_U          (``final_norm``, ``unembed_bias``)

Embedding modes (layers >= 1; layer 0 reads the token embedding unless ``embedding_layer0``):

- ``mlp0``: MLP0(norm2_0(x)) of block 0, the MAPS paper's "effective embedding";
- ``none``: the token embedding x itself (times Gemma's √d);
- ``residual``: x + MLP0(norm2_0(x)), the residual stream after block 0's MLP without attention;
- ``forward``: each layer's real input residual stream for the token alone after the model's
  start token, ``[BOS, s]``, read at ``s`` from one batched forward pass over every source
  token. A model whose tokenizer has no start token runs ``[s]`` alone (its first position
  then attends only to itself, as every first token does); ``MapOptions.start_token`` names
  the prefix instead, and the map records and prints the choice.
- ``context``: each layer's real input residual stream at ``s`` placed after short neutral
  contexts, ``[BOS, *c, s]`` for every context ``c`` of ``contexts`` (never a relation
  template), averaged over the contexts: the source read at a later position than the first
  after BOS, which many models treat as an attention sink.

:class:`Recipe` holds the switches and :class:`SourceInputs` forms x̃; :meth:`Recipe.bind` gives
the :class:`~headatlas.scoring.readout.Readout` (the folded unembedding, the logit bias, each
layer's factored heads) through which the static map, the salient operations, the dynamic
readout and calibrate read heads.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from headatlas.circuits import ModelCircuits
from headatlas.errors import OptionError
from headatlas.progress import track
from headatlas.scoring.readout import Readout

EMBEDDINGS = ("mlp0", "none", "residual", "forward", "context")
"""Source-embedding modes, in the order ``calibrate`` tries them."""

DEFAULT_CONTEXTS: tuple[str, ...] = (
    "The",
    "I saw",
    "Here is a",
    "\n",
    "She said",
    "We talked about",
)
"""The ``context`` mode's neutral prefixes when none are given."""

_FORWARD_BATCH = 256


@dataclass(frozen=True)
class Recipe:
    """How a head's input is formed and its output read out (see the module docstring). The
    one place these switches are declared: ``MapOptions.recipe`` holds one, and the command
    line's recipe switches are built from these fields."""

    embedding: str = field(default="mlp0", metadata={"choices": EMBEDDINGS})
    """Source embedding of layers >= 1: mlp0 = MLP0(norm(x)) (the paper's), none = the token
    embedding, residual = x + MLP0(norm(x)), forward = each layer's input residual stream at s
    of a ``[BOS, s]`` forward pass, context = the same at s of ``[BOS, *c, s]`` averaged over
    short neutral contexts c (see :mod:`headatlas.scoring.recipe`)."""
    embedding_layer0: bool = field(default=False, metadata={"cli": "--effective-embedding-layer0"})
    """Layer 0 reads the same source embedding too (else the token embedding)."""
    pre_norm: bool = True
    """Apply each layer's pre-attention norm to the source embedding before W_V."""
    value_bias: bool = True
    """Add b_V (a head's own value bias) to its value vectors."""
    output_gain: bool = True
    """Multiply a head's output by the post-attention norm's gain (Gemma 2/3; no-op elsewhere)."""
    output_bias: bool = False
    """Add the layer's shared b_O to every head's output (off: b_O belongs to no head)."""
    final_norm: bool = True
    """Read out through the final norm: its gain (and LayerNorm's centering) folded into W_U.
    The norm's 1/scale factor is a positive per-row scalar and does not change top-k."""
    unembed_bias: bool = False
    """Add the output head's bias (Phi) to the logits."""
    contexts: tuple[str, ...] = field(default=(), metadata={"metavar": "TEXT"})
    """The context mode's neutral prefixes (never relation templates); none given: the six of
    :data:`DEFAULT_CONTEXTS` ("The", "I saw", "Here is a", a newline, "She said", "We talked
    about"). Other modes keep none."""

    def __post_init__(self) -> None:
        """Refuse unknown modes and non-boolean switches; keep contexts only for ``context``."""
        if self.embedding not in EMBEDDINGS:
            raise OptionError(
                f"embedding mode '{self.embedding}' is unknown (--embedding): use one of "
                f"{', '.join(EMBEDDINGS)}"
            )
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type in (bool, "bool") and not isinstance(value, bool):
                raise OptionError(f"option {f.name} must be True or False, got {value!r}")
        contexts = self.contexts
        if isinstance(contexts, str) or not all(isinstance(c, str) for c in contexts):
            raise OptionError(
                f"contexts must be a list of strings (prefixes such as 'The'), got {contexts!r}"
            )
        # Only the context mode reads them: other modes keep none, so recipes that read heads
        # alike compare (and hash) equal whatever contexts they were given.
        if self.embedding != "context":
            contexts = ()
        elif not contexts:
            contexts = DEFAULT_CONTEXTS
        object.__setattr__(self, "contexts", tuple(contexts))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """The recipe a record of :meth:`as_dict` or :meth:`record` describes (its ``label``
        and any key this version does not know are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        if "contexts" in values and isinstance(values["contexts"], list):
            values["contexts"] = tuple(values["contexts"])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """The switches as a plain dict."""
        return dataclasses.asdict(self)

    def record(self) -> dict[str, Any]:
        """The switches and their :meth:`label`, as the manifest records the recipe."""
        return {**self.as_dict(), "label": self.label()}

    def key_fields(self) -> dict[str, Any]:
        """The switches as a plain dict for cache keys; ``contexts`` only where there are some
        (keys of the modes without contexts stay as they were before the context mode)."""
        d = dataclasses.asdict(self)
        if not self.contexts:
            d.pop("contexts")
        return d

    def replace(self, **changes: Any) -> Recipe:
        """A copy with some switches changed."""
        return dataclasses.replace(self, **changes)

    def label(self) -> str:
        """Short name for figure titles and tables, e.g. ``mlp0 +pre-norm +final-norm +b_V``."""
        mode = self.embedding + (f"×{len(self.contexts)}" if self.contexts else "")
        parts = [mode + ("(L0 too)" if self.embedding_layer0 else "")]
        for name, on in (
            ("pre-norm", self.pre_norm),
            ("b_V", self.value_bias),
            ("γ_post", self.output_gain),
            ("b_O", self.output_bias),
            ("final-norm", self.final_norm),
            ("b_U", self.unembed_bias),
        ):
            if on:
                parts.append("+" + name)
        if len(parts) == 1:
            parts.append("(no norm, no bias)")
        return " ".join(parts)

    def mode_of(self, layer: int) -> str:
        """The embedding mode one layer reads ("none" for layer 0 unless embedding_layer0)."""
        return self.embedding if (layer > 0 or self.embedding_layer0) else "none"

    def bind(
        self,
        circuits: ModelCircuits,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> Readout:
        """The tensors this recipe needs from one model, on ``device`` in ``dtype``."""
        fold = torch.float64 if dtype == torch.float64 else torch.float32
        return Readout(self, circuits, fold).to(device, dtype)


# The MAPS authors' switches: M = x̃ · W_V W_O · W_U, x̃ = MLP0(W_E) for layers >= 1, no norm
# and no bias anywhere; k by vocabulary size.
PRESETS: dict[str, Recipe] = {
    "maps": Recipe(
        embedding="mlp0",
        pre_norm=False,
        value_bias=False,
        output_gain=False,
        output_bias=False,
        final_norm=False,
        unembed_bias=False,
    ),
    "default": Recipe(),
}
"""Named recipes: ``maps`` (the paper's exact formula) and ``default`` (this project's)."""


class SourceInputs:
    """x̃ of a fixed list of source tokens for every layer, formed by a recipe.

    ``mlp0``, ``none`` and ``residual`` need only block 0's MLP; ``forward`` runs the model
    once over ``[BOS, s]`` for every source (in batches) and keeps each layer's input at ``s``,
    [n_layers, n, d] float32 on the CPU: n·L·d·4 bytes, the model itself loaded by
    ``transformers``; ``context`` runs it once per context over ``[BOS, *c, s]`` and keeps the
    mean over contexts.
    """

    def __init__(
        self,
        recipe: Recipe,
        circuits: ModelCircuits,
        ids: torch.Tensor,
        hf_model: Any = None,
        start: int | str | None = "auto",
        progress: bool = False,
    ):
        self.recipe = recipe
        self.circuits = circuits
        self.ids = ids
        x = circuits.embed_rows(ids)  # only these rows of W_E are read into memory
        self._by_mode: dict[str, torch.Tensor] = {"none": x}
        if recipe.embedding in ("mlp0", "residual"):  # block 0's MLP is not kept after this
            self._by_mode[recipe.embedding] = embedding_of(circuits, x, recipe.embedding, False)
        self._forward: torch.Tensor | None = None
        self.start: int | None = None
        """The start token the ``forward`` mode put before each source (None: none)."""
        if recipe.embedding == "forward":
            self.start = resolve_start(circuits, start)
            self._forward = forward_inputs(circuits, ids, hf_model, self.start, progress)
        if recipe.embedding == "context":
            self.start = resolve_start(circuits, start)
            prefixes = context_ids(circuits.tokenizer, recipe.contexts)
            self._forward = context_inputs(circuits, ids, prefixes, hf_model, self.start, progress)

    def digest(self) -> str:
        """Content hash of inputs that weights alone do not fix: the per-layer inputs of the
        ``forward`` and ``context`` modes depend on every earlier layer (attention and MLP),
        so a stored map is reused only when they are equal; "" for the weights-only modes."""
        if self._forward is None:
            return ""
        data = self._forward.contiguous().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()[:16]

    def layer(self, index: int) -> torch.Tensor:
        """x̃ [n, d] for layer ``index``."""
        mode = self.recipe.mode_of(index)
        if mode in ("forward", "context"):
            assert self._forward is not None
            return self._forward[index]
        return self._by_mode[mode]


def embedding_of(
    circuits: ModelCircuits, x: torch.Tensor, mode: str, keep: bool = True
) -> torch.Tensor:
    """x̃ [n, d] of token embeddings ``x`` [n, d] under a weights-only mode (mlp0, none,
    residual); ``forward`` needs the tokens, see :func:`forward_inputs`. ``keep=False``: block
    0's MLP is read for this call only (unless already held)."""
    if mode == "none":
        return x
    if mode not in ("mlp0", "residual"):
        raise OptionError(f"embedding mode '{mode}' needs a forward pass, not weights alone")
    with torch.no_grad():
        e = circuits.effective_embedding(x, keep)
    return e if mode == "mlp0" else x + e


def start_token(tokenizer: Any) -> int | None:
    """The id a sequence starts with (the tokenizer's BOS), or None when it has none."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return None if bos is None else int(bos)


def resolve_start(circuits: ModelCircuits, start: int | str | None) -> int | None:
    """The start token id ``start`` names: "auto" = the tokenizer's BOS (None when it has
    none), None = none, else the id itself (checked against the vocabulary). "auto" reads the
    BOS from the weights' metadata when it is there (a GGUF file: no tokenizer built)."""
    bos: Any = start
    if start == "auto":
        known, bos = circuits.source.start_token_id()
        if not known:
            bos = start_token(circuits.tokenizer)
    if isinstance(bos, str):
        raise OptionError(f"start token {start!r} is not valid: use auto, none or a token id")
    if bos is not None and not 0 <= int(bos) < circuits.cfg.vocab_size:
        raise OptionError(
            f"start token {bos} is outside the model's vocabulary of {circuits.cfg.vocab_size}: "
            "give a start token the model knows (--start-token ID or none)"
        )
    return None if bos is None else int(bos)


def forward_inputs(
    circuits: ModelCircuits,
    ids: torch.Tensor,
    hf_model: Any = None,
    start: int | str | None = "auto",
    progress: bool = False,
) -> torch.Tensor:
    """Each layer's input residual stream at token s of ``[start, s]`` for every id in ``ids``:
    [n_layers, n, d] float32 on the CPU (Hugging Face's ``hidden_states[l]`` at the last
    position). ``start``: "auto" = the tokenizer's BOS; None (or a tokenizer without BOS):
    ``[s]`` alone. ``hf_model``: the ``transformers`` model (loaded from the circuits' source
    when None). ``progress``: a bar (or log lines) over the batches."""
    # [start, s] is the context mode's sequence with one empty context (x + 0 and x / 1: equal)
    return context_inputs(circuits, ids, [[]], hf_model, start, progress, "forward")


def context_ids(tokenizer: Any, contexts: tuple[str, ...]) -> list[list[int]]:
    """The ``context`` mode's prefixes as token ids (no special tokens; "" gives ``[]``, the
    ``forward`` mode's sequence)."""
    if tokenizer is None:
        raise OptionError(
            "the context embedding mode tokenises its contexts with the model's tokenizer, and "
            "this model has none: load it with its tokenizer or choose another --embedding"
        )
    return [list(tokenizer.encode(c, add_special_tokens=False)) for c in contexts]


def context_inputs(
    circuits: ModelCircuits,
    ids: torch.Tensor,
    prefixes: list[list[int]],
    hf_model: Any = None,
    start: int | str | None = "auto",
    progress: bool = False,
    mode: str = "context",
) -> torch.Tensor:
    """Each layer's input residual stream at token s of ``[start, *p, s]``, averaged over the
    token-id prefixes ``p`` of ``prefixes``, for every id in ``ids``: [n_layers, n, d] float32
    on the CPU, (1/C)·Σ_p hidden_states[l] at the last position. ``start`` and ``hf_model`` as
    in :func:`forward_inputs`."""
    if not prefixes:
        raise OptionError("the context embedding mode needs at least one context")
    V = circuits.cfg.vocab_size
    for p in prefixes:
        if any(not 0 <= int(t) < V for t in p):
            raise OptionError(
                f"a context tokenises to ids outside the model's vocabulary of {V} ({p}): "
                "give contexts the model's tokenizer encodes"
            )
    hf_model = _inference_model(circuits, hf_model)
    # The body alone (no LM head): its hidden states are the same tensors, and the logits over
    # the vocabulary, which nothing here reads, were most of the work (Gemma 3: V = 262144).
    body = getattr(hf_model, "base_model", None) or hf_model
    bos = resolve_start(circuits, start)
    L = circuits.cfg.n_layers
    try:
        device = next(hf_model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    out = torch.zeros(L, len(ids), circuits.cfg.d_model)
    was_training = hf_model.training
    hf_model.eval()
    try:
        with torch.no_grad():
            jobs = [(p, lo) for p in prefixes for lo in range(0, len(ids), _FORWARD_BATCH)]
            desc = f"{mode} recipe: inputs of every layer"
            for p, lo in track(jobs, len(jobs), desc, unit="batch", enabled=progress):
                head = ([] if bos is None else [int(bos)]) + [int(t) for t in p]
                chunk = ids[lo : lo + _FORWARD_BATCH].to(torch.int64)
                prefix = torch.tensor(head, dtype=torch.int64).expand(len(chunk), -1)
                inp = torch.cat([prefix, chunk[:, None]], 1).to(device)
                res = body(input_ids=inp, output_hidden_states=True, use_cache=False)
                hs = res.hidden_states
                for layer in range(L):
                    out[layer, lo : lo + len(chunk)] += hs[layer][:, -1].float().cpu()
    finally:
        hf_model.train(was_training)
    return out / len(prefixes)


def _inference_model(circuits: ModelCircuits, hf_model: Any) -> Any:
    """``hf_model``, else the model the circuits were read from, else one loaded from their
    source by ``transformers``."""
    if hf_model is not None:
        return hf_model
    held = getattr(circuits.source, "model", None)
    if isinstance(held, torch.nn.Module):
        return held
    from headatlas.weights.transformers_model import load_hf_model

    return load_hf_model(circuits.source.name)
