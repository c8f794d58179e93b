"""Optimization: re-train the shared and exclusive pages so that every packed DNN works again.

Takes a `PackedState` plus each DNN's model and data; returns a new `PackedState` with trained
pages (the input is not modified) and a history of validation accuracies. Three optimizers, looked
up in `OPTIMIZERS`:

* "joint" (default): the page tensors are the only parameters. Each step draws a batch for every
  DNN (or a random subset of `dnns_per_step`), resolves each DNN's weights through its page table
  (a differentiable gather), sums the task losses and updates the pages once with Adam.
* "round-robin" (published, DESIGN.md 3.5): for `rounds` rounds, each DNN in turn materialises its
  weights, trains `steps_per_turn` Adam steps on cross-entropy + lambda * overlap loss (the other
  DNNs' Fisher times the squared distance to their last weights on the pages they share), then
  writes its weights back into its shared and exclusive pages.
* "sequential": round-robin with one round, each DNN once in order.

Selection is on validation data only (best mean validation accuracy over DNNs, measured every
`eval_every` steps or after every round); test data never enters here. A non-finite loss or
gradient of one DNN is dropped from the step with a warning naming the DNN, and a step that leaves
any page non-finite is rolled back, so a NaN never reaches the shared pages.

    state, history = optimize(state, tasks, OptimizeConfig(optimizer="joint", steps=1500))
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .evaluate import accuracy
from .pages import materialize, to_pages
from .store import PackedState
from .train import batches


def paper_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The originals' loss: -mean_i log softmax_over_the_WHOLE_batch(z)[i, y_i] (ORIGINALS.md 0.2).

    Their "softmax" normalises over all N x C logits of the batch, so this is logsumexp(z) -
    mean_i z[i, y_i]: it depends on the batch size (ln(N C) at uniform logits) and its gradient
    couples the samples. Kept for faithfulness; the per-sample cross-entropy is the default.
    """
    return torch.logsumexp(logits.reshape(-1), 0) - logits.gather(1, labels.view(-1, 1)).mean()


LOSSES = {"ce": F.cross_entropy, "paper": paper_cross_entropy}


