"""Pack a set of DNN records and optimise it: Fisher -> separation -> matching -> (formats) -> optimisation.

Takes `DNNRecord`s (weightsep/records.py) with their stand-alone references; returns the packed,
optimised `PackedState` and its `History`. `run`, `weightsep.api` and the experiments share this
composition; the stages themselves are fisher.py, separation.py, matching.py (via pack.py),
precision.py and optimize.py. Over several ranks the process group (weightsep/group.py) gathers the
ranks' Fisher vectors to the writer, which separates and matches, and gives each rank its part.

    state, history, config, seconds = pack_and_optimize_records(records, PackConfig(), FisherConfig(),
                                                                OptimizeConfig())
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import torch

from . import dnn as dnn_mod
from .fisher import FisherConfig, compute_fisher
from .flat import evaluating, load_buffer_state, parameter_sizes
from .group import Group, merged
from .optimize import OptimizeConfig, optimize
from .pack import PackConfig, add_vnn, new_state, shared_pages_needed
from .page_optimizer import History
from .pages import n_pages
from .precision import PrecisionConfig, assign
from .progress import tqdm
from .records import DNNRecord
from .separation import allot, exclusive_budget, target_performance_rate
from .state import PackedState, Provenance, Standalone


def fisher_for(loaded: DNNRecord, theta: torch.Tensor, config: FisherConfig) -> torch.Tensor:
    try:
        return compute_fisher(loaded.model, theta, loaded.data.train.x, loaded.data.train.y, config)
    except (FloatingPointError, ValueError) as e:
        raise dnn_mod.DNNError(f"DNN {loaded.name!r}: Fisher failed: {e}") from e


def tpr_for(loaded: DNNRecord, theta: torch.Tensor, config: PackConfig, max_samples: int = 10000) -> float:
    """1.0 without a target accuracy; else WS's target performance rate on training data."""
    if config.target_accuracy is None:
        return 1.0
    x = torch.from_numpy(loaded.data.train.x[:max_samples])
    with torch.no_grad(), evaluating(loaded.model):
        probs = torch.softmax(loaded.model(x, theta), 1)
    return target_performance_rate(probs, torch.from_numpy(loaded.data.train.y[:max_samples]),
                                   config.target_accuracy, config.alpha)




@dataclass(frozen=True)
class BudgetPlan:
    """The "budget" separation's plan for a set of DNNs: the exclusive pages the `ratio` allows, each
    DNN's exclusive pages at packing (`counts`) and the `spare` ones left for the optimiser to promote."""

    ratio: float
    exclusive_pages: int
    counts: dict[str, int]
    spare: int

    def stored(self) -> dict:
        """As the state's config records it (JSON)."""
        return {"ratio": self.ratio, "exclusive_pages": self.exclusive_pages, "at_packing": sum(self.counts.values()),
                "spare": self.spare}


def plan_budget(sizes: dict[str, int], config: PackConfig, n_shared: int) -> BudgetPlan:
    """The budget plan for DNNs of `sizes` weights each (see `BudgetPlan`)."""
    budget = exclusive_budget(list(sizes.values()), config.page_size, n_shared, config.ratio)
    pages = {name: n_pages(n, config.page_size) for name, n in sizes.items()}
    counts, spare = allot(budget, pages, n_shared, config.at_packing)
    return BudgetPlan(config.ratio, budget, counts, spare)


def pack_records(records: dict[str, DNNRecord], pack_config: PackConfig, fisher_config: FisherConfig,
                 state: PackedState | None = None, group: Group | None = None) -> tuple[PackedState, dict]:
    """Add each DNN in order (Fisher, separation, matching) to `state` or to a new store; returns the
    state and seconds spent (and `spare`: the budget plan's pages for the optimiser).

    A record's `fisher`, if set, was computed with `fisher_config` on its reference weights and is
    used as it is; the ones computed are set (the experiments pack the same DNNs many ways).

    The "budget" separation shares one budget among the DNNs packed here, so it packs a set into a
    new store; its plan is in the state's config.

    Over several ranks the records with a reference are this rank's: each rank computes their
    Fisher, the writer gathers them and separates and matches, and every rank gets its part."""
    group = group or Group.current()
    budget = pack_config.plans_a_set
    if budget and state is not None and state.vnns:
        raise ValueError("the budget separation packs a set of DNNs into a new store; "
                         "add DNNs to an existing store with --separation margin")
    timings = {"fisher_seconds": 0.0, "matching_seconds": 0.0, "spare": 0}
    mine = [n for n, record in records.items() if record.reference is not None]
    for name in mine:  # the stand-alone buffers go with the stand-alone weights (Fisher, tpr)
        load_buffer_state(records[name].model, records[name].reference.buffers, f"DNN {name!r}, stand-alone")
    for name in tqdm([n for n in mine if records[n].fisher is None], desc="Fisher", unit="DNN", leave=False):
        record, theta = records[name], records[name].reference.theta
        if theta.numel() != record.model.n_weights:
            raise dnn_mod.DNNError(f"DNN {name!r}: trained weights have {theta.numel():,} entries, its model "
                                   f"{record.model.n_weights:,} (dnn.py changed during the run? run again)")
        start = time.perf_counter()
        record.fisher = fisher_for(record, theta, fisher_config)
        timings["fisher_seconds"] += time.perf_counter() - start
    part = {n: (records[n].reference, records[n].fisher, tpr_for(records[n], records[n].reference.theta, pack_config))
            for n in mine}
    part, timings["fisher_seconds"] = group.combined(  # the ranks compute theirs side by side
        (part, timings["fisher_seconds"]), lambda parts: (merged(p[0] for p in parts), max(p[1] for p in parts)))
    state, timings = group.from_writer(lambda: _separate_and_match(records, part, pack_config, fisher_config, state,
                                                                   timings, budget))
    return group.part_of(state, mine), timings


