"""HHAR (WS paper): which of 6 activities a window of smartphone/smartwatch accelerometer data shows.

Source: the WS authors' preprocessed .npy files (docs/paper_dnns.md), in DATA_DIR/hhar/:
hhar_{train,test}_{data,label}.npy; fetch them with `./download_dataset.sh hhar`.
Split: the authors' train / test; validation = a seeded 10% of train (dnnkit.paper.carve_val).
Preprocessing: the authors' (a 1-channel 20x120 sensor image, pre-made .npy; docs/originals.md §4); here
only NHWC 20x120x1 -> NCHW (1, 20, 120) and one-hot -> int64.
Model: build_model() / arch="ws" (the only one; shared by WS and NWV repository B): 65,114 weights,
last kernel 2x3, one Sigmoid hidden dense layer (docs/originals.md §3.2).
"""
from __future__ import annotations

from pathlib import Path

from dnnkit import paper
from weightsep.dnn import Dataset
from weightsep.model import Conv, TemplateNet

NAME = "hhar"
INPUT = (1, 20, 120)  # NHWC 20x120x1
CLASSES = 6
PREFIX = "hhar"
FILES = paper.authors_files(PREFIX, validation=False)
META = paper.meta(
    NAME,
    task="human activity recognition (accelerometer, 1-channel 20x120 sensor image)",
    source="the WS authors' preprocessed .npy files (HHAR)",
    input=INPUT,
    classes=CLASSES,
    files=[f"{NAME}/{f}" for f in FILES],
    split="authors' train / test; val = seeded 10% of train (seed 0)",
)
# the checkpoint's Adam steps (beta2_power), at a constant lr (no plateau rule), as the originals trained
TRAIN = {"steps": 6_200, "batch_size": 100, "lr": 1e-3, "patience": None}
ARCHS = {
    # 3x3x1x8, 3x3x8x32, 2x3x32x64 -> 1x13x64 -> 832-60-6, Sigmoid hidden
    "ws": lambda: TemplateNet(INPUT, [Conv(3, 3, 8), Conv(3, 3, 32), Conv(2, 3, 64)], dense=[60],
                              classes=CLASSES, hidden_act="sigmoid"),
}


def build_model(arch: str = "ws") -> TemplateNet:
    return paper.build(ARCHS, arch, NAME)


def load_weights(model: TemplateNet):
    """The authors' trained checkpoint (WS architecture only), so the paper's DNNs are imported, not trained."""
    return paper.authors_weights(NAME, model)


def load_data(data_dir: Path) -> Dataset:
    return paper.load_authors_npy(data_dir, NAME, PREFIX, INPUT, CLASSES, validation=False)
