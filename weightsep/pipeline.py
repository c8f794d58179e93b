"""The pipeline end to end: formation -> Fisher -> separation -> matching -> optimization -> evaluation.

The stages take and return arrays; this module strings them together for the main job, per seed:
stand-alone training (weightsep/train.py), packing and optimisation of the DNN records
(weightsep/packing.py), the no-sharing control (weightsep/control.py), evaluation and the summary.
DNN folders are loaded into records by weightsep/records.py; disk is the store's. `run` is the main job:

    summary = run(RunConfig(dnns=weightsep.dnn.suite()))
"""
from __future__ import annotations

import json
import resource
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import NamedTuple

from . import bound, distributed
from . import dnn as dnn_mod
from .config_help import opt
from .control import control_worker, job
from .evaluate import Table, aggregate, format_aggregate, format_table, make_row, packed_theta, summarize
from .files import atomic_write_text, source_commit
from .fisher import FisherConfig
from .group import Group, merged
from .optimize import OptimizeConfig
from .pack import PackConfig
from .packing import pack_and_optimize_records
from .precision import PrecisionConfig
from .records import DNNRecord, Reference, load
from .step_cost import planned_batches, step_batches
from .store import Store
from .train import standalone_models, worker_pool

RESULTS_DIR = dnn_mod.REPO_ROOT / "results" if dnn_mod.IN_REPOSITORY else Path("results")


def hold(records: dict[str, DNNRecord], config: OptimizeConfig, group: Group | None = None) -> list[str]:
    """The DNNs this process trains, with their data (`Group.hold`, balanced by joint-step cost); every
    record's batches per step set by the optimiser's rule, counted once, from every DNN's model."""
    group = group or Group.current()
    per_step, costs = planned_batches({n: record.model for n, record in records.items()}, config)
    for name, record in records.items():
        record.batches = per_step[name]
    return group.hold(records, costs)


@dataclass
class RunConfig:
    """The main job: train (or reuse) stand-alone DNNs, pack, optimise, evaluate, report; per seed."""

    dnns: list[str] = opt(help="DNN names or folders (default: the offline suite)", factory=dnn_mod.suite)
    extra_folders: list[Path] = opt(help="extra DNN folders, or folders of them (--dnn-folder, repeatable)", factory=list)
    store: Path = opt(Path("state"), "store directory")
    results: Path = opt(RESULTS_DIR, "where summary.json/.md go")
    workers: int = opt(2, "processes for stand-alone training")
    pack: PackConfig = opt(help="how the DNNs are packed (PackConfig)", factory=PackConfig)
    fisher: FisherConfig = opt(help="how the Fisher stage runs (FisherConfig)", factory=FisherConfig)
    optimize: OptimizeConfig = opt(help="how the packed DNNs are optimised (OptimizeConfig)", factory=OptimizeConfig)
    precision: PrecisionConfig = opt(help="the pages' formats (PrecisionConfig)", factory=PrecisionConfig)
    train_steps: int | None = opt(None, "stand-alone training steps per DNN (default: each folder's TRAIN budget)")
    control: bool = opt(True, "the no-sharing control: each DNN also trained alone with the same budget, beside "
                              "(packed - control separates sharing's cost from extra training's gain)")
    seeds: list[int] = opt(help="run the whole pipeline once per seed and report mean and spread", factory=lambda: [0])
    procs: int | None = opt(None, "joint optimisation ranks on this machine (None: `distributed.auto_procs`); torchrun: its own")
    backend: str = opt("auto", "torch.distributed backend (auto: gloo on CPU, NCCL when every rank has a GPU)")
    max_loss: float | None = opt(None, "pack to an accuracy: the smallest store whose every DNN stays within this many pp "
                                       "of its no-sharing control on validation data (weightsep/bound.py); --ratio unused")
    max_loss_by_dnn: dict[str, float] = opt(help="--max-loss NAME=PP: a DNN's own bound (the others: --max-loss's, "
                                                 f"else {bound.DEFAULT_MAX_LOSS_PP})", factory=dict)

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct and at least one, got {self.seeds}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.procs is None:
            self.procs = distributed.auto_procs(len(self.dnns), self.optimize.steps, self.optimize.spec.multi_rank,
                                                beside=1 if self.control else 0)
        if self.procs < 1:
            raise ValueError(f"--procs must be >= 1, got {self.procs}")
        if self.procs > 1 and not self.optimize.spec.multi_rank:
            raise ValueError(f"--procs {self.procs}: only the joint optimiser runs on several processes; the "
                             f"{self.optimize.optimizer} optimiser trains one DNN at a time (use --procs 1)")
        if self.procs > len(self.dnns):
            raise ValueError(f"--procs {self.procs} but only {len(self.dnns)} DNN(s): at most one rank per DNN")
        if self.train_steps is not None and self.train_steps < 1:
            raise ValueError(f"--train-steps must be >= 1, got {self.train_steps}")
        if not self.dnns:
            raise ValueError("no DNNs to pack: --dnns is empty")
        if len(set(self.dnns)) != len(self.dnns):
            raise ValueError(f"--dnns names a DNN twice: {' '.join(self.dnns)}")
        if self.bounded:
            bound.check(self.max_loss, self.max_loss_by_dnn, [Path(d).name for d in self.dnns], self.control,
                        self.optimize, self.pack)
        for name, path in (("--store", self.store), ("--results", self.results)):
            if Path(path).exists() and not Path(path).is_dir():
                raise ValueError(f"{name} {path} is a file, not a directory")

    @property
    def bounded(self) -> bool:
        """Packing to an accuracy (`--max-loss`) rather than to a ratio."""
        return self.max_loss is not None or bool(self.max_loss_by_dnn)

    def store_for(self, seed: int) -> Path:
        """The first seed's store is `store`; every other seed's is `store-seedN` beside it."""
        return self.store if seed == self.seeds[0] else self.store.with_name(f"{self.store.name}-seed{seed}")



