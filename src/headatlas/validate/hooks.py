"""Forward hooks on a Hugging Face ``*ForCausalLM``, placed by the architecture adapter.

The modules are found through the same :class:`~headatlas.arch.ArchSpec` paths the weights are
read from, so no family is special-cased here:

- the output projection (``spec.o_proj``: ``o_proj``, ``dense``, GPT-2's Conv1D ``c_proj``)
  receives z, the heads' attention-weighted values concatenated head-major,
  ``[B, T, n_heads * d_head]``. A forward *pre*-hook reads it (per-head outputs are
  ``z_h · W_O^h``) and may edit it: zero a head's slice (ablation) or overwrite it with the
  head's value vector at the source position ("without context").
- the value projection (``spec.v_proj``; fused ``c_attn`` / ``query_key_value`` sliced per
  ``spec.qkv_layout``) gives every KV head's value vectors ``[B, T, n_kv, d_head]``.
- the pre-attention norm (``spec.attn_norm``) gives the attention input.

Edits and reads happen at one position per row (the last real token, ``read_pos``), so
right-padded batches need no position bookkeeping. Gemma 2/3 pass the attention output through
``post_attention_layernorm`` before the residual add; a head's output read here is *before* that
norm, and readers must apply ``LayerOV.out_gain`` (as the static map does) to see it as the
residual stream does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from headatlas.arch import ArchConfig, ArchSpec
from headatlas.errors import ValidationInputError


@dataclass
class HookedRun:
    """What one hooked forward pass recorded. Lists are per layer; ``B`` rows of the batch.

    Attributes:
        logits: Next-token logits at each row's read position, [B, V].
        z: Output-projection input at the read position (after any edit), [B, n_heads, d_head].
        attn_out: Output-projection output at the read position, [B, d] (before Gemma 2/3's
            post-attention norm).
        values: Every KV head's value vector at the source position, [B, n_kv, d_head].
        attn_in: Attention input (pre-attention norm output) at the source position, [B, d].
    """

    logits: torch.Tensor
    z: list[torch.Tensor] = field(default_factory=list)
    attn_out: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    attn_in: list[torch.Tensor] = field(default_factory=list)


_HOST = torch.device("cpu")


def _rows(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] at one position per row -> [B, ...]."""
    return x[torch.arange(x.shape[0], device=x.device), pos.to(x.device)]


