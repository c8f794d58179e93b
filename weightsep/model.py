"""The papers' DNN template with every weight in one flat, TF-ordered parameter.

A `TemplateNet` is 0-3 conv blocks (VALID conv, LeakyReLU(0.2), VALID max-pool) then dense layers.
All its trainable weights live in ONE 1-D parameter `theta`, in the originals' canonical order
(docs/originals.md §1.6): weight_0, bias_0, weight_1, ... each row-major in TF layout (conv kernels HWIO,
dense kernels [in, out]); the flatten after the convs is in NHWC (h, w, c) order. Pages, Fisher
vectors and the authors' checkpoints therefore line up with `theta` index for index, and a packed
DNN runs by handing any 1-D weight vector to `forward(x, theta)`.

Inputs are NCHW float32 for conv nets (C, H, W), [N, F] for dense-only nets.

    net = TemplateNet((1, 28, 28), [Conv(3, 3, 16), Conv(3, 3, 32)], dense=[128], classes=10)
    logits = net(x)                   # uses net.theta
    logits = net(x, theta=packed)     # any [n_weights] vector, e.g. gathered from pages
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2),  # TF's default slope, not PyTorch's 0.01
    "sigmoid": torch.sigmoid,
    "relu": F.relu,
}


@dataclass(frozen=True)
class Conv:
    """A conv block: VALID (kh x kw) conv with `out` channels, LeakyReLU(0.2), VALID max-pool."""

    kh: int
    kw: int
    out: int
    pool: tuple[int, int] = (2, 2)


@dataclass(frozen=True)
class TensorSpec:
    """One trainable tensor inside the flat vector: TF name, TF-layout shape, start offset."""

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def views(layout: list[TensorSpec], theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each tensor of `layout` as a view of the flat vector `theta`, by name (no copy)."""
    # one split, not one slice per tensor: under vmap(grad) each slice's backward would fill a
    # zero [chunk, n] tensor (most of batched-Fisher time, docs/results.md#code-notes); split's backward
    # is a single cat
    parts = theta.split([s.numel for s in layout])
    return {s.name: part.view(s.shape) for s, part in zip(layout, parts)}


def flatten(layout: list[TensorSpec], tensors: Mapping[str, torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """The inverse of `views`: tensors by name -> one flat vector, checking names and shapes (ValueError)."""
    missing = [s.name for s in layout if s.name not in tensors]
    extra = sorted(set(tensors) - {s.name for s in layout})
    if missing or extra:
        raise ValueError(f"tensor names do not match the model: missing {missing}, unexpected {extra}")
    parts = []
    for s in layout:
        t = torch.as_tensor(tensors[s.name])
        if tuple(t.shape) != s.shape:
            raise ValueError(f"{s.name}: shape {tuple(t.shape)} does not match the model's {s.shape}")
        parts.append(t.reshape(-1).to(dtype))
    return torch.cat(parts)


def channels_last_kernel(hwio: torch.Tensor) -> torch.Tensor:
    """A TF-layout (kh, kw, in, out) conv kernel as torch's (out, in, kh, kw) in channels-last
    memory. A channels-last kernel makes oneDNN give a channels-last output even for a 1-channel
    input, and CPU max-pooling is much faster on channels-last tensors (docs/results.md#code-notes)."""
    return hwio.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)


class TemplateNet(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, ...],
        convs: list[Conv],
        dense: list[int],
        classes: int,
        hidden_act: str = "leaky_relu",
    ):
        super().__init__()
        if hidden_act not in ACTIVATIONS:
            raise ValueError(f"unknown hidden_act {hidden_act!r}; choose from {sorted(ACTIVATIONS)}")
        if convs and len(input_shape) != 3:
            raise ValueError(f"conv nets take (C, H, W) inputs, got input_shape={input_shape}")
        self.input_shape = tuple(input_shape)
        self.convs = list(convs)
        self.dense = list(dense)
        self.classes = classes
        self.hidden_act = hidden_act

        specs, offset = [], 0

        def add(name: str, shape: tuple[int, ...]) -> None:
            nonlocal offset
            specs.append(TensorSpec(name, shape, offset))
            offset += math.prod(shape)

        if convs:
            c, h, w = input_shape
            for conv in convs:
                i = len(specs) // 2
                add(f"weight_{i}", (conv.kh, conv.kw, c, conv.out))
                add(f"bias_{i}", (conv.out,))
                h, w, c = h - conv.kh + 1, w - conv.kw + 1, conv.out
                h, w = h // conv.pool[0], w // conv.pool[1]
                if h < 1 or w < 1:
                    raise ValueError(f"conv stack shrinks input {input_shape} to nothing")
            features = h * w * c
        else:
            features = math.prod(input_shape)
        self.flat_features = features
        for width in [*dense, classes]:
            i = len(specs) // 2
            add(f"weight_{i}", (features, width))
            add(f"bias_{i}", (width,))
            features = width
        self.layout: list[TensorSpec] = specs
        self.n_weights = offset
        self.theta = nn.Parameter(torch.empty(offset))
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Glorot-uniform weights, zero biases (the originals also drew biases glorot; zeros train better)."""
        with torch.no_grad():
            for spec in self.layout:
                view = self.theta[spec.offset : spec.offset + spec.numel]
                if spec.name.startswith("bias"):
                    view.zero_()
                    continue
                fan_in = math.prod(spec.shape[:-1])
                fan_out = spec.shape[-1] * math.prod(spec.shape[:-2])
                limit = math.sqrt(6.0 / (fan_in + fan_out))
                view.uniform_(-limit, limit, generator=generator)

    def tensors(self, theta: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """TF-layout views of a flat vector (default: this net's own `theta`)."""
        return views(self.layout, self.theta if theta is None else theta)

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The inverse of `tensors`: TF-layout arrays -> one flat vector, checking names and shapes."""
        return flatten(self.layout, tensors, torch.float32)

    def forward(self, x: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with(x, self.tensors(theta))

    def forward_with(self, x: torch.Tensor, t: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The forward pass on weight tensors by name (TF layout), e.g. resolved lazily per layer."""
        x = x.to(t["weight_0"].dtype)  # data may be stored at half precision (weightsep.prepared)
        if self.convs:  # channels-last memory (NHWC), written with ops that vmap (the batched Fisher) batches
            x = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
        act = ACTIVATIONS[self.hidden_act]
        i = 0
        for conv in self.convs:
            x = F.conv2d(x, channels_last_kernel(t[f"weight_{i}"]), t[f"bias_{i}"])
            x = F.leaky_relu(F.max_pool2d(x, conv.pool, conv.pool), 0.2)  # pool first: same values, a quarter of the work
            i += 1
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1) if self.convs else x.reshape(x.shape[0], -1)
        for layer in range(len(self.dense) + 1):
            x = x @ t[f"weight_{i}"] + t[f"bias_{i}"]
            if layer < len(self.dense):
                x = act(x)
            i += 1
        return x

    def describe(self) -> str:
        """A one-line architecture summary, e.g. for tables and the manifest."""
        convs = " ".join(f"conv{c.kh}x{c.kw}x{c.out}" for c in self.convs)
        dense = "-".join(str(d) for d in [self.flat_features, *self.dense, self.classes])
        return f"{convs + ' ' if convs else ''}dense {dense} ({self.hidden_act}), {self.n_weights:,} weights"
