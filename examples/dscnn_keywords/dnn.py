"""DS-CNN keywords: the suite's spoken-keyword task (10 command words) with a depthwise-separable CNN.

Source, split and preprocessing: those of suite/keywords (synthetic TTS speech, voice-disjoint
splits, 13 MFCCs x 101 frames as 1-row images (13, 1, 101)); the data is that folder's
file, loaded through it, so nothing is copied here.
Model: a DS-CNN as in "Hello Edge" (Zhang et al. 2017) with batch norm: a first conv along time
(13 MFCC channels in, kernel (1, 9), stride 2), then depthwise-separable blocks (depthwise (1, 3)
conv, BN, ReLU, pointwise 1x1 conv, BN, ReLU), global average pooling over time and one linear
layer. Since the input has height 1, every kernel is (1, k) and the convs run along time.
Why an example: an ordinary torch.nn.Module (not weightsep's TemplateNet), with grouped convs and
BatchNorm2d running statistics (buffers, not weights), which weightsep is to pack like any other DNN.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from weightsep import dnn as dnn_mod

SUITE = "keywords"  # the suite folder whose data this DNN uses
N_MFCC, FRAMES, CLASSES = 13, 101, 10
WIDTH = 64  # channels of every block (Hello Edge's DS-CNN-S)
STRIDES = (1, 2, 1, 1)  # time stride of each depthwise conv (one more halving of time widens the receptive field)

META = {
    "task": "spoken keyword spotting (10 command words), DS-CNN with batch norm (example: an ordinary nn.Module)",
    "source": "Debian espeak-ng 1.51, flite 2.2, festival 2.5 + festvox-kallpc16k, festvox-kdlpc16k, "
              "festvox-us-slt-hts: words rendered at prepare time (the data of suite/keywords)",
    "licence": "generated data; engines: espeak-ng GPL-3, flite BSD-style, festival/festvox X11-style",
    "real": False,
    "origin": "synthetic",
    "input": (N_MFCC, 1, FRAMES),
    "classes": CLASSES,
    "stands_in_for": "Google Speech Commands (GSC)",
    "split": dnn_mod.get(SUITE).meta["split"],
    "data_from": f"suite/{SUITE}",
    "architecture": "DS-CNN (Hello Edge) with BatchNorm2d",
}
TRAIN = {"steps": 2000, "batch_size": 100, "lr": 2e-3, "eval_every": 100}


class DSBlock(nn.Module):
    """Depthwise (1, 3) conv, BN, ReLU, then pointwise 1x1 conv, BN, ReLU."""

    def __init__(self, channels: int, stride: int = 1):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, (1, 3), stride=(1, stride), padding=(0, 1), groups=channels,
                                   bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.depthwise(x)))
        return torch.relu(self.bn2(self.pointwise(x)))


class DSCNN(nn.Module):
    def __init__(self, width: int = WIDTH, strides: tuple[int, ...] = STRIDES):
        super().__init__()
        self.conv = nn.Conv2d(N_MFCC, width, (1, 9), stride=(1, 2), padding=(0, 4), bias=False)  # 101 -> 51 frames
        self.bn = nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(*(DSBlock(width, s) for s in strides))
        self.fc = nn.Linear(width, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # the data is stored at half precision
        x = torch.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))  # global average pooling


def build_model() -> nn.Module:
    return DSCNN()


def prepare(data_dir: Path) -> None:
    dnn_mod.get(SUITE).module.prepare(data_dir)


def load_data(data_dir: Path) -> dnn_mod.Dataset:
    return dnn_mod.get(SUITE).load_data(data_dir)
