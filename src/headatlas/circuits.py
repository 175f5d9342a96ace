"""The uniform circuit view every later step uses, read from weights alone.

For any supported checkpoint: token embeddings W_E [V, d], unembedding W_U [d, V] with the
final norm described, and per layer and query head the OV factors W_V [d, d_head] (through the
head's KV group), W_O [d_head, d], biases b_V, b_O, the pre-attention norm, and (Gemma 2/3) the
norm between the attention output and the residual stream. Also the "effective embedding"
MLP0(norm2_0(x)) of block 0. OV stays factored: no d x d or V x V matrix is formed.

Layers are read on demand (:meth:`ModelCircuits.layer`), so a pass over every head holds the
embeddings plus about one layer's value and output weights.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from headatlas.arch import ArchConfig, ArchSpec, resolve_config, spec_for
from headatlas.arch.activations import activation
from headatlas.arch.config import text_config
from headatlas.errors import ShapeMismatchError, WeightSourceError
from headatlas.weights import ModelSpec, WeightSource, open_source

ROW_BLOCK_BYTES = 64 * 2**20
"""Float32 bytes per block when a vocabulary-sized matrix is streamed (:meth:`ModelCircuits.embed_rows`,
:meth:`ModelCircuits.unembedding_blocks`)."""


def tensor_digest(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes."""
    flat = t.detach().contiguous().reshape(-1).view(torch.uint8)
    h = hashlib.sha256(f"{t.dtype}:{list(t.shape)}:".encode())
    h.update(flat.numpy().data)
    return h.hexdigest()[:32]


@dataclass
class Norm:
    """A LayerNorm or RMSNorm with its parameters; ``gain`` is the effective scale
    (Gemma's ``1 + w`` already applied)."""

    kind: str
    gain: torch.Tensor | None  # [d]
    bias: torch.Tensor | None  # [d]
    eps: float
    plus_one: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the norm over the last dimension (computed in float32 like Hugging Face)."""
        dtype = x.dtype
        xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        if self.kind == "layernorm":
            w = None if self.gain is None else self.gain.to(xf)
            b = None if self.bias is None else self.bias.to(xf)
            return F.layer_norm(xf, (xf.shape[-1],), w, b, self.eps).to(dtype)
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.gain is not None:
            out = out * self.gain.to(out)
        return out.to(dtype)

    def scale(self, d: int, like: torch.Tensor | None = None) -> torch.Tensor:
        """The gain as a vector (ones when the norm has none), on ``like``'s device and dtype
        when given."""
        s = self.gain if self.gain is not None else torch.ones(d)
        return s if like is None else s.to(like)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Norm:
        """A copy with the parameters on ``device`` (and in ``dtype``)."""
        return Norm(self.kind, _move(self.gain, device, dtype), _move(self.bias, device, dtype),
                    self.eps, self.plus_one)  # fmt: skip


@dataclass
class MLP:
    """Block MLP with weights in Linear layout [out, in]."""

    up_w: torch.Tensor
    up_b: torch.Tensor | None
    down_w: torch.Tensor
    down_b: torch.Tensor | None
    gate_w: torch.Tensor | None
    gate_b: torch.Tensor | None
    act: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``down(act(gate(x)) * up(x))`` when gated, else ``down(act(up(x)))``."""
        up = F.linear(x, self.up_w.to(x), _opt(self.up_b, x))
        if self.gate_w is not None:
            hidden = self.act(F.linear(x, self.gate_w.to(x), _opt(self.gate_b, x))) * up
        else:
            hidden = self.act(up)
        return F.linear(hidden, self.down_w.to(x), _opt(self.down_b, x))

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> MLP:
        """A copy with the weights on ``device`` (and in ``dtype``)."""
        m = lambda t: _move(t, device, dtype)  # noqa: E731
        up, down = self.up_w.to(device, dtype), self.down_w.to(device, dtype)
        return MLP(up, m(self.up_b), down, m(self.down_b), m(self.gate_w), m(self.gate_b),
                   self.act)  # fmt: skip


