"""Fashion-MNIST (WS paper): which of 10 clothing classes a 28x28 greyscale image shows.

Source, first found wins:
1. the WS authors' preprocessed .npy files (docs/paper_dnns.md) in DATA_DIR/fmnist/:
   fmnist_{train,test}_{data,label}.npy; fetch them with `./download_dataset.sh fmnist`. If any of
   them is there, all must be (a partial download is an error, never mixed with another source);
2. the official IDX files of Debian's `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist),
   x = uint8 * (1/255): the preprocessing the authors' checkpoint expects (docs/originals.md §1.3; it
   scores 87.49% on that test set, published 85.80%).
Split: train / test as shipped; validation = a seeded 10% of train (dnnkit.paper.carve_val).
Preprocessing: the authors' .npy as they are (x/255); here only NHWC -> NCHW and one-hot -> int64.
Model: build_model() / arch="ws" (the only one; shared by WS and NWV repository B): 69,966 weights
(docs/originals.md §3.2).
"""
from __future__ import annotations

from pathlib import Path

from dnnkit import paper
from weightsep.dnn import Dataset
from weightsep.model import Conv, TemplateNet

NAME = "fmnist"
INPUT = (1, 28, 28)  # NHWC 28x28x1
CLASSES = 10
PREFIX = "fmnist"
FILES = paper.authors_files(PREFIX, validation=False)
DEBIAN = Path("/usr/share/datasets/fashion-mnist")
DEBIAN_HINT = f" (or install Debian's IDX files into {DEBIAN}: apt-get install dataset-fashion-mnist)"
META = paper.meta(
    NAME,
    task="clothing recognition (28x28 greyscale)",
    source="the WS authors' preprocessed .npy files, else the official Fashion-MNIST IDX files of "
           "Debian's dataset-fashion-mnist (x/255)",
    input=INPUT,
    classes=CLASSES,
    files=[f"{NAME}/{f}" for f in FILES],
    split="train / test as shipped; val = seeded 10% of train (seed 0)",
    alternative_files=[str(DEBIAN / f"{stem}.gz") for part in ("train", "t10k") for stem in paper.IDX_FILES[part]],
    checkpoint_accuracy=87.49,  # the WS checkpoint on the official test set, x/255 (docs/originals.md §5)
)
# the checkpoint's Adam steps (beta2_power), at a constant lr (no plateau rule), as the originals trained
TRAIN = {"steps": 9_700, "batch_size": 100, "lr": 1e-3, "patience": None}
ARCHS = {
    # 3x3x1x24, 3x3x24x32, 3x3x32x52 -> 1x1x52 -> 52-256-128-10, LeakyReLU
    "ws": lambda: TemplateNet(INPUT, [Conv(3, 3, 24), Conv(3, 3, 32), Conv(3, 3, 52)], dense=[256, 128],
                              classes=CLASSES),
}


def build_model(arch: str = "ws") -> TemplateNet:
    return paper.build(ARCHS, arch, NAME)


def load_weights(model: TemplateNet):
    """The authors' trained checkpoint (WS architecture only), so the paper's DNNs are imported, not trained."""
    return paper.authors_weights(NAME, model)


def load_data(data_dir: Path, debian: Path = DEBIAN) -> Dataset:
    authors = [Path(data_dir) / NAME / f for f in FILES]
    have_debian = all(paper.find_idx(stem, [debian]) for part in ("train", "t10k") for stem in paper.IDX_FILES[part])
    if any(p.is_file() for p in authors) or not have_debian:
        return paper.load_authors_npy(data_dir, NAME, PREFIX, INPUT, CLASSES, validation=False, also=DEBIAN_HINT)
    train, val = paper.carve_val(paper.read_mnist_idx("train", [debian], NAME))
    return Dataset(train, val, paper.read_mnist_idx("t10k", [debian], NAME))
