"""SVHN (WS paper): which digit a 32x32 colour crop of a house number shows.

Source: the WS authors' preprocessed .npy files (docs/paper_dnns.md), in DATA_DIR/svhn/:
svhn_{train,validation,test}_{data,label}.npy; fetch them with `./download_dataset.sh svhn`.
Split: the authors' train / validation / test.
Preprocessing: the authors' (pre-made .npy; docs/originals.md §4); here only NHWC -> NCHW and
one-hot -> int64.
Model: build_model() / arch="ws": WS's SVHN, 64,670 weights, Sigmoid hidden dense layers;
arch="nwv": NWV's smaller SVHN, 45,490 weights (docs/originals.md §1.1, §3.2).
"""
from __future__ import annotations

from pathlib import Path

from dnnkit import paper
from weightsep.dnn import Dataset
from weightsep.model import Conv, TemplateNet

NAME = "svhn"
INPUT = (3, 32, 32)  # NHWC 32x32x3
CLASSES = 10
PREFIX = "svhn"
FILES = paper.authors_files(PREFIX, validation=True)
META = paper.meta(
    NAME,
    task="house-number digit recognition (32x32 colour images)",
    source="the WS authors' preprocessed .npy files (SVHN)",
    input=INPUT,
    classes=CLASSES,
    files=[f"{NAME}/{f}" for f in FILES],
    split="authors' train / validation / test",
)
# the WS checkpoint's Adam steps (beta2_power), at a constant lr (no plateau rule), as the originals trained
TRAIN = {"steps": 32_600, "batch_size": 100, "lr": 1e-3, "patience": None}
ARCHS = {
    # 3x3x3x16, 3x3x16x32, 3x3x32x52 -> 2x2x52 -> 208-128-128-10, Sigmoid hidden
    "ws": lambda: TemplateNet(INPUT, [Conv(3, 3, 16), Conv(3, 3, 32), Conv(3, 3, 52)], dense=[128, 128],
                              classes=CLASSES, hidden_act="sigmoid"),
    # 3x3x3x4, 3x3x4x8, 3x3x8x16 -> 2x2x16 -> 64-128-256-10, LeakyReLU
    "nwv": lambda: TemplateNet(INPUT, [Conv(3, 3, 4), Conv(3, 3, 8), Conv(3, 3, 16)], dense=[128, 256],
                               classes=CLASSES),
}


def build_model(arch: str = "ws") -> TemplateNet:
    return paper.build(ARCHS, arch, NAME)


def load_weights(model: TemplateNet):
    """The authors' trained checkpoint (WS architecture only), so the paper's DNNs are imported, not trained."""
    return paper.authors_weights(NAME, model)


def load_data(data_dir: Path) -> Dataset:
    return paper.load_authors_npy(data_dir, NAME, PREFIX, INPUT, CLASSES, validation=True)
