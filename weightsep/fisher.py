"""Fisher information: a DNN's diagonal Fisher, one value per weight of its flat vector.

Takes a model whose weights are ONE parameter named `theta` (a `TemplateNet`), a flat weight vector
of `n` entries and the training inputs (and labels); draws K training samples uniformly with
replacement (seeded) and returns a `[n]` float32 tensor, index-aligned with `theta` and so with its
pages. Arrays in, arrays out: nothing is read or written on disk.

Estimators (`ESTIMATORS`, chosen by name in `FisherConfig`), `g_c = d log p(c|x) / d theta`:
  paper      the published one (NWV, WS): p(y^|x) * g_{y^}^2 at the predicted class y^ = argmax,
             one sample at a time (K backward passes), at WS's K = 50.
  predicted  the same estimator, per-sample gradients batched with `torch.func` (vmap over grad).
  empirical  true labels y: g_y^2, unweighted.
  true       expectation over the model's own predictive distribution: sum_c p(c|x) g_c^2.
All are averaged over the K samples; WS then min-max normalises the vector to [0, 1].

Default: "predicted" at K = 1000. It keeps the published target (separation and matching keep their
published meaning) and removes most of its sampling noise. Measured on a trained WS MNIST net
(65,402 weights, `python -m bench.fisher --quality`, docs/fisher.md): two seeds rank the WS pages
(P = 512) with Spearman 0.87 at the published K = 50 and 0.97 at K = 1000, and agree on the pages
holding 90% of the Fisher (WS's exclusive set) with Jaccard 0.84 vs 0.94 (P = 100: 0.70 vs 0.92).
The published target and the true Fisher converge to the same ranking (Spearman 0.995), but the
true Fisher costs a backward pass per class: at equal time (K = 100) it is noisier (0.95). The
empirical Fisher ranks pages differently (0.97 against both) and is noisier. Batched, K = 1000 fits
the Fisher stage's budget (timings: docs/results.md#code-notes, docs/fisher.md).

    from weightsep.fisher import FisherConfig, compute_fisher
    fisher = compute_fisher(net, net.theta.detach(), split.x, split.y, FisherConfig())   # [n] in [0, 1]
    paper = compute_fisher(net, theta, x, y, FisherConfig("paper", normalize=False))     # published
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jacrev, vmap

from .checks import at_least, one_of, typed
from .config_help import opt
from .flat import evaluating

VERSION = 1  # bump when an estimator's numbers change, so stored Fisher vectors can be told apart

# (model, theta, x [K, ...], y [K], chunk) -> [n] Fisher averaged over the K samples
EstimatorFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def _log_probs(model: nn.Module, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample log-softmax of ONE input (no batch axis); a batch of 1, as the originals ran it."""
    logits = functional_call(model, {"theta": theta}, (x.unsqueeze(0),))[0]
    return torch.log_softmax(logits, dim=-1)


