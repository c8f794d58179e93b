"""Registering DNNs in a packed state: formation -> separation -> matching, one DNN at a time.

Takes a DNN's trained flat weights and its Fisher vector; returns a new `PackedState` in which the
DNN has a page table, its exclusive pages and its share of the shared pages (the input state is
not modified). This is `-mode=a` of the originals, and `remove_vnn` is `-mode=r`.

Variants are chosen by name in tables: the pack mode (`PACK_MODES`: "ws" separates each DNN's pages
into exclusive and sharable ones, "nwv" shares them all), the separation (separation.RULES) and
what a shared page holds after a DNN lands on it (`SHARED_CONTENTS`):
* "fisher-mean" (default): the Fisher-weighted mean of its occupants' weights, per position: the
  point that minimises sum_k F_k (w - w_k)^2, i.e. the best start for re-training;
* "first": its first occupant's weights (the reference convention for comparing matchers);
* "random": the published behaviour: the store starts as N(0, 0.01) noise, and `-mode=a` matches
  against and keeps those contents until training writes pages back.

    state = new_state(PackConfig(), n_shared=128)
    state, info = add_vnn(state, "mnist10k", theta, fisher, PackConfig())
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .checks import MAX_PAGE_SIZE, MAX_SHARED_WEIGHTS, at_least, finite, one_of, positive, typed, within
from .config_help import opt
from .matching import MATCHERS, match
from .pages import n_pages, to_pages
from .separation import RULES, SEPARATIONS, separate
from .state import VNN, PackedState, PackInfo, Provenance, StateConfig, exclusive_entries, is_shared

# ---------------------------------------------------------------- variants, by name


@dataclass(frozen=True)
class PackMode:
    """What a pack mode (`PACK_MODES`) means: how a DNN's pages split into exclusive and sharable
    ones, and how many shared pages a set of DNNs gets."""

    separates: bool  # the separation (and its config fields) applies
    split: Callable  # (name, fisher, total pages, S, config, tpr, n_exclusive) -> (exclusive, sharable, info)
    n_shared: Callable[[list[int], PackConfig], int]  # S for DNNs of these weight counts
    help: str


def _separate(name, fisher, total, S, config, tpr, n_exclusive):
    sep = separate(fisher, config.page_size, S, config.margin, tpr, n_exclusive)
    return sep.exclusive, sep.sharable, {"tpr": tpr, "n_overflow": sep.n_overflow}


def _all_shared(name, fisher, total, S, config, tpr, n_exclusive):
    if total > S:
        raise ValueError(f"DNN {name!r} has {total} pages, more than the {S} shared pages of this NWV store")
    return torch.zeros(0, dtype=torch.long), torch.arange(total), {}


def _largest(sizes: list[int], config: PackConfig) -> int:
    """The largest DNN's page count: the fewest shared pages on which every page of each DNN can be shared
    (a DNN's pages lie on distinct shared pages)."""
    return max(n_pages(n, config.page_size) for n in sizes)


def _configured(sizes: list[int], config: PackConfig) -> int:
    """The S asked for (`--shared-pages`), else the largest DNN's page count."""
    return _largest(sizes, config) if config.n_shared is None else config.n_shared


PACK_MODES = {
    "ws": PackMode(True, _separate, _configured, "exclusive + shared pages (weight separation)"),
    "nwv": PackMode(False, _all_shared, _largest, "every page shared; S = the largest DNN's pages"),
}


@dataclass(frozen=True)
class SharedContent:
    """What a shared page holds (`SHARED_CONTENTS`): at the start, and after a DNN's page lands on it."""

    start: Callable[[tuple[int, int], int], torch.Tensor]  # (shape, seed) -> the empty store's pages
    land: Callable  # (old pages, old Fisher, landing pages, their Fisher, unoccupied [n, 1]) -> pages


def _zeros(shape, seed):
    return torch.zeros(shape)


def _noise(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.01


def _fisher_mean(old_w, old_f, w_a, f_a, unoccupied):
    total = old_f + f_a
    mean = torch.where(total > 0, (old_f * old_w + f_a * w_a) / total.clamp_min(1e-30), old_w)
    return torch.where(unoccupied, w_a, mean)


def _first(old_w, old_f, w_a, f_a, unoccupied):
    return torch.where(unoccupied, w_a, old_w)


def _kept(old_w, old_f, w_a, f_a, unoccupied):
    return old_w


SHARED_CONTENTS = {"fisher-mean": SharedContent(_zeros, _fisher_mean), "first": SharedContent(_zeros, _first),
                   "random": SharedContent(_noise, _kept)}
MODES = tuple(PACK_MODES)
SHARED_CONTENT = tuple(SHARED_CONTENTS)
PUBLISHED_SHARED_PAGES = 128  # WS's store (PerCom 2022): `--shared-pages 128`, and a new store of `add` (-mode=a)
VERSION = 1  # PackConfig's: bump when a field's meaning changes, so stored configs can be told apart


@dataclass(frozen=True)
class PackConfig:
    """How DNNs are packed. Published WS defaults: P=512, S=128 (`PUBLISHED_SHARED_PAGES`), margin 0.1, alpha 0.5
    (separation "margin")."""

    mode: str = opt("ws", "\"ws\": exclusive + shared pages; \"nwv\": everything shared, S = largest DNN's pages")
    page_size: int = opt(512, "weights per page (P; published 512)")
    n_shared: int | None = opt(None, "shared pages (S; published 128); unset: the largest DNN's page count, the fewest "
                               "that share all of a DNN's pages (`add`'s new store: 128); WS only, NWV derives S")
    separation: str = opt("budget", 'WS: "budget" (one budget for the set, from `ratio`) or "margin" (published)')
    ratio: float = opt(6.0, "budget: stand-alone weights / packed weights asked for (sets the exclusive pages); "
                            "one more than 5% out of reach is warned of, naming the DNN that prevents it")
    at_packing: float = opt(0.5, "budget: share of the exclusive pages given at packing; the rest by accuracy")
    margin: float = opt(0.1, "margin: each DNN keeps pages until 1 - margin of its Fisher mass")
    target_accuracy: float | None = opt(None, "WS: a target accuracy lowers tpr, so fewer exclusive pages")
    alpha: float = opt(0.5, "WS tpr (with target_accuracy): threshold on the L2-normalised output of a sample's label")
    matching: str = opt("optimal", "matcher of pages onto shared pages: a name in matching.MATCHERS")
    shared_content: str = opt("fisher-mean", "what a shared page holds after a DNN lands on it (pack.py's docstring)")
    seed: int = opt(0, 'seeds the "random" shared content')
    version: int = opt(VERSION, "of the stored copy (the state's config); a copy without one is version 1")

    @property
    def plans_a_set(self) -> bool:
        """Whether this packing plans one exclusive-page budget for the DNNs packed together (a WS
        "budget" separation): it packs a set into a new store, and its spare pages are promoted."""
        return plans_a_set(self.mode, self.separation)

    def __post_init__(self):
        typed(self)
        if self.version != VERSION:
            raise ValueError(f"PackConfig version {self.version} is not this code's version {VERSION}")
        one_of(self, "mode", MODES)
        one_of(self, "matching", tuple(MATCHERS))
        one_of(self, "shared_content", SHARED_CONTENT)
        one_of(self, "separation", SEPARATIONS)
        finite(self)
        positive(self, "ratio")
        within(self, "at_packing", 0.0, 1.0)
        within(self, "margin", 0.0, 1.0)
        within(self, "target_accuracy", 0.0, 1.0)
        within(self, "alpha", 0.0, 1.0)  # a threshold on an L2-normalised output row, which lies in [0, 1]
        within(self, "page_size", 1, MAX_PAGE_SIZE)
        at_least(self, "n_shared", 1)
        # checked before anything is allocated (None: S is the largest DNN's pages, a DNN already in memory)
        if self.n_shared is not None and self.n_shared * self.page_size > MAX_SHARED_WEIGHTS:
            raise ValueError(f"--shared-pages x --page-size = {self.n_shared:,} x {self.page_size:,} weights "
                             f"({self.n_shared * self.page_size * 4 / 2**30:.1f} GiB per float32 copy) is over "
                             f"the limit of {MAX_SHARED_WEIGHTS:,} weights; the published store is 128 x 512")


def plans_a_set(mode: str, separation: str) -> bool:
    """`PackConfig.plans_a_set` from the names (the CLI checks flags before building a config)."""
    return PACK_MODES[mode].separates and RULES[separation].plans_a_set


def new_state(config: PackConfig, n_shared: int) -> PackedState:
    """An empty store of `n_shared` shared pages (random N(0, 0.01) content for "random", else zeros)."""
    shape = (n_shared, config.page_size)
    pages = SHARED_CONTENTS[config.shared_content].start(shape, config.seed)
    return PackedState(config.page_size, pages, torch.zeros(shape), {}, StateConfig(pack=asdict(config)))


def pack_config(state: PackedState) -> PackConfig:
    """The PackConfig a state was made with (ValueError if it records none: not made by `pack`)."""
    if state.config.pack is None:
        raise ValueError("this packed state records no pack config (it was not made by packing DNNs)")
    try:
        return PackConfig(**state.config.pack)
    except TypeError as e:  # a field this version does not know, or one missing
        raise ValueError(f"the store's pack config does not fit this weightsep's PackConfig: {e}") from None


def shared_pages_needed(n_weights: list[int], config: PackConfig) -> int:
    """S for a set of DNNs of these weight counts: the configured S (WS), else the largest DNN's page count."""
    return PACK_MODES[config.mode].n_shared(n_weights, config)


def add_vnn(state: PackedState, name: str, theta: torch.Tensor, fisher: torch.Tensor, config: PackConfig,
            tpr: float = 1.0, n_exclusive: int | None = None) -> tuple[PackedState, PackInfo]:
    """Separate `name`'s pages, match its sharable ones onto the shared pages, return the new state.

    WS keeps `n_exclusive` pages exclusive when given (a budget's share), else the margin decides."""
    if name in state.vnns:
        raise ValueError(f"DNN {name!r} is already packed; remove it first (-mode=r)")
    state.format.check_float32(f"cannot add DNN {name!r} to a quantised store: its pages would leave their "
                               "formats' grids; pack the DNNs together with --precision (run), or add to a float32 store")
    if theta.shape != fisher.shape or theta.dim() != 1:
        raise ValueError(f"DNN {name!r}: weights {tuple(theta.shape)} and Fisher {tuple(fisher.shape)} must be equal 1-D")
    if state.page_size != config.page_size:
        raise ValueError(f"store has page size {state.page_size}, the config asks for {config.page_size}")
    P, S = state.page_size, state.n_shared
    total = n_pages(theta.numel(), P)
    exclusive, sharable, info = PACK_MODES[config.mode].split(name, fisher, total, S, config, tpr, n_exclusive)
    w_pages, f_pages = to_pages(theta, P), to_pages(fisher, P)
    w_a, f_a = w_pages[sharable].double().numpy(), f_pages[sharable].double().numpy()
    occupancy = state.occupancy().numpy()
    if not state.vnns:  # the first DNN is mapped identically, as published
        assignment = np.arange(len(sharable))
        info.update(matching="identity", matching_cost=0.0, matching_seconds=0.0)
    else:
        result = match(config.matching, w_a, f_a, state.shared_pages.double().numpy(),
                       state.shared_fisher.double().numpy(), occupancy)
        assignment = result.assignment
        info.update(matching=config.matching, matching_cost=result.cost, matching_seconds=result.seconds,
                    layout={str(k): v for k, v in result.layout.items()})
    page_table = torch.empty(total, dtype=torch.long)
    page_table[sharable] = torch.as_tensor(assignment, dtype=torch.long)
    page_table[exclusive] = exclusive_entries(S, 0, len(exclusive))

    shared_pages, shared_fisher = _land(state, assignment, w_pages[sharable], f_pages[sharable], occupancy,
                                        config.shared_content)
    info = PackInfo(**info, n_exclusive=len(exclusive), n_sharable=len(sharable))
    vnn = VNN(name, theta.numel(), page_table, w_pages[exclusive].clone(), fisher.clone(), Provenance(pack=info))
    return state.with_vnn(vnn, shared_pages=shared_pages, shared_fisher=shared_fisher), info


def _land(state: PackedState, assignment: np.ndarray, w_a: torch.Tensor, f_a: torch.Tensor,
          occupancy: np.ndarray, content: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Shared pages and accumulated Fisher after pages (w_a, f_a) land on shared pages `assignment`."""
    idx = torch.as_tensor(assignment, dtype=torch.long)
    pages, fisher = state.shared_pages.clone(), state.shared_fisher.clone()
    old_w, old_f = pages[idx], fisher[idx]
    fisher[idx] = old_f + f_a
    unoccupied = torch.as_tensor(occupancy[assignment] == 0).view(-1, 1)
    pages[idx] = SHARED_CONTENTS[content].land(old_w, old_f, w_a, f_a, unoccupied)
    return pages, fisher


def remove_vnn(state: PackedState, name: str) -> PackedState:
    """Drop a DNN: its exclusive pages go, and its Fisher leaves the shared pages it occupied."""
    if name not in state.vnns:
        raise ValueError(f"DNN {name!r} is not packed; packed: {', '.join(state.vnns) or 'none'}")
    vnn = state.vnns[name]
    on_shared = is_shared(vnn.page_table, state.n_shared)
    shared_fisher = state.shared_fisher.clone()
    shared_fisher[vnn.page_table[on_shared]] -= to_pages(vnn.fisher, state.page_size)[on_shared]
    return state.without_vnn(name, shared_fisher=shared_fisher.clamp_(min=0))


def solo_state(name: str, theta: torch.Tensor, page_size: int, buffers: dict[str, torch.Tensor] | None = None) -> PackedState:
    """A one-DNN store with no shared pages and every page exclusive (the no-sharing control);
    `buffers`: the model's buffers that go with `theta` (batch-norm statistics...)."""
    pages = to_pages(theta, page_size).clone()
    vnn = VNN(name, theta.numel(), exclusive_entries(0, 0, len(pages)), pages, torch.ones_like(theta),
              buffers=dict(buffers or {}))
    return PackedState(page_size, torch.zeros(0, page_size), torch.zeros(0, page_size), {name: vnn})
