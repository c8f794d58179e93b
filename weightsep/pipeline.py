"""The pipeline end to end: formation -> Fisher -> separation -> matching -> optimization -> evaluation.

The stages take and return arrays; this module only strings them together for the CLI, loads DNN
folders and their data, and leaves disk to the store. `run` is the main job:

    summary = run(RunConfig(dnns=weightsep.dnn.suite()))
"""
from __future__ import annotations

import contextlib
import copy
import json
import resource
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from . import distributed
from . import dnn as dnn_mod
from .evaluate import aggregate, format_aggregate, format_table, make_row, packed_theta, reported_accuracy, summarize
from .files import atomic_write_text
from .fisher import FisherConfig, compute_fisher
from .flat import evaluating, load_buffer_state, parameter_sizes
from .optimize import History, OptimizeConfig, Task, optimize, step_batches, step_costs
from .pack import PackConfig, add_vnn, new_state, shared_pages_needed, solo_state
from .pages import n_pages
from .precision import PrecisionConfig, assign
from .separation import allot, exclusive_budget, target_performance_rate
from .state import PackedState, Provenance, Standalone
from .store import Store
from .train import Trained, set_single_thread, standalone_models, worker_pool

RESULTS_DIR = dnn_mod.REPO_ROOT / "results" if dnn_mod.IN_REPOSITORY else Path("results")


@dataclass
class Loaded:
    """A DNN folder with its model and data, as tensors (over several ranks, only the rank that
    trains the DNN loads its data: `data` is None on the others). A module packed from memory
    (`weightsep.api`) has no folder: `dnn` is None and `label` names it."""

    dnn: dnn_mod.DNN | None
    model: torch.nn.Module
    data: dnn_mod.Dataset | None
    label: str | None = None

    @property
    def name(self) -> str:
        return self.dnn.name if self.dnn is not None else self.label

    def task(self, standalone: torch.Tensor | None = None, batches: int | None = None) -> Task:
        d = self.data
        return Task(self.model, torch.from_numpy(d.train.x), torch.from_numpy(d.train.y),
                    torch.from_numpy(d.val.x), torch.from_numpy(d.val.y), standalone, batches)

    def test_accuracy(self, theta: torch.Tensor) -> float:
        """Test accuracy with weights `theta`; NaN or inf logits are a FloatingPointError naming the DNN."""
        return reported_accuracy(self.model, theta, torch.from_numpy(self.data.test.x), torch.from_numpy(self.data.test.y),
                             f"DNN {self.name!r}")


def load(names: list[str], extra: list[Path] = (), data: bool = True) -> dict[str, Loaded]:
    """DNN folders by name (or path), each with a fresh model and (unless `data` is False) its data."""
    out = {}
    for name in names:
        dnn = dnn_mod.get(name, extra)
        out[dnn.name] = Loaded(dnn, dnn.build_model(), dnn.load_data() if data else None)
    return out


def hold(loaded: dict[str, Loaded], config: OptimizeConfig) -> list[str]:
    """The DNNs this rank trains, with their data loaded: all of them on one process; over several
    ranks, each rank's share, balanced by joint-step cost (`distributed.assign`). Every rank builds
    every model to count its cost; then ranks other than 0 (which packs and records every DNN's
    architecture) drop the others' from `loaded`."""
    world = distributed.current()
    if not world.distributed:
        return list(loaded)
    owner = distributed.assign(step_costs({n: item.model for n, item in loaded.items()}, config), world.size)
    mine = [n for n in loaded if owner[n] == world.rank]
    for name in [n for n in loaded if n not in mine and not world.writer]:
        del loaded[name]
    for name in mine:
        if loaded[name].data is None:
            loaded[name].data = loaded[name].dnn.load_data()
    distributed.announce(mine)
    return mine


