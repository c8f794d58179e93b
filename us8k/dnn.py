"""US8K (WS paper): which of 10 urban sound classes a clip holds (UrbanSound8K).

Source: the WS authors' preprocessed .npy files (docs/paper_dnns.md), in DATA_DIR/us8k/:
US8K_{train,test}_{data,label}.npy; fetch them with `./download_dataset.sh us8k`.
Split: the authors' train / test; validation = a seeded 10% of train (dnnkit.paper.carve_val).
Preprocessing: the authors' (2-channel 60x41 features, pre-made .npy; docs/originals.md §4); here only
NHWC 60x41x2 -> NCHW (2, 60, 41) and one-hot -> int64. (The authors also wrote NCHW dumps for a C
runtime; the .npy files read here are the NHWC ones their TF models take.)
Model: build_model() / arch="ws" (the only one; shared by WS and NWV repository B): 66,854 weights,
two dense layers (docs/originals.md §3.2).
"""
from __future__ import annotations

from pathlib import Path

from dnnkit import paper
from weightsep.dnn import Dataset
from weightsep.model import Conv, TemplateNet

NAME = "us8k"
INPUT = (2, 60, 41)  # NHWC 60x41x2
CLASSES = 10
PREFIX = "US8K"
FILES = paper.authors_files(PREFIX, validation=False)
META = paper.meta(
    NAME,
    task="urban sound classification (2-channel 60x41 features)",
    source="the WS authors' preprocessed .npy files (UrbanSound8K)",
    input=INPUT,
    classes=CLASSES,
    files=[f"{NAME}/{f}" for f in FILES],
    split="authors' train / test; val = seeded 10% of train (seed 0)",
)
# the checkpoint's Adam steps (beta2_power), at a constant lr (no plateau rule), as the originals trained
TRAIN = {"steps": 12_300, "batch_size": 100, "lr": 1e-3, "patience": None}
ARCHS = {
    # 3x3x2x8, 3x3x8x16, 3x3x16x32 -> 5x3x32 -> 480-124-10, LeakyReLU
    "ws": lambda: TemplateNet(INPUT, [Conv(3, 3, 8), Conv(3, 3, 16), Conv(3, 3, 32)], dense=[124],
                              classes=CLASSES),
}


def build_model(arch: str = "ws") -> TemplateNet:
    return paper.build(ARCHS, arch, NAME)


def load_weights(model: TemplateNet):
    """The authors' trained checkpoint (WS architecture only), so the paper's DNNs are imported, not trained."""
    return paper.authors_weights(NAME, model)


def load_data(data_dir: Path) -> Dataset:
    return paper.load_authors_npy(data_dir, NAME, PREFIX, INPUT, CLASSES, validation=False)
