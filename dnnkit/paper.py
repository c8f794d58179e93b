"""What the ten DNNs of the Weight Separation paper share: published numbers and the authors' data.

The ten top-level DNN folders (cifar10 mnist fmnist gtsrb svhn obs gsc esc10 us8k hhar) are DNN
folders like any other (docs/dnn_folders.md); this module holds what they would otherwise repeat:

* `PUBLISHED`: the papers' numbers (docs/algorithms.md §4, docs/originals.md §3): WS's weight counts and
  accuracies (stand-alone / after separation) and, for the five NWV DNNs, NWV's weight counts;
* `meta(...)`: a folder's META dict with those numbers filled in;
* `build(archs, arch, name)`: pick a folder's "ws" (default) or "nwv" architecture;
* `load_authors_npy(...)`: the WS authors' preprocessed `.npy` files (docs/datasets.md §1) ->
  `Dataset`: NHWC (or flattened NHWC) float -> NCHW float32, one-hot float labels -> int64, and a
  seeded validation split carved from train where the authors ship none;
* `read_mnist_idx(...)`: official IDX files (MNIST; the Debian Fashion-MNIST package).

Nothing is downloaded here. Missing files raise FileNotFoundError listing every missing file and
the command that fetches them (`./download_dataset.sh NAME`).
"""
from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnnkit import datasets
from dnnkit.checkpoint import import_checkpoint
from weightsep.dnn import Dataset, Split
from weightsep.model import TemplateNet
from weightsep.paths import data_dir as default_data_dir
from weightsep.paths import fixtures_dir

WS_ORDER = ("cifar10", "mnist", "fmnist", "gtsrb", "svhn", "obs", "gsc", "esc10", "us8k", "hhar")
ARCHS = ("ws", "nwv")
DOWNLOAD = "./download_dataset.sh"
VAL_FRACTION = 0.1  # validation carved from train (seed 0) where the authors ship no validation file
VAL_SEED = 0


@dataclass(frozen=True)
class Published:
    """One DNN's published numbers. Accuracies in %, weights = trainable parameters."""

    weights: int  # WS (PerCom 2022) model
    accuracy: float  # WS stand-alone
    accuracy_separated: float  # WS after weight separation
    nwv_weights: int | None = None  # NWV (MobiSys 2020) model of the same name, if any


PUBLISHED: dict[str, Published] = {
    "cifar10": Published(64_670, 71.05, 69.90, nwv_weights=45_490),
    "mnist": Published(65_402, 98.61, 98.45, nwv_weights=45_706),
    "fmnist": Published(69_966, 85.80, 87.35),
    "gtsrb": Published(68_639, 94.33, 94.34, nwv_weights=66_475),
    "svhn": Published(64_670, 88.75, 87.61, nwv_weights=45_490),
    "obs": Published(72_012, 99.96, 99.78),
    "gsc": Published(65_101, 73.02, 74.11, nwv_weights=65_531),
    "esc10": Published(65_154, 80.62, 79.49),
    "us8k": Published(66_854, 42.90, 42.83),
    "hhar": Published(65_114, 88.85, 87.83),
}
assert sum(p.weights for p in PUBLISHED.values()) == 667_582
WS_STORE = {"page_size": 512, "shared_pages": 128, "exclusive_pages": 94}  # WS's ten DNNs packed: 113,664 weights


def published_ws_point() -> dict:
    """WS's ten-DNN operating point from the numbers above: the mean accuracy change (pp) and the packing
    ratio by weight count (5.87x, as published) and by bytes as weightsep counts a store (float32 pages
    plus one page-table entry per DNN page, `precision.tables_bytes_for`)."""
    from weightsep.precision import tables_bytes_for

    P = WS_STORE["page_size"]
    pages = WS_STORE["shared_pages"] + WS_STORE["exclusive_pages"]
    weights = sum(p.weights for p in PUBLISHED.values())
    table = tables_bytes_for([p.weights for p in PUBLISHED.values()], P)
    change = sum(p.accuracy_separated - p.accuracy for p in PUBLISHED.values()) / len(PUBLISHED)
    return {"change_pp": change, "ratio_by_count": weights / (pages * P),
            "ratio_by_bytes": 4 * weights / (4 * pages * P + table)}


def meta(name: str, *, task: str, source: str, input: tuple[int, int, int], classes: int,
         files: Sequence[str], split: str, **extra) -> dict:
    """A paper DNN's META: the contract's keys plus the published numbers and its data files."""
    p = PUBLISHED[name]
    out = {
        "task": task,
        "source": source,
        "real": True,
        "input": tuple(input),
        "classes": classes,
        "paper": "Weight Separation (PerCom 2022)",
        "published_accuracy": {"stand_alone": p.accuracy, "separated": p.accuracy_separated},
        "published_weights": p.weights,
        "files": list(files),
        "split": split,
    }
    if p.nwv_weights is not None:
        out["nwv_published_weights"] = p.nwv_weights
    out.update(extra)
    return out


def build(archs: dict[str, Callable[[], TemplateNet]], arch: str, name: str) -> TemplateNet:
    """`archs[arch]()`, or a ValueError naming the architectures this DNN has."""
    if arch not in archs:
        raise ValueError(f"DNN {name!r} has no architecture {arch!r}; choose from {sorted(archs)}")
    return archs[arch]()


def authors_files(prefix: str, validation: bool) -> list[str]:
    """The authors' .npy file names (docs/datasets.md §1): PREFIX_{train,[validation,]test}_{data,label}.npy."""
    splits = ("train", "validation", "test") if validation else ("train", "test")
    return [f"{prefix}_{split}_{kind}.npy" for split in splits for kind in ("data", "label")]


