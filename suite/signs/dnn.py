"""Signs: 43 glyph classes on coloured sign plates (GTSRB's class count and shape), over real photos.

Source: synthetic, built by dnnkit.glyphs from installed PyPI packages only: 21 text fonts that
matplotlib bundles (mpl-data/fonts/ttf) and 15 real photographs as backgrounds (14 in scikit-image
0.26.0's skimage/data, plus matplotlib's sample_data/grace_hopper.jpg). Classes are the glyphs
0-9, A-Z and ! ? + & % # =. Each image is a random photo crop with a sign plate (circle, triangle,
square or diamond, in one of 7 sign colours with a border in another) carrying the class glyph.
Plate and class are tied only partly, as GTSRB's sign families are: 75% of images use the class's
own plate (shape label % 4, fill colour label // 4 % 7: 28 plates for 43 classes, so the glyph
must still be read), the rest a random plate. Then scale, rotation (std 6 deg), perspective,
occluding bars (5%), blur, brightness, pixel noise and JPEG re-encoding (see STYLE).
Split: disjoint in fonts AND photos (dnnkit.glyphs.FONT_SPLIT / PHOTO_SPLIT): 14 train fonts
over 9 photos, 3 other fonts over 2 other photos for validation, the 4 remaining fonts over the 4
remaining photos for test; 10,320 / 1,505 / 3,010 images (240 / 35 / 70 per class), seed 1. Each
chunk of 100 images has its own seed, so the build is bit-identical with any number of workers.
Groups: font id * 100 + photo id.
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
    "task": "sign glyph recognition, 43 classes (synthetic sign plates over real photos)",
    "source": "synthetic: PyPI matplotlib==3.11.2 bundled fonts + real photos of scikit-image==0.26.0 (and matplotlib)",
    "licence": "fonts: Bitstream Vera / DejaVu licence, SIL OFL 1.1 (STIX), BaKoMa licence (CM), all shipped with matplotlib; "
               "photos: public domain / CC0 / no known restrictions (skimage.data notes)",
    "real": False,
    "origin": "synthetic",
    "input": (3, 32, 32),
    "classes": 43,
    "stands_in_for": "GTSRB",
    "split": "font- and photo-disjoint: 10,320 / 1,505 / 3,010 (train / val / test), seed 1",
}
TRAIN = {"steps": 12_000, "batch_size": 100, "lr": 2e-3, "eval_every": 120}
FILE = "signs.npz"
STYLE = glyphs.Style(
    kind="sign", glyph_height=(0.52, 0.66), rotation_deg=6.0, perspective=0.06, scale=(0.8, 1.05), bars=0.05,
    contrast=(140.0, 250.0), blur=(0.2, 0.9), blur_p=0.25, noise=(1.0, 6.0), jpeg_p=0.1, jpeg_quality=(25, 70),
    dim=(0.7, 1.15), tie=0.75,
)
RECIPE = glyphs.Recipe(glyphs.SIGN_GLYPHS, STYLE, {"train": 10320, "val": 1505, "test": 3010}, seed=1)


def build_model() -> TemplateNet:
    convs = [Conv(3, 3, 8), Conv(3, 3, 16), Conv(3, 3, 32)]
    return TemplateNet((3, 32, 32), convs, dense=[256, 80], classes=43)


def _build() -> tuple[Dataset, dict[str, np.ndarray]]:
    return glyphs.build(RECIPE, workers=2)


def prepare(data_dir: Path) -> None:
    datasets.prepare_npz(Path(data_dir) / FILE, _build)


def load_data(data_dir: Path) -> Dataset:
    return prepared.load_npz(Path(data_dir) / FILE)
