"""Prepared data on disk: a DNN's `Dataset` as one .npz, written aligned and read memory-mapped.

The .npz holds x_train y_train x_val y_val x_test y_test (float16 / int64: inputs are stored at half
precision, which halves the memory of ten DNNs' data held at once; models compute in float32) and,
optionally, groups_train groups_val groups_test: the unit that must not cross splits (a source row,
or a subject), kept so that tests can check that the splits are disjoint.

The .npz is uncompressed, each array's data aligned to 64 bytes inside the file (write_npz), so
load_npz memory-maps the arrays instead of reading them: no decompression at process start, pages
read on first use and shared through the page cache by every process that loads the file (training
workers, distributed ranks, subprocesses), copy-on-write so the arrays stay writable. It is still
a plain .npz to np.load. The zip comment marks the layout and holds a sha256 of the arrays, which
keys the trained-model cache without reading the file (stored_digest, read by weightsep.train). An
older compressed .npz still loads (into memory). Building the files from their sources is the DNN
folders' business (the repository's folders use dnnkit.datasets.prepare_npz).

    save_npz(data_dir / "letters.npz", dataset, groups)
    dataset = load_npz(data_dir / "letters.npz")     # memory-mapped
"""
from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import math
import mmap
import os
import re
import struct
import typing
import zipfile
import zlib
from collections.abc import Collection
from pathlib import Path

import numpy as np

from .dnn import Dataset, Split
from .files import atomic_file

SPLITS = ("train", "val", "test")
NPZ_KEYS = tuple(f"{kind}_{split}" for split in SPLITS for kind in ("x", "y"))


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed, aligned .npz atomically (files.atomic_file: replaced, never rewritten in
    place, so processes that have the old file mapped go on reading the old inode)."""
    with atomic_file(path) as f:
        _write_archive(f, arrays)
        f.flush()
        _check_written(f, f.name)


# The layout written by write_npz: a zip whose members are stored (not deflated) .npy files, each
# array's data starting at a multiple of ALIGN bytes (the members' local "extra" field pads the
# zip headers; .npy headers are already padded to 64), so load_npz maps the data straight from the
# page cache. The zip comment marks the layout and carries a sha256 of the arrays (array_digest).
ALIGN = 64
LAYOUT = b"weightsep-data/1"
_PAD_ID = 0xD935  # the zip extra-field id for alignment padding (as Android's zipalign writes it)
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra field length
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # same arrays, same bytes
_COMMENT = re.compile(re.escape(LAYOUT) + rb" sha256:([0-9a-f]{64})")


def array_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays' names, dtypes, shapes and bytes (C order), in name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.asarray(arrays[name])
        digest.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode() + b"\n")
        digest.update(memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8)))
    return digest.hexdigest()


def _npy_header(a: np.ndarray) -> bytes:
    header = io.BytesIO()
    info = np.lib.format.header_data_from_array_1_0(a)
    try:
        np.lib.format.write_array_header_1_0(header, info)
    except ValueError:  # a header over 64 KiB (a very long shape or record dtype)
        header = io.BytesIO()
        np.lib.format.write_array_header_2_0(header, info)
    return header.getvalue()


def _write_archive(f: typing.BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """The aligned, uncompressed .npz of `arrays` into the empty, seekable file `f`."""
    arrays = {k: (a if a.flags.c_contiguous else a.copy(order="C")) for k, a in
              ((k, np.asarray(a)) for k, a in arrays.items())}
    for name, a in arrays.items():
        if a.dtype.hasobject:
            raise ValueError(f"array {name!r} holds Python objects; only plain arrays are stored")
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, a in arrays.items():
            header = _npy_header(a)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_STORED
            info.file_size = len(header) + a.nbytes
            zip64 = info.file_size * 1.05 > zipfile.ZIP64_LIMIT  # zipfile then adds a 20-byte extra field
            fixed = f.tell() + _LOCAL_HEADER.size + len(info.filename.encode()) + (20 if zip64 else 0)
            pad = (-(fixed + 6)) % ALIGN  # 6: the padding field's id, size and alignment
            info.extra = struct.pack("<HHH", _PAD_ID, 2 + pad, ALIGN) + bytes(pad)
            with archive.open(info, "w", force_zip64=zip64) as member:
                member.write(header)
                member.write(memoryview(a.reshape(-1).view(np.uint8)))
        archive.comment = LAYOUT + b" sha256:" + array_digest(arrays).encode()


def _check_written(f: typing.BinaryIO, name: str) -> None:
    """Refuse a written archive that load_npz could not map (a zipfile that lays members out differently)."""
    f.seek(0)
    members = _members(f, name)
    if not all(m.mappable for m in members.values()):
        raise RuntimeError(f"{name}: wrote misaligned members {sorted(k for k, m in members.items() if not m.mappable)}")


@dataclasses.dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    offset: int  # of the array's first byte in the file, when the member is stored (else -1)

    @property
    def mappable(self) -> bool:
        return self.offset >= 0 and self.offset % ALIGN == 0


def _members(f: typing.BinaryIO, name: str) -> dict[str, _Member]:
    """Each .npy member of the open .npz `f`, from the zip's directory and the headers alone.

    ValueError (naming `name`) when the zip or a header is damaged, or a stored member's data would
    run past the end of the file, so that a truncated file is never mapped (reading past a mapping's
    end is a crash, not an exception)."""
    size = os.fstat(f.fileno()).st_size
    try:
        with zipfile.ZipFile(f) as archive:
            if archive.comment.startswith(LAYOUT) and not _COMMENT.fullmatch(archive.comment):
                raise zipfile.BadZipFile("its end (the zip comment) is cut short")  # zipfile lets that pass
            members = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                if info.compress_type == zipfile.ZIP_STORED:
                    f.seek(info.header_offset)
                    sig, n_name, n_extra = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size).ljust(_LOCAL_HEADER.size, b"\0"))
                    if sig != b"PK\x03\x04" or f.read(n_name) != info.orig_filename.encode(
                            "utf-8" if info.flag_bits & 0x800 else "cp437"):
                        raise zipfile.BadZipFile(f"bad local header of {info.filename}")
                    start = info.header_offset + _LOCAL_HEADER.size + n_name + n_extra
                    f.seek(start)
                    shape, fortran, dtype = _read_npy_header(f)
                    offset = f.tell()
                    nbytes = math.prod(shape) * dtype.itemsize
                    if offset - start + nbytes != info.file_size or info.compress_size != info.file_size:
                        raise zipfile.BadZipFile(f"{info.filename}: header says {shape} {dtype}, member holds "
                                                 f"{info.file_size - (offset - start)} bytes of data")
                    if offset + nbytes > size:
                        raise zipfile.BadZipFile(f"{info.filename} runs past the end of the file ({size} bytes)")
                else:
                    with archive.open(info) as member:
                        shape, fortran, dtype = _read_npy_header(member)
                    offset = -1
                members[info.filename.removesuffix(".npy")] = _Member(info, dtype, shape, fortran, offset)
            return members
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError, zlib.error, struct.error,
            NotImplementedError) as e:
        raise ValueError(f"{name}: not a readable .npz ({e}); rebuild it with: python -m weightsep prepare") from e


def _read_npy_header(f: typing.BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    major, _ = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if dtype.hasobject:
        raise ValueError("array holds Python objects (a pickle), refused")
    return shape, fortran, dtype


def read_arrays(path: Path, keys: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """The arrays of the .npz at `path` (all, or those named in `keys`): stored, aligned members
    memory-mapped copy-on-write (writable; writes stay private to the process and never reach the
    file), any other member (deflated, as in older files) read into memory. FileNotFoundError
    naming the file if it is absent, ValueError naming it if it is damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(errno.ENOENT, "prepared data file missing", str(path))
    with open(path, "rb") as f:
        members = _members(f, str(path))
        missing = sorted(set(keys or ()) - set(members))
        if missing:
            raise ValueError(f"{path}: lacks {missing}; rebuild it with: python -m weightsep prepare")
        wanted = {k: m for k, m in members.items() if keys is None or k in keys}
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if any(
            m.mappable for m in wanted.values()) else None  # one mapping for the file; closed with its last array
        arrays = {}
        try:
            with zipfile.ZipFile(f) as archive:
                for key, m in wanted.items():
                    if m.mappable:
                        arrays[key] = np.ndarray(m.shape, m.dtype, buffer=mapped, offset=m.offset,
                                                 order="F" if m.fortran_order else "C")
                    else:
                        with archive.open(m.info) as member:
                            arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
        except (zipfile.BadZipFile, ValueError, EOFError, zlib.error) as e:
            raise ValueError(f"{path}: not a readable .npz ({e}); rebuild it with: python -m weightsep prepare") from e
        return arrays