@dataclass
class Timings:
    """One seed's seconds per stage and peak memory (MB) of the process (the largest rank's), as its summary
    records them; the fields that are None (no control ran beside, one process) are left out."""

    standalone_seconds: float
    fisher_seconds: float
    matching_seconds: float
    pack_seconds: float
    optimize_seconds: float
    communication_seconds: float  # joint over several ranks: this rank's time in the shared gradient's all-reduce
    no_sharing_wait_seconds: float | None = None  # the control ran beside: the wait for it after the packed DNNs
    search_seconds: float | None = None  # --max-loss: the passes after the first (the smallest store's)
    peak_memory_mb: float = 0.0
    peak_memory_mb_per_rank: list[float] | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class SeedSummary:
    """One seed's summary: its table, its store, the configs it ran with, its timings, the best
    validation accuracy per DNN and the pages the optimiser promoted."""

    table: Table
    seed: int
    store: str
    config: dict
    timings: Timings
    best_validation: dict[str, float]
    promoted: int
    search: dict | None = None  # --max-loss: the bounds (pp) and every size tried (`bound.Round`)

    def to_json(self) -> dict:
        """As summary.json holds it (a seed's entry; the first seed's at its top level)."""
        return {**self.table.to_json(), "seed": self.seed, "store": self.store, "config": self.config,
                "timings": self.timings.as_dict(), "best_validation": self.best_validation, "promoted": self.promoted,
                **({"max_loss": self.search} if self.search else {})}


def run(config: RunConfig) -> dict:
    """The main job for every seed, on `config.procs` ranks (`distributed.launch`); writes the stores,
    results/summary.json and results/summary.md. Returns the first seed's summary (rows, totals,
    timings) with `seeds` (every seed's) and `aggregate` (mean, min, max and std over seeds) added."""
    return distributed.launch(config.procs, run_here, config, backend=config.backend)


def run_here(config: RunConfig) -> dict | None:
    """`run` as this process's rank (the whole job on one process); the writer returns the summary."""
    group = Group.current()
    commit = source_commit()  # the code as the run starts: a commit made while it runs did not run
    with group.writing([Store(config.store_for(seed)) for seed in config.seeds], "run"):  # ours alone, before any work
        records = load(config.dnns, config.extra_folders, data=group.all_local)
        hold(records, config.optimize, group)
        per_seed = []
        for seed in config.seeds:
            if len(config.seeds) > 1:
                group.say(f"== seed {seed} ({len(per_seed) + 1} of {len(config.seeds)})")
            per_seed.append(run_seed(config, records, seed, group=group))
    return group.writes(lambda: write_summary({**per_seed[0], "seeds": per_seed, "aggregate": aggregate(per_seed)},
                                              config.results, commit))