@dataclass(frozen=True)
class OptimizeConfig:
    optimizer: str = "joint"
    steps: int = 1500  # joint: optimisation steps (each sees one batch of every DNN in the step)
    dnns_per_step: int | None = None  # joint: a random subset of this many DNNs per step (None: all)
    rounds: int = 100  # round-robin: rounds; each DNN trains steps_per_turn steps per round
    steps_per_turn: int = 320  # published: 10 x 32
    lam: float = 0.1  # round-robin overlap-loss weight (published WS 0.1, NWV 10)
    lr: float = 1e-3
    batch_size: int = 100
    eval_every: int = 100  # joint: steps between validation checks
    val_samples: int = 2000  # validation samples per DNN per check (the first ones, fixed)
    loss: str = "ce"
    dnns: tuple[str, ...] | None = None  # DNNs whose losses are trained (default: every packed DNN)
    seed: int = 0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        for name in ("steps", "rounds", "steps_per_turn", "batch_size", "eval_every", "val_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dnns_per_step is not None and self.dnns_per_step < 1:
            raise ValueError(f"dnns_per_step must be >= 1, got {self.dnns_per_step}")


@dataclass
class Task:
    """What the optimizer needs of one packed DNN: its model and its train/validation tensors."""

    model: torch.nn.Module
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor


@dataclass
class History:
    steps: list[int] = field(default_factory=list)  # DNN-batches processed so far, summed over DNNs
    val_accuracy: list[dict[str, float]] = field(default_factory=list)
    best_index: int = -1
    skipped: dict[str, int] = field(default_factory=dict)  # DNN -> non-finite steps dropped
    rolled_back: int = 0
    seconds: float = 0.0

    def record(self, dnn_batches: int, accs: dict[str, float]) -> bool:
        """Log a validation check; True if it is the best mean so far."""
        self.steps.append(dnn_batches)
        self.val_accuracy.append(accs)
        mean = sum(accs.values()) / len(accs)
        best = self.best_index < 0 or mean > self.mean(self.best_index)
        if best:
            self.best_index = len(self.steps) - 1
        return best

    def mean(self, i: int) -> float:
        return sum(self.val_accuracy[i].values()) / len(self.val_accuracy[i])


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class PageOptimizer:
    """Holds the page tensors as parameters and the bookkeeping every optimizer shares."""

    def __init__(self, state: PackedState, tasks: dict[str, Task], config: OptimizeConfig, progress: bool = True):
        self.names = list(config.dnns or state.vnns)
        unknown = [name for name in self.names if name not in state.vnns]
        if unknown:
            raise ValueError(f"DNN(s) {unknown} are not packed; packed: {', '.join(state.vnns)}")
        missing = [name for name in self.names if name not in tasks]
        if missing:
            raise ValueError(f"no model/data given for packed DNN(s) {missing}")
        self.state, self.tasks, self.config, self.progress = state, tasks, config, progress
        self.loss_fn = LOSSES[config.loss]
        self.gen = torch.Generator().manual_seed(config.seed)
        self.shared = state.shared_pages.clone().requires_grad_(True)
        self.exclusive = {n: v.exclusive_pages.clone().requires_grad_(True) for n, v in state.vnns.items()}
        self.batches = {n: batches(len(tasks[n].x_train), config.batch_size, self.gen) for n in self.names}
        self.history = History()
        self.best = self.snapshot()

    def theta(self, name: str) -> torch.Tensor:
        vnn = self.state.vnns[name]
        return materialize(self.shared, self.exclusive[name], vnn.page_table, vnn.n_weights)

    def task_loss(self, name: str, theta: torch.Tensor) -> torch.Tensor:
        task = self.tasks[name]
        idx = next(self.batches[name])
        return self.loss_fn(task.model(task.x_train[idx], theta), task.y_train[idx])

    def drop(self, name: str, what: str) -> None:
        self.history.skipped[name] = self.history.skipped.get(name, 0) + 1
        warnings.warn(f"DNN {name!r}: non-finite {what}; its contribution to this step was dropped",
                      RuntimeWarning, stacklevel=3)

    def snapshot(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.shared.detach().clone(), {n: e.detach().clone() for n, e in self.exclusive.items()}

    def restore(self, snap) -> None:
        with torch.no_grad():
            self.shared.copy_(snap[0])
            for n, e in snap[1].items():
                self.exclusive[n].copy_(e)

    @torch.no_grad()
    def validate(self, dnn_batches: int) -> None:
        n = self.config.val_samples
        accs = {name: accuracy(self.tasks[name].model, self.theta(name), self.tasks[name].x_val[:n],
                               self.tasks[name].y_val[:n]) for name in self.names}
        if self.history.record(dnn_batches, accs):
            self.best = self.snapshot()

    def result(self) -> PackedState:
        state = copy.copy(self.state)
        state.shared_pages = self.best[0]
        state.vnns = {n: copy.copy(v) for n, v in self.state.vnns.items()}
        for n, vnn in state.vnns.items():
            vnn.exclusive_pages = self.best[1][n]
        return state


def _adam_state(opt: torch.optim.Optimizer) -> dict:
    return copy.deepcopy(opt.state_dict())


def joint(po: PageOptimizer) -> None:
    cfg, names = po.config, po.names
    params = [po.shared, *(po.exclusive[n] for n in names)]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    per_step = min(cfg.dnns_per_step or len(names), len(names))
    dnn_batches = 0
    po.validate(0)
    for step in tqdm(range(1, cfg.steps + 1), desc="joint optimisation", unit="step", leave=False,
                     disable=not po.progress):
        chosen = names if per_step == len(names) else [names[i] for i in torch.randperm(len(names), generator=po.gen)[:per_step]]
        grads: dict[int, torch.Tensor] = {}
        for name in chosen:
            loss = po.task_loss(name, po.theta(name))
            if not torch.isfinite(loss):
                po.drop(name, "loss")
                continue
            g_shared, g_excl = torch.autograd.grad(loss, [po.shared, po.exclusive[name]], allow_unused=True)
            g_excl = torch.zeros_like(po.exclusive[name]) if g_excl is None else g_excl
            if not _finite(g_shared, g_excl):
                po.drop(name, "gradient")
                continue
            grads[id(po.shared)] = grads.get(id(po.shared), 0) + g_shared
            grads[id(po.exclusive[name])] = g_excl
        dnn_batches += len(chosen)
        snap, opt_state = po.snapshot(), _adam_state(opt)
        for p in params:
            p.grad = grads.get(id(p))  # None: Adam leaves pages of DNNs not in this step alone
        opt.step()
        if not _finite(*params):
            po.restore(snap)
            opt.load_state_dict(opt_state)
            po.history.rolled_back += 1
            warnings.warn(f"step {step}: pages became non-finite; step rolled back", RuntimeWarning, stacklevel=2)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            po.validate(dnn_batches)


def _overlap_terms(po: PageOptimizer, name: str, last: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Per weight of `name`'s flat vector: sums over the other DNNs sharing that position of F_o,
    F_o w_o and F_o w_o^2, and how many of them have F_o > 0.

    The overlap loss sum_i mean_o F_o[i] (w[i] - w_o[i])^2 (zero terms left out of the mean, as
    the published code computes it) expands into these, so they are computed once per turn.
    """
    S, P = po.state.n_shared, po.state.page_size
    me = po.state.vnns[name]
    on_shared = me.page_table < S
    sums = torch.zeros(4, me.page_table.numel(), P)
    for other, vnn in po.state.vnns.items():
        if other == name:
            continue
        by_shared = torch.zeros(2, S, P)  # the other DNN's Fisher and weights, at their shared pages
        theirs = vnn.page_table < S
        by_shared[0, vnn.page_table[theirs]] = to_pages(vnn.fisher, P)[theirs]
        by_shared[1, vnn.page_table[theirs]] = to_pages(last[other], P)[theirs]
        f, w = torch.zeros(2, me.page_table.numel(), P)
        f[on_shared], w[on_shared] = by_shared[:, me.page_table[on_shared]]
        sums += torch.stack([f, f * w, f * w * w, (f > 0).float()])
    return tuple(s.reshape(-1)[: me.n_weights] for s in sums)


def round_robin(po: PageOptimizer) -> None:
    cfg, names = po.config, po.names
    last = {n: po.theta(n).detach().clone() for n in po.state.vnns}  # each DNN's weights after its last turn
    dnn_batches = 0
    po.validate(0)
    bar = tqdm(total=cfg.rounds * len(names), desc=f"{cfg.optimizer} optimisation", unit="turn", leave=False,
               disable=not po.progress)
    for _ in range(cfg.rounds):
        for name in names:
            f_sum, fw_sum, fw2_sum, count = _overlap_terms(po, name, last)
            scale = cfg.lam / count.clamp_min(1.0)
            w = po.theta(name).detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=cfg.lr)  # a fresh Adam per turn, as the published -mode=t
            for _ in range(cfg.steps_per_turn):
                ce = po.task_loss(name, w)
                # sum_o F_o (w - w_o)^2 expanded, so the other DNNs' terms are precomputed once per turn
                overlap = (scale * (f_sum * w * w - 2 * fw_sum * w + fw2_sum)).sum()
                loss = ce + overlap
                if not torch.isfinite(loss):
                    po.drop(name, "loss")
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if not _finite(w.grad):
                    po.drop(name, "gradient")
                    continue
                before, opt_state = w.detach().clone(), _adam_state(opt)
                opt.step()
                if not _finite(w):
                    with torch.no_grad():
                        w.copy_(before)
                    opt.load_state_dict(opt_state)
                    po.history.rolled_back += 1
                    warnings.warn(f"DNN {name!r}: weights became non-finite; step rolled back",
                                  RuntimeWarning, stacklevel=2)
            dnn_batches += cfg.steps_per_turn
            write_back(po, name, w.detach())
            last[name] = w.detach().clone()
            bar.update()
        po.validate(dnn_batches)
    bar.close()


@torch.no_grad()
def write_back(po: PageOptimizer, name: str, theta: torch.Tensor) -> None:
    """Store a DNN's trained weights into its shared and exclusive pages (overwriting shared content).

    The padding of a DNN's last page keeps the page's current content: on a shared page those
    positions may hold another DNN's weights.
    """
    vnn, S = po.state.vnns[name], po.state.n_shared
    flat = torch.cat([po.shared, po.exclusive[name]])[vnn.page_table].reshape(-1)
    flat[: vnn.n_weights] = theta
    pages = flat.view(-1, po.state.page_size)
    on_shared = vnn.page_table < S
    po.shared[vnn.page_table[on_shared]] = pages[on_shared]
    po.exclusive[name][vnn.page_table[~on_shared] - S] = pages[~on_shared]


OPTIMIZERS = {"joint": joint, "round-robin": round_robin, "sequential": round_robin}


def optimize(state: PackedState, tasks: dict[str, Task], config: OptimizeConfig,
             progress: bool = True) -> tuple[PackedState, History]:
    """Train the pages of `state` (see the module docstring); returns the best-validation state."""
    if config.optimizer == "sequential":
        config = OptimizeConfig(**{**config.__dict__, "rounds": 1})
    po = PageOptimizer(state, tasks, config, progress)
    start = time.perf_counter()
    OPTIMIZERS[config.optimizer](po)
    po.history.seconds = time.perf_counter() - start
    return po.result(), po.history
