"""MobileNet signs: the suite's 43-class sign glyphs with a MobileNetV1-style network of 200k+ weights.

Source, split and preprocessing: those of suite/signs (glyphs on coloured sign plates over real
photos; font- and photo-disjoint splits, 10,320 / 1,505 / 3,010 images; x = pixel / 255,
(3, 32, 32)); the data is that folder's file, loaded through it, so nothing is copied here.
Model: MobileNetV1 (Howard et al. 2017) sized for 32x32 inputs: a 3x3 stem conv with stride 2
(32x32 -> 16x16), then depthwise-separable blocks (depthwise 3x3 conv, BN, ReLU, pointwise 1x1
conv, BN, ReLU) of 64, 128, 128, 256, 256 and 256 channels, halving the resolution at the first
and third (early, which keeps one-thread training cheap), then global average pooling and one
linear layer: 214,123 weights, about 3.4 times a suite DNN, so it alone needs 419 pages of 512
weights, more than the 128 shared pages that hold the suite.
Why an example: a DNN much larger than the others packed with it (issue 29: the shared store must
follow the DNNs, not a fixed 128 pages), in the MobileNet family engineers deploy on microcontrollers.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from weightsep import dnn as dnn_mod

SUITE = "signs"  # the suite folder whose data this DNN uses
CLASSES = 43
STEM = 32  # channels of the stem conv
BLOCKS = ((64, 2), (128, 1), (128, 2), (256, 1), (256, 1), (256, 1))  # (channels, stride) of each block: 8, 8, 4, 4, 4, 4 px

META = {
    "task": "sign glyph recognition, 43 classes, MobileNetV1-style network with batch norm "
            "(example: an ordinary nn.Module of 200k+ weights)",
    "source": "synthetic: PyPI matplotlib==3.11.2 bundled fonts + real photos of scikit-image==0.26.0 (and matplotlib) "
              "(the data of suite/signs)",
    "licence": "fonts: Bitstream Vera / DejaVu licence, SIL OFL 1.1 (STIX), BaKoMa licence (CM), all shipped with matplotlib; "
               "photos: public domain / CC0 / no known restrictions (skimage.data notes)",
    "real": False,
    "origin": "synthetic",
    "input": (3, 32, 32),
    "classes": CLASSES,
    "stands_in_for": "GTSRB",
    "split": dnn_mod.get(SUITE).meta["split"],
    "data_from": f"suite/{SUITE}",
    "architecture": "MobileNetV1 (depthwise-separable blocks) with BatchNorm2d",
}
TRAIN = {"steps": 2000, "batch_size": 100, "lr": 2e-3, "eval_every": 100}


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """conv (no bias: BN follows), BN, ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


def separable(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """MobileNet's block: a depthwise 3x3 conv (one filter per channel) then a pointwise 1x1 conv."""
    return nn.Sequential(conv_bn(c_in, c_in, 3, stride, groups=c_in), conv_bn(c_in, c_out, 1))


class MobileNet(nn.Module):
    def __init__(self, stem: int = STEM, blocks: tuple[tuple[int, int], ...] = BLOCKS):
        super().__init__()
        layers, c_in = [conv_bn(3, stem, 3, stride=2)], stem  # 32x32 -> 16x16
        for c_out, stride in blocks:
            layers.append(separable(c_in, c_out, stride))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # the data is stored at half precision
        return self.fc(self.features(x).mean(dim=(2, 3)))  # global average pooling


def build_model() -> nn.Module:
    return MobileNet()


def prepare(data_dir: Path) -> None:
    dnn_mod.get(SUITE).module.prepare(data_dir)


def load_data(data_dir: Path) -> dnn_mod.Dataset:
    return dnn_mod.get(SUITE).load_data(data_dir)
