"""What one run of the experiments is: a `Setting` (changes to the config dataclasses' defaults) at a
`Scale` (DNNs, seeds, budget) for one seed, `run_setting`, and the key its row is kept under.

A run trains nothing: it starts from the stand-alone models of its seed (trained first, in the
parent, by experiments/schedule.py, which also sends the runs to worker processes). Its row is kept
as a small JSON in `Scale.runs` (the command line's: results/experiments/runs, kept in the
repository; $WEIGHTSEP_CACHE/experiments/runs for --quick and the tests), named by `Setting.key`:
the setting, seed and budget, the stand-alone models it starts from (as the model cache names them:
DNN code and data, training code and config) and the code that makes it (`code_hash`: the syntax of
this file and the weightsep modules it imports). So a setting that several experiments share (our
defaults, `ours`) runs once, a changed pipeline runs again, and an edit to a comment, a docstring,
the CLI, the scheduling, or how results are tabled or plotted (experiments/harness.py) reruns nothing.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import resource
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from weightsep import alone, files, train
from weightsep import dnn as dnn_mod
from weightsep.evaluate import Table, make_row, packed_theta, summarize
from weightsep.fisher import FisherConfig
from weightsep.flat import load_buffer_state
from weightsep.optimize import OptimizeConfig, optimize
from weightsep.pack import PackConfig, solo_state
from weightsep.packing import pack_and_optimize_records, pack_records
from weightsep.precision import PrecisionConfig
from weightsep.records import DNNRecord, Reference, load
from weightsep.step_cost import step_batches
from weightsep.train import Trained, set_single_thread, standalone_models

QUICK_DNNS = ("dna", "letters", "satellite")  # the three DNNs that train and optimise fastest
TUNING_SEEDS = (0, 1, 2)  # the seeds that choose defaults (docs/results.md#seeds-which-were-used-for-what): never a headline's


@dataclass(frozen=True)
class Scale:
    """How big every experiment runs: the DNNs, the seeds and the training budgets.

    `steps` is the DNN-batch budget of the optimisers: joint optimisation runs `steps` steps (each a
    batch of every DNN), the published optimisers the same number of DNN-batches per DNN. Its default
    is the main job's (`OptimizeConfig.steps`): a ranking at a smaller budget may be the budget's."""

    dnns: tuple[str, ...]
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # a run of ten DNNs at the main job's budget takes minutes
    steps: int = OptimizeConfig.steps
    train_steps: int | None = None  # stand-alone training (None: each folder's TRAIN)
    workers: int = 2  # runs at once (measured runs go one at a time, after the others)
    quick: bool = False
    paper: bool = False
    runs: str | None = None  # the folder that keeps finished runs (None: $WEIGHTSEP_CACHE/experiments/runs)

    @classmethod
    def default(cls, quick: bool = False, paper: bool = False, **changes) -> Scale:
        """The suite at full size; `quick`: three fast DNNs, two seeds, short budgets; `paper`: the
        paper's DNNs whose data is here (their stand-alone weights are the authors' checkpoints)."""
        if quick:
            base = cls(dnns=QUICK_DNNS, seeds=(0, 1), steps=40, train_steps=300, quick=True)
        else:
            base = cls(dnns=tuple(dnn_mod.suite()))
        if paper:
            base = replace(base, dnns=tuple(paper_dnns_present()), train_steps=None, paper=True)
        return replace(base, **{k: v for k, v in changes.items() if v is not None})

    def describe(self) -> str:
        train = "each folder's stand-alone budget" if self.train_steps is None else f"{self.train_steps} stand-alone steps"
        return (f"DNNs {', '.join(self.dnns)}; seeds {', '.join(map(str, self.seeds))}; "
                f"{self.steps} DNN-batches per DNN of optimisation; {train}")


def paper_dnns_present() -> list[str]:
    """The paper's DNN folders (repository root) whose data loads here; today mnist and fmnist."""
    present = []
    for dnn in sorted(dnn_mod.discover().values(), key=lambda d: d.name):
        if dnn.facts.paper is None:
            continue
        try:
            dnn.load_data()
        except dnn_mod.DNNError:  # its data is not here
            continue
        present.append(dnn.name)
    if not present:
        raise dnn_mod.DNNError("--paper: no paper DNN has its data here (./download_dataset.sh NAME fetches it)")
    return present


