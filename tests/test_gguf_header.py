"""The fast GGUF header reader equals gguf.GGUFReader field for field and tensor for tensor."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from headatlas.weights import open_source
from headatlas.weights.gguf_header import GGUFHeader, open_gguf


def assert_same_as_gguf_reader(path: Path) -> None:
    ours, theirs = GGUFHeader(path), gguf.GGUFReader(path)
    assert list(ours.fields) == [k for k in theirs.fields if not k.startswith("GGUF.")]
    for key, field in ours.fields.items():
        a, b = field.contents(), theirs.fields[key].contents()
        assert a == b and type(a) is type(b), key
        if isinstance(a, list):
            assert len(field.data) == len(theirs.fields[key].data) == len(a), key
            assert all(type(x) is type(y) for x, y in zip(a, b, strict=True)), key
    assert ours.data_offset == theirs.data_offset
    assert len(ours.tensors) == len(theirs.tensors)
    for a, b in zip(ours.tensors, theirs.tensors, strict=True):
        assert (a.name, a.tensor_type, a.n_elements, a.n_bytes, a.data_offset) == (
            b.name, b.tensor_type, b.n_elements, b.n_bytes, b.data_offset,
        )  # fmt: skip
        assert a.shape.dtype == b.shape.dtype and np.array_equal(a.shape, b.shape)
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape
        assert np.array_equal(a.data, b.data), a.name


def test_smollm2_header_equals_gguf_reader() -> None:
    assert_same_as_gguf_reader(open_source("smollm2").path)


def _write(path: Path, endianess: gguf.GGUFEndian = gguf.GGUFEndian.LITTLE) -> Path:
    w = gguf.GGUFWriter(path, "llama", endianess=endianess)
    w.add_uint8("t.u8", 7)
    w.add_int8("t.i8", -7)
    w.add_uint16("t.u16", 65000)
    w.add_int16("t.i16", -300)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -5)
    w.add_float32("t.f32", 1e-6)
    w.add_uint64("t.u64", 2**60)
    w.add_int64("t.i64", -(2**60))
    w.add_float64("t.f64", 0.1)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "naïve — 東京")
    w.add_array("t.strings", ["", "a", "ab c", "Ġthe", "東"] * 50)
    w.add_array("t.ints", list(range(-20, 300)))
    w.add_array("t.floats", [0.5, -1.25, 3.0])
    w.add_array("t.empty", [])
    g = np.random.default_rng(0)
    w.add_tensor("a.weight", g.standard_normal((3, 64)).astype(np.float32))
    w.add_tensor("b.weight", g.standard_normal((5, 32)).astype(np.float16))
    w.add_tensor("c.weight", np.arange(12, dtype=np.int32).reshape(3, 4))
    q = gguf.quants.quantize(
        g.standard_normal((4, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0
    )
    w.add_tensor("d.weight", q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_every_value_type_and_tensor_kind_equals_gguf_reader(tmp_path: Path) -> None:
    assert_same_as_gguf_reader(_write(tmp_path / "all.gguf"))


def test_layouts_it_does_not_read_go_to_gguf_reader(tmp_path: Path) -> None:
    big = _write(tmp_path / "big.gguf", gguf.GGUFEndian.BIG)
    assert isinstance(open_gguf(big), gguf.GGUFReader)
    assert open_gguf(big).fields["t.str"].contents() == "naïve — 東京"
    assert isinstance(open_gguf(_write(tmp_path / "little.gguf")), GGUFHeader)


def test_truncated_file_raises(tmp_path: Path) -> None:
    data = _write(tmp_path / "x.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    for n in (10, 200, len(data) - 100):
        cut.write_bytes(data[:n])
        with pytest.raises(Exception):  # noqa: B017 - struct.error / ValueError, as gguf's
            GGUFHeader(cut)
