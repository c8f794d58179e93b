"""Watch: which of 7 shoulder-physiotherapy exercises a smartwatch's accelerometer and gyro record.

Source: `seglearn/data/watch_dataset.npy` in PyPI seglearn 1.2.5 (Burns et al. 2018; installed by
prepare_data.sh with `pip install --no-deps`): 140 recordings (10 subjects x 7 exercises x 2 sides)
of 6 channels (ax ay az wx wy wz) at 50 Hz. Each recording is cut into 128-step windows at stride
64. Split by subject: subjects 1-5 train, 6-7 validation, 8-10 test (no subject in two splits). Two
validation subjects, not one: the stopping rule and the control select on validation, and one
subject's 405 windows made that choice a draw (a new subject is what the test set measures).
Channels standardised with the train split's mean and std. Inputs are 1-row images (6, 1, 128)
and the convs run along time: narrow Conv(1, k, out, pool=(1, 3)) blocks (8/16/32 channels) shrink
128 steps to 2, then wide dense layers, so the Fisher concentrates in the few conv pages.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from dnnkit import datasets
from weightsep import prepared
from weightsep.dnn import Dataset, Split
from weightsep.model import Conv, TemplateNet

META = {
    "task": "exercise recognition from smartwatch IMU (human activity recognition)",
    "source": "PyPI seglearn 1.2.5: watch_dataset.npy (Burns et al. 2018, shoulder physiotherapy)",
    "licence": "BSD-3 (seglearn)",
    "real": True,
    "origin": "real",
    "input": (6, 1, 128),
    "classes": 7,
    "stands_in_for": "HHAR",
    "split": "subject-disjoint: subjects 1-5 train / 6-7 validation / 8-10 test; 128-step windows, stride 64",
}
TRAIN = {"steps": 5_000, "batch_size": 100, "lr": 1e-3, "eval_every": 100}  # it peaks early: check often
FILE = "watch.v2.npz"  # v2: subjects 6-7 validate (v1: 7 alone)
WINDOW, STRIDE = 128, 64
SUBJECTS = {"train": range(1, 6), "val": range(6, 8), "test": range(8, 11)}


def build_model() -> TemplateNet:
    convs = [Conv(1, 9, 8, pool=(1, 3)), Conv(1, 9, 16, pool=(1, 3)), Conv(1, 5, 32, pool=(1, 3))]
    return TemplateNet((6, 1, WINDOW), convs, dense=[256, 160], classes=7)


def _source() -> Path:
    spec = importlib.util.find_spec("seglearn")  # locates the package without importing it (needs sklearn)
    package = Path(spec.origin).parent if spec and spec.origin else Path("<site-packages>/seglearn")
    return datasets.require(package / "data" / "watch_dataset.npy", "pip install --no-deps seglearn==1.2.5")


def _build() -> tuple[Dataset, dict[str, np.ndarray]]:
    # A third-party pickled dict, read once here at prepare time; our own files are never pickled.
    source = np.load(_source(), allow_pickle=True).item()
    windows, labels, subjects = [], [], []
    for series, label, subject in zip(source["X"], source["y"], source["subject"]):
        starts = range(0, len(series) - WINDOW + 1, STRIDE)
        windows += [series[s : s + WINDOW].T[:, None, :] for s in starts]
        labels += [label] * len(starts)
        subjects += [subject] * len(starts)
    x, y, subjects = np.stack(windows), np.asarray(labels, np.int64), np.asarray(subjects, np.int64)
    parts = {split: np.flatnonzero(np.isin(subjects, list(ids))) for split, ids in SUBJECTS.items()}
    xs = datasets.standardise(*(x[i] for i in parts.values()), axis=(0, 2, 3))
    data = Dataset(*(Split(xi, y[i]) for xi, i in zip(xs, parts.values())))
    return data, {split: subjects[i] for split, i in parts.items()}


def prepare(data_dir: Path) -> None:
    datasets.prepare_npz(Path(data_dir) / FILE, _build)


def load_data(data_dir: Path) -> Dataset:
    return prepared.load_npz(Path(data_dir) / FILE)