@dataclass(frozen=True)
class Setting:
    """One configuration of the pipeline: changes to the config dataclasses' defaults.

    `control`: instead of packing, optimise each DNN alone with all its pages exclusive and the same
    optimiser config (the no-sharing control); with `alone` (`compressed_alone`: "int8-qat",
    "prune-int4-32x-ptq", "codebook-32x-qat", ...) each DNN is compressed alone (weightsep/alone.py),
    then trained through its compressor ("-qat", quantisation-aware) or not ("-ptq"). `precision`: the `PrecisionConfig`
    fields of the packed pages (default float32). `dnns`: a subset of the scale's DNNs (None: all).
    `replicas`: each DNN packed this many times (synthetic DNNs for time and memory only).
    `same_budget`: give a published optimiser as many DNN-batches as joint optimisation would take
    in total (joint gives cheap DNNs extra batches), spread over `turns` turns per DNN."""

    label: str
    pack: dict = field(default_factory=dict)
    fisher: dict = field(default_factory=dict)
    optimize: dict = field(default_factory=dict)
    dnns: tuple[str, ...] | None = None
    control: bool = False
    alone: str | None = None
    precision: dict = field(default_factory=dict)
    replicas: int = 1
    same_budget: bool = False
    turns: int = 10
    seeds: tuple[int, ...] | None = None  # None: the scale's seeds
    measure: bool = False  # timings matter: the first seed runs alone, one process at a time, after the rest

    def key(self, scale: Scale, seed: int) -> str:
        dnns = self.dnns or scale.dnns
        blob = json.dumps({"setting": {k: v for k, v in asdict(self).items() if k not in ("label", "seeds")},
                           "seed": seed, "dnns": dnns, "steps": scale.steps, "train_steps": scale.train_steps,
                           "models": model_keys(tuple(dnns), scale.train_steps, seed), "code": code_hash()},
                          sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


@functools.cache
def code_hash() -> str:
    """The code a run's numbers depend on: the syntax of this file and of the weightsep modules it
    imports (`files.behaviour_hash`); an edit to anything else, or to a comment or docstring, keeps
    every run."""
    return files.behaviour_hash(Path(__file__), dnn_mod.REPO_ROOT / "weightsep")


def model_keys(names: tuple[str, ...], train_steps: int | None, seed: int) -> dict[str, str]:
    """The stand-alone models a run starts from, by the names the model cache gives them."""
    return {n: train.cache_path(d, train.config_for(d, train_steps, seed)).stem for n in names for d in [dnn_mod.get(n)]}


def configs(setting: Setting, scale: Scale, seed: int) -> tuple[PackConfig, FisherConfig, OptimizeConfig]:
    """The setting's configs: the dataclasses' defaults, the scale's budget, the setting's changes."""
    pack = replace(PackConfig(seed=seed), **setting.pack)
    fisher = replace(FisherConfig(seed=seed), **setting.fisher)
    checks = check_interval(scale.steps)
    opt = OptimizeConfig(seed=seed, steps=scale.steps, eval_every=checks, rounds=setting.turns,
                         steps_per_turn=max(1, scale.steps // setting.turns))
    return pack, fisher, replace(opt, **setting.optimize)


def check_interval(steps: int) -> int:
    """Steps between validation checks: the main job's interval, closer where that leaves fewer than 10
    checks (a convergence curve needs them)."""
    return max(1, min(OptimizeConfig.eval_every, steps // 10))


def run_setting(setting: Setting, scale: Scale, seed: int) -> dict:
    """The pipeline once for one setting and seed (in a worker process): a flat row of results."""
    set_single_thread()
    names = list(setting.dnns or scale.dnns)
    loaded = {n: _load(n) for n in names}
    trained = standalone_models([item.source for item in loaded.values()], 1, scale.train_steps, seed=seed)
    if setting.replicas > 1:  # synthetic DNNs: each real one several times, its data shared
        loaded = {f"{n}~{r}": item for r in range(setting.replicas) for n, item in loaded.items()}
        trained = {f"{n}~{r}": trained[n] for r in range(setting.replicas) for n in names}
    records = referenced(loaded, trained)
    pack_config, fisher_config, opt = configs(setting, scale, seed)
    tasks = {n: record.task(record.reference.theta) for n, record in records.items()}
    per_step = step_batches(tasks, replace(opt, optimizer="joint"))
    if setting.same_budget and opt.optimizer != "joint":  # the joint optimiser's DNN-batches, per DNN
        total = round(opt.steps * sum(per_step.values()) / len(tasks))
        opt = replace(opt, steps_per_turn=max(1, total // opt.rounds))
    for name, task in tasks.items():
        task.batches = per_step[name] if opt.optimizer == "joint" else 1
    start = time.perf_counter()
    if setting.control:
        return _control_row(setting, records, tasks, opt, pack_config.page_size, seed, start)
    for name, record in records.items():
        record.batches = tasks[name].batches
    with cached_fishers(records, fisher_config, scale):
        state, history, opt, times = pack_and_optimize_records(records, pack_config, fisher_config, opt,
                                                               PrecisionConfig(**setting.precision))
    thetas = {n: packed_theta(state, n, record.model) for n, record in records.items()}
    rows = [make_row(state, n, record.reference.test_accuracy, record.test_accuracy(thetas[n])) for n, record in records.items()]
    table = summarize(state, rows)
    batches_done = history.steps[-1] if history.steps else 0
    return {**_common(setting, seed, names, table, start), **_validation(records, thetas),
            "matching_cost": sum(v.provenance.pack_info.matching_cost for v in state.vnns.values()),
            "fisher_seconds": times["fisher_seconds"], "matching_seconds": times["matching_seconds"],
            "optimize_seconds": times["optimize_seconds"], "dnn_batches": batches_done,
            "ms_per_dnn_batch": 1000 * times["optimize_seconds"] / max(1, batches_done),
            "ms_per_step": 1000 * times["optimize_seconds"] / max(1, _steps_run(opt, len(tasks))),
            "overlap_loss": history.overlap[-1] if history.overlap else None,
            "curve": {"dnn_batches": history.steps, "val": history.val_accuracy, "best_index": history.best_index}}


def _steps_run(opt: OptimizeConfig, n_dnns: int) -> int:
    """Optimiser steps: joint steps, or the published optimisers' Adam steps (all DNNs' turns)."""
    rounds = 1 if opt.optimizer == "sequential" else opt.rounds
    return opt.steps if opt.optimizer == "joint" else rounds * opt.steps_per_turn * n_dnns


def compressed_alone(spec: str, record: DNNRecord, seed: int) -> tuple:
    """(transform, bytes) of one DNN compressed alone as `spec` names it (`Setting.alone`, its "-ptq" or
    "-qat" ending aside): "int8" / "int4" per channel; "prune-FMT-Rx" magnitude pruning then FMT per channel,
    stored sparse in at most 1/R of the float32 bytes; "codebook-Rx" the vector k-means codebook that fits
    1/R of them with the best validation accuracy before any training (`alone.codebook_shapes`; a tie goes
    to the larger)."""
    model, theta = record.model, record.reference.theta
    parts = spec.split("-")
    if parts[0] in ("int8", "int4"):
        return functools.partial(alone.per_channel, model=model, fmt=parts[0]), alone.per_channel_bytes(model, parts[0])
    budget = int(4 * theta.numel() / float(parts[-1].removesuffix("x")))
    if parts[0] == "prune":
        mask = alone.prune_mask(theta, model, alone.keep_for_bytes(theta, model, budget, parts[1]))
        return functools.partial(alone.pruned, model=model, mask=mask, fmt=parts[1]), alone.pruned_bytes(mask, model, parts[1])
    if parts[0] == "codebook":
        books = [alone.Codebook.fit(theta, model, dim, size, seed) for dim, size in alone.codebook_shapes(model, budget)]
        load_buffer_state(model, record.reference.buffers, f"DNN {record.name!r}, stand-alone")  # what validation runs with
        if not books:
            raise ValueError(f"DNN {record.name!r}: no codebook fits {budget} bytes")
        with torch.no_grad():
            book = max(books, key=lambda b: (record.accuracy(b(theta), "val"), b.n_bytes))  # a tie: the larger
        return book, book.n_bytes
    raise ValueError(f"unknown compression alone {spec!r}")


def _control_row(setting, records, tasks, opt, page_size, seed, start) -> dict:
    """Each DNN alone, every page exclusive: optimised with the same config and its own batches (the
    no-sharing control), or compressed alone (`compressed_alone`) and trained through its compressor
    ("-qat") or only compressed ("-ptq")."""
    accs, thetas, curves, seconds, packed_bytes = {}, {}, {}, 0.0, 0
    for name, record in records.items():
        reference = record.reference
        transform, n_bytes = (compressed_alone(setting.alone.rsplit("-", 1)[0], record, seed) if setting.alone
                              else (None, 4 * reference.theta.numel()))
        packed_bytes += n_bytes
        if setting.alone and setting.alone.endswith("-ptq"):
            load_buffer_state(record.model, reference.buffers, f"DNN {name!r}, stand-alone")
            theta = reference.theta
        else:
            tasks[name].transform = transform
            solo = solo_state(name, reference.theta, page_size, reference.buffers)
            result, history = optimize(solo, {name: tasks[name]}, replace(opt, promote_pages=0), progress=False)
            theta = packed_theta(result, name, record.model)
            curves[name] = {"dnn_batches": history.steps, "val": [v[name] for v in history.val_accuracy]}
            seconds += history.seconds
        with torch.no_grad():
            thetas[name] = theta if transform is None else transform(theta)
            accs[name] = record.test_accuracy(thetas[name])
    standalone = {n: record.reference.test_accuracy for n, record in records.items()}
    per_dnn = {n: {"standalone": standalone[n], "packed": accs[n],
                   "difference_pp": 100 * (accs[n] - standalone[n]), "exclusive_pages": None}
               for n in records}
    n = len(records)
    checks = min((len(c["val"]) for c in curves.values()), default=0)
    curve = {"dnn_batches": [sum(c["dnn_batches"][i] for c in curves.values()) for i in range(checks)],
             "val": [{name: curves[name]["val"][i] for name in curves} for i in range(checks)], "best_index": None}
    weights = sum(record.reference.theta.numel() for record in records.values())
    return {"label": setting.label, "seed": seed, "dnns": list(records), "per_dnn": per_dnn,
            "mean_difference_pp": sum(d["difference_pp"] for d in per_dnn.values()) / n,
            "worst_difference_pp": min(d["difference_pp"] for d in per_dnn.values()),
            "mean_packed_accuracy": sum(accs.values()) / n, "packed_weights": weights, "ratio_by_count": 1.0,
            "ratio_by_bytes": 4 * weights / packed_bytes, "packed_bytes": packed_bytes, "optimize_seconds": seconds,
            "seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb(), "curve": curve,
            **_validation(records, thetas)}


def _validation(records: dict[str, DNNRecord], thetas: dict[str, torch.Tensor]) -> dict:
    """Validation accuracy (the whole validation split) of each DNN's final weights against its stand-alone
    model's: what tuning may look at, where test accuracy may not (fractions; changes in pp)."""
    val = {n: {"standalone": record.reference.val_accuracy, "final": record.accuracy(thetas[n], "val")}
           for n, record in records.items()}
    changes = [100 * (v["final"] - v["standalone"]) for v in val.values()]
    return {"val": val, "mean_val_difference_pp": sum(changes) / len(changes), "worst_val_difference_pp": min(changes)}


def _common(setting: Setting, seed: int, names: list[str], table: Table, start: float) -> dict:
    t = table.totals
    return {"label": setting.label, "seed": seed, "dnns": names,
            "per_dnn": {r.name: {"standalone": r.standalone_accuracy, "packed": r.packed_accuracy,
                                 "difference_pp": r.difference_pp, "exclusive_pages": r.exclusive_pages}
                        for r in table.rows},
            "mean_difference_pp": t.mean_difference_pp,
            "worst_difference_pp": min(r.difference_pp for r in table.rows),
            "mean_packed_accuracy": t.mean_packed_accuracy, "packed_weights": t.packed_weights,
            "packed_bytes": t.packed_bytes, "ratio_by_count": t.ratio_by_count,
            "ratio_by_bytes": t.ratio_by_bytes, "shared_pages": t.shared_pages,
            "exclusive_pages": t.exclusive_pages, "page_formats": t.page_formats,
            "packed_bytes_by_part": t.packed_bytes_by_part, "seconds": time.perf_counter() - start,
            "peak_rss_mb": _peak_rss_mb()}


_LOADED: dict = {}  # a worker's DNNs with their data, by name: runs in one process load them once
_FISHERS: dict = {}  # a process's Fisher vectors by config and training budget, then DNN name


def referenced(loaded: dict[str, DNNRecord], trained: dict[str, Trained]) -> dict[str, DNNRecord]:
    """A fresh record per name of `loaded` (the process keeps the loaded ones for the next run) with its
    stand-alone reference from `trained`."""
    return {n: replace(item, reference=Reference.of(trained[n])) for n, item in loaded.items()}


def fishers_for(config: FisherConfig, scale: Scale) -> dict:
    """This process's Fisher vectors for one Fisher config (its seed included) and stand-alone budget,
    by DNN name: settings that change only later stages reuse them instead of computing them again."""
    return _FISHERS.setdefault((json.dumps(asdict(config), sort_keys=True), scale.train_steps), {})


@contextlib.contextmanager
def cached_fishers(records: dict[str, DNNRecord], config: FisherConfig, scale: Scale):
    """Around packing `records`: each takes this process's Fisher vector for `config` where it has one,
    and the ones packing computed are kept for the next run."""
    fishers = fishers_for(config, scale)
    for name, record in records.items():
        record.fisher = fishers.get(name)
    yield
    fishers.update({n: r.fisher for n, r in records.items() if r.fisher is not None and n not in fishers})


def _load(name: str):
    if name not in _LOADED:
        _LOADED.update(load([name]))
    return _LOADED[name]


def _peak_rss_mb() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_in_worker(setting: Setting, scale: Scale, seed: int, measured: bool) -> dict:
    """run_setting in a worker: its progress bars are dropped (they would garble the parent's) and its
    warnings come back in the row, for the parent to print."""
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = run_setting(setting, scale, seed)
    row["warnings"] = sorted({f"{w.category.__name__}: {w.message}" for w in caught})
    row["measured"] = measured
    if not measured:  # a reused process: its peak memory is not this run's
        row["peak_rss_mb"] = None
    return row


def matching_seconds(settings: list[Setting], scale: Scale) -> dict[str, float]:
    """Seconds of the matching stage for each setting (first seed), timed in this process one setting at a
    time with one thread, after the runs (their own timings come from two runs at a time)."""
    set_single_thread()
    seed = scale.seeds[0]
    loaded = {n: _load(n) for n in scale.dnns}
    trained = standalone_models([item.source for item in loaded.values()], 1, scale.train_steps, seed=seed)
    out = {}
    for st in tqdm(settings, desc="timing the matching", unit="setting", leave=False):
        pack_config, fisher_config, _ = configs(st, scale, seed)
        records = referenced(loaded, trained)
        with cached_fishers(records, fisher_config, scale):
            out[st.label] = pack_records(records, pack_config, fisher_config)[1]["matching_seconds"]
    return out