def shard(state: PackedState, names: list[str]) -> PackedState:
    """One rank's part of a packed state: every page table and Fisher, the shared pages, and only
    `names`' exclusive pages (the others' are emptied, so the memory is not held)."""
    part = copy.copy(state)
    part.vnns = {}
    if state.precision is not None:
        part.precision = copy.copy(state.precision)
        part.precision.exclusive_codes, part.precision.exclusive_scales = {}, {}
    for name, vnn in state.vnns.items():
        part.vnns[name] = copy.copy(vnn)
        keep = slice(None) if name in names else slice(0)
        part.vnns[name].exclusive_pages = vnn.exclusive_pages[keep]
        if state.precision is not None:
            part.precision.exclusive_codes[name] = state.precision.exclusive_codes[name][keep]
            part.precision.exclusive_scales[name] = state.precision.exclusive_scales[name][keep]
    return part


def load_packed(state: PackedState, names: list[str] | None = None, extra: list[Path] = (),
                allow_changed_code: bool = False, data: bool = True) -> dict[str, Loaded]:
    """The packed DNNs with their folders' models and data, keyed by packed name.

    Code comes only from the DNN folders discovered or named on the command line (`extra`), found
    by the packed DNN's name, never from a path the store names; a folder whose dnn.py no longer
    has the hash recorded at packing is refused before any of its code runs, unless
    `allow_changed_code`."""
    names = list(state.vnns) if names is None else names
    unknown = [n for n in names if n not in state.vnns]
    if unknown:
        raise ValueError(f"DNN(s) {', '.join(unknown)} are not packed; packed: {', '.join(state.vnns) or 'none'}")
    out = {}
    known = dnn_mod.folders(extra)  # nothing imported yet; a bad --dnn-folder says what is wrong with it
    for name in names:
        recorded = state.vnns[name].provenance
        if name not in known:
            where = (f"; the store says it was packed from {recorded.folder!r}, a hint only: a store never "
                     "chooses the code that runs" if recorded.folder else "")
            raise dnn_mod.DNNError(f"DNN {name!r} is packed in this store, but no DNN folder of that name is known "
                                   "(searched: the repository's DNN folders, suite/ and --dnn-folder"
                                   f"{' ' + ', '.join(map(str, extra)) if extra else ''}): name the folder that holds "
                                   f"its code with --dnn-folder{where}")
        try:
            dnn = dnn_mod.load_folder(known[name], None if allow_changed_code else recorded.code_hash)
        except dnn_mod.ChangedCode as e:
            raise dnn_mod.DNNError(
                f"DNN {name!r}: {e}, so its model or data may not match the store; re-pack it (`remove {name}`, "
                f"then `add {name}` and `joint`), or pass --allow-changed-code to use it anyway") from None
        out[name] = Loaded(dnn, dnn.build_model(), dnn.load_data() if data else None)
    return out


def fisher_for(loaded: Loaded, theta: torch.Tensor, config: FisherConfig) -> torch.Tensor:
    try:
        return compute_fisher(loaded.model, theta, loaded.data.train.x, loaded.data.train.y, config)
    except (FloatingPointError, ValueError) as e:
        raise dnn_mod.DNNError(f"DNN {loaded.name!r}: Fisher failed: {e}") from e


def tpr_for(loaded: Loaded, theta: torch.Tensor, config: PackConfig, max_samples: int = 10000) -> float:
    """1.0 without a target accuracy; else WS's target performance rate on training data."""
    if config.target_accuracy is None:
        return 1.0
    x = torch.from_numpy(loaded.data.train.x[:max_samples])
    with torch.no_grad(), evaluating(loaded.model):
        probs = torch.softmax(loaded.model(x, theta), 1)
    return target_performance_rate(probs, torch.from_numpy(loaded.data.train.y[:max_samples]),
                                   config.target_accuracy, config.alpha)


def plan_budget(trained: dict[str, Trained], config: PackConfig, n_shared: int) -> tuple[dict[str, int], dict]:
    """The "budget" separation's plan for a set of DNNs: exclusive pages per DNN now, and the plan
    itself (its `spare` pages are the optimiser's to promote)."""
    sizes = {name: t.theta.numel() for name, t in trained.items()}
    budget = exclusive_budget(list(sizes.values()), config.page_size, n_shared, config.ratio)
    pages = {name: n_pages(n, config.page_size) for name, n in sizes.items()}
    counts, spare = allot(budget, pages, n_shared, config.at_packing)
    return counts, {"ratio": config.ratio, "exclusive_pages": budget, "at_packing": sum(counts.values()),
                    "spare": spare}


