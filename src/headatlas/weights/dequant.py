"""GGUF dequantisation: torch for the block types that dominate packaged files, ``gguf``'s numpy
code for the rest.

``gguf.quants.dequantize`` is written in numpy and single-threaded: Gemma 3 270M's Q8_0
embedding (168M values) takes 1.7 s per read, and a ``forward`` map reads it three times (the
inference model, the folded unembedding, the sources' rows). Q8_0 (a float16 scale and 32 int8
values per block) and Q5_0 (a float16 scale, 32 high bits and 32 low nibbles) are written here
in torch with the same float32 arithmetic (one product per value), so the result is bit-equal
(tested on every such tensor of the packaged files) and several times faster.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

Q8_0, Q5_0 = 8, 6
"""``gguf.GGMLQuantizationType`` values of the types done here."""
_BLOCK_BYTES = {Q8_0: 34, Q5_0: 22}


def dequantize(data: np.ndarray, qtype: Any) -> torch.Tensor:
    """float32 values of a GGUF tensor's raw ``data`` (numpy order, bytes per row for block
    types), as ``gguf.quants.dequantize`` gives them, in a tensor of their own (not a view of
    the file)."""
    kind = int(qtype)
    if kind not in _BLOCK_BYTES or data.dtype != np.uint8:
        import gguf

        values = gguf.quants.dequantize(data, qtype)
        return torch.from_numpy(np.array(values, dtype=np.float32, copy=True))
    size = _BLOCK_BYTES[kind]
    if data.shape[-1] % size:
        raise ValueError(f"row of {data.shape[-1]} bytes is not whole blocks of {size}")
    shape = (*data.shape[:-1], data.shape[-1] // size * 32)
    blocks = torch.from_numpy(np.array(data, copy=True).reshape(-1, size))
    scale = blocks[:, :2].contiguous().view(torch.float16).float()  # [n, 1]
    if kind == Q8_0:
        q = blocks[:, 2:].contiguous().view(torch.int8).float()
    else:  # Q5_0: value i = (low nibble i | high bit i << 4) - 16
        # bit i of the little-endian uint32 is bit i % 8 of its byte i // 8
        shifts = torch.arange(8, dtype=torch.uint8)
        bits = ((blocks[:, 2:6, None] >> shifts) & 1).reshape(-1, 32)
        qs = blocks[:, 6:]
        low = torch.cat([qs & 0x0F, qs >> 4], 1)
        q = (low | bits << 4).float().sub_(16)
    return q.mul_(scale).reshape(shape)
