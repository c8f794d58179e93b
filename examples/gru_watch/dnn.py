"""GRU watch: the suite's smartwatch exercise recognition (7 classes) with a recurrent network.

Source, split and preprocessing: those of suite/watch (seglearn's watch_dataset.npy, Burns et al.
2018: 6 IMU channels at 50 Hz, 128-step windows at stride 64, subject-disjoint splits, channels
standardised with train statistics; 1-row images (6, 1, 128)); the data is that folder's file,
loaded through it, so nothing is copied here.
Model: the window as a sequence [N, 128, 6]; a 1-D conv front end along time (kernel 5, stride 2,
BN, ReLU: 64 steps of 32 features) feeds a one-layer GRU (batch_first, hidden 96); the GRU's
outputs are averaged over time and one linear layer classifies them.
Why an example: an ordinary torch.nn.Module (not weightsep's TemplateNet) with a recurrent layer
(nn.GRU's stacked gate weights) and BatchNorm1d running statistics, which weightsep is to pack
like any other DNN.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from weightsep import dnn as dnn_mod

SUITE = "watch"  # the suite folder whose data this DNN uses
CHANNELS, WINDOW, CLASSES = 6, 128, 7
FRONT, HIDDEN = 32, 96  # conv front-end channels, GRU hidden size

META = {
    "task": "exercise recognition from smartwatch IMU (human activity recognition), GRU "
            "(example: an ordinary nn.Module)",
    "source": "PyPI seglearn 1.2.5: watch_dataset.npy (Burns et al. 2018, shoulder physiotherapy) "
              "(the data of suite/watch)",
    "licence": "BSD-3 (seglearn)",
    "real": True,
    "origin": "real",
    "input": (CHANNELS, 1, WINDOW),
    "classes": CLASSES,
    "stands_in_for": "HHAR",
    "split": dnn_mod.get(SUITE).meta["split"],
    "data_from": f"suite/{SUITE}",
    "architecture": "Conv1d front end + GRU (batch_first) + mean over time + Linear",
}
TRAIN = {"steps": 1000, "batch_size": 100, "lr": 2e-3, "eval_every": 50}


class GRUNet(nn.Module):
    def __init__(self, front: int = FRONT, hidden: int = HIDDEN):
        super().__init__()
        self.conv = nn.Conv1d(CHANNELS, front, 5, stride=2, padding=2, bias=False)  # 128 -> 64 steps
        self.bn = nn.BatchNorm1d(front)
        self.gru = nn.GRU(front, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()  # the data is stored at half precision
        x = x.flatten(2)  # [N, 6, 1, 128] -> [N, 6, 128]
        x = torch.relu(self.bn(self.conv(x)))  # [N, 32, 64]
        x = x.transpose(1, 2)  # [N, 64 steps, 32 features]
        # nn.GRU's default zero state is made inside it with torch.zeros, which torch.func.vmap (weightsep's
        # batched per-sample Fisher) cannot batch; x.new_zeros is batched like x, with the same values
        h0 = x.new_zeros(1, x.shape[0], self.gru.hidden_size)
        out, _ = self.gru(x, h0)  # [N, 64 steps, hidden]
        return self.fc(out.mean(dim=1))


def build_model() -> nn.Module:
    return GRUNet()


def prepare(data_dir: Path) -> None:
    dnn_mod.get(SUITE).module.prepare(data_dir)


def load_data(data_dir: Path) -> dnn_mod.Dataset:
    return dnn_mod.get(SUITE).load_data(data_dir)
