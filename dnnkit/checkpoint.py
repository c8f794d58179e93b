"""Reading the authors' TensorFlow 1.x checkpoints without TensorFlow (or protobuf).

A TF 1.x checkpoint is a "tensor bundle": `PREFIX.index`, a LevelDB-format SSTable that maps each
variable name to a BundleEntryProto (dtype, shape, shard, byte offset, byte size, crc32c), and
`PREFIX.data-00000-of-00001`, the raw little-endian row-major tensor bytes. This module parses both
(docs/originals.md §6) and verifies everything it can: the
footer magic, every SSTable block's crc32c, the header (one shard, little-endian), each entry's
byte range and each tensor's crc32c. Every error is a `CheckpointError` naming the file and, where
one is involved, the tensor.

    tensors = read_checkpoint(fixtures_dir() / "ws" / "mnist")     # {"weight_0": array, ...}
    net.theta.data = import_checkpoint(fixtures_dir() / "ws" / "mnist", net)
    net.theta.data = import_nwv(fixtures_dir() / "nwv" / "mnist_network_weight.npy", net)

`import_*` keep only the trainable `weight_i` / `bias_i` variables (not the Adam slots
`.../optimizer*`, `beta1_power`, `beta2_power`) and check names and TF-layout shapes against the
architecture, returning the flat TF-order vector that `TemplateNet.theta` holds.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import torch

from dnnkit.originals import load_nwv_arrays

MAGIC = 0xDB4775248B80FB57  # LevelDB table magic, stored little-endian in the last 8 bytes
FOOTER_BYTES = 48  # two BlockHandles (<= 20 bytes each, zero-padded to 40) + magic
BLOCK_TRAILER = 5  # 1 byte compression type + 4 bytes masked crc32c
# TF DataType enum -> little-endian NumPy dtype (fixed-width numeric types only; no strings/resources)
DTYPES = {1: "<f4", 2: "<f8", 3: "<i4", 4: "u1", 5: "<i2", 6: "i1", 9: "<i8", 10: "?", 19: "<f2"}
TRAINABLE = re.compile(r"(weight|bias)_\d+")


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt or in a form this reader does not handle."""


# ------------------------------------------------------------------ CRC-32C (Castagnoli)


def _make_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table[i] = c
    return table


_TABLE = _make_table()
_TABLE_LIST = [int(v) for v in _TABLE]