def run_seed(config: RunConfig, loaded: dict[str, DNNRecord], seed: int, control: dict[str, float] | None = None,
             group: Group | None = None, models_seed: int | None = None) -> dict | None:
    """The pipeline once: stand-alone training, Fisher, separation, matching, optimisation, evaluation.

    Over several ranks each rank does its own DNNs' (those whose data it holds) stand-alone
    training, Fisher, control and test scores; the writer packs, writes the store and returns the
    summary (None on the other ranks). `control` (test accuracy per DNN) reuses a no-sharing control
    already run for this seed and these stand-alone models instead of training one (`config.control`).
    `models_seed`: the stand-alone models' seed where it is not `seed` (experiments/spread.py packs the
    same models under several seeds)."""
    group = group or Group.current()
    records = {n: replace(record, reference=None, fisher=None) for n, record in loaded.items()}
    mine = [n for n, record in records.items() if record.data is not None]
    pack_config, fisher_config = replace(config.pack, seed=seed), replace(config.fisher, seed=seed)
    if config.bounded:  # the search's first pass: the main job's ratio where it can be reached
        pack_config = bound.start(pack_config, {n: record.model.n_weights for n, record in records.items()})
    optimize_config = replace(config.optimize, seed=seed)
    start = time.perf_counter()
    trained = standalone_models([records[n].source for n in mine], group.workers(config.workers), config.train_steps,
                                seed=seed if models_seed is None else models_seed)
    standalone_seconds = time.perf_counter() - start
    for name in mine:
        records[name].reference = Reference.of(trained[name])
    # `hold` counted the rule for the run (the experiments' records: here); the control trains each DNN on as many
    per_step = step_batches({n: records[n].task(batches=records[n].batches) for n in mine}, optimize_config, group)
    for name in mine:
        records[name].batches = per_step[name]
    control_job, pool, control_val = None, None, None
    if config.control and control is None:  # the control needs no packing: it starts now and trains beside the packed DNNs
        pool = worker_pool(1)
        control_job = pool.apply_async(control_worker, job({n: records[n] for n in mine}, optimize_config,
                                                           pack_config.page_size))
        group.say("no-sharing control: training each DNN alone, with the same budget, in a second process")

    state, history, optimize_config, pack_times = pack_and_optimize_records(records, pack_config, fisher_config,
                                                                            optimize_config, config.precision, group)
    times = Timings(standalone_seconds, **pack_times, communication_seconds=history.communication_seconds)
    if not config.bounded:
        group.save(Store(config.store_for(seed)), state)

    if control_job is not None:
        start = time.perf_counter()
        control, control_val = control_job.get()
        pool.close()
        times.no_sharing_wait_seconds = time.perf_counter() - start
    search = None
    if config.bounded:
        start = time.perf_counter()
        allowed = bound.losses(list(records), config.max_loss, config.max_loss_by_dnn)
        control_val_all, noise = group.all_merged(control_val), bound.noise(records, control_val, group)
        state, history, rounds = bound.search(
            records, {n: control_val_all[n] - (allowed[n] + noise[n]) / 100 for n in records}, (state, history),
            pack_config, fisher_config, optimize_config, config.precision, group)
        times.search_seconds = time.perf_counter() - start
        search = {"max_loss_pp": allowed, "noise_pp": noise, "rounds": [r.to_json() for r in rounds]}
        group.save(Store(config.store_for(seed)), state)
    packed = {n: records[n].test_accuracy(packed_theta(state, n, records[n].model)) for n in mine}
    memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this rank's process
    parts = group.gather(RankPart(packed, control, control_val, memory))
    configs = {"pack": asdict(pack_config), "fisher": asdict(fisher_config), "optimize": asdict(optimize_config),
               "precision": asdict(config.precision), "dnns": list(records)}
    return group.writes(lambda: _summary(records, state, parts, times, seed=seed, store=str(config.store_for(seed)),
                                         config=configs, best_validation=history.val_accuracy[history.best_index],
                                         promoted=len(history.promoted), search=search).to_json())


class RankPart(NamedTuple):
    """What each rank sends the writer about its own DNNs: test accuracies of the packed DNNs and of the
    no-sharing control, the control's validation accuracies (fractions, by DNN name; None without a
    control), and the rank's peak resident memory (MB)."""
    packed: dict[str, float]
    control: dict[str, float] | None
    control_val: dict[str, float] | None
    peak_memory_mb: float


def _summary(records: dict[str, DNNRecord], state, parts: list[RankPart], times: Timings, **fields) -> SeedSummary:
    """One seed's summary on the writer, from every rank's part; `fields`: the rest of `SeedSummary`'s."""
    packed = merged(part.packed for part in parts)
    control = None if parts[0].control is None else merged(part.control for part in parts)
    control_val = None if parts[0].control_val is None else merged(part.control_val for part in parts)
    standalone = {name: state.vnns[name].provenance.standalone for name in records}
    rows = [make_row(state, name, standalone[name].test_accuracy, packed[name],
                     None if control is None else control[name], record.source.facts.published_accuracy,
                     None if control_val is None or standalone[name].val_accuracy is None
                     else 100 * (control_val[name] - standalone[name].val_accuracy))
            for name, record in records.items()]
    times.peak_memory_mb = max(part.peak_memory_mb for part in parts)
    if len(parts) > 1:  # one entry per rank
        times.peak_memory_mb_per_rank = [part.peak_memory_mb for part in parts]
    return SeedSummary(summarize(state, rows), timings=times, **fields)


def write_summary(summary: dict, results: Path, commit: dict | None = None) -> dict:
    """summary.json, and summary.md: each seed's table, then the spread over seeds; returns `summary`.
    `commit`: the code's commit as the run began (default: now, `files.source_commit`)."""
    results.mkdir(parents=True, exist_ok=True)
    commit = commit or source_commit()
    atomic_write_text(results / "summary.json", json.dumps({**summary, "commit": commit}, indent=2) + "\n")
    made = ("" if commit is None else
            f"Written by commit {commit['sha'][:7]}{' with uncommitted changes' if commit['dirty'] else ''}.\n\n")
    tables = [(f"## Seed {s['seed']}\n\n" if len(summary.get("seeds", [])) > 1 else "")
              + "\n\n".join(filter(None, (format_table(s, markdown=True), bound.notes(s))))
              for s in summary.get("seeds", [summary])]
    if len(summary.get("seeds", [])) > 1:
        tables.append("## Over seeds\n\n" + format_aggregate(summary["aggregate"], markdown=True))
    atomic_write_text(results / "summary.md", "# weightsep summary\n\n" + made + "\n\n".join(tables) + "\n")
    return summary