def missing_error(name: str, missing: Iterable[Path], also: str = "") -> FileNotFoundError:
    """A FileNotFoundError listing every missing file and the command that fetches them."""
    missing = [str(p) for p in missing]
    msg = (f"DNN {name!r}: data file(s) missing: {', '.join(missing)}; fetch them with "
           f"`{DOWNLOAD} {name}`{also}")
    err = FileNotFoundError(errno.ENOENT, msg)
    err.missing = missing  # for callers and tests
    return err


def _labels(raw: np.ndarray, classes: int, path: Path) -> np.ndarray:
    """One-hot (float) labels [N, K] -> int64 [N]; integer labels [N] are accepted as they are."""
    raw = np.asarray(raw)
    if raw.ndim == 2:
        if raw.shape[1] != classes:
            raise ValueError(f"{path}: {raw.shape[1]} one-hot columns, the DNN has {classes} classes")
        y = raw.argmax(axis=1)
    elif raw.ndim == 1:
        y = raw
    else:
        raise ValueError(f"{path}: labels of shape {raw.shape}; want one-hot [N, {classes}] or [N]")
    y = np.asarray(y, dtype=np.int64)
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise ValueError(f"{path}: labels outside 0..{classes - 1}")
    return y


def nhwc_to_nchw(x: np.ndarray, input_shape: tuple[int, int, int], path: Path | str = "array") -> np.ndarray:
    """NHWC (or flattened NHWC, as the pintles reshape it) -> float32 NCHW of `input_shape` (C, H, W)."""
    c, h, w = input_shape
    x = np.asarray(x)
    if x.size != len(x) * c * h * w:
        raise ValueError(f"{path}: samples of shape {x.shape[1:]} do not hold H*W*C = {h}*{w}*{c} values")
    return np.ascontiguousarray(x.reshape(len(x), h, w, c).transpose(0, 3, 1, 2), dtype=np.float32)


def _npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)  # plain arrays: never unpickle a downloaded file


def carve_val(train: Split, fraction: float = VAL_FRACTION, seed: int = VAL_SEED) -> tuple[Split, Split]:
    """(train minus val, val): a seeded random `fraction` of train becomes the validation split."""
    val_idx, train_idx = datasets.seeded_split(len(train.y), [round(fraction * len(train.y))], seed)
    return Split(train.x[train_idx], train.y[train_idx]), Split(train.x[val_idx], train.y[val_idx])


def load_authors_npy(data_dir: Path, name: str, prefix: str, input_shape: tuple[int, int, int],
                     classes: int, validation: bool, also: str = "") -> Dataset:
    """The authors' .npy files in `data_dir/name/` as a Dataset (NCHW float32, int64 labels).

    Files are taken as preprocessed by the authors (docs/originals.md §4); only the layout changes.
    Without validation files, VAL_FRACTION of train (seed VAL_SEED) becomes the validation split.
    """
    folder = Path(data_dir) / name
    paths = [folder / f for f in authors_files(prefix, validation)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise missing_error(name, missing, also)
    splits = {}
    for split in ("train", "validation", "test") if validation else ("train", "test"):
        xp, yp = folder / f"{prefix}_{split}_data.npy", folder / f"{prefix}_{split}_label.npy"
        x, y = nhwc_to_nchw(_npy(xp), input_shape, xp), _labels(_npy(yp), classes, yp)
        if len(x) != len(y):
            raise ValueError(f"{xp}: {len(x)} samples but {yp.name} has {len(y)} labels")
        splits[split] = Split(x, y)
    if validation:
        return Dataset(splits["train"], splits["validation"], splits["test"])
    train, val = carve_val(splits["train"])
    return Dataset(train, val, splits["test"])


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_idx(stem: str, dirs: Sequence[Path]) -> Path | None:
    """The first `stem.gz` or `stem` found in `dirs`, in order, or None."""
    for d in dirs:
        for p in (Path(d) / f"{stem}.gz", Path(d) / stem):
            if p.is_file():
                return p
    return None


def read_mnist_idx(part: str, dirs: Sequence[Path], name: str, also: str = "") -> Split:
    """Official IDX images and labels of `part` ("train" or "t10k") as x/255, shaped [N, 1, 28, 28].

    Scaled as TF 1.x's MNIST reader does (uint8 -> float32, times 1/255), so values match it bit for bit.
    """
    stems = IDX_FILES[part]
    found = [find_idx(stem, dirs) for stem in stems]
    if None in found:
        missing = [Path(dirs[0]) / f"{stem}.gz" for stem, p in zip(stems, found) if p is None]
        raise missing_error(name, missing, also)
    images, labels = (datasets.read_idx(p) for p in found)
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f"{found[0]}: images {images.shape} and labels {labels.shape} are not an MNIST-style pair")
    x = images.reshape(-1, 1, 28, 28).astype(np.float32) * np.float32(1.0 / 255.0)
    return Split(x, labels.astype(np.int64))


def authors_weights(name: str, model: TemplateNet, data_dir: Path | None = None):
    """The WS authors' trained weights for `name` when the model is WS's architecture: their TF
    checkpoint from DATA_DIR/NAME/NAME.index (a copy of the authors' folder) or the originals'
    fixtures (fixtures_dir()/ws/NAME.index); None when neither is there (then weightsep trains)."""
    if model.n_weights != PUBLISHED[name].weights:  # e.g. arch="nwv": no WS checkpoint for it
        return None
    for prefix in (Path(data_dir or default_data_dir()) / name / name, fixtures_dir() / "ws" / name):
        if prefix.with_suffix(".index").is_file():
            return import_checkpoint(prefix, model)
    return None
