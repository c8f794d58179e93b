"""Letters: which of the 26 capital letters a glyph is, from 16 integer features of its image.

Source: `LetterRecognition.rda` of R's mlbench (UCI Letter Recognition), unpacked from Debian's
r-cran-mlbench into $WEIGHTSEP_CACHE/sources/mlbench by prepare_data.sh (without installing R).
Split: UCI's convention, the first 16,000 rows train (a random (seed 0) 2,000 of them are the
validation set) and the last 4,000 test. Features standardised with the train split's mean and std.
Dense-only model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dnnkit import datasets
from weightsep import prepared
from weightsep.dnn import Dataset
from weightsep.model import TemplateNet

META = {
    "task": "letter recognition from glyph-image features",
    "source": "Debian r-cran-mlbench 2.1-3-1: LetterRecognition.rda (UCI Letter Recognition)",
    "licence": "GPL-2 (mlbench package); UCI data",
    "real": True,
    "origin": "real",
    "input": (16,),
    "classes": 26,
    "stands_in_for": "GTSRB (many classes, high-accuracy regime)",
    "split": "first 16,000 train (seeded 2,000 of them validation) / last 4,000 test",
}
TRAIN = {"steps": 60_000, "batch_size": 100, "lr": 1e-3}
FILE = "letters.npz"
N_TRAIN = 16000


def build_model() -> TemplateNet:
    return TemplateNet((16,), [], dense=[320, 160], classes=26)


def _build() -> tuple[Dataset, dict[str, np.ndarray]]:
    frame = datasets.read_mlbench("LetterRecognition")
    x = frame.drop(columns="lettr").to_numpy(np.float64)
    y = frame["lettr"].cat.codes.to_numpy(np.int64)
    return datasets.official_split(x, y, N_TRAIN, 2000)


def prepare(data_dir: Path) -> None:
    datasets.prepare_npz(Path(data_dir) / FILE, _build)


def load_data(data_dir: Path) -> Dataset:
    return prepared.load_npz(Path(data_dir) / FILE)
