"""headatlas's own GGUF dequantisation (Q8_0, Q5_0 in torch) is bit-equal to ``gguf``'s on every
such tensor of the packaged files, and leaves the other types to ``gguf``."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from headatlas.circuits import ModelCircuits
from headatlas.weights.dequant import Q5_0, Q8_0, dequantize


@pytest.mark.parametrize("name", ["smollm2", "gemma3-270m"])
def test_bit_equal_to_gguf_on_the_packaged_files(name: str) -> None:
    reader = ModelCircuits.load(name).source.header
    done: dict[int, int] = {}
    for t in reader.tensors:
        kind = int(t.tensor_type)
        want = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type)))
        got = dequantize(t.data, t.tensor_type)
        assert got.dtype == torch.float32 and got.shape == want.shape, t.name
        assert torch.equal(got.view(torch.int32), want.float().view(torch.int32)), t.name
        done[kind] = done.get(kind, 0) + 1
    assert done.get(Q8_0, 0) + done.get(Q5_0, 0) > 0  # the torch paths ran


def test_a_truncated_block_row_is_an_error() -> None:
    with pytest.raises(ValueError, match="whole blocks"):
        dequantize(np.zeros((2, 33), dtype=np.uint8), gguf.GGMLQuantizationType.Q8_0)