class AttentionHooks:
    """Hooks on every layer's attention of one model; use :meth:`run` for a hooked pass."""

    def __init__(self, model: torch.nn.Module, spec: ArchSpec, cfg: ArchConfig):
        self.model = model
        self.spec = spec
        self.cfg = cfg
        self.layers = _find_layers(model, spec, cfg.n_layers)

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live (inputs are moved there, records come back to
        the CPU)."""
        return next(self.model.parameters()).device

    @property
    def supports_prefix_cache(self) -> bool:
        """Whether :meth:`prefix` / :meth:`run_last` give the same logits as a whole pass
        (not with sliding-window attention, whose window counts cache slots)."""
        config = getattr(self.model, "config", None)
        window = getattr(config, "sliding_window", None)
        return not (window and getattr(config, "use_sliding_window", True))

    # ---- module lookup -----------------------------------------------------------------------
    def _attn_child(self, layer: int, rel: str) -> torch.nn.Module:
        return self.layers[layer].get_submodule(f"{self.spec.attn}.{rel}")

    def o_proj(self, layer: int) -> torch.nn.Module:
        """The output projection of a layer's attention."""
        return self._attn_child(layer, self.spec.o_proj)

    def v_proj(self, layer: int) -> torch.nn.Module:
        """The (possibly fused) value projection of a layer's attention."""
        return self._attn_child(layer, self.spec.v_proj)

    def attn_norm(self, layer: int) -> torch.nn.Module:
        """The pre-attention norm of a layer."""
        return self.layers[layer].get_submodule(self.spec.attn_norm)

    def split_values(self, out: torch.Tensor) -> torch.Tensor:
        """Value-projection output [B, T, *] -> value vectors [B, T, n_kv, d_head]."""
        c = self.cfg
        B, T = out.shape[0], out.shape[1]
        if self.spec.qkv_layout == "gpt2_fused":  # q | k | v, heads contiguous in each
            return out[..., 2 * c.n_heads * c.d_head :].reshape(B, T, c.n_heads, c.d_head)
        if self.spec.qkv_layout == "neox_fused":  # per head (q, k, v)
            return out.reshape(B, T, c.n_heads, 3 * c.d_head)[..., 2 * c.d_head :]
        return out.reshape(B, T, c.n_kv_heads, c.d_head)

    # ---- the hooked pass ---------------------------------------------------------------------
    @torch.no_grad()
    def run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        read_pos: torch.Tensor,
        source_pos: torch.Tensor | None = None,
        *,
        capture: bool = True,
        zero: Mapping[int, Sequence[int]] | None = None,
        from_value: Mapping[int, Sequence[int]] | None = None,
    ) -> HookedRun:
        """One forward pass of a right-padded batch with hooks in place.

        ``read_pos`` [B]: each row's last real position (where logits, z and head outputs are
        read and edits happen); ``source_pos`` [B]: the source token's position (where values
        and attention inputs are captured, and values for ``from_value`` are taken).
        ``zero``: layer -> heads whose z is set to 0 at the read position (ablation).
        ``from_value``: layer -> heads whose z at the read position is replaced by their KV
        group's value vector at the source position (the head attends to the source only).
        """
        if from_value and source_pos is None:
            raise ValidationInputError("from_value edits need source positions")

        def forward() -> torch.Tensor:
            return self._last_logits(input_ids, attention_mask, read_pos)

        return self._hooked(forward, read_pos, source_pos, capture, zero or {}, from_value or {})

    @torch.no_grad()
    def prefix(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, read_pos: torch.Tensor
    ) -> Prefix:
        """Run every token but each row's last once, keeping the key/value cache, so that
        edits at the last position (:meth:`run_last`) cost one token per row."""
        B = input_ids.shape[0]
        if not self.supports_prefix_cache:
            raise ValidationInputError(
                "a prefix cache is not exact with sliding-window attention: use run()"
            )
        if int(read_pos.min()) < 1:
            raise ValidationInputError("prompts need at least two tokens to cache a prefix")
        keep = attention_mask.clone()
        keep[torch.arange(B), read_pos] = 0  # each row's last token waits for run_last
        width = max(1, int(read_pos.max()))
        dev = self.device
        out = self.model(
            input_ids=input_ids[:, :width].to(dev),
            attention_mask=keep[:, :width].to(dev),
            use_cache=True,
            logits_to_keep=1,
        )
        return Prefix(
            cache=out.past_key_values,
            attention_mask=keep[:, :width],
            last_ids=input_ids[torch.arange(B), read_pos][:, None],
            positions=read_pos[:, None].clone(),
        )

    @torch.no_grad()
    def run_last(
        self, prefix: Prefix, zero: Mapping[int, Sequence[int]] | None = None
    ) -> torch.Tensor:
        """Next-token logits [B, V] at the last position after :meth:`prefix`, with ``zero``
        heads' z zeroed there; the prefix cache is left as it was."""
        B = prefix.last_ids.shape[0]
        at = torch.zeros(B, dtype=torch.long)  # the single position of this pass

        def forward() -> torch.Tensor:
            mask = torch.cat([prefix.attention_mask, torch.ones(B, 1, dtype=torch.long)], 1)
            croppable = bool(getattr(prefix.cache, "is_croppable", False))
            cache = prefix.cache if croppable else copy.deepcopy(prefix.cache)
            try:
                out = self.model(
                    input_ids=prefix.last_ids.to(self.device),
                    attention_mask=mask.to(self.device),
                    position_ids=prefix.positions.to(self.device),
                    past_key_values=cache,
                    use_cache=True,
                )
            finally:
                if croppable:
                    prefix.cache.crop(-1)  # drop the last token's keys and values again
            return out.logits[:, -1].float().to(_HOST)

        return self._hooked(forward, at, None, False, zero or {}, {}).logits

    def _hooked(
        self,
        forward: Callable[[], torch.Tensor],
        read_pos: torch.Tensor,
        source_pos: torch.Tensor | None,
        capture: bool,
        zero: Mapping[int, Sequence[int]],
        from_value: Mapping[int, Sequence[int]],
    ) -> HookedRun:
        c = self.cfg
        rec = HookedRun(logits=torch.empty(0))
        handles: list[Any] = []
        live_values: dict[int, torch.Tensor] = {}  # this pass's source values, per layer

        def on_values(layer: int) -> Any:
            def hook(_m: Any, _args: Any, out: Any) -> None:
                assert source_pos is not None
                v = _rows(self.split_values(out[0] if isinstance(out, tuple) else out), source_pos)
                live_values[layer] = v
                if capture:
                    rec.values.append(v.detach().to(_HOST, copy=True))

            return hook

        def on_norm(_m: Any, _args: Any, out: Any) -> None:
            assert source_pos is not None
            rec.attn_in.append(
                _rows(out[0] if isinstance(out, tuple) else out, source_pos).to(_HOST, copy=True)
            )

        def on_z(layer: int) -> Any:
            def pre_hook(_m: Any, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
                edit_zero = list(zero.get(layer, ()))
                edit_value = list(from_value.get(layer, ()))
                z_all = args[0]
                if edit_zero or edit_value:
                    z_all = z_all.clone()
                    rows = torch.arange(z_all.shape[0], device=z_all.device)
                    pos = read_pos.to(z_all.device)
                    heads = z_all.view(*z_all.shape[:-1], c.n_heads, c.d_head)
                    for h in edit_zero:
                        heads[rows, pos, h] = 0.0
                    for h in edit_value:
                        heads[rows, pos, h] = live_values[layer][:, h // c.group_size]
                if capture:
                    z_last = _rows(z_all, read_pos).reshape(-1, c.n_heads, c.d_head)
                    rec.z.append(z_last.detach().to(_HOST, copy=True))
                return (z_all, *args[1:]) if z_all is not args[0] else None

            return pre_hook

        def on_out(_m: Any, _args: Any, out: Any) -> None:
            rec.attn_out.append(_rows(out, read_pos).detach().to(_HOST, copy=True))

        try:
            for i in range(c.n_layers):
                if source_pos is not None and (capture or i in from_value):
                    handles.append(self.v_proj(i).register_forward_hook(on_values(i)))
                    if capture:
                        handles.append(self.attn_norm(i).register_forward_hook(on_norm))
                if capture or i in zero or i in from_value:
                    handles.append(self.o_proj(i).register_forward_pre_hook(on_z(i)))
                if capture:
                    handles.append(self.o_proj(i).register_forward_hook(on_out))
            rec.logits = forward()
        finally:
            for h in handles:
                h.remove()
        return rec

    def _last_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, read_pos: torch.Tensor
    ) -> torch.Tensor:
        """Logits [B, V] at each row's read position, computing the head only where needed."""
        keep, inverse = torch.unique(read_pos, return_inverse=True)
        dev = self.device
        out = self.model(
            input_ids=input_ids.to(dev),
            attention_mask=attention_mask.to(dev),
            logits_to_keep=keep.to(dev),
        )
        logits = out.logits  # [B, len(keep), V]
        return logits[torch.arange(logits.shape[0]), inverse.to(logits.device)].float().to(_HOST)


@dataclass
class Prefix:
    """A batch's key/value cache up to (not including) each row's last token."""

    cache: Any
    attention_mask: torch.Tensor  # [B, W]: real prefix tokens
    last_ids: torch.Tensor  # [B, 1]
    positions: torch.Tensor  # [B, 1]: the last token's position in its row

    def nbytes(self) -> int:
        """Memory held by the cached keys and values."""
        total = 0
        for layer in getattr(self.cache, "layers", []):
            for name in ("keys", "values"):
                t = getattr(layer, name, None)
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total


def _find_layers(model: torch.nn.Module, spec: ArchSpec, n_layers: int) -> torch.nn.ModuleList:
    """The layer list at ``spec.layers``, or (wrapped models) the one module ending like it."""
    try:
        found = model.get_submodule(spec.layers)
    except AttributeError:
        tail = spec.layers.split(".")[-1]
        matches = [
            m
            for name, m in model.named_modules()
            if name.endswith(f".{tail}")
            and isinstance(m, torch.nn.ModuleList)
            and len(m) == n_layers
        ]
        if len(matches) != 1:
            raise ValidationInputError(
                f"cannot find the layer list '{spec.layers}' of this {spec.family} model; pass "
                "the *ForCausalLM model that the weights come from"
            ) from None
        found = matches[0]
    if not isinstance(found, torch.nn.ModuleList) or len(found) != n_layers:
        raise ValidationInputError(
            f"'{spec.layers}' is not a list of {n_layers} layers in this model; the model and "
            "the weights the map was computed from do not belong together"
        )
    return found


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model in eval mode for the duration (restored afterwards)."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)