def _separate_and_match(records: dict[str, DNNRecord], per_dnn: dict[str, tuple], pack_config: PackConfig,
                        fisher_config: FisherConfig, state: PackedState | None, timings: dict,
                        budget: bool) -> tuple[PackedState, dict]:
    """`pack_records`' second half, on the writer: `per_dnn` holds every DNN's (reference, Fisher, tpr)."""
    if state is None:
        n_shared = shared_pages_needed([per_dnn[n][0].theta.numel() for n in records], pack_config)
        state = new_state(pack_config, n_shared)
    counts = {}
    if budget:
        plan = plan_budget({n: per_dnn[n][0].theta.numel() for n in records}, pack_config, state.n_shared)
        counts, timings["spare"] = plan.counts, plan.spare
        state = state.replace(config=replace(state.config, budget=plan.stored()))
    for name in tqdm(records, desc="separation and matching", unit="DNN", leave=False):
        reference, fisher, tpr = per_dnn[name]
        state, info = add_vnn(state, name, reference.theta, fisher, pack_config, tpr, counts.get(name))
        timings["matching_seconds"] += info.matching_seconds
        source, model = records[name].source, records[name].model  # a module packed from memory: no folder, no hash
        provenance = Provenance(
            folder=source.path and dnn_mod.relative_folder(source.path), code_hash=source.code_hash(),
            architecture=model.describe(), parameters=parameter_sizes(model), fisher=asdict(fisher_config),
            standalone=Standalone(reference.val_accuracy, reference.test_accuracy, reference.training), pack=info)
        # the DNN's own buffers: the optimiser trains them on
        state = state.with_vnn(state.vnns[name].replace(buffers=dict(reference.buffers), provenance=provenance))
    return state, timings


def pack_and_optimize_records(records: dict[str, DNNRecord], pack_config: PackConfig, fisher_config: FisherConfig,
                              optimize_config: OptimizeConfig, precision_config: PrecisionConfig | None = None,
                              group: Group | None = None) -> tuple[PackedState, History, OptimizeConfig, dict]:
    """Pack the records into a new store, hold its pages in their formats (`precision_config`; float32
    by default), then optimise it.

    The budget separation's spare pages go to the optimiser to promote (the joint optimiser hands
    them out); an optimiser that never promotes (round-robin, sequential) gets every exclusive page of
    the budget at packing, so each optimiser packs to the same bytes. The optimiser's config and
    history are recorded in the state. Returns (state, history, the optimiser
    config used, timings in seconds)."""
    group = group or Group.current()
    if not optimize_config.spec.promotes:
        pack_config = replace(pack_config, at_packing=1.0)
    start = time.perf_counter()
    state, info = pack_records(records, pack_config, fisher_config, group=group)
    times = {"fisher_seconds": info["fisher_seconds"], "matching_seconds": info["matching_seconds"],
             "pack_seconds": time.perf_counter() - start}
    optimize_config = optimize_config.with_spare(info["spare"])
    mine = [n for n, record in records.items() if record.reference is not None]
    state = quantize(state, precision_config or PrecisionConfig(), info["spare"], mine, group)
    start = time.perf_counter()
    tasks = {n: records[n].task(records[n].reference.theta, records[n].batches) for n in mine}
    state, history = optimize(state, tasks, optimize_config, group=group)
    times["optimize_seconds"] = time.perf_counter() - start
    state = state.replace(config=replace(state.config, optimize=asdict(optimize_config), history={
        "steps": history.steps, "val_accuracy": history.val_accuracy, "score": history.score,
        "best_index": history.best_index, "reference": history.reference, "promoted": history.promoted,
        "skipped": history.skipped, "rolled_back": history.rolled_back, "batches_per_step": history.batches_per_step}))
    return state, history, optimize_config, times


def quantize(state: PackedState, config: PrecisionConfig, spare_pages: int, mine: list[str],
             group: Group | None = None) -> PackedState:
    """`precision.assign` on the whole state: the writer (which holds it whole) assigns the formats (the
    Fisher policy's budget spans every DNN) and every rank takes its part."""
    if config.is_float32:
        return state
    group = group or Group.current()
    return group.part_of(group.from_writer(lambda: assign(state, config, spare_pages)), mine)