def pack(loaded: dict[str, Loaded], trained: dict[str, Trained], pack_config: PackConfig,
         fisher_config: FisherConfig, state: PackedState | None = None,
         fishers: dict[str, torch.Tensor] | None = None) -> tuple[PackedState, dict]:
    """Add each DNN in order (Fisher, separation, matching) to `state` or to a new store.

    `fishers`: Fisher vectors by DNN name, computed with `fisher_config` on these trained weights;
    they are used instead of computing them again, and the ones computed are added (the experiments
    pack the same DNNs many ways).

    The "budget" separation shares one budget among the DNNs packed here, so it packs a set into a
    new store; its plan is in the state's config and in the returned info (`spare` pages).

    Over several ranks `trained` holds this rank's DNNs: each rank computes their Fisher, rank 0
    gathers them and separates and matches, and every rank gets its `shard` of the state."""
    world = distributed.current()
    budget = pack_config.mode == "ws" and pack_config.separation == "budget"
    if budget and state is not None and state.vnns:
        raise ValueError("the budget separation packs a set of DNNs into a new store; "
                         "add DNNs to an existing store with --separation margin")
    timings = {"fisher_seconds": 0.0, "matching_seconds": 0.0, "spare": 0}
    fishers = {} if fishers is None else fishers
    mine = [n for n in loaded if n in trained]
    for name in mine:  # the stand-alone buffers go with the stand-alone weights (Fisher, tpr)
        load_buffer_state(loaded[name].model, trained[name].buffers, f"DNN {name!r}, stand-alone")
    for name in tqdm([n for n in mine if n not in fishers], desc="Fisher", unit="DNN", leave=False):
        theta = trained[name].theta
        if theta.numel() != loaded[name].model.n_weights:
            raise dnn_mod.DNNError(f"DNN {name!r}: trained weights have {theta.numel():,} entries, its model "
                                   f"{loaded[name].model.n_weights:,} (dnn.py changed during the run? run again)")
        start = time.perf_counter()
        fishers[name] = fisher_for(loaded[name], theta, fisher_config)
        timings["fisher_seconds"] += time.perf_counter() - start
    tprs = {name: tpr_for(loaded[name], trained[name].theta, pack_config) for name in mine}
    if world.distributed:
        parts = distributed.gather(({n: trained[n] for n in mine}, {n: fishers[n] for n in mine}, tprs,
                                    timings["fisher_seconds"]))
        if world.writer:
            trained, fishers, tprs = (distributed.merged([part[i] for part in parts]) for i in range(3))
            timings["fisher_seconds"] = max(part[3] for part in parts)  # the ranks compute theirs side by side
        else:
            state, timings = distributed.broadcast(None)
            return shard(state, mine), timings
    if state is None:
        n_shared = shared_pages_needed([trained[n].theta.numel() for n in loaded], pack_config)
        state = new_state(pack_config, n_shared)
    counts = {}
    if budget:
        counts, plan = plan_budget({n: trained[n] for n in loaded}, pack_config, state.n_shared)
        state.config.budget = plan
        timings["spare"] = plan["spare"]
    for name in tqdm(loaded, desc="separation and matching", unit="DNN", leave=False):
        theta = trained[name].theta
        state, info = add_vnn(state, name, theta, fishers[name], pack_config, tprs[name], counts.get(name))
        timings["matching_seconds"] += info["matching_seconds"]
        state.vnns[name].buffers = dict(trained[name].buffers)  # the DNN's own: the optimiser trains them on
        dnn = loaded[name].dnn  # None for a module packed from memory: no folder, no code hash
        state.vnns[name].provenance = Provenance(
            folder=dnn and dnn_mod.relative_folder(dnn.path), code_hash=dnn and dnn.code_hash(),
            architecture=loaded[name].model.describe(), parameters=parameter_sizes(loaded[name].model),
            fisher=asdict(fisher_config),
            standalone=Standalone(trained[name].val_accuracy, trained[name].test_accuracy), pack=info)
    if world.distributed:
        distributed.broadcast((state, timings))
    return state, timings