def stored_digest(path: Path) -> str | None:
    """The sha256 of the arrays that write_npz stored in the .npz at `path` ("arrays-sha256:<hex>"),
    read from the zip's end alone; None for any other file (an older .npz, not a zip, absent)."""
    try:
        with zipfile.ZipFile(path) as archive:
            match = _COMMENT.fullmatch(archive.comment)
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return None if match is None else "arrays-sha256:" + match[1].decode()


def is_valid_npz(path: Path) -> bool:
    """True when `path` is a readable .npz in the current layout (uncompressed, aligned: mapped, not
    read, by load_npz) holding every split's x (float16) and y. An older compressed file is not."""
    try:
        with open(path, "rb") as f:
            members = _members(f, str(path))
    except (OSError, ValueError):
        return False
    return (stored_digest(path) is not None and set(NPZ_KEYS) <= set(members) and all(m.mappable for m in members.values())
            and all(members[f"x_{split}"].dtype == np.float16 for split in SPLITS))


def save_npz(path: Path, data: Dataset, groups: dict[str, np.ndarray] | None = None) -> None:
    """Store a Dataset (and optional per-split `groups`, keyed by split name) as one .npz; inputs as float16."""
    arrays = {}
    for split in SPLITS:
        s = getattr(data, split)
        if np.abs(s.x).max(initial=0) > np.finfo(np.float16).max:
            raise ValueError(f"{path}: {split} inputs exceed float16's range; standardise them first")
        arrays[f"x_{split}"], arrays[f"y_{split}"] = s.x.astype(np.float16), s.y
    for split, g in (groups or {}).items():
        if len(g) != len(getattr(data, split).y):
            raise ValueError(f"groups_{split} has {len(g)} entries for {len(getattr(data, split).y)} samples")
        arrays[f"groups_{split}"] = np.asarray(g, dtype=np.int64)
    write_npz(path, **arrays)


def load_npz(path: Path) -> Dataset:
    """The Dataset stored at `path`, memory-mapped (no copy: pages are read from the page cache on
    first use and shared by every process that loads the file; arrays are writable, copy-on-write).
    FileNotFoundError naming the file if it is absent; ValueError naming it if it is damaged or
    lacks a split. An older compressed file is still read (into memory); `prepare` converts it."""
    arrays = read_arrays(path, NPZ_KEYS)
    return Dataset(*(Split(arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in SPLITS))
