"""The factored readout: a recipe bound to one model, and each layer's heads read through it.

Every consumer that reads a head from its weights (the map, the salient operations, the
dynamic readout, calibrate) reads it here, kept factored; :mod:`headatlas.scoring.reference`
is the only plain path (the norms applied as functions, one head at a time), and the tests
hold the two to equal ranks. For layer l and head h (KV group g):

    x̂   = n(x̃)                           the pre-attention norm without its gain and bias
                                          (x̃ itself without ``pre_norm``)
    z   = x̂ · W_V' + c                    W_V' = diag(γ) W_V, c = β W_V + b_V   [n_kv, ...]
    y   = z · W_O' + b_O'                 W_O' = W_O diag(γ_post), b_O' = b_O γ_post
    row = s(y) · y · W_Uf + b_U           W_Uf: the unembedding with the final norm folded in

γ, β: the pre-attention norm's gain and bias (``pre_norm``); b_V with ``value_bias``;
γ_post: the post-attention norm's gain (Gemma 2/3, ``output_gain``; its per-row 1/rms is a
positive scalar that leaves top-k unchanged); b_O with ``output_bias``; b_U with
``unembed_bias``. s(y) > 0 is the final norm's per-row factor: it cancels out of top-k, so
it is computed only when b_U follows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from headatlas.circuits import LayerOV, ModelCircuits, Norm
from headatlas.scoring.kernel.factored import Factored, SharedU

if TYPE_CHECKING:
    from headatlas.scoring.recipe import Recipe


def fold_unembedding(
    circuits: ModelCircuits, final_norm: bool, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """W_U with the final norm folded in: C · diag(γ) · W_U, [d, V] contiguous.

    C = I - 11ᵀ/d is LayerNorm's centring; the norm's 1/σ is a positive per-row scalar and
    leaves top-k unchanged, and its bias β is not part of any head (as in TransformerLens'
    fold_ln, where β moves to the logit bias).

    Computed in blocks of vocabulary columns streamed from the checkpoint
    (:meth:`ModelCircuits.unembedding_blocks`): the result is the only vocabulary-sized
    matrix held, and W_U itself is not kept.
    """
    # Fold in float64 when computing in float64 (folding in float32 loses bits), else float32.
    work = torch.float64 if dtype == torch.float64 else torch.float32
    d = circuits.cfg.d_model
    norm = circuits.final_norm() if final_norm else None
    scale = None if norm is None else norm.scale(d).to(work)
    n_cols, blocks = circuits.unembedding_blocks()
    out = torch.empty(d, n_cols, dtype=dtype)
    for start, block in blocks:
        G = block.to(work)  # [m, d]: W_U[:, start : start + m].T
        if scale is not None:
            G = G * scale
            if norm is not None and norm.kind == "layernorm":
                G = G - G.mean(1, keepdim=True)
        out[:, start : start + G.shape[0]] = G.T
    return out


class Readout:
    """A recipe bound to one model: the folded unembedding W_Uf [d, V], the logit bias b_U
    and the final norm, shared by every layer; :meth:`layer` reads one layer's heads.
    Build with :meth:`Recipe.bind <headatlas.scoring.recipe.Recipe.bind>`."""

    def __init__(self, recipe: Recipe, circuits: ModelCircuits, dtype: torch.dtype = torch.float32):
        self.recipe = recipe
        self.circuits = circuits
        self.device = torch.device("cpu")
        self.dtype = dtype
        self.W_Uf = fold_unembedding(circuits, recipe.final_norm, dtype)  # [d, V]
        b = circuits.unembed_bias() if recipe.unembed_bias else None
        self.logit_bias: torch.Tensor | None = b  # [V] or None
        self.final_norm: Norm | None = circuits.final_norm() if recipe.final_norm else None
        self._shared: dict[bool, SharedU] = {}

    def to(self, device: str | torch.device, dtype: torch.dtype) -> Readout:
        """This readout with its tensors on ``device`` in ``dtype`` (a new object)."""
        out = Readout.__new__(Readout)
        out.recipe, out.circuits = self.recipe, self.circuits
        out.device, out.dtype = torch.device(device), dtype
        # Fold again only when float64 is asked of a float32 fold (float32 folding loses bits).
        W = (
            fold_unembedding(self.circuits, self.recipe.final_norm, dtype)
            if dtype == torch.float64 and self.W_Uf.dtype != torch.float64
            else self.W_Uf
        )
        out.W_Uf = W.to(device=out.device, dtype=dtype).contiguous()
        b = self.logit_bias
        out.logit_bias = None if b is None else b.to(device=out.device, dtype=dtype)
        out.final_norm = self.final_norm
        out._shared = {}
        return out

    def shared(self, bias_row: bool = True) -> SharedU:
        """The unembedding every head shares, prepared once for the kernels: U = [W_Uf; b_U]
        (the logit bias as one more row, read by a ones column of Z) when ``bias_row`` and the
        recipe adds b_U, else W_Uf."""
        row = bias_row and self.logit_bias is not None
        if row not in self._shared:
            U = torch.cat([self.W_Uf, self.logit_bias[None]], 0) if row else self.W_Uf  # type: ignore[index]
            self._shared[row] = SharedU(U)
        return self._shared[row]

    def layer(self, layer: LayerOV) -> LayerReadout:
        """One layer's heads read through this readout, on its device and in its dtype."""
        return LayerReadout.of(self, layer)