def pack_and_optimize(loaded: dict[str, Loaded], trained: dict[str, Trained], tasks: dict[str, Task],
                      pack_config: PackConfig, fisher_config: FisherConfig, optimize_config: OptimizeConfig,
                      fishers: dict[str, torch.Tensor] | None = None,
                      precision_config: PrecisionConfig | None = None) -> tuple[PackedState, History, OptimizeConfig, dict]:
    """Pack the DNNs into a new state, give its pages their formats (`precision_config`; float32 by
    default), then optimise it: the one composition `run` and the experiments share.

    The budget separation's spare pages go to the optimiser to promote (the joint optimiser hands
    them out; round-robin never promotes). The optimiser's config and history are recorded in the
    state. Returns (state, history, the optimiser config used, timings in seconds)."""
    start = time.perf_counter()
    state, info = pack(loaded, trained, pack_config, fisher_config, fishers=fishers)
    times = {"fisher_seconds": info["fisher_seconds"], "matching_seconds": info["matching_seconds"],
             "pack_seconds": time.perf_counter() - start}
    if info["spare"]:
        optimize_config = replace(optimize_config, promote_pages=info["spare"])
    state = quantize(state, precision_config or PrecisionConfig(), info["spare"], list(tasks))
    start = time.perf_counter()
    state, history = optimize(state, tasks, optimize_config)
    times["optimize_seconds"] = time.perf_counter() - start
    state.config.optimize, state.config.history = asdict(optimize_config), {
        "steps": history.steps, "val_accuracy": history.val_accuracy, "score": history.score,
        "best_index": history.best_index, "reference": history.reference, "promoted": history.promoted,
        "skipped": history.skipped, "rolled_back": history.rolled_back,
        "batches_per_step": step_batches(tasks, optimize_config)}
    return state, history, optimize_config, times


def quantize(state: PackedState, config: PrecisionConfig, spare_pages: int, mine: list[str]) -> PackedState:
    """`precision.assign` on the whole state: over several ranks rank 0 (which holds it whole) assigns
    the formats (the Fisher policy's budget spans every DNN) and every rank takes its `shard`."""
    if config.is_float32:
        return state
    world = distributed.current()
    if not world.distributed:
        return assign(state, config, spare_pages)
    whole = distributed.broadcast(assign(state, config, spare_pages) if world.writer else None)
    return whole if world.writer else shard(whole, mine)


def no_sharing_control(loaded: dict[str, Loaded], thetas: dict[str, torch.Tensor], config: OptimizeConfig,
                       page_size: int, batches: dict[str, int] | None = None,
                       buffers: dict[str, dict[str, torch.Tensor]] | None = None) -> dict[str, float]:
    """Test accuracy after the SAME extra training each DNN gets when packed, but alone (no sharing).

    Each DNN (stand-alone weights `thetas` and `buffers`) becomes its own one-DNN store with all pages exclusive
    and is optimised with the same optimizer, batch size, learning rate and number of its own
    batches (`batches` per step, as the packed set's `batches_per_step` gave it); so any gain it
    shows comes from the extra training, not from sharing.
    """
    batches = batches or {}
    if config.optimizer == "joint" and config.dnns_per_step:  # each DNN saw only a share of the steps
        share = min(config.dnns_per_step, len(loaded)) / len(loaded)
        config = replace(config, steps=max(1, round(config.steps * share)), dnns_per_step=None)
    out = {}
    for name, item in loaded.items():
        alone = solo_state(name, thetas[name], page_size, (buffers or {}).get(name))
        result, _ = optimize(alone, {name: item.task(batches=batches.get(name, 1))},
                             replace(config, dnns=None, promote_pages=0), progress=False)
        out[name] = item.test_accuracy(packed_theta(result, name, item.model))
    return out


