"""SynDigits: house-number-style colour digits (SVHN's shape), drawn in fonts over crops of real photos.

Source: synthetic, built by dnnkit.glyphs from installed PyPI packages only: 21 text fonts that
matplotlib bundles (mpl-data/fonts/ttf: DejaVu Sans / Sans Mono / Serif, STIX General, Computer
Modern) and 15 real photographs as backgrounds (14 in scikit-image 0.26.0's skimage/data, plus
matplotlib's sample_data/grace_hopper.jpg). Each image is a random photo crop under a blended plain
plate colour, the class digit centred with a random neighbour digit on each side (cut by the edge,
as in SVHN's crops), then rotation (std 12 deg), perspective, occluding bars (25% of images), low
glyph/plate contrast, blur, pixel noise and JPEG re-encoding (see STYLE).
Split: disjoint in fonts AND photos (dnnkit.glyphs.FONT_SPLIT / PHOTO_SPLIT): 14 train fonts
over 9 photos, 3 other fonts over 2 other photos for validation, the 4 remaining fonts over the 4
remaining photos for test; 8,000 / 1,500 / 3,000 images, classes balanced, seed 0. Each chunk of
100 images has its own seed, so the build is bit-identical with any number of workers. Groups:
font id * 100 + photo id.
Preprocessing: x = pixel / 255, shaped (3, 32, 32) (RGB, NCHW; stored at half precision by
dnnkit.datasets). Model: the suite's narrow convs
(8, 16, 32 channels) and wide dense layers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dnnkit import datasets, glyphs
from weightsep import prepared
from weightsep.dnn import Dataset
from weightsep.model import Conv, TemplateNet

META = {
    "task": "house-number-style digit recognition (synthetic glyphs over real photos)",
    "source": "synthetic: PyPI matplotlib==3.11.2 bundled fonts + real photos of scikit-image==0.26.0 (and matplotlib)",
    "licence": "fonts: Bitstream Vera / DejaVu licence, SIL OFL 1.1 (STIX), BaKoMa licence (CM), all shipped with matplotlib; "
               "photos: public domain / CC0 / no known restrictions (skimage.data notes)",
    "real": False,
    "origin": "synthetic",
    "input": (3, 32, 32),
    "classes": 10,
    "stands_in_for": "SVHN",
    "split": "font- and photo-disjoint: 8,000 / 1,500 / 3,000 (train / val / test), seed 0",
}
TRAIN = {"steps": 10_000, "batch_size": 100, "lr": 1e-3, "eval_every": 100}
FILE = "syndigits.npz"
STYLE = glyphs.Style(
    kind="house", glyph_height=(0.5, 0.75), rotation_deg=12.0, perspective=0.06, bars=0.25,
    contrast=(80.0, 210.0), blur=(0.2, 1.2), blur_p=0.5, noise=(1.0, 10.0), jpeg_p=0.25, jpeg_quality=(25, 70),
)
RECIPE = glyphs.Recipe(glyphs.DIGITS, STYLE, {"train": 8000, "val": 1500, "test": 3000}, seed=0)


def build_model() -> TemplateNet:
    convs = [Conv(3, 3, 8), Conv(3, 3, 16), Conv(3, 3, 32)]
    return TemplateNet((3, 32, 32), convs, dense=[256, 96], classes=10)


def _build() -> tuple[Dataset, dict[str, np.ndarray]]:
    return glyphs.build(RECIPE, workers=2)


def prepare(data_dir: Path) -> None:
    datasets.prepare_npz(Path(data_dir) / FILE, _build)


def load_data(data_dir: Path) -> Dataset:
    return prepared.load_npz(Path(data_dir) / FILE)