def _apply(cols: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Apply the GF(2) 32x32 matrix with columns `cols` (uint32[32]) to every value in `v`."""
    out = np.zeros_like(v)
    for i in range(32):
        out ^= cols[i] * ((v >> np.uint32(i)) & np.uint32(1))
    return out


@functools.cache
def _zeros_operator(log2_bytes: int) -> np.ndarray:
    """Columns of the linear map 'run 2**log2_bytes zero bytes through the CRC register'."""
    if log2_bytes == 0:
        basis = np.uint32(1) << np.arange(32, dtype=np.uint32)
        return _TABLE[basis & np.uint32(0xFF)] ^ (basis >> np.uint32(8))  # one zero byte
    half = _zeros_operator(log2_bytes - 1)
    return _apply(half, half)


def crc32c(data: bytes | memoryview) -> int:
    """CRC-32C (Castagnoli, reflected poly 0x82F63B78, init and xorout 0xFFFFFFFF) of `data`.

    Small inputs use the byte-wise table loop. Large ones run 2**b chunks of 256 bytes through the
    table in parallel (NumPy), then fold the chunk registers pairwise: the register is linear over
    GF(2), so reg(A + B) = Z_len(B)(reg(A)) ^ reg(B) with Z_n the 'n zero bytes' operator. The
    initial all-ones register is folded into the data by complementing its first 4 bytes."""
    n = len(data)
    if n < 4096:
        crc = 0xFFFFFFFF
        for b in bytes(data):
            crc = _TABLE_LIST[(crc ^ b) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF
    chunk_log2 = 8
    chunk = 1 << chunk_log2
    k_log2 = max(0, (-(-n // chunk) - 1).bit_length())
    total = chunk << k_log2
    buf = np.zeros(total, dtype=np.uint8)  # leading zero bytes leave a zero register unchanged
    buf[total - n:] = np.frombuffer(data, dtype=np.uint8)
    buf[total - n: total - n + 4] ^= 0xFF  # init 0xFFFFFFFF == complement of the first 4 bytes
    rows = buf.reshape(-1, chunk)
    reg = np.zeros(rows.shape[0], dtype=np.uint32)
    mask = np.uint32(0xFF)
    eight = np.uint32(8)
    for j in range(chunk):
        reg = _TABLE[(reg ^ rows[:, j]) & mask] ^ (reg >> eight)
    level = chunk_log2
    while reg.size > 1:
        reg = _apply(_zeros_operator(level), reg[0::2]) ^ reg[1::2]
        level += 1
    return int(reg[0]) ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """LevelDB/TF masked crc: rotate right by 15 bits and add 0xa282ead8 (mod 2**32)."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# ------------------------------------------------------------------ varints and protobuf


def _varint(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise CheckpointError(f"{what}: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise CheckpointError(f"{what}: malformed varint")


def _fields(buf: bytes, what: str) -> list[tuple[int, int | bytes]]:
    """A protobuf message -> [(field number, value)]: varints as int, fixed32/64 as int, bytes as bytes."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, what)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, what)
        elif wire == 1 or wire == 5:
            width = 8 if wire == 1 else 4
            if pos + width > len(buf):
                raise CheckpointError(f"{what}: truncated fixed{width * 8} field {number}")
            value = int.from_bytes(buf[pos: pos + width], "little")
            pos += width
        elif wire == 2:
            length, pos = _varint(buf, pos, what)
            if pos + length > len(buf):
                raise CheckpointError(f"{what}: truncated field {number}")
            value, pos = bytes(buf[pos: pos + length]), pos + length
        else:
            raise CheckpointError(f"{what}: unsupported protobuf wire type {wire} (field {number})")
        out.append((number, value))
    return out


def _entry(value: bytes, what: str) -> dict:
    """BundleEntryProto: 1 dtype, 2 shape, 3 shard_id, 4 offset, 5 size, 6 crc32c (fixed32), 7 slices."""
    entry = {"dtype": 0, "shape": [], "shard_id": 0, "offset": 0, "size": 0, "crc32c": None, "slices": 0}
    for number, v in _fields(value, what):
        if number == 1:
            entry["dtype"] = v
        elif number == 2:
            for n2, field in _fields(v, what + " shape"):
                if n2 == 2:  # repeated Dim {1: size, 2: name}
                    entry["shape"].extend(d for n3, d in _fields(field, what + " dim") if n3 == 1)
                elif n2 == 3 and field:  # unknown_rank
                    raise CheckpointError(f"{what}: tensor of unknown rank")
        elif number in (3, 4, 5):
            entry[{3: "shard_id", 4: "offset", 5: "size"}[number]] = v
        elif number == 6:
            entry["crc32c"] = v
        elif number == 7:
            entry["slices"] += 1
    return entry


# ------------------------------------------------------------------ SSTable


def _block(index: bytes, offset: int, size: int, path: Path, what: str) -> bytes:
    """One SSTable block's contents after checking bounds, compression type and masked crc32c."""
    end = offset + size + BLOCK_TRAILER
    if end > len(index) - FOOTER_BYTES:
        raise CheckpointError(f"{path}: {what} block [{offset}, {end}) runs past the end of the file "
                              f"({len(index)} bytes): truncated or corrupt")
    contents, kind = index[offset: offset + size], index[offset + size]
    if kind != 0:
        raise CheckpointError(f"{path}: {what} block is compressed (type {kind}); only uncompressed "
                              "checkpoints (TF's default for bundles) are supported")
    stored = int.from_bytes(index[offset + size + 1: end], "little")
    if mask_crc(crc32c(index[offset: offset + size + 1])) != stored:
        raise CheckpointError(f"{path}: {what} block fails its crc32c check: corrupt")
    return contents


def _block_entries(block: bytes, path: Path, what: str) -> list[tuple[bytes, bytes]]:
    """Prefix-compressed (key, value) entries of a block; the restart array is only range-checked."""
    if len(block) < 4:
        raise CheckpointError(f"{path}: {what} block too short")
    restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * restarts
    if limit < 0:
        raise CheckpointError(f"{path}: {what} block has a corrupt restart array")
    entries, pos, key = [], 0, b""
    while pos < limit:
        shared, pos = _varint(block, pos, f"{path}: {what} block")
        unshared, pos = _varint(block, pos, f"{path}: {what} block")
        vlen, pos = _varint(block, pos, f"{path}: {what} block")
        if shared > len(key) or pos + unshared + vlen > limit:
            raise CheckpointError(f"{path}: {what} block has a corrupt entry at byte {pos}")
        key = key[:shared] + block[pos: pos + unshared]
        pos += unshared
        entries.append((key, block[pos: pos + vlen]))
        pos += vlen
    return entries


def _read_index(path: Path) -> list[tuple[str, bytes]]:
    """All (key, value) pairs of the SSTable at `path`, in key order."""
    try:
        index = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing (a TF checkpoint is PREFIX.index + PREFIX.data-00000-of-00001)") from None
    if len(index) < FOOTER_BYTES:
        raise CheckpointError(f"{path}: {len(index)} bytes, shorter than the 48-byte SSTable footer: truncated")
    footer = index[-FOOTER_BYTES:]
    if int.from_bytes(footer[-8:], "little") != MAGIC:
        raise CheckpointError(f"{path}: no SSTable magic in the last 8 bytes: truncated or not a TF checkpoint index")
    handles, pos = [], 0
    for _ in range(4):  # metaindex (offset, size), index (offset, size)
        v, pos = _varint(footer, pos, f"{path}: footer")
        handles.append(v)
    _block(index, handles[0], handles[1], path, "metaindex")
    pairs = []
    for _, handle in _block_entries(_block(index, handles[2], handles[3], path, "index"), path, "index"):
        offset, p = _varint(handle, 0, f"{path}: index block handle")
        size, _ = _varint(handle, p, f"{path}: index block handle")
        data = _block(index, offset, size, path, f"data (at byte {offset})")
        for key, value in _block_entries(data, path, f"data (at byte {offset})"):
            try:
                pairs.append((key.decode("utf-8"), value))
            except UnicodeDecodeError:
                raise CheckpointError(f"{path}: a key is not UTF-8: corrupt") from None
    return pairs


# ------------------------------------------------------------------ the bundle


def _prefix(prefix: str | Path) -> Path:
    prefix = Path(prefix)
    for suffix in (".index", ".data-00000-of-00001"):  # accept either file's path as the prefix
        if prefix.name.endswith(suffix):
            return prefix.with_name(prefix.name[: -len(suffix)])
    return prefix


def read_checkpoint(prefix: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the TF 1.x checkpoint `prefix` as {name: array} (NumPy, TF layout, its own dtype).

    Verifies the index (magic, block crcs), the header (one shard, little-endian), every entry's
    byte range and every tensor's masked crc32c; raises CheckpointError naming file and tensor."""
    prefix = _prefix(prefix)
    index_path = prefix.with_name(prefix.name + ".index")
    pairs = _read_index(index_path)
    if not pairs or pairs[0][0] != "":
        raise CheckpointError(f"{index_path}: no bundle header (empty key): not a TF tensor bundle index")
    header = dict(_fields(pairs[0][1], f"{index_path}: header"))
    shards, endianness = header.get(1, 0), header.get(2, 0)
    if shards != 1:
        raise CheckpointError(f"{index_path}: checkpoint has {shards} data shards; only single-shard "
                              "bundles (PREFIX.data-00000-of-00001) are supported")
    if endianness != 0:
        raise CheckpointError(f"{index_path}: big-endian checkpoint; only little-endian is supported")
    data_path = prefix.with_name(prefix.name + ".data-00000-of-00001")
    try:
        data = data_path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{data_path}: missing (its index is {index_path})") from None
    tensors = {}
    for name, value in pairs[1:]:
        e = _entry(value, f"{index_path}: tensor {name!r}")
        if e["slices"] or e["shard_id"] != 0:
            raise CheckpointError(f"{index_path}: tensor {name!r} is partitioned (shard {e['shard_id']}, "
                                  f"{e['slices']} slices); only single-shard, unpartitioned bundles are supported")
        if e["dtype"] not in DTYPES:
            raise CheckpointError(f"{index_path}: tensor {name!r} has TF dtype {e['dtype']}, which this reader "
                                  f"does not handle (supported: {sorted(DTYPES)}; 1 = float32)")
        dtype = np.dtype(DTYPES[e["dtype"]])
        shape = tuple(e["shape"])
        expected = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
        start, size = e["offset"], e["size"]
        if size != expected:
            raise CheckpointError(f"{index_path}: tensor {name!r} {dtype} {list(shape)} needs {expected} bytes, "
                                  f"its entry says {size}: corrupt")
        if start + size > len(data):
            raise CheckpointError(f"{data_path}: tensor {name!r} lies at bytes [{start}, {start + size}) but the "
                                  f"file has {len(data)}: truncated")
        raw = memoryview(data)[start: start + size]
        if e["crc32c"] is None:
            raise CheckpointError(f"{index_path}: tensor {name!r} has no crc32c in its entry")
        if mask_crc(crc32c(raw)) != e["crc32c"]:
            raise CheckpointError(f"{data_path}: tensor {name!r} (bytes [{start}, {start + size})) fails its "
                                  "crc32c check: the data file is corrupt")
        tensors[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return tensors


# ------------------------------------------------------------------ into a TemplateNet


def _to_theta(tensors: dict[str, np.ndarray], model, source: str) -> torch.Tensor:
    """Check names, shapes and dtype against `model.layout` (first mismatch named) and flatten."""
    for spec in model.layout:
        if spec.name not in tensors:
            raise ValueError(f"{source}: the architecture's {spec.name} {list(spec.shape)} is not in the file "
                             f"(it holds {sorted(tensors)}): wrong architecture ({model.describe()})")
        t = tensors[spec.name]
        if t.dtype != np.float32:
            raise ValueError(f"{source}: {spec.name} is {t.dtype}, expected float32")
        if tuple(t.shape) != spec.shape:
            raise ValueError(f"{source}: {spec.name} has shape {list(t.shape)} but the architecture's is "
                             f"{list(spec.shape)}: wrong architecture ({model.describe()})")
    extra = sorted(set(tensors) - {s.name for s in model.layout})
    if extra:
        raise ValueError(f"{source}: trainable variables {extra} have no place in the architecture "
                         f"({model.describe()}): wrong architecture")
    return model.flatten({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()})


def import_checkpoint(prefix: str | Path, model) -> torch.Tensor:
    """The flat TF-order float32 weight vector (for `model.theta`) from a TF 1.x checkpoint.

    Keeps the trainable `weight_i` / `bias_i` variables only (drops Adam slots and beta powers)."""
    tensors = read_checkpoint(prefix)
    trainable = {k: v for k, v in tensors.items() if TRAINABLE.fullmatch(k)}
    return _to_theta(trainable, model, f"checkpoint {_prefix(prefix)}")


def import_nwv(path: str | Path, model) -> torch.Tensor:
    """The flat weight vector from an NWV `*_network_weight.npy` (arrays in weight_0, bias_0, ... order)."""
    arrays = load_nwv_arrays(path)
    names = [f"{kind}_{i}" for i in range(len(arrays) // 2 + len(arrays) % 2) for kind in ("weight", "bias")]
    if len(arrays) != len(model.layout):
        raise ValueError(f"{path}: {len(arrays)} arrays {[list(a.shape) for a in arrays]}, but the architecture "
                         f"({model.describe()}) has {len(model.layout)} tensors: wrong architecture")
    return _to_theta(dict(zip(names, arrays)), model, str(path))
