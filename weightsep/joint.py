"""The joint optimiser: the page tensors are the only parameters, and every step trains every DNN.

Each step draws a batch for every DNN (or a random subset of `dnns_per_step`), resolves each DNN's
weights through its page table (a differentiable gather), sums the task losses and updates the
pages once with Adam, its learning rate warmed up over the first 5% of the steps and then decayed
to 0 along a cosine (`schedule`; "constant" keeps it flat; the comparison is in docs/results.md).
`balance` says how the DNNs' gradients are summed (`BALANCES`): "rms" (default) divides each DNN's
gradient by a running mean (decay `balance_decay`) of its own shared-page gradient's RMS, so every
DNN has the same say on the shared pages whatever the scale of its loss's gradient (those scales
differ by an order of magnitude, docs/results.md#code-notes, and Adam's per-weight step follows the largest); "sum" is
the plain sum of the task losses' gradients. DNNs whose batches cost few FLOPs take several per
step (weightsep/step_cost.py, within `extra_compute` of a plain step's FLOPs): letters, a dense net
at a ninth of the costliest DNN's FLOPs, was the one DNN still climbing when the steps ran out.

Over several ranks the process group (weightsep/group.py) sums the shared-page gradient of every
rank's DNNs in one all-reduce per step, so every rank takes the same Adam step as one process would
(the pages equal one process's to float32 rounding). Each DNN draws its batches from its own
generator (`dnn_generator`), so they do not depend on which ranks train it.

    joint(PageOptimizer(state, tasks, OptimizeConfig(steps=1500)))
"""
from __future__ import annotations

import math
import warnings

import torch

from .page_optimizer import PageOptimizer, StepUndo, _finite
from .progress import tqdm


def cosine(step: int, steps: int) -> float:
    """Learning-rate factor: linear warm-up over the first 5% of the steps, then half a cosine to 0."""
    warm = max(1, steps // 20)
    return step / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


SCHEDULES = {"constant": lambda step, steps: 1.0, "cosine": cosine}

BALANCES = ("rms", "sum")


class GradientBalance:
    """The factor each DNN's gradient is multiplied by before the sum (see `balance` above)."""

    def __init__(self, kind: str, decay: float):
        self.kind, self.decay = kind, decay
        self.rms: dict[str, float] = {}  # DNN -> running RMS of its shared-page gradient

    def factor(self, name: str, g_shared: torch.Tensor) -> float:
        if self.kind == "sum":
            return 1.0
        rms = float(g_shared.pow(2).mean().sqrt())
        self.rms[name] = rms if name not in self.rms else self.decay * self.rms[name] + (1 - self.decay) * rms
        return 1.0 / self.rms[name] if self.rms[name] > 0 else 1.0  # no shared gradient: nothing to balance


def _swap_parameter(opt: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor) -> None:
    """Replace a grown exclusive-page tensor in Adam, keeping its moments (zeros for the new rows)."""
    group = opt.param_groups[0]
    group["params"] = [new if p is old else p for p in group["params"]]
    if old in opt.state:
        state = opt.state.pop(old)
        grow = lambda t: torch.cat([t, t.new_zeros(new.shape[0] - old.shape[0], *t.shape[1:])])  # noqa: E731
        opt.state[new] = {k: grow(v) if torch.is_tensor(v) and v.shape == old.shape else v for k, v in state.items()}


def joint(po: PageOptimizer) -> None:
    cfg, names = po.config, po.names
    opt = torch.optim.Adam([po.shared, *(po.exclusive[n] for n in po.local)], lr=cfg.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: SCHEDULES[cfg.schedule](step + 1, cfg.steps))
    per_step = min(cfg.dnns_per_step or len(names), len(names))
    checks = [s for s in range(1, cfg.steps + 1) if s % cfg.eval_every == 0 or s == cfg.steps]
    window = [s for s in (0, *checks) if cfg.promote_start * cfg.steps <= s <= cfg.promote_end * cfg.steps]
    balance = GradientBalance(cfg.balance, cfg.balance_decay)
    dnn_batches = 0

    def promote(step: int, accs: dict[str, float]) -> None:
        if step in window and po.spare_pages:
            for name, count in po.promotions(accs, len(window) - window.index(step)).items():
                if grown := po.promote(name, count, dnn_batches):
                    _swap_parameter(opt, *grown)

    promote(0, po.validate(0))
    if po.history.promoted:  # promoted pages start as their shared pages' content: check 0's accuracies still hold
        po.best = po.snapshot()
    for step in tqdm(range(1, cfg.steps + 1), desc="joint optimisation", unit="step", leave=False,
                     disable=not po.progress):
        chosen = names if per_step == len(names) else [names[i] for i in torch.randperm(len(names), generator=po.gen)[:per_step]]
        grads: dict[int, torch.Tensor] = {}
        contributors = 0
        for name in (n for n in chosen if n in po.local):
            loss = po.task_loss(name, po.theta(name))
            if not torch.isfinite(loss):
                po.drop(name, "loss")
                continue
            g_shared, g_excl = torch.autograd.grad(loss, [po.shared, po.exclusive[name]], allow_unused=True)
            g_excl = torch.zeros_like(po.exclusive[name]) if g_excl is None else g_excl
            if not _finite(g_shared, g_excl):
                po.drop(name, "gradient")
                continue
            factor = balance.factor(name, g_shared)
            if id(po.shared) in grads:  # autograd's fresh gradient tensors: scaled and summed in place
                grads[id(po.shared)].add_(g_shared, alpha=factor)
            else:
                grads[id(po.shared)] = g_shared.mul_(factor)
            grads[id(po.exclusive[name])] = g_excl.mul_(factor)
            contributors += 1
        grads[id(po.shared)], seconds = po.group.sum_gradient(grads.get(id(po.shared)), po.shared, contributors)
        po.history.communication_seconds += seconds
        dnn_batches += sum(po.batches_per_step[n] for n in chosen)
        params = opt.param_groups[0]["params"]
        undo, buffers = StepUndo(opt), po.buffers()
        for p in params:
            p.grad = grads.get(id(p))  # None: Adam leaves pages of DNNs not in this step alone
        opt.step()
        if po.group.any(not _finite(*params)):  # every rank rolls back, or none
            undo.undo()
            po.restore_buffers(buffers)
            po.history.rolled_back += 1
            warnings.warn(f"step {step}: pages became non-finite; step rolled back", RuntimeWarning, stacklevel=2)
        schedule.step()
        if step in checks:
            promote(step, po.validate(dnn_batches))