def _opt(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.to(like)


def _move(
    t: torch.Tensor | None, device: torch.device | str, dtype: torch.dtype | None
) -> torch.Tensor | None:
    return None if t is None else t.to(device=device, dtype=dtype)


@dataclass
class LayerOV:
    """One layer's OV factors. Query head h reads KV group ``h // group_size``."""

    layer: int
    W_V: torch.Tensor  # [n_kv, d, d_head]
    b_V: torch.Tensor | None  # [n_kv, d_head]
    W_O: torch.Tensor  # [n_heads, d_head, d]
    b_O: torch.Tensor | None  # [d]
    attn_norm: Norm
    out_norm: Norm | None
    """Gemma 2/3: the attention output passes this norm before the residual add."""
    group_size: int
    digest: str = ""
    """Hash of the content of every tensor read to build this layer (see
    :meth:`ModelCircuits.layer`): equal digests mean equal OV circuits."""

    @property
    def n_heads(self) -> int:
        """Query heads."""
        return int(self.W_O.shape[0])

    def kv_group(self, head: int) -> int:
        """The KV head a query head reads."""
        return head // self.group_size

    def head_W_V(self, head: int) -> torch.Tensor:
        """W_V of a query head, [d, d_head]."""
        return self.W_V[self.kv_group(head)]

    def head_b_V(self, head: int) -> torch.Tensor | None:
        """b_V of a query head, [d_head]."""
        return None if self.b_V is None else self.b_V[self.kv_group(head)]

    def out_gain(self, d: int) -> torch.Tensor:
        """Per-dimension gain between a head's output and the residual stream ([d], ones if none).

        A post-attention RMSNorm scales a row by gain / rms(row); the 1/rms factor is a positive
        per-row scalar that leaves top-k unchanged, so only the gain enters the circuit.
        """
        if self.out_norm is not None:
            return self.out_norm.scale(d, self.W_O)
        return torch.ones(d, device=self.W_O.device, dtype=self.W_O.dtype)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> LayerOV:
        """A copy with every factor and norm on ``device`` (and in ``dtype``): one call moves
        the layer."""
        return LayerOV(
            layer=self.layer,
            W_V=self.W_V.to(device=device, dtype=dtype),
            b_V=_move(self.b_V, device, dtype),
            W_O=self.W_O.to(device=device, dtype=dtype),
            b_O=_move(self.b_O, device, dtype),
            attn_norm=self.attn_norm.to(device, dtype),
            out_norm=None if self.out_norm is None else self.out_norm.to(device, dtype),
            group_size=self.group_size,
            digest=self.digest,
        )


class ModelCircuits:
    """Weights-only view of a model's attention heads. Build with :meth:`load`."""

    def __init__(self, source: WeightSource):
        self.source = source
        raw = source.config()
        self.raw_config = text_config(raw)
        self.spec: ArchSpec = spec_for(str(self.raw_config.get("model_type")))
        self.cfg: ArchConfig = resolve_config(self.spec, raw)
        self._W_E: torch.Tensor | None = None
        self._W_U: torch.Tensor | None = None
        self._mlp0: tuple[Norm, MLP, Norm | None] | None = None
        self._tokenizer: Any = None
        self._digests: dict[str, str] = {}
        self._embed_name: str | None = None
        self._unembed_stored: str | None = None
        self._reading: list[str] | None = None
        self._layer_names: set[str] = set()

    @classmethod
    def load(cls, model: ModelSpec, **kwargs: Any) -> ModelCircuits:
        """Open a model (packaged name, path, .gguf, hub id, or transformers model)."""
        return cls(open_source(model, **kwargs))

    # ---- reading -------------------------------------------------------------------------
    def _name(self, module: str, kind: str, required: bool = True) -> str | None:
        name = self.source.resolve(f"{module}.{kind}")
        if name is None and required:
            raise WeightSourceError(
                f"{self.source.name}: tensor {module}.{kind} not found; the checkpoint does not "
                f"match the {self.spec.family} layout its config declares"
            )
        return name

    def read(self, name: str) -> torch.Tensor:
        """Read one stored tensor and hash its content on the way (no second pass): the
        fingerprints of results are made of these hashes."""
        t = self.source.read(name)
        self._digests[name] = tensor_digest(t)
        if self._reading is not None:
            self._reading.append(name)
        return t

    def tensor(
        self, module: str, kind: str = "weight", required: bool = True
    ) -> torch.Tensor | None:
        """Read ``module.kind`` as float32 (None when optional and absent)."""
        name = self._name(module, kind, required)
        return None if name is None else self.read(name).float()

    def weights_fingerprint(self, layer_digests: list[str]) -> str:
        """The model's fingerprint in manifests: config, embedding, unembedding and every
        layer's OV tensors, by content (two passes over all layers agree whatever else their
        options made them read)."""
        names = [n for n in (self._embed_name, self._unembed_stored) if n is not None]
        return hashlib.sha256(
            json.dumps([self.content_fingerprint(names), layer_digests]).encode()
        ).hexdigest()[:16]

    def content_fingerprint(self, names: list[str] | None = None) -> str:
        """Hash of the config and of the content of ``names``; by default of every tensor read
        so far outside :meth:`layer` (embeddings, unembedding, norms, block-0 MLP: what every
        layer's readout shares)."""
        h = hashlib.sha256(json.dumps(self.raw_config, sort_keys=True, default=str).encode())
        if names is None:
            names = [n for n in self._digests if n not in self._layer_names]
        for name in sorted(names):
            h.update(f"{name}:{self._digests[name]};".encode())
        return h.hexdigest()[:16]

    def _need(self, module: str, kind: str = "weight") -> torch.Tensor:
        t = self.tensor(module, kind, required=True)
        assert t is not None
        return t

    def _check(self, name: str, t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if tuple(t.shape) != shape:
            raise ShapeMismatchError(
                f"{self.source.name}: {name} has shape {tuple(t.shape)} but the config implies "
                f"{shape}; the config and weights do not belong together"
            )
        return t

    def _linear(self, module: str, out_dim: int, in_dim: int) -> torch.Tensor:
        """A projection weight in Linear layout [out, in]."""
        w = self._need(module)
        if self.spec.conv1d:
            w = self._check(module, w, (in_dim, out_dim)).T.contiguous()
        return self._check(module, w, (out_dim, in_dim))

    def _part(
        self, module: str, kind: str, start: int, stop: int, rows: int | None = None
    ) -> torch.Tensor | None:
        """Output rows ``start:stop`` of a projection (weight in Linear layout [stop-start,
        rows], or bias), read without the rest of the tensor where the source allows.
        Conv1D checkpoints store the weight as [in, out], so the slice is on columns."""
        name = self._name(module, kind, required=kind == "weight")
        if name is None:
            return None
        dim = 1 if (kind == "weight" and self.spec.conv1d) else 0
        t = self.source.read_slice(name, dim, start, stop)
        part_name = f"{name}[{dim}:{start}:{stop}]"
        self._digests[part_name] = tensor_digest(t)
        if self._reading is not None:
            self._reading.append(part_name)
        t = t.float()
        if dim == 1:
            t = t.T.contiguous()
        if kind == "weight" and rows is not None:
            t = self._check(module, t, (stop - start, rows))
        return t

    def norm(self, module: str) -> Norm:
        """A norm layer by module path."""
        w = self.tensor(module, "weight", required=False)
        b = self.tensor(module, "bias", required=False)
        if w is not None and self.spec.norm.plus_one:
            w = 1.0 + w
        return Norm(self.spec.norm.kind, w, b, self.cfg.eps, self.spec.norm.plus_one)

    # ---- embeddings ------------------------------------------------------------------------
    @property
    def W_E(self) -> torch.Tensor:
        """Token embeddings [V, d] as stored (before any embedding scale)."""
        if self._W_E is None:
            self._embed_name = self._name(self.spec.embed, "weight")
            w = self._need(self.spec.embed)
            if w.shape[1] != self.cfg.d_model or w.shape[0] < self.cfg.vocab_size:
                self._check(self.spec.embed, w, (self.cfg.vocab_size, self.cfg.d_model))
            self._W_E = w
        return self._W_E

    @property
    def embed_scale(self) -> float | None:
        """Gemma's sqrt(d_model) embedding multiplier (None for other families)."""
        return self.cfg.d_model**0.5 if self.spec.embed_scale_sqrt_d else None

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Residual-stream input of tokens: W_E rows times the embedding scale. [n, d]"""
        return self._scaled(self.W_E[ids])

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        if self.embed_scale is not None:
            x = x * torch.tensor(self.embed_scale, dtype=x.dtype)
        return x

    def embed_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """:meth:`embed` of ``ids`` [n] without holding W_E: the stored embedding is streamed
        in blocks of rows (hashed as a whole, as a full read is) and only the rows asked for
        are kept. Equal to :meth:`embed` bit for bit. [n, d] float32"""
        if self._W_E is not None:
            return self.embed(ids)
        name = self._name(self.spec.embed, "weight")
        assert name is not None  # required
        self._embed_name = name
        shape, blocks = self._stream(name)
        self._check_embedding(shape)
        ids = ids.to(torch.int64)
        if ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < shape[0]:
            raise IndexError(f"token ids outside the embedding's {shape[0]} rows")
        out = torch.empty(int(ids.numel()), self.cfg.d_model)
        for start, block in blocks:
            sel = ((ids >= start) & (ids < start + block.shape[0])).nonzero().flatten()
            if sel.numel():
                out[sel] = block[ids[sel] - start].float()
        return self._scaled(out)

    def _check_embedding(self, shape: tuple[int, ...]) -> None:
        if len(shape) != 2 or shape[1] != self.cfg.d_model or shape[0] < self.cfg.vocab_size:
            raise ShapeMismatchError(
                f"{self.source.name}: {self.spec.embed} has shape {shape} but the config implies "
                f"{(self.cfg.vocab_size, self.cfg.d_model)}; the config and weights do not "
                "belong together"
            )

    def _stream(self, name: str) -> tuple[tuple[int, ...], Iterator[tuple[int, torch.Tensor]]]:
        """(shape, (first row, block) pairs) of a stored tensor read in blocks of about
        ``ROW_BLOCK_BYTES`` as float32; the content is hashed on the way (the digest equals
        :func:`tensor_digest` of the whole) once the blocks are exhausted."""
        rows = max(1, ROW_BLOCK_BYTES // (4 * self.cfg.d_model))
        shape, blocks = self.source.row_blocks(name, rows)

        def gen() -> Iterator[tuple[int, torch.Tensor]]:
            h: Any = None
            start = 0
            for block in blocks:
                if h is None:
                    h = hashlib.sha256(f"{block.dtype}:{list(shape)}:".encode())
                h.update(block.detach().contiguous().reshape(-1).view(torch.uint8).numpy().data)
                yield start, block
                start += int(block.shape[0])
            if h is not None:
                self._digests[name] = h.hexdigest()[:32]

        return shape, gen()

    @property
    def W_U(self) -> torch.Tensor:
        """Unembedding [d, V] (the transpose of the output head, or of W_E when tied)."""
        if self._W_U is None:
            module, name = self._unembed_name()
            if name is None and not self.cfg.tied:
                self._name(module, "weight", required=True)  # raises, naming the tensor
            self._unembed_stored = name
            w = self.W_E if name is None else self.read(name).float()
            if w.shape[1] != self.cfg.d_model:
                self._check(self.spec.unembed, w, (self.cfg.vocab_size, self.cfg.d_model))
            self._W_U = w.T
        return self._W_U

    def unembedding_blocks(self) -> tuple[int, Iterator[tuple[int, torch.Tensor]]]:
        """W_U's columns in blocks without holding W_U: (columns, iterator of (first column,
        block [m, d] float32)), each block the output head's rows (W_E's when tied), equal to
        ``W_U[:, first : first + m].T``. Hashed as a whole, as :attr:`W_U` is."""
        rows = max(1, ROW_BLOCK_BYTES // (4 * self.cfg.d_model))
        if self._W_U is not None:
            W = self._W_U
            n = int(W.shape[1])
            return n, ((i, W[:, i : i + rows].T) for i in range(0, n, rows))
        module, name = self._unembed_name()
        if name is None and not self.cfg.tied:
            self._name(module, "weight", required=True)  # raises, naming the tensor
        self._unembed_stored = name
        if name is None:  # tied: the embedding
            if self._W_E is not None:
                W = self._W_E
                n = int(W.shape[0])
                return n, ((i, W[i : i + rows]) for i in range(0, n, rows))
            name = self._name(self.spec.embed, "weight")
            assert name is not None
            self._embed_name = name
            shape, blocks = self._stream(name)
            self._check_embedding(shape)
        else:
            shape, blocks = self._stream(name)
            if len(shape) != 2 or shape[1] != self.cfg.d_model:
                raise ShapeMismatchError(
                    f"{self.source.name}: {self.spec.unembed} has shape {shape} but the config "
                    f"implies {(self.cfg.vocab_size, self.cfg.d_model)}; the config and weights "
                    "do not belong together"
                )
        return int(shape[0]), ((i, b.float()) for i, b in blocks)

    def _unembed_name(self) -> tuple[str, str | None]:
        """The output head's module path and stored weight name (None when absent: tied)."""
        for module in (self.spec.unembed, *self.spec.unembed_aliases):
            name = self._name(module, "weight", required=False)
            if name is not None:
                return module, name
        return self.spec.unembed, None

    def unembed_bias(self) -> torch.Tensor | None:
        """Output-head bias [V] (Phi), or None."""
        module, _ = self._unembed_name()
        return self.tensor(module, "bias", required=False)

    def final_norm(self) -> Norm:
        """The norm before the unembedding."""
        return self.norm(self.spec.final_norm)

    # ---- block 0 MLP ------------------------------------------------------------------------
    def mlp(self, layer: int) -> MLP:
        """The MLP of a layer (weights in Linear layout)."""
        m = self.spec.mlp
        path = lambda rel: self.spec.layer_path(layer, rel)  # noqa: E731
        up = self._need(path(m.up))
        down = self._need(path(m.down))
        if self.spec.conv1d:
            up, down = up.T.contiguous(), down.T.contiguous()
        if up.shape[1] != self.cfg.d_model or down.shape[0] != self.cfg.d_model:
            raise ShapeMismatchError(
                f"{self.source.name}: MLP of layer {layer} has shapes {tuple(up.shape)} / "
                f"{tuple(down.shape)}, not matching hidden size {self.cfg.d_model}"
            )
        gate = self.tensor(path(m.gate)) if m.gate else None
        return MLP(
            up_w=up,
            up_b=self.tensor(path(m.up), "bias", required=False),
            down_w=down,
            down_b=self.tensor(path(m.down), "bias", required=False),
            gate_w=gate,
            gate_b=self.tensor(path(m.gate), "bias", required=False) if m.gate else None,
            act=activation(self.cfg.activation),
        )

    def block0_mlp(self, keep: bool = True) -> tuple[Norm, MLP, Norm | None]:
        """Block 0's (pre-MLP norm, MLP, post-MLP norm or None), read once (``keep=False``:
        not kept when read now, for a caller that needs it once)."""
        if self._mlp0 is not None:
            return self._mlp0
        s = self.spec
        out_norm = self.norm(s.layer_path(0, s.mlp_out_norm)) if s.mlp_out_norm else None
        mlp0 = (self.norm(s.layer_path(0, s.mlp_norm)), self.mlp(0), out_norm)
        if keep:
            self._mlp0 = mlp0
        return mlp0

    def effective_embedding(self, x: torch.Tensor, keep: bool = True) -> torch.Tensor:
        """MLP0(norm2_0(x)) of block 0 (Gemma 2/3: followed by its post-MLP norm). [n, d]
        ``keep=False``: block 0's MLP is not kept after this call unless it was already."""
        norm, mlp, out_norm = self.block0_mlp(keep)
        y = mlp(norm(x))
        return out_norm(y) if out_norm is not None else y

    # ---- attention OV ------------------------------------------------------------------------
    def layer(self, layer: int) -> LayerOV:
        """Read one layer's OV factors; ``digest`` hashes the content of what was read."""
        self._reading = []
        try:
            ov = self._layer(layer)
        finally:
            names, self._reading = self._reading, None
        self._layer_names.update(names)
        ov.digest = self.content_fingerprint(names)
        return ov

    def _layer(self, layer: int) -> LayerOV:
        c, s = self.cfg, self.spec
        d, dh, nh, nkv = c.d_model, c.d_head, c.n_heads, c.n_kv_heads
        v_mod = s.attn_path(layer, s.v_proj)
        b_v: torch.Tensor | None
        if s.qkv_layout == "separate":
            w = self._linear(v_mod, nkv * dh, d)
            W_V = w.reshape(nkv, dh, d).transpose(1, 2)
            b = self.tensor(v_mod, "bias", required=False)
            b_v = None if b is None else b.reshape(nkv, dh)
        elif s.qkv_layout == "gpt2_fused":  # rows q | k | v: read only the v third
            v = self._part(v_mod, "weight", 2 * nh * dh, 3 * nh * dh, rows=d)
            assert v is not None  # a weight is required
            W_V = v.reshape(nh, dh, d).transpose(1, 2)
            b = self._part(v_mod, "bias", 2 * nh * dh, 3 * nh * dh)
            b_v = None if b is None else b.reshape(nh, dh)
        else:  # neox_fused: rows grouped per head as (q, k, v)
            w = self._linear(v_mod, 3 * nh * dh, d)
            W_V = w.reshape(nh, 3, dh, d)[:, 2].transpose(1, 2)
            b = self.tensor(v_mod, "bias", required=False)
            b_v = None if b is None else b.reshape(nh, 3, dh)[:, 2]
        o_mod = s.attn_path(layer, s.o_proj)
        w_o = self._linear(o_mod, d, nh * dh)  # [d, nh*dh]
        W_O = w_o.T.reshape(nh, dh, d)
        out_norm = self.norm(s.layer_path(layer, s.attn_out_norm)) if s.attn_out_norm else None
        return LayerOV(
            layer=layer,
            W_V=W_V.contiguous(),
            b_V=None if b_v is None else b_v.contiguous(),
            W_O=W_O.contiguous(),
            b_O=self.tensor(o_mod, "bias", required=False),
            attn_norm=self.norm(s.layer_path(layer, s.attn_norm)),
            out_norm=out_norm,
            group_size=c.group_size,
        )

    def layers(self, which: list[int] | None = None) -> Iterator[LayerOV]:
        """Stream layers one at a time."""
        for i in which if which is not None else range(self.cfg.n_layers):
            yield self.layer(i)

    # ---- misc ----------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            self._tokenizer = self.source.tokenizer()
        return self._tokenizer

    def encoder(self, words: Iterable[str]) -> Any:
        """What the map encodes ``words`` with: the tokenizer when it is loaded already, else
        its saved backend when there is one (no transformers import; see
        :mod:`headatlas.weights.encoder`), else the tokenizer."""
        if self._tokenizer is not None:
            return self._tokenizer
        from headatlas.weights.encoder import map_encoder

        def full() -> Any:
            return self.tokenizer

        return map_encoder(self.source, full, words)

    def summary(self) -> dict[str, Any]:
        """Model facts for manifests and ``headatlas info``."""
        return {
            "name": self.source.name,
            "display_name": self.source.display_name(),
            "source": self.source.describe(),
            "architecture": self.cfg.model_type,
            "family": self.spec.family,
            "n_layers": self.cfg.n_layers,
            "n_heads": self.cfg.n_heads,
            "n_kv_heads": self.cfg.n_kv_heads,
            "d_model": self.cfg.d_model,
            "d_head": self.cfg.d_head,
            "vocab_size": self.cfg.vocab_size,
            "tied_embeddings": self.cfg.tied,
            "notes": list(self.spec.notes),
        }
