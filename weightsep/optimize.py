"""Optimization: re-train the shared and exclusive pages so that every packed DNN works again.

Takes a `PackedState` plus each DNN's model and data (a `Task`); returns a new `PackedState` with
trained pages (the input is not modified) and a `History` of validation accuracies. The optimisers
are registered in `OPTIMIZERS` with their facts (default learning rate, the config fields they
read, whether they run over several ranks, whether cheap DNNs take extra batches per step):

* "joint" (default, weightsep/joint.py): every step trains every DNN's loss on the pages at once.
* "round-robin" (published, weightsep/round_robin.py): each DNN in turn, with an overlap loss.
* "sequential": round-robin with one round, each DNN once in order.

What they share (batches, validation checks and selection, promotion, the result state) is
weightsep/page_optimizer.py's; batches per step are weightsep/step_cost.py's; over several ranks
the process group (weightsep/group.py, docs/distributed.md) says which DNNs are local.

    state, history = optimize(state, tasks, OptimizeConfig(optimizer="joint", steps=1500))
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .checks import at_least, finite, one_of, positive, typed, within
from .config_help import opt
from .group import Group
from .joint import BALANCES, SCHEDULES, joint
from .page_optimizer import (
    LOSSES,
    SELECTIONS,
    History,
    PageOptimizer,
    Task,
)
from .round_robin import round_robin
from .state import PackedState

VERSION = 1  # OptimizeConfig's: bump when a field's meaning changes, so stored configs can be told apart


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
    loss: str = opt("ce", "ce (cross-entropy) or paper (the originals' loss, page_optimizer.paper_cross_entropy)")
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
    version: int = opt(VERSION, "of the stored copy (the state's config); a copy without one is version 1")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.spec.lr

    def __post_init__(self):
        typed(self)
        if self.version != VERSION:
            raise ValueError(f"OptimizeConfig version {self.version} is not this code's version {VERSION}")
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


    def with_spare(self, pages: int) -> OptimizeConfig:
        """The budget separation's spare pages handed to the optimiser to promote."""
        return dataclasses.replace(self, promote_pages=pages) if pages else self

    def alone(self, n_dnns: int) -> OptimizeConfig:
        """The config that trains one DNN of a set of `n_dnns` alone, as much as it trains in the set (the
        no-sharing control): when each joint step draws `dnns_per_step` DNNs, that share of the steps."""
        config = self
        if "dnns_per_step" in self.spec.reads and self.dnns_per_step:
            share = min(self.dnns_per_step, n_dnns) / n_dnns
            config = dataclasses.replace(config, steps=max(1, round(self.steps * share)), dnns_per_step=None)
        return dataclasses.replace(config, dnns=None, promote_pages=0)

    @property
    def spec(self) -> Optimizer:
        """The chosen optimiser's entry in `OPTIMIZERS`."""
        return OPTIMIZERS[self.optimizer]


@dataclass(frozen=True)
class Optimizer:
    """One optimiser and its facts, as the CLI, the checks and the scale-out read them."""

    train: Callable[[PageOptimizer], None]
    lr: float  # Adam's learning rate when --lr is not given
    reads: tuple[str, ...]  # the OptimizeConfig fields of one kind of optimiser that this one reads
    multi_rank: bool  # runs over several ranks (the joint step sums the shared gradient over them)
    batches_rule: bool  # cheap DNNs take extra batches per step (`batches_per_step`); else one each
    fixed: dict = field(default_factory=dict)  # OptimizeConfig fields it sets itself

    def __call__(self, po: PageOptimizer) -> None:
        """Train `po`'s pages (`po.config` as `configured` gave it)."""
        self.train(po)

    def configured(self, config: OptimizeConfig) -> OptimizeConfig:
        """`config` with the fields this optimiser fixes."""
        return dataclasses.replace(config, **self.fixed) if self.fixed else config

    @property
    def promotes(self) -> bool:
        """Whether it hands out spare exclusive pages while it trains (else they are all given at packing)."""
        return "promote_pages" in self.reads


JOINT_FIELDS = ("steps", "dnns_per_step", "schedule", "eval_every", "promote_pages", "promote_start", "promote_end",
                "balance", "balance_decay", "extra_compute", "max_batches")
TURN_FIELDS = ("steps_per_turn", "lam", "max_harm")

OPTIMIZERS = {
    "joint": Optimizer(joint, lr=2e-3, reads=JOINT_FIELDS, multi_rank=True, batches_rule=True),  # the cosine's peak
    "round-robin": Optimizer(round_robin, lr=1e-3, reads=("rounds", *TURN_FIELDS), multi_rank=False,
                             batches_rule=False),  # published
    "sequential": Optimizer(round_robin, lr=1e-3, reads=TURN_FIELDS, multi_rank=False, batches_rule=False,
                            fixed={"rounds": 1}),
}


def unused_fields(optimizer: str) -> tuple[str, ...]:
    """The OptimizeConfig fields `optimizer` ignores: those only other optimisers read, and those it
    fixes itself. A flag for one is an error on the command line, not silently dropped."""
    spec = OPTIMIZERS[optimizer]
    specific = {name for other in OPTIMIZERS.values() for name in (*other.reads, *other.fixed)}
    return tuple(f.name for f in dataclasses.fields(OptimizeConfig)
                 if f.name in specific and (f.name not in spec.reads or f.name in spec.fixed))


def optimize(state: PackedState, tasks: dict[str, Task], config: OptimizeConfig, progress: bool = True,
             group: Group | None = None, targets: dict[str, float] | None = None) -> tuple[PackedState, History]:
    """Train the pages of `state` (see the module docstring); returns the best-validation state.
    `targets`: the validation accuracy per DNN that promotion aims at (default: stand-alone's)."""
    spec, group = config.spec, group or Group.current()
    if not spec.multi_rank:
        group.refuse_ranks(f"the {config.optimizer} optimiser trains one DNN at a time, each turn on the pages the "
                           "last one left: it runs on one process (--procs 1); the joint optimiser runs on several")
    config = spec.configured(config)
    po = PageOptimizer(state, tasks, config, progress, group, targets)
    start = time.perf_counter()
    spec(po)
    po.history.seconds = time.perf_counter() - start
    return po.result(), po.history