def _control_worker(folders: list[str], thetas: list, buffers: list[dict], config: dict, page_size: int,
                    batches: dict[str, int]) -> dict[str, float]:
    """no_sharing_control in a worker process (it runs beside the joint optimisation)."""
    set_single_thread()
    loaded = load(folders)
    thetas = {name: torch.as_tensor(theta) for name, theta in zip(loaded, thetas)}
    buffers = {name: {k: torch.as_tensor(b) for k, b in held.items()} for name, held in zip(loaded, buffers)}
    return no_sharing_control(loaded, thetas, OptimizeConfig(**config), page_size, batches, buffers)


@dataclass
class RunConfig:
    """The main job: train (or reuse) stand-alone DNNs, pack, optimise, evaluate, report; per seed."""

    dnns: list[str] = field(default_factory=dnn_mod.suite)
    extra_folders: list[Path] = field(default_factory=list)
    store: Path = Path("state")
    results: Path = RESULTS_DIR
    workers: int = 2
    pack: PackConfig = field(default_factory=PackConfig)
    fisher: FisherConfig = field(default_factory=FisherConfig)
    optimize: OptimizeConfig = field(default_factory=OptimizeConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    train_steps: int | None = None  # stand-alone training steps (default: each folder's TRAIN)
    no_sharing: bool = False
    seeds: list[int] = field(default_factory=lambda: [0])  # the whole pipeline runs once per seed
    procs: int | None = None  # joint optimisation ranks on this machine (None: `distributed.auto_procs`); torchrun: its own
    backend: str = "auto"  # torch.distributed backend: gloo on CPU, NCCL when every rank has a GPU

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must be distinct and at least one, got {self.seeds}")
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        if self.procs is None:
            self.procs = distributed.auto_procs(len(self.dnns), self.optimize.steps, self.optimize.optimizer,
                                                beside=1 if self.no_sharing else 0)
        if self.procs < 1:
            raise ValueError(f"--procs must be >= 1, got {self.procs}")
        if self.procs > 1 and self.optimize.optimizer != "joint":
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
        for name, path in (("--store", self.store), ("--results", self.results)):
            if Path(path).exists() and not Path(path).is_dir():
                raise ValueError(f"{name} {path} is a file, not a directory")

    def store_for(self, seed: int) -> Path:
        """The first seed's store is `store`; every other seed's is `store-seedN` beside it."""
        return self.store if seed == self.seeds[0] else self.store.with_name(f"{self.store.name}-seed{seed}")


def run(config: RunConfig) -> dict:
    """The main job for every seed, on `config.procs` ranks (`distributed.launch`); writes the stores,
    results/summary.json and results/summary.md. Returns the first seed's summary (rows, totals,
    timings) with `seeds` (every seed's) and `aggregate` (mean, min, max and std over seeds) added."""
    return distributed.launch(config.procs, run_here, config, backend=config.backend)


def run_here(config: RunConfig) -> dict | None:
    """`run` as this process's rank (the whole job on one process); rank 0 returns the summary."""
    world = distributed.current()
    with contextlib.ExitStack() as writing:  # each seed's store: writable, and ours alone, before any work
        if world.writer:
            for seed in config.seeds:
                writing.enter_context(Store(config.store_for(seed)).writing("run"))
        loaded = load(config.dnns, config.extra_folders, data=not world.distributed)
        hold(loaded, config.optimize)
        per_seed = []
        for seed in config.seeds:
            if len(config.seeds) > 1 and world.writer:
                tqdm.write(f"== seed {seed} ({len(per_seed) + 1} of {len(config.seeds)})")
            per_seed.append(run_seed(config, loaded, seed))
    if not world.writer:
        return None
    summary = {**per_seed[0], "seeds": per_seed, "aggregate": aggregate(per_seed)}
    write_summary(summary, config.results)
    return summary


def run_seed(config: RunConfig, loaded: dict[str, Loaded], seed: int, control: dict[str, float] | None = None) -> dict | None:
    """The pipeline once: stand-alone training, Fisher, separation, matching, optimisation, evaluation.

    Over several ranks each rank does its own DNNs' (those whose data it holds) stand-alone
    training, Fisher, control and test scores; rank 0 packs, writes the store and returns the
    summary (None on the other ranks). `control` (test accuracy per DNN) reuses a no-sharing control
    already run for this seed and these stand-alone models instead of training one (`config.no_sharing`)."""
    world = distributed.current()
    mine = [n for n, item in loaded.items() if item.data is not None]
    pack_config, fisher_config = replace(config.pack, seed=seed), replace(config.fisher, seed=seed)
    optimize_config = replace(config.optimize, seed=seed)
    workers = max(1, config.workers // distributed.ranks_here())  # the machine's ranks share its cores
    times = {}
    start = time.perf_counter()
    trained = standalone_models([loaded[n].dnn for n in mine], workers, config.train_steps, seed=seed)
    times["standalone_seconds"] = time.perf_counter() - start

    tasks = {n: loaded[n].task(trained[n].theta) for n in mine}
    per_step = step_batches(tasks, optimize_config)  # the control trains each DNN on as many batches
    for name, task in tasks.items():
        task.batches = per_step[name]
    control_job, pool = None, None
    if config.no_sharing and control is None:  # the control needs no packing: it starts now and trains beside the packed DNNs
        pool = worker_pool(1)
        control_job = pool.apply_async(_control_worker, (
            [str(loaded[n].dnn.path) for n in mine], [trained[n].theta.numpy() for n in mine],
            [{k: b.numpy() for k, b in trained[n].buffers.items()} for n in mine], asdict(optimize_config),
            pack_config.page_size, {n: per_step[n] for n in mine}))
        if world.writer:
            tqdm.write("no-sharing control: training each DNN alone, with the same budget, in a second process")

    state, history, optimize_config, pack_times = pack_and_optimize(loaded, trained, tasks, pack_config,
                                                                    fisher_config, optimize_config,
                                                                    precision_config=config.precision)
    times.update(pack_times, communication_seconds=history.communication_seconds)
    if world.writer:
        distributed.save(Store(config.store_for(seed)), state)

    if control_job is not None:
        start = time.perf_counter()
        control = control_job.get()
        pool.close()
        times["no_sharing_wait_seconds"] = time.perf_counter() - start
    packed = {n: loaded[n].test_accuracy(packed_theta(state, n, loaded[n].model)) for n in mine}
    memory = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # this rank's process
    parts = distributed.gather((packed, control, memory))
    if not world.writer:
        return None
    packed = distributed.merged(part[0] for part in parts)
    control = None if control is None else distributed.merged(part[1] for part in parts)
    rows = [make_row(state, name, state.vnns[name].provenance.standalone.test_accuracy, packed[name],
                     None if control is None else control[name], item.dnn.meta.get("published_accuracy"))
            for name, item in loaded.items()]
    times["peak_memory_mb"] = max(part[2] for part in parts)
    if world.distributed:
        times["peak_memory_mb_per_rank"] = [part[2] for part in parts]
    summary = summarize(state, rows)
    summary.update(seed=seed, store=str(config.store_for(seed)),
                   config={"pack": asdict(pack_config), "fisher": asdict(fisher_config),
                           "optimize": asdict(optimize_config), "precision": asdict(config.precision),
                           "dnns": list(loaded)},
                   timings=times, best_validation=history.val_accuracy[history.best_index],
                   promoted=len(history.promoted))
    return summary


def write_summary(summary: dict, results: Path) -> None:
    """summary.json, and summary.md: each seed's table, then the spread over seeds."""
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results / "summary.json", json.dumps(summary, indent=2) + "\n")
    tables = [(f"## Seed {s['seed']}\n\n" if len(summary.get("seeds", [])) > 1 else "") + format_table(s, markdown=True)
              for s in summary.get("seeds", [summary])]
    if len(summary.get("seeds", [])) > 1:
        tables.append("## Over seeds\n\n" + format_aggregate(summary["aggregate"], markdown=True))
    atomic_write_text(results / "summary.md", "# weightsep summary\n\n" + "\n\n".join(tables) + "\n")
