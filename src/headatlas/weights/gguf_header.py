"""A GGUF file's header, read fast: metadata values decoded only when asked for, tensors as
memory-mapped views laid out exactly as ``gguf.GGUFReader`` lays them out.

``gguf.GGUFReader`` builds numpy views for every element of every metadata array; for a
tokenizer's token and merge lists that is 5 s of every open of SmolLM2 (49k tokens) and 21 s of
Gemma 3 (262k) on a small CPU, although a map reads none of them. Here an array of strings is
only scanned for its extent (its lengths, with ``struct`` over the mapped bytes) and decoded
when a caller asks for it. Little-endian GGUF v2/v3 only; anything else (big-endian files,
arrays of arrays) is read by ``gguf.GGUFReader`` instead (:func:`open_gguf`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_SCALARS: dict[int, tuple[str, Any]] = {
    0: ("<B", np.uint8),
    1: ("<b", np.int8),
    2: ("<H", np.uint16),
    3: ("<h", np.int16),
    4: ("<I", np.uint32),
    5: ("<i", np.int32),
    6: ("<f", np.float32),
    7: ("<?", np.bool_),
    10: ("<Q", np.uint64),
    11: ("<q", np.int64),
    12: ("<d", np.float64),
}
_STRING, _ARRAY = 8, 9
_MAGIC = 0x46554747  # b"GGUF" read as a little-endian uint32


class _Unsupported(Exception):
    """A layout this reader leaves to gguf.GGUFReader."""


@dataclass
class Field:
    """One metadata value (the part of ``gguf.ReaderField`` the weight source uses)."""

    name: str
    _buf: memoryview
    _type: int
    _offset: int  # scalar / string: where the value starts; array: where its elements start
    _count: int = 1
    _sub: int | None = None  # array element type
    _starts: list[int] | None = None  # array of strings: where each string's bytes start

    @property
    def is_array(self) -> bool:
        """Whether the value is a list."""
        return self._type == _ARRAY

    @property
    def data(self) -> range:
        """One entry per array element (``len(field.data)``, as with gguf's fields)."""
        return range(self._count)

    def contents(self) -> Any:
        """The value: int, float, bool, str, or a list of them."""
        if self._type == _STRING:
            return _string(self._buf, self._offset)
        if self._type != _ARRAY:
            return _scalar(self._buf, self._type, self._offset)
        assert self._sub is not None
        if self._sub == _STRING:
            assert self._starts is not None
            return [_string(self._buf, s - 8) for s in self._starts]
        dtype = np.dtype(_SCALARS[self._sub][1]).newbyteorder("<")
        values: list[Any] = np.frombuffer(
            self._buf, dtype=dtype, count=self._count, offset=self._offset
        ).tolist()
        return values


@dataclass
class Tensor:
    """One tensor (the fields of ``gguf.ReaderTensor`` the weight source uses)."""

    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: np.ndarray  # GGUF order (fastest dimension first), uint64
    n_elements: int
    n_bytes: int
    data_offset: int
    data: np.ndarray  # memory-mapped, numpy order; quantised types as bytes per row


def _scalar(buf: memoryview, gtype: int, offset: int) -> Any:
    fmt, dtype = _SCALARS[gtype]
    value = struct.unpack_from(fmt, buf, offset)[0]
    # gguf returns numpy scalars' .tolist(): a float32 comes back as its exact double
    return np.array(value, dtype=dtype).tolist()


def _string(buf: memoryview, offset: int) -> str:
    (n,) = struct.unpack_from("<Q", buf, offset)
    return bytes(buf[offset + 8 : offset + 8 + n]).decode("utf-8")


class GGUFHeader:
    """Metadata fields and tensor table of one GGUF file (``fields``, ``tensors``, ``data``:
    the attributes of ``gguf.GGUFReader`` the weight source reads)."""

    def __init__(self, path: str | Path):
        import gguf

        self.data = np.memmap(path, mode="r")
        buf = memoryview(self.data)  # type: ignore[arg-type]  # numpy arrays are buffers
        magic, version = struct.unpack_from("<II", buf, 0)
        if magic != _MAGIC or version not in (2, 3):
            raise _Unsupported(f"magic {magic:#x}, version {version}")
        n_tensors, n_kv = struct.unpack_from("<QQ", buf, 8)
        offs = 24
        self.version = version
        self.fields: dict[str, Field] = {}
        self.spans: dict[str, tuple[int, int]] = {}
        """Each metadata entry's bytes (key, type and value) in the file."""
        for _ in range(n_kv):
            kv_start = offs
            key = _string(buf, offs)
            offs += 8 + len(key.encode("utf-8"))
            (gtype,) = struct.unpack_from("<I", buf, offs)
            offs += 4
            field, offs = self._field(buf, key, gtype, offs)
            if key in self.fields:
                raise ValueError(f"duplicate metadata key {key}")
            self.fields[key] = field
            self.spans[key] = (kv_start, offs)
        infos = []
        infos_start = offs
        for _ in range(n_tensors):
            (n,) = struct.unpack_from("<Q", buf, offs)
            name = bytes(buf[offs + 8 : offs + 8 + n]).decode("utf-8")
            offs += 8 + n
            (n_dims,) = struct.unpack_from("<I", buf, offs)
            dims = np.frombuffer(buf, dtype="<u8", count=n_dims, offset=offs + 4).astype(np.uint64)
            offs += 4 + 8 * n_dims
            raw_type, rel = struct.unpack_from("<IQ", buf, offs)
            offs += 12
            infos.append((name, dims, raw_type, rel))
        self._infos = (infos_start, offs, int(n_tensors))
        align_field = self.fields.get("general.alignment")
        align = 32 if align_field is None else int(align_field.contents())
        if align <= 0 or align & (align - 1):
            raise ValueError("invalid general.alignment: must be a power of two")
        self.alignment = align
        start = offs + (-offs % align)
        self.data_offset = start
        self.tensors: list[Tensor] = []
        seen: set[str] = set()
        for name, dims, raw_type, rel in infos:
            if name in seen:
                raise ValueError(f"duplicate tensor {name}")
            seen.add(name)
            qtype = gguf.GGMLQuantizationType(raw_type)
            n_elems = int(np.prod(dims))
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            n_bytes = n_elems * type_size // block
            np_dims: tuple[int, ...] = tuple(reversed(dims.tolist()))
            plain = _PLAIN.get(qtype.name)
            if plain is not None:
                item, count = np.dtype(plain), n_elems
            else:
                item, count = np.dtype(np.uint8), n_bytes
                np_dims = gguf.quants.quant_shape_to_byte_shape(np_dims, qtype)
            off = start + int(rel)
            if off + item.itemsize * count > len(self.data):
                raise ValueError(f"tensor {name} runs past the end of the file")
            view = self.data[off : off + item.itemsize * count].view(item)[:count]
            self.tensors.append(
                Tensor(name, qtype, dims, n_elems, n_bytes, off, view.reshape(np_dims))
            )

    def write_metadata(
        self, dest: Path, keep: Callable[[Field], bool], extra: dict[str, int]
    ) -> None:
        """A copy of the file at ``dest`` with only the metadata entries ``keep`` accepts (byte
        for byte) plus ``extra`` uint32 entries, the same tensor table, and a data section of
        the same size left unwritten (a sparse file: no disk space, zeros if read). It is what
        transformers needs to build a config, including what it infers from the tensor names,
        without the token lists it would parse for seconds."""
        kept = [k for k, f in self.fields.items() if keep(f)]
        a0, a1, n_tensors = self._infos
        n_kv = len(kept) + len(extra)
        with open(dest, "wb") as out:
            out.write(struct.pack("<IIQQ", _MAGIC, self.version, n_tensors, n_kv))
            for key in kept:
                a, b = self.spans[key]
                out.write(bytes(self.data[a:b]))
            for key, value in extra.items():
                k = key.encode("utf-8")
                out.write(struct.pack("<Q", len(k)) + k + struct.pack("<II", 4, value))
            out.write(bytes(self.data[a0:a1]))
            start = out.tell() + (-out.tell() % self.alignment)
            out.truncate(start + len(self.data) - self.data_offset)

    def _field(self, buf: memoryview, key: str, gtype: int, offs: int) -> tuple[Field, int]:
        if gtype == _STRING:
            (n,) = struct.unpack_from("<Q", buf, offs)
            return Field(key, buf, gtype, offs), offs + 8 + n
        if gtype in _SCALARS:
            return Field(key, buf, gtype, offs), offs + struct.calcsize(_SCALARS[gtype][0])
        if gtype != _ARRAY:
            raise ValueError(f"unknown metadata type {gtype} for {key}")
        sub, count = struct.unpack_from("<IQ", buf, offs)
        offs += 12
        if sub in _SCALARS:
            size = struct.calcsize(_SCALARS[sub][0])
            return Field(key, buf, gtype, offs, count, sub), offs + size * count
        if sub != _STRING:
            raise _Unsupported(f"array of type {sub} in {key}")
        first, starts = offs, []
        unpack = struct.Struct("<Q").unpack_from
        for _ in range(count):
            (n,) = unpack(buf, offs)
            starts.append(offs + 8)
            offs += 8 + n
        return Field(key, buf, gtype, first, count, sub, starts), offs


_PLAIN = {
    "F16": np.float16,
    "F32": np.float32,
    "F64": np.float64,
    "I8": np.int8,
    "I16": np.int16,
    "I32": np.int32,
    "I64": np.int64,
}


def open_gguf(path: str | Path) -> Any:
    """A GGUF file's header: :class:`GGUFHeader`, or ``gguf.GGUFReader`` for the layouts it
    leaves alone. Raises what the reader raises for a file that is not GGUF."""
    try:
        return GGUFHeader(path)
    except _Unsupported:
        import gguf

        return gguf.GGUFReader(path)
