"""Satellite: land-cover class of a Landsat MSS pixel from its 3x3 neighbourhood in 4 spectral bands.

Source: `Satellite.rda` of R's mlbench (UCI Statlog Landsat), unpacked from Debian's r-cran-mlbench
into $WEIGHTSEP_CACHE/sources/mlbench by prepare_data.sh (without installing R). Split: rows
0-4,434 are UCI's sat.trn, of which a random (seed 0) 10% (443) is the validation set; rows
4,435-6,434 (sat.tst) are the test set. 36 features (3x3 pixels x 4 bands), standardised with the
train split's mean and std. Dense-only model.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from weightsep import datasets
from weightsep.dnn import Dataset, Split
from weightsep.model import TemplateNet

META = {
    "task": "land-cover classification from multispectral satellite pixels",
    "source": "Debian r-cran-mlbench 2.1-3-1: Satellite.rda (UCI Statlog Landsat Satellite)",
    "licence": "GPL-2 (mlbench package); UCI data",
    "real": True,
    "input": (36,),
    "classes": 6,
    "stands_in_for": "CIFAR-10 / obstacle avoidance (real camera-like imagery)",
    "split": "official sat.trn 4,435 (seeded 443 of them validation) / sat.tst 2,000",
}
TRAIN = {"steps": 6000, "batch_size": 100, "lr": 1e-3}
FILE = "satellite.npz"
N_TRAIN = 4435


def build_model() -> TemplateNet:
    return TemplateNet((36,), [], dense=[256, 192], classes=6)


def _build() -> tuple[Dataset, dict[str, np.ndarray]]:
    frame = datasets.read_mlbench("Satellite")
    x = frame.drop(columns="classes").to_numpy(np.float64)
    y = frame["classes"].cat.codes.to_numpy(np.int64)
    val, train = datasets.seeded_split(N_TRAIN, [N_TRAIN // 10], seed=0)
    test = np.arange(N_TRAIN, len(y))
    xs = datasets.standardise(x[train], x[val], x[test])
    data = Dataset(*(Split(xi, y[i]) for xi, i in zip(xs, (train, val, test))))
    return data, {"train": train, "val": val, "test": test}


def prepare(data_dir: Path) -> None:
    datasets.prepare_npz(Path(data_dir) / FILE, _build)


def load_data(data_dir: Path) -> Dataset:
    return datasets.load_npz(Path(data_dir) / FILE)
