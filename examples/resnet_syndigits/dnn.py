"""ResNet syndigits: the suite's house-number-style colour digits with a small residual CNN.

Source, split and preprocessing: those of suite/syndigits (matplotlib's fonts drawn over crops of
real photos; font- and photo-disjoint splits, 8,000 / 1,500 / 3,000 images; x = pixel / 255,
(3, 32, 32)); the data is that folder's syndigits.npz, loaded through it, so nothing is copied here.
Model: a CIFAR-style ResNet with batch norm: a 3x3 stem conv with stride 2 (32x32 -> 16x16, which
keeps one-thread training cheap), three stages of one BasicBlock each (16, 32, 48 channels; two
3x3 conv + BN, ReLU after the skip sum), stages 2 and 3 downsampling with stride 2 and a 1x1
conv + BN projection shortcut, then global average pooling and one linear layer.
Why an example: an ordinary torch.nn.Module (not weightsep's TemplateNet) with skip connections and
BatchNorm2d running statistics (buffers, not weights), which weightsep is to pack like any other DNN.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from weightsep import dnn as dnn_mod

SUITE = "syndigits"  # the suite folder whose data this DNN uses
CLASSES = 10
STAGES = (16, 32, 48)  # channels of each stage; the first keeps the stem's resolution, the others halve it

META = {
    "task": "house-number-style digit recognition (synthetic glyphs over real photos), small ResNet with batch norm "
            "(example: an ordinary nn.Module)",
    "source": "synthetic: PyPI matplotlib==3.11.2 bundled fonts + real photos of scikit-image==0.26.0 (and matplotlib) "
              "(the data of suite/syndigits)",
    "licence": "fonts: Bitstream Vera / DejaVu licence, SIL OFL 1.1 (STIX), BaKoMa licence (CM), all shipped with matplotlib; "
               "photos: public domain / CC0 / no known restrictions (skimage.data notes)",
    "real": False,
    "origin": "synthetic",
    "input": (3, 32, 32),
    "classes": CLASSES,
    "stands_in_for": "SVHN",
    "split": dnn_mod.get(SUITE).meta["split"],
    "data_from": f"suite/{SUITE}",
    "architecture": "ResNet (3 BasicBlocks, 1x1 projection shortcuts) with BatchNorm2d",
}
TRAIN = {"steps": 2000, "batch_size": 100, "lr": 2e-3, "eval_every": 100}


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """relu(conv-bn-relu-conv-bn(x) + shortcut(x)); the shortcut is a 1x1 conv + BN where the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride)
        self.conv2 = conv_bn(c_out, c_out, 3)
        self.shortcut = conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, stages: tuple[int, ...] = STAGES):
        super().__init__()
        self.stem = conv_bn(3, stages[0], 3, stride=2)  # 32x32 -> 16x16
        blocks, c_in = [], stages[0]
        for i, c in enumerate(stages):
            blocks.append(BasicBlock(c_in, c, stride=1 if i == 0 else 2))  # 16x16, 8x8, 4x4
            c_in = c
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # the data is stored at half precision
        x = self.blocks(torch.relu(self.stem(x)))
        return self.fc(x.mean(dim=(2, 3)))  # global average pooling


def build_model() -> nn.Module:
    return ResNet()


def prepare(data_dir: Path) -> None:
    dnn_mod.get(SUITE).module.prepare(data_dir)


def load_data(data_dir: Path) -> dnn_mod.Dataset:
    return dnn_mod.get(SUITE).load_data(data_dir)
