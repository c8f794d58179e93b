"""Satellite: land-cover class of a Landsat MSS pixel from its 3x3 neighbourhood in 4 spectral bands.

Source: `Satellite.rda` of R's mlbench (UCI Statlog Landsat), unpacked from Debian's r-cran-mlbench
into $WEIGHTSEP_CACHE/sources/mlbench by prepare_data.sh (without installing R). Split: rows
0-4,434 are UCI's sat.trn, of which a random (seed 0) 10% (443) is the validation set; rows
4,435-6,434 (sat.tst) are the test set. The 36 columns x.1..x.36 are the 4 spectral bands of each
of the 9 pixels, pixel by pixel, left to right and top to bottom (mlbench's ?Satellite: the central
pixel is x.17..x.20), so each row is reshaped into a tiny image (4 bands, 3, 3) in NCHW order; each
of the 36 values is standardised with the train split's mean and std. Two 2x2 VALID convs (pool
1x1: the map is only 3x3) shrink it to 1x1, then dense layers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dnnkit import datasets
from weightsep import prepared
from weightsep.dnn import Dataset
from weightsep.model import Conv, TemplateNet

BANDS = 4

META = {
    "task": "land-cover classification from multispectral satellite pixels",
    "source": "Debian r-cran-mlbench 2.1-3-1: Satellite.rda (UCI Statlog Landsat Satellite)",
    "licence": "GPL-2 (mlbench package); UCI data",
    "real": True,
    "origin": "real",
    "input": (BANDS, 3, 3),
    "classes": 6,
    "stands_in_for": "CIFAR-10 / obstacle avoidance (real camera-like imagery)",
    "split": "official sat.trn 4,435 (seeded 443 of them validation) / sat.tst 2,000",
}
TRAIN = {"steps": 30_000, "batch_size": 100, "lr": 1e-3}
FILE = "satellite.npz"
N_TRAIN = 4435


def build_model() -> TemplateNet:
    # narrow convs, wide dense: the Fisher concentrates in the few conv pages (few exclusive pages)
    convs = [Conv(2, 2, 16, pool=(1, 1)), Conv(2, 2, 32, pool=(1, 1))]
    return TemplateNet((BANDS, 3, 3), convs, dense=[256, 200], classes=6)


def _build() -> tuple[Dataset, dict[str, np.ndarray]]:
    frame = datasets.read_mlbench("Satellite")
    x = frame[[f"x.{i}" for i in range(1, 37)]].to_numpy(np.float64)  # pixel-major: (pixel, band)
    x = x.reshape(-1, 3, 3, BANDS).transpose(0, 3, 1, 2)  # (row, col, band) -> NCHW (band, row, col)
    y = frame["classes"].cat.codes.to_numpy(np.int64)
    return datasets.official_split(x, y, N_TRAIN, N_TRAIN // 10)


def prepare(data_dir: Path) -> None:
    datasets.prepare_npz(Path(data_dir) / FILE, _build)


def load_data(data_dir: Path) -> Dataset:
    return prepared.load_npz(Path(data_dir) / FILE)
