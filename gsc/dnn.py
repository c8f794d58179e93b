"""GSC v2 (WS paper): which of 35 spoken keywords a one-second clip holds (Google Speech Commands v2).

Source: the WS authors' preprocessed .npy files (docs/paper_dnns.md), in DATA_DIR/gsc/:
gsc_v2_{train,validation,test}_{data,label}.npy; fetch them with `./download_dataset.sh gsc`.
Split: the authors' train / validation / test.
Preprocessing: the authors' (MFCC, coefficients 1..13 x 61 frames, each sample divided by its L2
norm; docs/originals.md §4); here only (flattened) NHWC 61x13x1 -> NCHW (1, 61, 13) and one-hot -> int64.
Model: build_model() / arch="ws": WS's GSC, 65,101 weights (non-square kernels 12x6, 6x3);
arch="nwv": NWV's GSC, 65,531 weights (docs/originals.md §1.1, §3.2).
"""
from __future__ import annotations

from pathlib import Path

from dnnkit import paper
from weightsep.dnn import Dataset
from weightsep.model import Conv, TemplateNet

NAME = "gsc"
INPUT = (1, 61, 13)  # NHWC 61x13x1: frames x MFCC coefficients
CLASSES = 35
PREFIX = "gsc_v2"
FILES = paper.authors_files(PREFIX, validation=True)
META = paper.meta(
    NAME,
    task="keyword spotting (35 words, MFCC features)",
    source="the WS authors' preprocessed .npy files (Google Speech Commands v2, 13 MFCC x 61 frames, L2-normalised)",
    input=INPUT,
    classes=CLASSES,
    files=[f"{NAME}/{f}" for f in FILES],
    split="authors' train / validation / test",
)
# the WS checkpoint's Adam steps (beta2_power), at a constant lr (no plateau rule), as the originals trained
TRAIN = {"steps": 15_300, "batch_size": 100, "lr": 1e-3, "patience": None}
ARCHS = {
    # 12x6x1x14, 6x3x14x28 -> 10x1x28 -> 280-128-128-35, LeakyReLU
    "ws": lambda: TemplateNet(INPUT, [Conv(12, 6, 14), Conv(6, 3, 28)], dense=[128, 128], classes=CLASSES),
    # 12x6x1x8, 6x3x8x16 -> 10x1x16 -> 160-128-256-35, LeakyReLU
    "nwv": lambda: TemplateNet(INPUT, [Conv(12, 6, 8), Conv(6, 3, 16)], dense=[128, 256], classes=CLASSES),
}


def build_model(arch: str = "ws") -> TemplateNet:
    return paper.build(ARCHS, arch, NAME)


def load_weights(model: TemplateNet):
    """The authors' trained checkpoint (WS architecture only), so the paper's DNNs are imported, not trained."""
    return paper.authors_weights(NAME, model)


def load_data(data_dir: Path) -> Dataset:
    return paper.load_authors_npy(data_dir, NAME, PREFIX, INPUT, CLASSES, validation=True)
