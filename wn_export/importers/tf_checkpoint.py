"""A reader of TensorFlow checkpoints (the V2 "tensor bundle" that `tf.train.Saver` writes) without TensorFlow.

A checkpoint `PREFIX` is `PREFIX.index` plus `PREFIX.data-SSSSS-of-NNNNN` shards:

- `.index` is a LevelDB-format table (TensorFlow's `core/lib/io/table`): data blocks of prefix-compressed
  key/value entries, an index block pointing at them, and a 48-byte footer (two block handles, magic
  0xdb4775248b80fb57). Each block carries a 1-byte compression type and a masked CRC-32C.
- Its values are protocol buffers (`tensor_bundle.proto`): under the empty key a `BundleHeaderProto`
  (number of shards, endianness), under each tensor's name a `BundleEntryProto` (dtype, shape, shard,
  offset, size, masked CRC-32C of the bytes).
- A data shard holds the tensors' raw little-endian bytes at those offsets.

Every offset and size is checked against the file before anything is read, and every block and tensor
against its checksum. Compressed tables, sliced (partitioned) variables, big-endian bundles and string
tensors are refused with a message; TensorFlow's V1 checkpoints (a single file, TensorFlow < 0.12) too.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reference_model.errors import CheckpointError

_MAGIC = 0xDB4775248B80FB57
_FOOTER = 48
_TRAILER = 5  # compression type (1 byte) + masked CRC-32C (4 bytes)
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
           10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
_DTYPE_NAMES = {7: "string", 8: "complex64", 14: "bfloat16", 18: "complex128", 20: "resource", 21: "variant"}
_DATA_SUFFIX = re.compile(r"\.data-\d{5}-of-\d{5}$")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: np.dtype | None  # None: a type we do not read (its name in `dtype_name`)
    dtype_name: str
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc: int  # masked CRC-32C of the bytes
    sliced: bool


def _messages():
    """BundleHeaderProto / BundleEntryProto (tensorflow/core/protobuf/tensor_bundle.proto, the fields we
    read), built with protobuf's descriptor API: enums are read as their integer values."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    F = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="wn_export_tensor_bundle.proto", package="wn_export.tfbundle",
                                           syntax="proto3")

    def message(name, fields):
        m = f.message_type.add(name=name)
        for number, field, kind, *rest in fields:  # rest: a message type, "repeated"
            m.field.add(name=field, number=number, type=kind,
                        label=F.LABEL_REPEATED if "repeated" in rest else F.LABEL_OPTIONAL,
                        type_name=rest[0] if rest and rest[0].startswith(".") else None)

    message("Dim", [(1, "size", F.TYPE_INT64), (2, "name", F.TYPE_STRING)])
    message("Shape", [(2, "dim", F.TYPE_MESSAGE, ".wn_export.tfbundle.Dim", "repeated"),
                      (3, "unknown_rank", F.TYPE_BOOL)])
    message("Header", [(1, "num_shards", F.TYPE_INT32), (2, "endianness", F.TYPE_INT32)])
    message("Entry", [(1, "dtype", F.TYPE_INT32), (2, "shape", F.TYPE_MESSAGE, ".wn_export.tfbundle.Shape"),
                      (3, "shard_id", F.TYPE_INT32), (4, "offset", F.TYPE_INT64), (5, "size", F.TYPE_INT64),
                      (6, "crc32c", F.TYPE_FIXED32), (7, "slices", F.TYPE_BYTES, "repeated")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    get = message_factory.GetMessageClass
    return (get(pool.FindMessageTypeByName("wn_export.tfbundle.Header")),
            get(pool.FindMessageTypeByName("wn_export.tfbundle.Entry")))


def _masked_crc(data: bytes) -> int:
    import google_crc32c

    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CheckpointError(f"{where}: truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def resolve_prefix(path) -> Path:
    """A checkpoint prefix from what users pass: the prefix (`model.ckpt-1000`), its `.index` / `.data-…` /
    `.meta` file, or a training directory with a `checkpoint` file (its latest checkpoint)."""
    path = Path(path)
    if path.is_dir():
        state = path / "checkpoint"
        if not state.is_file():
            raise CheckpointError(f"{path} is a directory without a 'checkpoint' file: pass the checkpoint prefix "
                                  "(e.g. model.ckpt-1000)")
        match = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text(errors="replace"), re.M)
        if not match:
            raise CheckpointError(f"{state} names no model_checkpoint_path")
        latest = Path(match.group(1))
        # written relative to the directory, or absolute on the training machine (then: the same name here)
        candidates = [latest, path / latest.name] if latest.is_absolute() else [path / latest]
        return next((c for c in candidates if Path(f"{c}.index").is_file()), candidates[-1])
    name = path.name
    for suffix in (".index", ".meta"):
        if name.endswith(suffix):
            return path.with_name(name[:-len(suffix)])
    if _DATA_SUFFIX.search(name):
        return path.with_name(_DATA_SUFFIX.sub("", name))
    return path


class TFCheckpoint:
    """The tensors of a TensorFlow V2 checkpoint: `names()`, `entry(name)`, `read(name)`."""

    def __init__(self, path):
        self.prefix = resolve_prefix(path)
        index = Path(f"{self.prefix}.index")
        if not index.is_file():
            if self.prefix.is_file():
                raise CheckpointError(f"{self.prefix} has no .index: a TensorFlow V1 checkpoint (TensorFlow < 0.12) "
                                      "is not supported; re-save it with tf.compat.v1.train.Saver (V2 format)")
            raise CheckpointError(f"checkpoint {self.prefix} does not exist (no {index.name})")
        self._Header, self._Entry = _messages()
        self._index = index
        self.entries: dict[str, TensorEntry] = {}
        self._read_index(index.read_bytes())

    # ---- the index table --------------------------------------------------------------------
    def _block(self, data: bytes, offset: int, size: int, what: str) -> bytes:
        if offset + size + _TRAILER > len(data) - _FOOTER:
            raise CheckpointError(f"{self._index}: {what} at {offset}+{size} lies outside the file (truncated?)")
        block = data[offset:offset + size]
        kind, crc = data[offset + size], struct.unpack_from("<I", data, offset + size + 1)[0]
        if kind != 0:
            raise CheckpointError(f"{self._index}: {what} is compressed (type {kind}, e.g. snappy); only "
                                  "uncompressed tables (what TensorFlow's Saver writes) are read")
        if _masked_crc(data[offset:offset + size + 1]) != crc:
            raise CheckpointError(f"{self._index}: {what} fails its CRC-32C check (corrupt file)")
        return block

    def _entries(self, block: bytes, what: str):
        """(key, value) of one table block, in order."""
        if len(block) < 4:
            raise CheckpointError(f"{self._index}: {what} is too short")
        restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
        end = len(block) - 4 - 4 * restarts
        if end < 0:
            raise CheckpointError(f"{self._index}: {what} has a malformed restart array")
        pos, key = 0, b""
        while pos < end:
            shared, pos = _varint(block, pos, what)
            unshared, pos = _varint(block, pos, what)
            length, pos = _varint(block, pos, what)
            if shared > len(key) or pos + unshared + length > end:
                raise CheckpointError(f"{self._index}: {what} has an entry running past its end")
            key = key[:shared] + block[pos:pos + unshared]
            pos += unshared
            yield key, block[pos:pos + length]
            pos += length

    def _read_index(self, data: bytes) -> None:
        if len(data) < _FOOTER or struct.unpack_from("<Q", data, len(data) - 8)[0] != _MAGIC:
            raise CheckpointError(f"{self._index} is not a TensorFlow checkpoint index (no table magic number)")
        footer = data[len(data) - _FOOTER:]
        _, pos = _varint(footer, 0, "footer")  # the metaindex block (empty in bundles)
        _, pos = _varint(footer, pos, "footer")
        index_offset, pos = _varint(footer, pos, "footer")
        index_size, pos = _varint(footer, pos, "footer")
        header = None
        for _, handle in self._entries(self._block(data, index_offset, index_size, "index block"), "index block"):
            offset, pos = _varint(handle, 0, "block handle")
            size, _ = _varint(handle, pos, "block handle")
            for key, value in self._entries(self._block(data, offset, size, "data block"), "data block"):
                if key == b"":
                    header = self._Header.FromString(value)
                else:
                    self._add(key.decode("utf-8", errors="replace"), value)
        if header is None:
            raise CheckpointError(f"{self._index} has no bundle header (not a tensor bundle?)")
        if header.endianness != 0:
            raise CheckpointError(f"{self._index} is a big-endian bundle; only little-endian checkpoints are read")
        self.shards = max(header.num_shards, 1)
        for e in self.entries.values():
            if not 0 <= e.shard < self.shards:
                raise CheckpointError(f"{self._index}: tensor {e.name} names shard {e.shard} of {self.shards}")

    def _add(self, name: str, value: bytes) -> None:
        try:
            m = self._Entry.FromString(value)
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError
            raise CheckpointError(f"{self._index}: the entry of {name} does not parse ({e})") from None
        dtype = _DTYPES.get(m.dtype)
        self.entries[name] = TensorEntry(
            name=name, dtype=None if dtype is None else np.dtype(dtype).newbyteorder("<"),
            dtype_name=np.dtype(dtype).name if dtype else _DTYPE_NAMES.get(m.dtype, f"type {m.dtype}"),
            shape=tuple(d.size for d in m.shape.dim), shard=m.shard_id, offset=m.offset, size=m.size,
            crc=m.crc32c, sliced=len(m.slices) > 0)

    # ---- tensors -------------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self.entries)

    def entry(self, name: str) -> TensorEntry:
        return self.entries[name]

    def shard_path(self, shard: int) -> Path:
        return Path(f"{self.prefix}.data-{shard:05d}-of-{self.shards:05d}")

    def read(self, name: str) -> np.ndarray:
        """The tensor `name` as a NumPy array (native byte order), after its size and checksum checks."""
        e = self.entries[name]
        if e.sliced:
            raise CheckpointError(f"tensor {name} is saved in slices (a partitioned variable); not supported")
        if e.dtype is None:
            raise CheckpointError(f"tensor {name} has dtype {e.dtype_name}, which is not read")
        if any(d < 0 for d in e.shape) or e.size != int(np.prod(e.shape, dtype=np.int64)) * e.dtype.itemsize:
            raise CheckpointError(f"tensor {name}: {e.size} bytes do not hold shape {list(e.shape)} of "
                                  f"{e.dtype_name}")
        path = self.shard_path(e.shard)
        if not path.is_file():
            raise CheckpointError(f"checkpoint data file {path} does not exist")
        if e.offset < 0 or e.offset + e.size > path.stat().st_size:
            raise CheckpointError(f"tensor {name} at {e.offset}+{e.size} lies outside {path.name} "
                                  f"({path.stat().st_size} bytes; truncated?)")
        with open(path, "rb") as f:
            f.seek(e.offset)
            raw = f.read(e.size)
        if _masked_crc(raw) != e.crc:
            raise CheckpointError(f"tensor {name} fails its CRC-32C check in {path.name} (corrupt file)")
        return np.frombuffer(raw, dtype=e.dtype).reshape(e.shape).astype(e.dtype.newbyteorder("="))


def checkpoint_files(path) -> list[Path]:
    """The files of the checkpoint `path` names (index, data shards, meta graph; a directory's `checkpoint`
    file), for the CLI's never-overwrite-an-input check; [] where it names none (the import then refuses it)."""
    try:
        prefix = resolve_prefix(path)
    except CheckpointError:
        return []
    files = [Path(path) / "checkpoint"] if Path(path).is_dir() else []
    if prefix.parent.is_dir():
        files += [p for p in prefix.parent.iterdir() if p.name.startswith(prefix.name + ".") or p == prefix]
    return files
