"""Each DNN compressed alone, without sharing: the baselines quantised packing is measured against.

Every compressor takes one DNN's flat weights `theta` and its model (for the tensor layout) and
returns the weights the DNN runs with, differentiable straight through, so that fine-tuning through
the same function is its quantisation-aware version. Only tensors of 2 or more dimensions are
compressed; 1-D tensors (biases, norms) stay float32. Each has a `*_bytes` that counts what storing
the result takes, honestly: values, scales, indices and codebooks.

* `per_channel(theta, model, fmt)`: int8 or int4, symmetric, one float32 scale per output channel.
* `pruned(theta, model, mask, fmt)`: magnitude pruning (`prune_mask`: torch.nn.utils.prune's L1
  rule, tensor by tensor) then `per_channel`; stored sparse (`pruned_bytes`): a bitmap or 8-bit
  relative indices with filler entries for gaps over 255 (Deep Compression's), whichever is smaller.
* `Codebook`: vector k-means (scipy's kmeans2) over consecutive runs of `dim` weights, one codebook
  of `size` float32 vectors per DNN: log2(size) / dim bits a weight plus the codebook. Fine-tuning
  keeps each run's cluster and trains the cluster means.

    w = per_channel(theta, model, "int4"); per_channel_bytes(model, "int4")
    mask = prune_mask(theta, model, keep=0.3); w = pruned(theta, model, mask, "int8")
    book = Codebook.fit(theta, model, dim=4, size=256, seed=0); w = book(theta); book.n_bytes
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.cluster.vq
import torch
from torch.nn.utils import prune

from .model import TemplateNet
from .quant import BITS, QMAX, SCALE_BYTES

INDEX_BITS = 8  # a relative index: the gap to the previous kept weight, 1 to 2**8
FLOAT_BYTES = 4  # an uncompressed 1-D weight, a codebook entry


def channel_axis(model: torch.nn.Module) -> int:
    """The output-channel axis of a model's weight tensors: last in TemplateNet's TF layout (HWIO,
    [in, out]), first in PyTorch's (a FlatModule's parameters)."""
    return -1 if isinstance(model, TemplateNet) else 0


def _tensors(theta: torch.Tensor, model: torch.nn.Module):
    """(shape, weights) of each tensor of `model.layout`, views of `theta`."""
    return zip((s.shape for s in model.layout), theta.split([s.numel for s in model.layout]))


def per_channel(theta: torch.Tensor, model: torch.nn.Module, fmt: str = "int8") -> torch.Tensor:
    """`theta` with every tensor of 2+ dimensions quantised to `fmt` ("int8" or "int4"), symmetric,
    one scale per output channel (max |w| / QMAX), through torch's fake quantiser (straight-through)."""
    axis, parts, qmax = channel_axis(model), [], QMAX[fmt]
    for shape, w in _tensors(theta, model):
        if len(shape) < 2:
            parts.append(w)
            continue
        rows = w.view(shape).movedim(axis, 0)
        flat = rows.reshape(rows.shape[0], -1)
        amax = flat.detach().abs().amax(1)
        scale = torch.where(amax > 0, amax / qmax, torch.ones_like(amax))
        q = torch.fake_quantize_per_channel_affine(flat, scale, torch.zeros_like(scale, dtype=torch.int32), 0, -qmax, qmax)
        parts.append(q.view(rows.shape).movedim(0, axis).reshape(-1))
    return torch.cat(parts)


def per_channel_bytes(model: torch.nn.Module, fmt: str = "int8") -> int:
    """Bytes of `per_channel`'s weights: each 2+-D tensor's values (int4: two a byte) and one float32 scale
    per output channel; 1-D tensors at float32."""
    axis = channel_axis(model)
    return sum(math.ceil(s.numel * BITS[fmt] / 8) + SCALE_BYTES * s.shape[axis] if len(s.shape) >= 2
               else FLOAT_BYTES * s.numel for s in model.layout)


