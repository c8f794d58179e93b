"""GTSRB (WS paper): which of 43 German traffic signs a 32x32 greyscale image shows.

Source: the WS authors' preprocessed .npy files (docs/paper_dnns.md), in DATA_DIR/gtsrb/:
GTSRB_{train,test}_{data,label}.npy; fetch them with `./download_dataset.sh gtsrb`.
Split: the authors' train / test; validation = a seeded 10% of train (dnnkit.paper.carve_val).
Preprocessing: the authors' (greyscale 32x32, each image divided by its own L2 norm; docs/originals.md §4);
here only (flattened) NHWC -> NCHW and one-hot -> int64.
Model: build_model() / arch="ws": WS's GTSRB, 68,639 weights; arch="nwv": NWV's GTSRB, 66,475
weights (docs/originals.md §1.1, §3.2).
"""
from __future__ import annotations

from pathlib import Path

from dnnkit import paper
from weightsep.dnn import Dataset
from weightsep.model import Conv, TemplateNet

NAME = "gtsrb"
INPUT = (1, 32, 32)  # NHWC 32x32x1
CLASSES = 43
PREFIX = "GTSRB"
FILES = paper.authors_files(PREFIX, validation=False)
META = paper.meta(
    NAME,
    task="traffic-sign recognition (32x32 greyscale images)",
    source="the WS authors' preprocessed .npy files (GTSRB, per-image L2-normalised)",
    input=INPUT,
    classes=CLASSES,
    files=[f"{NAME}/{f}" for f in FILES],
    split="authors' train / test; val = seeded 10% of train (seed 0)",
)
# the WS checkpoint's Adam steps (beta2_power), at a constant lr (no plateau rule), as the originals trained
TRAIN = {"steps": 5_800, "batch_size": 100, "lr": 1e-3, "patience": None}
ARCHS = {
    # 3x3x1x16, 3x3x16x32, 3x3x32x52 -> 2x2x52 -> 208-128-128-43, LeakyReLU
    "ws": lambda: TemplateNet(INPUT, [Conv(3, 3, 16), Conv(3, 3, 32), Conv(3, 3, 52)], dense=[128, 128],
                              classes=CLASSES),
    # 3x3x1x8, 3x3x8x16, 3x3x16x32 -> 2x2x32 -> 128-128-256-43, LeakyReLU
    "nwv": lambda: TemplateNet(INPUT, [Conv(3, 3, 8), Conv(3, 3, 16), Conv(3, 3, 32)], dense=[128, 256],
                               classes=CLASSES),
}


def build_model(arch: str = "ws") -> TemplateNet:
    return paper.build(ARCHS, arch, NAME)


def load_weights(model: TemplateNet):
    """The authors' trained checkpoint (WS architecture only), so the paper's DNNs are imported, not trained."""
    return paper.authors_weights(NAME, model)


def load_data(data_dir: Path) -> Dataset:
    return paper.load_authors_npy(data_dir, NAME, PREFIX, INPUT, CLASSES, validation=False)
