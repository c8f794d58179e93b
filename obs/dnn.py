"""OBS (WS paper): obstacle avoidance, which of 4 steering actions a 45x80 greyscale camera image calls for.

Source: the WS authors' preprocessed .npy files (docs/paper_dnns.md), in DATA_DIR/obs/:
obstacle_{train,validation,test}_{data,label}.npy; fetch them with `./download_dataset.sh obs`.
Split: the authors' train / validation / test.
Preprocessing: the authors' (pre-made .npy; docs/originals.md §4); here only NHWC 45x80x1 -> NCHW and
one-hot -> int64.
Model: build_model() / arch="ws" (the only one; shared by WS and NWV repository B): 72,012 weights,
first kernel 12x24 (docs/originals.md §3.2).
"""
from __future__ import annotations

from pathlib import Path

from dnnkit import paper
from weightsep.dnn import Dataset
from weightsep.model import Conv, TemplateNet

NAME = "obs"
INPUT = (1, 45, 80)  # NHWC 45x80x1
CLASSES = 4
PREFIX = "obstacle"
FILES = paper.authors_files(PREFIX, validation=True)
META = paper.meta(
    NAME,
    task="obstacle avoidance (4 actions from 45x80 greyscale images)",
    source="the WS authors' preprocessed .npy files (obstacle avoidance)",
    input=INPUT,
    classes=CLASSES,
    files=[f"{NAME}/{f}" for f in FILES],
    split="authors' train / validation / test",
)
# the checkpoint's Adam steps (beta2_power), at a constant lr (no plateau rule), as the originals trained
TRAIN = {"steps": 4_800, "batch_size": 100, "lr": 1e-3, "patience": None}
ARCHS = {
    # 12x24x1x8, 3x3x8x32, 3x3x32x32 -> 2x5x32 -> 320-128-128-4, LeakyReLU
    "ws": lambda: TemplateNet(INPUT, [Conv(12, 24, 8), Conv(3, 3, 32), Conv(3, 3, 32)], dense=[128, 128],
                              classes=CLASSES),
}


def build_model(arch: str = "ws") -> TemplateNet:
    return paper.build(ARCHS, arch, NAME)


def load_weights(model: TemplateNet):
    """The authors' trained checkpoint (WS architecture only), so the paper's DNNs are imported, not trained."""
    return paper.authors_weights(NAME, model)


def load_data(data_dir: Path) -> Dataset:
    return paper.load_authors_npy(data_dir, NAME, PREFIX, INPUT, CLASSES, validation=True)