def prune_mask(theta: torch.Tensor, model: torch.nn.Module, keep: float) -> torch.Tensor:
    """1.0 where a weight is kept, 0.0 where pruned: in each 2+-D tensor the `keep` fraction of largest
    magnitude (torch.nn.utils.prune.L1Unstructured, which rounds the pruned count), 1-D tensors whole."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    parts = []
    for shape, w in _tensors(theta.detach(), model):
        parts.append(torch.ones_like(w) if len(shape) < 2
                     else prune.L1Unstructured(amount=1 - keep).compute_mask(w, torch.ones_like(w)))
    return torch.cat(parts)


def pruned(theta: torch.Tensor, model: torch.nn.Module, mask: torch.Tensor, fmt: str = "int8") -> torch.Tensor:
    """`theta` with the pruned weights zero, then `per_channel` in `fmt` (the mask is fixed: fine-tuning
    trains the kept weights only)."""
    return per_channel(theta * mask, model, fmt)


def sparse_index_bytes(kept: torch.Tensor) -> tuple[int, int]:
    """(index bytes, filler entries) of one tensor's kept positions (a bool vector) as 8-bit relative
    indices: each kept weight stores its gap to the previous one (1 to 256); a gap over 256 needs a
    filler entry (a stored zero) every 256 weights. A bitmap takes ceil(n / 8) bytes and no fillers."""
    positions = kept.nonzero().flatten()
    gaps = torch.diff(positions, prepend=torch.tensor([-1]))
    fillers = int(((gaps - 1) // 2 ** INDEX_BITS).sum())
    return (len(positions) + fillers) * INDEX_BITS // 8, fillers


def pruned_bytes(mask: torch.Tensor, model: torch.nn.Module, fmt: str = "int8") -> int:
    """Bytes of `pruned`'s weights: per 2+-D tensor, its scales and the smaller of (bitmap + kept values)
    and (relative indices + kept and filler values); 1-D tensors at float32."""
    axis, total = channel_axis(model), 0
    for s, m in zip(model.layout, mask.split([s.numel for s in model.layout])):
        if len(s.shape) < 2:
            total += FLOAT_BYTES * s.numel
            continue
        kept = m.bool()
        k = int(kept.sum())
        index, fillers = sparse_index_bytes(kept)
        bitmap = math.ceil(s.numel / 8) + math.ceil(k * BITS[fmt] / 8)
        relative = index + math.ceil((k + fillers) * BITS[fmt] / 8)
        total += min(bitmap, relative) + SCALE_BYTES * s.shape[axis]
    return total


def keep_for_bytes(theta: torch.Tensor, model: torch.nn.Module, budget: int, fmt: str = "int8",
                   tolerance: float = 1e-3) -> float:
    """The largest kept fraction whose `pruned_bytes` fit in `budget` bytes (bisection on the real masks,
    to `tolerance`); a ValueError if even the smallest cannot (the 1-D tensors and scales alone)."""
    def size(keep: float) -> int:
        return pruned_bytes(prune_mask(theta, model, keep), model, fmt)

    lo, hi = tolerance, 1.0
    if size(lo) > budget:
        raise ValueError(f"{budget} bytes cannot hold this DNN pruned ({size(lo)} bytes at keep {lo:g})")
    if size(hi) <= budget:
        return hi
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if size(mid) <= budget else (lo, mid)
    return lo


@dataclass(frozen=True)
class Codebook:
    """One DNN's vector quantiser: its 2+-D tensors cut into runs of `dim` consecutive weights (each
    tensor's last run zero-padded), each run replaced by the mean of its cluster's runs. `labels`: the
    cluster of each run (fixed once fitted); the means follow the weights handed in, so fine-tuning
    trains them (each mean moves by its cluster's average gradient step)."""

    dim: int
    size: int
    labels: torch.Tensor  # int64 [runs]
    layout: tuple  # (shape, numel) of each tensor of the model's layout

    @classmethod
    def fit(cls, theta: torch.Tensor, model: torch.nn.Module, dim: int, size: int, seed: int) -> Codebook:
        """k-means (scipy.cluster.vq.kmeans2, k-means++ start, seeded) of the runs of `theta`."""
        layout = tuple((s.shape, s.numel) for s in model.layout)
        runs = _runs(theta.detach(), layout, dim).double().numpy()
        if size > len(runs):
            raise ValueError(f"a codebook of {size} entries for {len(runs)} runs of {dim} weights")
        _, labels = scipy.cluster.vq.kmeans2(runs, size, minit="++", seed=np.random.default_rng(seed))
        return cls(dim, size, torch.as_tensor(labels, dtype=torch.int64), layout)

    def __call__(self, theta: torch.Tensor) -> torch.Tensor:
        runs = _runs(theta, self.layout, self.dim)
        sums = torch.zeros(self.size, self.dim, dtype=theta.dtype).index_add(0, self.labels, runs)
        counts = torch.bincount(self.labels, minlength=self.size).clamp(min=1).to(theta.dtype)
        return _unruns((sums / counts[:, None])[self.labels], theta, self.layout, self.dim)

    @property
    def n_bytes(self) -> int:
        """The runs' indices (log2(size) bits each, packed), the codebook (float32) and 1-D tensors (float32)."""
        bits = math.ceil(math.log2(self.size))
        flat = sum(numel for shape, numel in self.layout if len(shape) < 2)
        return math.ceil(len(self.labels) * bits / 8) + FLOAT_BYTES * self.size * self.dim + FLOAT_BYTES * flat


def codebook_shapes(model: torch.nn.Module, budget: int, dims: tuple[int, ...] = (1, 2, 4, 8),
                    max_size: int = 4096) -> list[tuple[int, int]]:
    """The (dim, size) codebooks, sizes powers of two, whose bytes fit `budget`: for each run length the
    largest size that fits (validation picks among them)."""
    layout = tuple((s.shape, s.numel) for s in model.layout)
    out = []
    for dim in dims:
        runs = sum(math.ceil(numel / dim) for shape, numel in layout if len(shape) >= 2)
        fits = [2 ** b for b in range(1, int(math.log2(max_size)) + 1)
                if 2 ** b <= runs and Codebook(dim, 2 ** b, torch.empty(runs, dtype=torch.int64), layout).n_bytes <= budget]
        if fits:
            out.append((dim, fits[-1]))
    return out


def _runs(theta: torch.Tensor, layout: tuple, dim: int) -> torch.Tensor:
    """The runs of `dim` weights of every 2+-D tensor, stacked [runs, dim] (each tensor padded with zeros)."""
    parts = []
    for (shape, numel), w in zip(layout, theta.split([n for _, n in layout])):
        if len(shape) >= 2:
            parts.append(torch.nn.functional.pad(w, (0, -numel % dim)).view(-1, dim))
    return torch.cat(parts)


def _unruns(runs: torch.Tensor, theta: torch.Tensor, layout: tuple, dim: int) -> torch.Tensor:
    """`theta` with its 2+-D tensors taken from `runs` (`_runs`' order, padding dropped), 1-D tensors as they are."""
    parts, at = [], 0
    for (shape, numel), w in zip(layout, theta.split([n for _, n in layout])):
        if len(shape) < 2:
            parts.append(w)
            continue
        n_runs = math.ceil(numel / dim)
        parts.append(runs[at:at + n_runs].reshape(-1)[:numel])
        at += n_runs
    return torch.cat(parts)