def _predicted_target(model: nn.Module, theta: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(y^|x) at the predicted class (the published `v_fx_tensors`), and p(y^|x) as its weight."""
    log_p = _log_probs(model, theta, x)
    top = log_p.detach().argmax().unsqueeze(0)
    target = log_p.gather(0, top).squeeze(0)
    return target, target.detach().exp()


def _label_target(model: nn.Module, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(y|x) at the true label."""
    return _log_probs(model, theta, x).gather(0, y.unsqueeze(0)).squeeze(0)


def _predicted_loop(
    model: nn.Module, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk: int
) -> torch.Tensor:
    """The published computation: one sample, one backward pass, at a time."""
    theta = theta.detach().requires_grad_(True)
    total = torch.zeros_like(theta, dtype=torch.float64)
    for xi in x:
        target, weight = _predicted_target(model, theta, xi)
        (g,) = torch.autograd.grad(target, theta)
        total += weight * g.square()
    return (total / len(x)).to(theta.dtype)


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _per_sample(fn: Callable, in_dims: tuple) -> Callable:
    """`vmap(fn, in_dims)`; for a module vmap cannot batch (e.g. a recurrent layer that makes its own
    initial state inside forward), the same per-sample values from a loop over the samples, slower,
    with a warning saying so."""
    batched = vmap(fn, in_dims=in_dims)
    fallback = False

    def loop(*args):
        n = next(len(a) for a, d in zip(args, in_dims) if d == 0)
        outs = [fn(*(a[i] if d == 0 else a for a, d in zip(args, in_dims))) for i in range(n)]
        return tuple(map(torch.stack, zip(*outs))) if isinstance(outs[0], tuple) else torch.stack(outs)

    def run(*args):
        nonlocal fallback
        if not fallback:
            try:
                return batched(*args)
            except RuntimeError as e:
                fallback = True
                warnings.warn(f"Fisher: vmap cannot batch this model's per-sample gradients ({str(e)[:160]}); "
                              "computing them one sample at a time (same values, slower)", RuntimeWarning, stacklevel=2)
        return loop(*args)

    return run


def _predicted_batched(
    model: nn.Module, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk: int
) -> torch.Tensor:
    """The published estimator with `chunk` per-sample gradients at a time (memory: chunk x n floats)."""
    theta = theta.detach()
    per_sample = _per_sample(grad(lambda t, xi: _predicted_target(model, t, xi), has_aux=True), (None, 0))
    total = torch.zeros_like(theta, dtype=torch.float64)
    for part in _chunks(len(x), chunk):
        grads, weights = per_sample(theta, x[part])
        total += weights @ grads.square_()
    return (total / len(x)).to(theta.dtype)


def _empirical_batched(
    model: nn.Module, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Empirical Fisher: squared gradient of the true label's log-probability, unweighted."""
    theta = theta.detach()
    per_sample = _per_sample(grad(lambda t, xi, yi: _label_target(model, t, xi, yi)), (None, 0, 0))
    total = torch.zeros_like(theta, dtype=torch.float64)
    for part in _chunks(len(x), chunk):
        total += per_sample(theta, x[part], y[part]).square_().sum(0)
    return (total / len(x)).to(theta.dtype)


def _true_batched(
    model: nn.Module, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, chunk: int
) -> torch.Tensor:
    """True Fisher, exact over classes: sum_c p(c|x) g_c^2; chunk // classes samples at a time."""
    theta = theta.detach()

    def log_probs(t: torch.Tensor, xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_p = _log_probs(model, t, xi)
        return log_p, log_p.detach().exp()

    per_sample = _per_sample(jacrev(log_probs, has_aux=True), (None, 0))  # [B, C, n], [B, C]
    classes = _log_probs(model, theta, x[0]).numel()
    total = torch.zeros_like(theta, dtype=torch.float64)
    for part in _chunks(len(x), max(1, chunk // classes)):
        jac, probs = per_sample(theta, x[part])
        total += torch.einsum("bc,bcn->n", probs, jac.square_())
    return (total / len(x)).to(theta.dtype)


@dataclass(frozen=True)
class Estimator:
    """An estimator in the table: how it is computed and the K it runs at unless told otherwise."""

    fn: EstimatorFn
    default_samples: int
    description: str


ESTIMATORS: dict[str, Estimator] = {
    "paper": Estimator(_predicted_loop, 50, "published: p(y^) * g_{y^}^2, one sample at a time, WS's K"),
    "predicted": Estimator(_predicted_batched, 1000, "published target, batched per-sample gradients"),
    "empirical": Estimator(_empirical_batched, 1000, "true labels: g_y^2, unweighted"),
    # a backward pass per class and sample: K = 100 costs what "predicted" does at 1000 (10 classes)
    "true": Estimator(_true_batched, 100, "expectation over the model's prediction: sum_c p(c) g_c^2"),
}


@dataclass(frozen=True)
class FisherConfig:
    """How the Fisher stage runs (each field's help text beside its default)."""

    estimator: str = opt("predicted", "a name in fisher.ESTIMATORS")
    samples: int | None = opt(None, "K, training samples drawn uniformly with replacement; None = the estimator's default")
    chunk: int = opt(64, "per-sample gradients held at once by batched estimators (memory: chunk x n x 4 bytes)")
    seed: int = opt(0, "seeds the draw of the K samples")
    normalize: bool = opt(True, "min-max normalise to [0, 1], as WS does (NWV does not)")
    version: int = opt(VERSION, "the Fisher stage's code version, stored with the config")

    def __post_init__(self):
        typed(self)
        one_of(self, "estimator", tuple(ESTIMATORS))
        at_least(self, "samples", 1, "--fisher-samples (K)")
        at_least(self, "chunk", 1)
        if self.version != VERSION:
            raise ValueError(f"FisherConfig version {self.version} is not this code's version {VERSION}")

    @property
    def k(self) -> int:
        """The K actually used."""
        return ESTIMATORS[self.estimator].default_samples if self.samples is None else self.samples


def draw_samples(n_train: int, k: int, seed: int) -> torch.Tensor:
    """K indices into the training set, uniform WITH replacement (as `do_compute_fisher`), seeded."""
    if n_train < 1:
        raise ValueError("the Fisher needs at least one training sample")
    return torch.randint(0, n_train, (k,), generator=torch.Generator().manual_seed(seed))


def minmax_normalize(fisher: torch.Tensor) -> torch.Tensor:
    """(F - min) / (max - min): WS's scaling to [0, 1]; a constant vector carries no ranking, so it is an error."""
    low, high = fisher.min(), fisher.max()
    if not high > low:
        raise ValueError(f"cannot min-max normalise a constant Fisher (every entry {low.item():g})")
    return (fisher - low) / (high - low)


def compute_fisher(
    model: nn.Module,
    theta: torch.Tensor,
    x_train: torch.Tensor | np.ndarray,
    y_train: torch.Tensor | np.ndarray,
    config: FisherConfig = FisherConfig(),
) -> torch.Tensor:
    """The diagonal Fisher of `model` at the flat weights `theta`: `[n]`, same dtype and device as theta.

    `model` must take its weights from one parameter named `theta` (functional_call replaces it);
    x_train / y_train are the training inputs and int labels (labels are used by "empirical" only).
    """
    theta = theta.detach()
    index = draw_samples(len(x_train), config.k, config.seed)
    x = torch.as_tensor(x_train)[index].to(device=theta.device, dtype=theta.dtype)
    y = torch.as_tensor(y_train)[index].to(device=theta.device, dtype=torch.long)
    with evaluating(model):  # batch norm on its running statistics: per-sample gradients are defined
        fisher = ESTIMATORS[config.estimator].fn(model, theta, x, y, config.chunk)
    bad = (~torch.isfinite(fisher)).sum().item()
    if bad:
        raise FloatingPointError(
            f"Fisher ({config.estimator}, K={config.k}) has {bad} non-finite entries of {fisher.numel()}: "
            "the weights or inputs hold inf/NaN, or the logits overflow")
    return minmax_normalize(fisher) if config.normalize else fisher
