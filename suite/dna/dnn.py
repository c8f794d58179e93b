"""DNA: whether a primate gene sequence's centre is an exon/intron or intron/exon splice junction, or neither.

Source: `DNA.rda` of R's mlbench (the Statlog version of UCI's splice-junction data), unpacked from
Debian's r-cran-mlbench into $WEIGHTSEP_CACHE/sources/mlbench by prepare_data.sh (without installing
R): 3,186 sequences of 60 nucleotides, the junction (if any) between positions 30 and 31. Split:
Statlog's, the first 2,000 rows train (a random (seed 0) 200 of them are the validation set) and the
last 1,186 test; the class counts (train 464 ei / 485 ie / 1,051 n, test 303 / 280 / 603) match
Statlog's. The official split is kept although 82 test sequences also occur among the first 2,000.
Preprocessing: columns V1..V180 are 60 positions x 3 indicators, position-major (V1-V3 position 1);
A = 100, C = 010, G = 001, T = 000 (checked against the data: 'ei' rows read GT at positions 31-32,
'ie' rows AG at 29-30), so each row becomes a 1-row image (3 indicators, 1, 60) in NCHW order. The
0/1 values are kept as they are, not standardised: per-position scaling would give one nucleotide
different values at different positions, against the convs' weight sharing along the sequence.
Narrow Conv(1, 3, out) blocks (8/16/32 channels; pool 1x1, then 1x2 twice) shrink 60 positions to
13, keeping where along the sequence a motif sits, then dense layers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dnnkit import datasets
from weightsep import prepared
from weightsep.dnn import Dataset, Split
from weightsep.model import Conv, TemplateNet

POSITIONS, CODES = 60, 3

META = {
    "task": "splice-junction recognition in primate DNA sequences (exon/intron, intron/exon, neither)",
    "source": "Debian r-cran-mlbench 2.1-3-1: DNA.rda (Statlog DNA, from UCI Molecular Biology Splice-junction)",
    "licence": "GPL-2 (mlbench package); UCI / Statlog data",
    "real": True,
    "origin": "real",
    "input": (CODES, 1, POSITIONS),
    "classes": 3,
    "stands_in_for": "a real non-image, non-audio sequence task (the papers' sensor/sequence slot)",
    "split": "Statlog's: first 2,000 train (seeded 200 of them validation) / last 1,186 test",
}
TRAIN = {"steps": 5_000, "batch_size": 100, "lr": 1e-3, "eval_every": 50}  # it peaks early: check often
FILE = "dna.npz"
N_TRAIN, N_VAL = 2000, 200


def build_model() -> TemplateNet:
    # no pooling after the first conv, then 1x2: the junction signals sit at fixed positions
    convs = [Conv(1, 3, 8, pool=(1, 1)), Conv(1, 3, 16, pool=(1, 2)), Conv(1, 3, 32, pool=(1, 2))]
    return TemplateNet((CODES, 1, POSITIONS), convs, dense=[128, 64], classes=3)


def decode(frame) -> tuple[np.ndarray, np.ndarray]:
    """The mlbench frame as inputs [N, 3, 1, 60] (float32 0/1) and labels (0 ei, 1 ie, 2 n)."""
    columns = [f"V{i}" for i in range(1, CODES * POSITIONS + 1)]
    codes = np.stack([frame[c].cat.codes.to_numpy() for c in columns], axis=1)  # R factors
    levels = {tuple(frame[c].cat.categories) for c in columns}
    if levels != {("0", "1")} or codes.min() < 0:
        raise ValueError(f"DNA.rda: indicator columns are not all 0/1 (levels {levels}, or missing values)")
    flat = codes.astype(np.int64)  # levels ("0", "1"): the code is the value
    x = flat.reshape(-1, POSITIONS, CODES)  # position-major: V1-V3 are position 1
    if x.sum(axis=2).max() > 1:
        raise ValueError("DNA.rda: a position has more than one indicator set")
    x = x.transpose(0, 2, 1)[:, :, None, :].astype(np.float32)  # (position, code) -> (code, 1, position)
    y = frame["Class"].cat.codes.to_numpy(np.int64)
    return x, y


def _build() -> tuple[Dataset, dict[str, np.ndarray]]:
    frame = datasets.read_mlbench("DNA")
    if list(frame["Class"].cat.categories) != ["ei", "ie", "n"]:
        raise ValueError(f"DNA.rda: unexpected classes {list(frame['Class'].cat.categories)}")
    x, y = decode(frame)
    val, train = datasets.seeded_split(N_TRAIN, [N_VAL], seed=0)
    rows = {"train": train, "val": val, "test": np.arange(N_TRAIN, len(y))}
    return Dataset(*(Split(x[i], y[i]) for i in rows.values())), rows


def prepare(data_dir: Path) -> None:
    datasets.prepare_npz(Path(data_dir) / FILE, _build)


def load_data(data_dir: Path) -> Dataset:
    return prepared.load_npz(Path(data_dir) / FILE)