@dataclass
class LayerReadout:
    """One layer's heads as a recipe reads them, kept factored (module docstring): the value
    map with its bias, W_O with its bias row, and the model's shared readout."""

    readout: Readout
    index: int
    """The layer."""
    group_size: int
    """Query heads per KV group: head h reads group h // group_size."""
    in_norm: Norm | None
    """The pre-attention norm the recipe applies (gain and bias included), None without
    ``pre_norm``; only its bare part n(·) is applied to inputs, the rest is in W_V, c."""
    W_V: torch.Tensor
    """[n_kv, d, dh]: W_V' = diag(γ) W_V."""
    c: torch.Tensor | None
    """[n_kv, dh]: β W_V + b_V, or None when both are off or absent."""
    W_O: torch.Tensor
    """[H, dh, d]: W_O' = W_O diag(γ_post)."""
    b_O: torch.Tensor | None
    """[d]: b_O γ_post with ``output_bias``, else None."""
    left_out_b_V: torch.Tensor | None
    """[n_kv, dh]: the layer's b_V when the recipe leaves it out (what a hooked value holds
    and this readout does not), else None."""

    @classmethod
    def of(cls, readout: Readout, layer: LayerOV) -> LayerReadout:
        """Bind ``layer`` (moved to the readout's device and dtype) to ``readout``."""
        r = readout.recipe
        layer = layer.to(readout.device, readout.dtype)
        W_V, c = layer.W_V, None
        norm = layer.attn_norm if r.pre_norm else None
        if norm is not None:
            if norm.gain is not None:
                W_V = W_V * norm.gain[None, :, None]
            if norm.bias is not None:
                c = torch.einsum("d,gde->ge", norm.bias, layer.W_V)
        b_V = layer.b_V
        if r.value_bias and b_V is not None:
            c = b_V if c is None else c + b_V
        d = layer.W_O.shape[2]
        gain = layer.out_gain(d) if r.output_gain else torch.ones(d)
        gain = gain.to(device=readout.device, dtype=readout.dtype)
        W_O = layer.W_O * gain
        b_O = layer.b_O * gain if r.output_bias and layer.b_O is not None else None
        return cls(
            readout=readout,
            index=layer.layer,
            group_size=layer.group_size,
            in_norm=norm,
            W_V=W_V,
            c=c,
            W_O=W_O,
            b_O=b_O,
            left_out_b_V=None if r.value_bias else b_V,
        )

    @property
    def n_heads(self) -> int:
        """Query heads."""
        return int(self.W_O.shape[0])

    @property
    def kv_group(self) -> torch.Tensor:
        """[H] int64: the KV group each query head reads, on the readout's device."""
        heads = torch.arange(self.n_heads, device=self.W_O.device)
        return heads // self.group_size

    def normed(self, X: torch.Tensor) -> torch.Tensor:
        """x̂ = n(X) [n, d]: the pre-attention norm without its gain and bias (X itself without
        ``pre_norm``), on the readout's device and in its dtype."""
        X = X.to(device=self.readout.device, dtype=self.readout.dtype)
        n = self.in_norm
        return X if n is None else Norm(n.kind, None, None, n.eps)(X)

    def values(self, X: torch.Tensor) -> torch.Tensor:
        """z = x̂ · W_V' + c for every KV group and source embedding ``X`` [n, d]: [n_kv, n, dh]."""
        Z = torch.einsum("nd,gde->gne", self.normed(X), self.W_V)
        return Z if self.c is None else Z + self.c[:, None, :]

    def logit_offset(self) -> torch.Tensor | None:
        """Constant logits [V] added to every head of the layer, without the final norm's
        per-row factor: b_O'·W_Uf + b_U (None when both are off). The dynamic readout's."""
        offset = self.readout.logit_bias
        if self.b_O is not None:
            bo = self.b_O @ self.readout.W_Uf
            offset = bo if offset is None else offset + bo
        return offset

    def heads(self, X: torch.Tensor) -> list[tuple[torch.Tensor, Factored]]:
        """Every head's logits for source embeddings ``X`` [n, d] kept factored: ``Z``
        [n, r] and ``B`` = W @ U [r, V] with logits = Z @ B (up to the final norm's positive
        per-row factor when no bias follows it). The map's and calibrate's kernel input.

        y = [z, 1] @ [W_O'; b_O'] with ``output_bias``; with b_U, Z gains the final norm's
        factor s(y) and one more ones column, W one more row reading U's b_U row."""
        ro = self.readout
        Zg = self.values(X)
        U = ro.shared()
        post_bias, final_norm = ro.logit_bias, ro.final_norm
        out = []
        for h in range(self.n_heads):
            Z, W = Zg[h // self.group_size], self.W_O[h]
            if self.b_O is not None:
                Z, W = _with_ones(Z), torch.cat([W, self.b_O[None]], 0)
            if post_bias is not None:
                if final_norm is not None:
                    Z = Z * _norm_factor(Z, W, final_norm)[:, None]
                Z = _with_ones(Z)
                W = torch.nn.functional.pad(W, (0, 1))
                one = torch.zeros(1, W.shape[1], dtype=W.dtype, device=W.device)
                one[0, -1] = 1
                W = torch.cat([W, one], 0)
            out.append((Z.contiguous(), Factored(W, U)))
        return out


def _with_ones(Z: torch.Tensor) -> torch.Tensor:
    return torch.cat([Z, torch.ones(Z.shape[0], 1, dtype=Z.dtype, device=Z.device)], 1)


def _norm_factor(Z: torch.Tensor, W: torch.Tensor, norm: Norm) -> torch.Tensor:
    """1/σ of each row of y = Z @ W [n, d], through the Gram matrix of W (no [n, d] formed).

    RMSNorm: σ² = mean(y²) + eps; LayerNorm: the variance of y plus eps.
    """
    d = W.shape[1]
    if norm.kind == "layernorm":
        W = W - W.mean(1, keepdim=True)
    G = (W @ W.T) / d  # [r, r]
    ms = ((Z @ G) * Z).sum(1)
    return torch.rsqrt(ms.clamp_min(0) + norm.eps)
