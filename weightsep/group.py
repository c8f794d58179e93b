"""The process group the stages hold: which DNNs are local, the shared-gradient sum, gathers and
broadcasts of per-DNN values, and who writes. One process is a group of one, on which every
method is the plain single-process step (no collective runs), so the stages have one code path.

    group = Group.current()
    mine = group.hold(records, costs)                               # this rank's DNNs
    accs = group.all_merged({n: score(n) for n in mine})             # every rank's, on every rank
    group.save(store, state)                                         # the writer alone writes

The collectives themselves, starting the ranks and reporting failures are weightsep/distributed.py's.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from . import distributed
from .progress import tqdm
from .state import PackedState
from .store import Store

if TYPE_CHECKING:
    from .records import DNNRecord


def merged(parts: Iterable[dict]) -> dict:
    """Dicts from every rank as one (each key comes from one rank)."""
    return {k: v for part in parts for k, v in part.items()}


@dataclass(frozen=True)
class Group:
    """This process's place in the group: rank `rank` of `size` (0 of 1 outside a group). Rank 0,
    the writer, packs (separation and matching need every DNN's Fisher), holds the whole state,
    writes the store and the results and draws the progress bars."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> Group:
        world = distributed.current()
        return cls(world.rank, world.size)

    @property
    def _writer(self) -> bool:
        return self.rank == 0

    @property
    def all_local(self) -> bool:
        """Every DNN is this process's (a group of one): its data can load with its model."""
        return self.size == 1

    # ---- which DNNs are local ----------------------------------------------------------------

    def hold(self, loaded: dict[str, DNNRecord], costs: dict[str, float]) -> list[str]:
        """The DNNs this rank trains, with their data loaded: all of them in a group of one; else each
        rank's share, balanced by `costs` (`distributed.assign`: counted, so the same on every rank).
        Every rank builds every model to count its cost; then ranks other than the writer (which packs
        and records every DNN's architecture) drop the others' from `loaded`."""
        if self.all_local:
            return list(loaded)
        owner = distributed.assign(costs, self.size)
        mine = [n for n in loaded if owner[n] == self.rank]
        for name in [n for n in loaded if n not in mine and not self._writer]:
            del loaded[name]
        for name in mine:
            if loaded[name].data is None:
                loaded[name].data = loaded[name].source.load_data()
        distributed.announce(mine)
        return mine

    def part_of(self, state: PackedState, mine: list[str]) -> PackedState:
        """This rank's part of a whole state: all of it on the writer, else its `shard`."""
        return state if self._writer else state.shard(mine)

    def held(self, holding: list[str]) -> tuple[str, ...] | None:
        """The DNNs whose exclusive pages a state built on this rank holds: all of them on the writer
        (None: a whole state), else `holding`'s (the state is a shard)."""
        return None if self._writer else tuple(holding)

    def holds_pages(self, name: str, local: list[str], trained: list[str]) -> bool:
        """This rank holds `name`'s exclusive pages: it trains it, or (the writer) nobody trains it."""
        return name in local if name in trained else self._writer

    def check_held_once(self, names: list[str], local: list[str]) -> None:
        """Every DNN trained is held (given a model and data) by exactly one rank."""
        held = self.all_gather(local)
        holders = {n: [r for r, part in enumerate(held) if n in part] for n in names}
        missing = [n for n, ranks in holders.items() if not ranks]
        if missing:
            raise ValueError(f"no model/data given for packed DNN(s) {missing}")
        twice = {n: ranks for n, ranks in holders.items() if len(ranks) > 1}
        if twice:
            raise ValueError(f"DNN(s) held by more than one rank: {twice}")

    def refuse_ranks(self, why: str) -> None:
        """A ValueError saying `why` if this group has more than one rank."""
        if not self.all_local:
            raise ValueError(why)

    def workers(self, workers: int) -> int:
        """This rank's share of the machine's worker processes (the machine's ranks share its cores)."""
        return max(1, workers // distributed.ranks_here())

    # ---- collectives -------------------------------------------------------------------------

    def sum_gradient(self, gradient: torch.Tensor | None, like: torch.Tensor,
                     contributors: int) -> tuple[torch.Tensor | None, float]:
        """The shared pages' gradient summed over every rank's DNNs, in one all-reduce (the count of
        DNNs that contributed rides along: None when none did, so Adam skips the shared pages rather
        than stepping on a zero gradient), and the seconds spent; a group of one has it already."""
        if self.all_local:
            return gradient, 0.0
        buffer = torch.cat([torch.zeros(like.numel()) if gradient is None else gradient.reshape(-1),
                            torch.tensor([float(contributors)])])
        start = time.perf_counter()
        distributed.sum_(buffer)
        return (buffer[:-1].view_as(like) if buffer[-1] > 0 else None), time.perf_counter() - start

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any."""
        return distributed.any_(flag)

    def all(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on every rank."""
        return all(self.all_gather(flag))

    def all_gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        return distributed.all_gather(obj)

    def all_merged(self, part: dict) -> dict:
        """Every rank's per-DNN `part` as one dict, on every rank."""
        return merged(self.all_gather(part))

    def gather(self, obj) -> list | None:
        """Every rank's `obj`, in rank order, on the writer (None elsewhere): read it in `writes`."""
        return distributed.gather(obj)

    def combined(self, part, combine: Callable[[list], object]):
        """Every rank's `part` combined on the writer (`combine(parts)`); elsewhere, and in a group of
        one, `part` as it is."""
        if self.all_local:
            return part
        parts = self.gather(part)
        return combine(parts) if self._writer else part

    def broadcast(self, obj):
        """The writer's `obj` on every rank."""
        return distributed.broadcast(obj)

    def from_writer(self, fn: Callable[[], object]):
        """`fn()` run on the writer alone, its result on every rank."""
        return self.broadcast(fn() if self._writer else None)

    # ---- who writes --------------------------------------------------------------------------

    def writes(self, fn: Callable[[], object]):
        """`fn()` on the writer (its result returned), None on the other ranks."""
        return fn() if self._writer else None

    def writing(self, stores: Iterable[Store], command: str) -> contextlib.ExitStack:
        """Each store locked for writing (`Store.writing`) by the writer; nothing elsewhere."""
        stack = contextlib.ExitStack()
        if self._writer:
            with stack:
                for store in stores:
                    stack.enter_context(store.writing(command))
                return stack.pop_all()
        return stack

    def save(self, store: Store, state: PackedState) -> None:
        """The writer saves the state (`distributed.save`); the other ranks write nothing."""
        if self._writer:
            distributed.save(store, state)

    def say(self, message: str) -> None:
        """A line above the progress bars, from the writer only."""
        if self._writer:
            tqdm.write(message)

    def shows(self, progress: bool) -> bool:
        """Progress bars: the writer's only (one set per run, as on one process)."""
        return progress and self._writer
