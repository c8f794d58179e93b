"""Training speed (issue 25): this working tree against the commit before the issue, side by side in one run.

The baseline (`--baseline`, default bf5ed5d) is unpacked once with `git archive` into the work folder
(`--work`, default <cache>/bench/train_speed). Every measurement is a fresh process with one torch
thread that imports one version's weightsep (PYTHONPATH and cwd at that version's root) and prints
one JSON line; the runs alternate old, new, old, new ... for `--rounds` rounds, so machine noise hits
both alike, and each figure is the median over rounds with the ratio new against old. Each version
has its own WEIGHTSEP_CACHE in the work folder: its ops extension build (this code's: a link to the
checkout's <cache>/build), and for the parts that read data, its data in its own format (the
baseline's .npz files written from this code's `load_data`; this code's made by its own `prepare`
from a copy of <cache>/data). Parts (`--parts`):

  dnns        each DNN's train-mode forward + backward (cross-entropy, torch.autograd.grad w.r.t.
              model.theta) at batch 100 on random float16 inputs of its input shape: ms per step
              (median of `--repeat` after a warm-up), FLOPs counted by torch (FlopCounterMode,
              forward + backward), GFLOP/s and its share of the same process's 512x512 float32
              sgemm rate; "all" sums the ten.
  joint       the joint optimiser's step on one packed state of the DNNs (built once here: seed 0
              weights, random Fisher, the default budget separation and optimal matching; both
              versions load the same pages and tables), random float16 data, default
              OptimizeConfig: weightsep.optimize.optimize for 2 and for 2 + `--joint-steps` steps
              (validation at the start and the end of each), ms per step = the difference / steps.
  standalone  weightsep.train.train_theta on each DNN's real data for `--train-steps` steps with
              the folder's TRAIN settings (its validation cadence included): steps per second.
  main        (--main-job; minutes) `python -m weightsep run --no-sharing` from empty model caches
              at equal settings: each version's defaults (rank count included), or the same
              `--main-train-steps`/`--main-steps` for a quicker variant; the environment's thread
              settings removed, as the README's command runs. Reported: wall seconds, the
              stages from results/summary.json's timings, and the accuracies (do the results agree?).

Targets (issue 25, checked on the medians): joint step >= 2x faster; forward + backward of the ten
DNNs >= 25% of the sgemm rate in all and no DNN below 10%; stand-alone training >= 2x faster; the
main job >= 2x faster. Writes results/train_speed.json (bench.timing.write_result) and .png.

    python -m bench.train_speed                           # ~5 minutes on 2 cores
    python -m bench.train_speed --main-job                # + two main jobs (~6 minutes more)
    python -m bench.train_speed --quick --parts dnns,joint --dnns letters satellite   # seconds
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench import timing
from bench.timing import measure, write_result
from weightsep import dnn as dnn_mod
from weightsep import optimize, pack, separation, train  # optimize.Task: the old commit it times has no page_optimizer
from weightsep import state as state_mod

NAME = "train_speed"
BASELINE = "bf5ed5d"  # the commit before issue 25
REPO = Path(__file__).resolve().parent.parent
PARTS = ("dnns", "joint", "standalone", "main")
# per part: the figure compared, and whether lower is better (the ratio is always "times faster")
KEY = {"dnns": ("ms", True), "joint": ("ms_per_step", True), "standalone": ("steps_per_s", False), "main": ("seconds", True)}
TARGETS = {"joint step speed-up": 2.0, "forward+backward share of sgemm, all": 0.25,
           "forward+backward share of sgemm, worst DNN": 0.10, "stand-alone training speed-up": 2.0,
           "main job speed-up": 2.0}
BATCH = 100
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# ---- workers: one version's weightsep in a fresh process --------------------------------------

def sgemm_gflops(repeat: int = 30) -> float:
    """This process's float32 matrix-multiply rate, 512 x 512 x 512, one thread."""
    a, b, c = torch.randn(512, 512), torch.randn(512, 512), torch.empty(512, 512)
    return 2 * 512**3 / measure(lambda: torch.mm(a, b, out=c), repeat=repeat, warmup=3)["median_s"] / 1e9


def dnn_rows(names: list[str], repeat: int) -> dict:
    """Forward + backward of each DNN at batch 100: ms, FLOPs, GFLOP/s (shares: `with_shares`)."""
    g = torch.Generator().manual_seed(0)
    rows = {}
    for name in names:
        torch.manual_seed(0)
        model = dnn_mod.get(name).build_model()
        model.train()
        x = torch.randn(BATCH, *model.input_shape, generator=g).half()  # stored data are float16; the model casts
        y = torch.randint(0, model.classes, (BATCH,), generator=g)

        def step(model=model, x=x, y=y):
            torch.autograd.grad(F.cross_entropy(model(x), y), [model.theta])

        with FlopCounterMode(display=False) as counter:
            step()
        seconds = measure(step, repeat=repeat, warmup=3)["median_s"]
        flops = counter.get_total_flops()
        rows[name] = {"ms": 1e3 * seconds, "flops": flops, "gflops": flops / seconds / 1e9}
    total_s = sum(r["ms"] for r in rows.values()) / 1e3
    total_flops = sum(r["flops"] for r in rows.values())
    rows["all"] = {"ms": 1e3 * total_s, "flops": total_flops, "gflops": total_flops / total_s / 1e9}
    return rows


def with_shares(rows: dict, sgemm: float) -> dict:
    for row in rows.values():
        row["share"] = row["gflops"] / sgemm
    return rows


def joint_inputs(path: str, n_train: int, n_val: int) -> tuple:
    """The packed state saved by `save_joint_state` in this version's classes, and tasks on random
    float16 data (seeded: the same in both versions; a step's cost does not depend on the values)."""
    saved = torch.load(path)
    g = torch.Generator().manual_seed(0)
    vnns, tasks = {}, {}
    for name, v in saved["vnns"].items():
        model = dnn_mod.get(name).build_model()
        buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
        vnns[name] = state_mod.VNN(name, v["n_weights"], v["page_table"], v["exclusive_pages"], v["fisher"], buffers=buffers)
        x = torch.randn(n_train + n_val, *model.input_shape, generator=g).half()
        y = torch.randint(0, model.classes, (n_train + n_val,), generator=g)
        tasks[name] = optimize.Task(model, x[:n_train], y[:n_train], x[n_train:], y[n_train:])
    state = state_mod.PackedState(saved["page_size"], saved["shared_pages"], saved["shared_fisher"], vnns)
    return state, tasks


def joint_rows(state_path: str, steps: int) -> dict:
    state, tasks = joint_inputs(state_path, n_train=2000, n_val=500)

    def run(n: int) -> tuple[float, int]:
        start = time.perf_counter()
        _, history = optimize.optimize(state, tasks, optimize.OptimizeConfig(steps=n, eval_every=n), progress=False)
        return time.perf_counter() - start, history.steps[-1]  # DNN-batches over the n steps

    run(2)  # warm-up: first calls, allocations
    short, _ = run(2)
    long, batches = run(2 + steps)
    per_step = (long - short) / steps
    return {"step": {"ms_per_step": 1e3 * per_step, "fixed_s": short - 2 * per_step, "steps": steps,
                     "dnns": len(tasks), "dnn_batches_per_step": batches / (2 + steps)}}


def standalone_rows(names: list[str], steps: int) -> dict:
    rows = {}
    for name in names:
        folder = dnn_mod.get(name)
        data = folder.load_data()
        config = train.config_for(folder, steps)
        start = time.perf_counter()
        train.train_theta(folder.build_model(), data, config)
        seconds = time.perf_counter() - start
        rows[name] = {"steps_per_s": steps / seconds, "seconds": seconds, "eval_every": config.eval_every}
    seconds = sum(r["seconds"] for r in rows.values())
    rows["all"] = {"steps_per_s": steps * len(names) / seconds, "seconds": seconds}
    return rows


def worker(part: str, spec: dict) -> dict:
    """One measurement in this process, against the weightsep on its path; JSON-ready."""
    torch.set_num_threads(1)
    sgemm = sgemm_gflops()
    if part == "dnns":
        rows = with_shares(dnn_rows(spec["dnns"], spec["repeat"]), sgemm)
    elif part == "joint":
        rows = joint_rows(spec["state"], spec["steps"])
    elif part == "standalone":
        rows = standalone_rows(spec["dnns"], spec["steps"])
    else:  # "setup": resolve (build, once per cache) the ops extension before anything is timed
        from weightsep import ops
        rows = {"ops": {"backend": ops.BACKEND}}
    return {"sgemm_gflops": sgemm, "rows": rows}


# ---- versions, their caches and data ----------------------------------------------------------

def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.rstrip()


def baseline_tree(rev: str, work: Path) -> tuple[Path, str]:
    """The baseline's files (git archive), unpacked once per commit into the work folder: a fixed
    path, so its ops extension is built once, not at every run. Returns (root, full commit)."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    root = work / f"baseline-{commit[:12]}" / "src"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", str(REPO), "archive", commit], stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(root)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise RuntimeError(f"git archive {commit} failed")
        (root / ".complete").touch()
    return root, commit


def link(path: Path, target: Path) -> None:
    if path.is_symlink() or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target, target_is_directory=True)


def copy_missing(source: Path, dest: Path) -> None:
    """Copy the files of source/ that dest/ lacks (this code's `prepare` then brings them to its format)."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in source.iterdir() if source.is_dir() else []:
        if src.is_file() and not (dest / src.name).exists():
            shutil.copy2(src, dest / src.name)


def write_baseline_data(names: list[str], new_data: Path, old_data: Path) -> None:
    """Each DNN's arrays, read by this code's load_data, in the baseline's format: a compressed
    <name>.npz with x_train y_train x_val y_val x_test y_test (x float16, y int64); rewritten when
    this code's files for the DNN are newer."""
    from weightsep.files import atomic_file  # not at the top: this file's workers import the baseline's weightsep

    old_data.mkdir(parents=True, exist_ok=True)
    for name in names:
        out = old_data / f"{name}.npz"
        sources = [p for p in new_data.iterdir() if p.name == name or p.name.startswith(f"{name}.")]
        if out.exists() and all(p.stat().st_mtime <= out.stat().st_mtime for p in sources):
            continue
        data = dnn_mod.get(name).load_data(new_data)
        arrays = {f"{kind}_{split}": getattr(getattr(data, split), kind).astype(np.float16 if kind == "x" else np.int64)
                  for split in ("train", "val", "test") for kind in ("x", "y")}
        with atomic_file(out) as f:
            np.savez_compressed(f, **arrays)


@dataclass
class Version:
    """One side of the comparison: a source root and the WEIGHTSEP_CACHE its workers use."""

    label: str
    root: Path
    cache: Path
    commit: str

    def env(self, cache: Path | None = None, threads: bool = True) -> dict:
        env = {**os.environ, "PYTHONPATH": str(self.root), "WEIGHTSEP_CACHE": str(cache or self.cache)}
        for var in THREAD_VARS:
            if threads:
                env[var] = "1"
            else:
                env.pop(var, None)
        return env

    def run(self, args: list[str], env: dict, what: str) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, *args], cwd=self.root, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
            raise RuntimeError(f"{what} failed for the {self.label} code ({self.root}), exit status {done.returncode}:\n{tail}")
        return done

    def worker(self, part: str, spec: dict) -> dict:
        """`worker(part, spec)` in a fresh process (-P: only this version's root on the path)."""
        done = self.run(["-P", str(Path(__file__).resolve()), "--worker", part, json.dumps(spec)], self.env(),
                        f"the {part} worker")
        return json.loads(done.stdout.strip().splitlines()[-1])


def versions(args, work: Path) -> list[Version]:
    """The baseline and this working tree, each with its cache; the extension resolved (built) in
    each before anything is timed, and the data prepared when a part reads it."""
    default = dnn_mod.cache_dir()
    old_root, old_commit = baseline_tree(args.baseline, work)
    old = Version("old", old_root, old_root.parent / "cache", old_commit)
    new = Version("new", REPO, work / "current" / "cache", git("rev-parse", "HEAD"))
    (default / "build").mkdir(parents=True, exist_ok=True)
    link(new.cache / "build", default / "build")  # this checkout's own build, as every command here uses it
    for v in (old, new):
        link(v.cache / "sources", default / "sources")
    if {"standalone", "main"} & set(args.parts):
        print("data: this code's prepare on a copy of", default / "data", flush=True)
        copy_missing(default / "data", new.cache / "data")
        new.run(["-m", "weightsep", "prepare", *args.dnns], new.env(), "prepare")
        write_baseline_data(args.dnns, new.cache / "data", old.cache / "data")
    if {"joint", "main"} & set(args.parts):
        for v in (old, new):
            print(f"ops extension for the {v.label} code (in {v.cache / 'build'}; a first build takes ~1 min) ...", flush=True)
            print(f"  backend: {v.worker('setup', {})['rows']['ops']['backend']}", flush=True)
    return [old, new]


def save_joint_state(names: list[str], path: Path) -> None:
    """One packed state for the joint part, as the main job packs (default PackConfig: budget
    separation, half the budget at packing, optimal matching), from seed-0 initial weights and a
    random Fisher; saved as plain tensors that both versions' PackedState take."""
    config = pack.PackConfig()
    torch.manual_seed(0)
    models = {n: dnn_mod.get(n).build_model() for n in names}
    g = torch.Generator().manual_seed(0)
    fishers = {n: torch.rand(m.n_weights, generator=g) ** 4 for n, m in models.items()}
    sizes = [m.n_weights for m in models.values()]
    n_shared = pack.shared_pages_needed(sizes, config)
    budget = separation.exclusive_budget(sizes, config.page_size, n_shared, config.ratio)
    pages = {n: -(-m.n_weights // config.page_size) for n, m in models.items()}
    counts, _ = separation.allot(budget, pages, n_shared, config.at_packing)
    state = pack.new_state(config, n_shared)
    for n, m in models.items():
        state, _ = pack.add_vnn(state, n, m.theta.detach(), fishers[n], config, 1.0, counts[n])
    torch.save({"page_size": state.page_size, "shared_pages": state.shared_pages, "shared_fisher": state.shared_fisher,
                "vnns": {n: {"n_weights": v.n_weights, "page_table": v.page_table, "exclusive_pages": v.exclusive_pages,
                             "fisher": v.fisher} for n, v in state.vnns.items()}}, path)


def main_job(version: Version, args, tmp: Path, seed: int) -> dict:
    """`python -m weightsep run --no-sharing --seed SEED` from an empty model cache (the version's data
    and extension linked in), into a store and results folder of its own. Round r runs seed r - 1, so
    the rounds give the accuracies of both versions over seeds as well as their times."""
    cache = tmp / "cache"
    for part in ("data", "build", "sources"):
        link(cache / part, version.cache / part)
    command = ["-m", "weightsep", "run", "--no-sharing", "--store", str(tmp / "store"), "--results", str(tmp / "results")]
    command += ["--dnns", *args.dnns] if args.dnns != dnn_mod.suite() else []
    command += ["--train-steps", str(args.main_train_steps)] if args.main_train_steps else []
    command += ["--steps", str(args.main_steps)] if args.main_steps else []
    command += ["--seed", str(seed)]
    start = time.perf_counter()
    version.run(command, version.env(cache, threads=False), "the main job")
    wall = time.perf_counter() - start
    summary = json.loads((tmp / "results" / "summary.json").read_text())
    t = summary["timings"]
    stages = {k.removesuffix("_seconds"): {"seconds": v} for k, v in t.items()
              if k.endswith("_seconds") and k != "communication_seconds"}  # the all-reduce is inside optimize
    counted = ("standalone", "pack", "optimize", "no_sharing_wait")  # pack holds Fisher and matching
    other = wall - sum(stages[k]["seconds"] for k in counted if k in stages)
    rows = {"wall": {"seconds": wall}, **stages, "other": {"seconds": other}}
    accuracies = {r["name"]: {k: r[k] for k in ("standalone_accuracy", "packed_accuracy", "control_accuracy")}
                  for r in summary["rows"]}
    return {"rows": rows, "accuracies": accuracies, "totals": summary["totals"], "seed": seed,
            "command": " ".join(command[2:])}


# ---- the parent: rounds, medians, ratios, targets ---------------------------------------------

def medians(runs: list[dict]) -> dict:
    """Per row and figure, the median over rounds (numbers only)."""
    out = {}
    for item in runs[0]["rows"]:
        figures = runs[0]["rows"][item]
        out[item] = {k: statistics.median(r["rows"][item][k] for r in runs) for k, v in figures.items()
                     if isinstance(v, int | float) and not isinstance(v, bool)}
    return out


def speedups(part: str, old: dict, new: dict) -> dict:
    key, lower_better = KEY[part]
    return {item: (old[item][key] / new[item][key] if lower_better else new[item][key] / old[item][key])
            for item in old if item in new and old[item].get(key) and new[item].get(key)}


def targets(parts: dict) -> list[dict]:
    checks = []

    def check(name: str, value: float, at_least: float, what: str) -> None:
        checks.append({"target": name, "measured": value, "at_least": at_least, "met": value >= at_least, "what": what})

    if "joint" in parts:
        check("joint step speed-up", parts["joint"]["speedup"]["step"], TARGETS["joint step speed-up"],
              "ms per joint step, old / new")
    if "dnns" in parts:
        new = parts["dnns"]["new"]["median"]
        check("forward+backward share of sgemm, all", new["all"]["share"], TARGETS["forward+backward share of sgemm, all"],
              "new: GFLOP/s of the DNNs' forward+backward together / the same process's sgemm GFLOP/s")
        worst = min((n for n in new if n != "all"), key=lambda n: new[n]["share"])
        check("forward+backward share of sgemm, worst DNN", new[worst]["share"],
              TARGETS["forward+backward share of sgemm, worst DNN"], f"new: the lowest share, {worst}")
    if "standalone" in parts:
        check("stand-alone training speed-up", parts["standalone"]["speedup"]["all"], TARGETS["stand-alone training speed-up"],
              "stand-alone training steps per second, new / old, all DNNs")
    if "main" in parts:
        check("main job speed-up", parts["main"]["speedup"]["wall"], TARGETS["main job speed-up"],
              "wall seconds of run --no-sharing from empty model caches, old / new")
    return checks


def one_line(part: str, result: dict) -> str:
    rows = result["rows"]
    if part == "dnns":
        return (f"all {rows['all']['ms']:.1f} ms, {100 * rows['all']['share']:.0f}% of sgemm "
                f"({result['sgemm_gflops']:.0f} GFLOP/s)")
    if part == "joint":
        return f"{rows['step']['ms_per_step']:.1f} ms per step"
    if part == "standalone":
        return f"{rows['all']['steps_per_s']:.0f} steps/s"
    return f"{rows['wall']['seconds']:.0f} s (optimisation {rows['optimize']['seconds']:.0f} s)"


def measure_all(args, vs: list[Version], tmp: Path) -> dict:
    specs = {"dnns": {"dnns": args.dnns, "repeat": args.repeat},
             "joint": {"state": str(tmp / "joint_state.pt"), "steps": args.joint_steps},
             "standalone": {"dnns": args.dnns, "steps": args.train_steps}}
    if "joint" in args.parts:
        save_joint_state(args.dnns, tmp / "joint_state.pt")
    runs = {part: {v.label: [] for v in vs} for part in args.parts}
    for r in range(1, max(args.rounds, args.main_rounds if "main" in args.parts else 0) + 1):
        for part in args.parts:
            if r > (args.main_rounds if part == "main" else args.rounds):
                continue
            for v in vs:  # old, new: side by side
                start = time.perf_counter()
                if part == "main":
                    with tempfile.TemporaryDirectory(dir=tmp, prefix=f"main-{v.label}-") as job:
                        result = main_job(v, args, Path(job), seed=r - 1)
                else:
                    result = v.worker(part, specs[part])
                runs[part][v.label].append(result)
                print(f"round {r}  {part:<10} {v.label}: {one_line(part, result)}  [{time.perf_counter() - start:.0f} s]",
                      flush=True)
    parts = {}
    for part, by_version in runs.items():
        out = {label: {"median": medians(rs), "runs": rs} for label, rs in by_version.items()}
        out["speedup"] = speedups(part, out["old"]["median"], out["new"]["median"])
        if part == "dnns":
            for label in ("old", "new"):
                out[label]["sgemm_gflops"] = statistics.median(r["sgemm_gflops"] for r in by_version[label])
        parts[part] = out
    return parts


# ---- report -----------------------------------------------------------------------------------

def table(result: dict) -> str:
    parts = result["parts"]
    lines = [f"{NAME}: new = this working tree (HEAD {result['new']['commit'][:7]}), old = {result['old']['commit'][:7]}; "
             f"medians over {result['rounds']} round(s), one thread per process, {result['machine']['cpu_count']} cores"]

    def section(title: str, head: tuple[str, ...], rows: list[tuple]) -> None:
        lines.append("")
        lines.append(f"{title:<34}" + "".join(f"{h:>12}" for h in head))
        for label, *cells in rows:
            lines.append(f"  {label:<32}" + "".join(f"{c:>12}" for c in cells))

    if "dnns" in parts:
        p = parts["dnns"]
        old, new = p["old"]["median"], p["new"]["median"]
        section(f"forward+backward, batch {BATCH}", ("old ms", "new ms", "speed-up", "old share", "new share", "new GFLOP/s"),
                [(n, f"{old[n]['ms']:.2f}", f"{new[n]['ms']:.2f}", f"{p['speedup'][n]:.2f}x", f"{100 * old[n]['share']:.1f}%",
                  f"{100 * new[n]['share']:.1f}%", f"{new[n]['gflops']:.1f}") for n in new])
        lines.append(f"  (share: of the same process's 512^3 sgemm rate: old {p['old']['sgemm_gflops']:.0f}, "
                     f"new {p['new']['sgemm_gflops']:.0f} GFLOP/s)")
    if "joint" in parts:
        p = parts["joint"]
        old, new = p["old"]["median"]["step"], p["new"]["median"]["step"]
        section(f"joint step, {new['dnns']} DNNs", ("old", "new", "speed-up"),
                [("ms per step", f"{old['ms_per_step']:.1f}", f"{new['ms_per_step']:.1f}", f"{p['speedup']['step']:.2f}x"),
                 ("DNN-batches per step", f"{old['dnn_batches_per_step']:.1f}", f"{new['dnn_batches_per_step']:.1f}", ""),
                 ("fixed s (setup, 2 validations)", f"{old['fixed_s']:.2f}", f"{new['fixed_s']:.2f}", "")])
    if "standalone" in parts:
        p = parts["standalone"]
        old, new = p["old"]["median"], p["new"]["median"]
        section(f"stand-alone training, {result['settings']['train_steps']} steps", ("old st/s", "new st/s", "speed-up"),
                [(n, f"{old[n]['steps_per_s']:.0f}", f"{new[n]['steps_per_s']:.0f}", f"{p['speedup'][n]:.2f}x") for n in new])
    if "main" in parts:
        p = parts["main"]
        old, new = p["old"]["median"], p["new"]["median"]
        section("main job (run --no-sharing), s", ("old", "new", "speed-up"),
                [(n, f"{old[n]['seconds']:.1f}", f"{new[n]['seconds']:.1f}", f"{p['speedup'].get(n, float('nan')):.2f}x")
                 for n in new if n in old])
        accs = {label: p[label]["runs"][-1]["accuracies"] for label in ("old", "new")}
        section("test accuracy %, last round", ("old alone", "new alone", "old packed", "new packed", "old control",
                                                "new control"),
                [(n, *(f"{100 * accs[label][n][k]:.2f}" for k in ("standalone_accuracy", "packed_accuracy", "control_accuracy")
                       for label in ("old", "new"))) for n in accs["new"] if n in accs["old"]])
        for label in ("old", "new"):
            t = p[label]["runs"][-1]["totals"]
            lines.append(f"  {label}: mean accuracy stand-alone {100 * t['mean_standalone_accuracy']:.2f}%, packed "
                         f"{100 * t['mean_packed_accuracy']:.2f}% ({t['mean_difference_pp']:+.2f} pp), control "
                         f"{100 * t.get('mean_control_accuracy', float('nan')):.2f}%")
    lines.append("")
    lines.append("targets")
    for c in result["targets"]:
        shown = f"{100 * c['measured']:.1f}%" if "share" in c["target"] else f"{c['measured']:.2f}x"
        bound = f"{100 * c['at_least']:.0f}%" if "share" in c["target"] else f"{c['at_least']:.0f}x"
        lines.append(f"  {c['target']:<45} {shown:>8}  (>= {bound}) {'met' if c['met'] else 'NOT met'}")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = result["parts"]
    lower = [p for p in ("joint", "standalone", "main") if p in parts]
    fig = plt.figure(figsize=(14, 9 if lower else 5))
    grid = fig.add_gridspec(2 if lower else 1, max(1, len(lower)))
    colors = {"old": "#8c8c8c", "new": "#4c72b0"}
    title = f"training speed: this tree (new) vs {result['old']['commit'][:7]} (old), medians of {result['rounds']} round(s)"
    fig.suptitle(title)
    if "dnns" in parts:
        p = parts["dnns"]
        names = [n for n in p["new"]["median"] if n != "all"]
        ax = fig.add_subplot(grid[0, :])
        xs = np.arange(len(names))
        for k, label in enumerate(("old", "new")):
            med = p[label]["median"]
            bars = ax.bar(xs + (k - 0.5) * 0.4, [med[n]["ms"] for n in names], 0.4, color=colors[label], label=label)
            for bar, n in zip(bars, names):
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), f"{100 * med[n]['share']:.0f}%",
                        ha="center", va="bottom", fontsize=8)
        ax.set_xticks(xs, names)
        ax.set_ylabel(f"ms per forward+backward, batch {BATCH}")
        all_ = {label: p[label]["median"]["all"] for label in ("old", "new")}
        ax.set_title(f"each DNN (% over a bar: its share of the process's sgemm rate); all: old {all_['old']['ms']:.1f} ms "
                     f"{100 * all_['old']['share']:.0f}%, new {all_['new']['ms']:.1f} ms {100 * all_['new']['share']:.0f}% "
                     f"(target >= 25%, no DNN < 10%)", fontsize=10)
        ax.legend()
    for j, part in enumerate(lower):
        ax = fig.add_subplot(grid[1 if "dnns" in parts else 0, j])
        p = parts[part]
        if part == "joint":
            ms = [p[label]["median"]["step"]["ms_per_step"] for label in ("old", "new")]
            ax.bar(["old", "new"], ms, color=[colors["old"], colors["new"]])
            for k, value in enumerate(ms):
                ax.text(k, value, f"{value:.1f} ms", ha="center", va="bottom")
            ax.set_ylabel("ms per joint step")
            ax.set_title(f"joint step, {p['new']['median']['step']['dnns']} DNNs: {p['speedup']['step']:.2f}x (target 2x)",
                         fontsize=10)
        elif part == "standalone":
            names = list(p["new"]["median"])
            xs = np.arange(len(names))
            for k, label in enumerate(("old", "new")):
                ax.bar(xs + (k - 0.5) * 0.4, [p[label]["median"][n]["steps_per_s"] for n in names], 0.4, color=colors[label],
                       label=label)
            ax.set_xticks(xs, names, rotation=60, fontsize=8)
            ax.set_yscale("log")  # letters runs ~20x the steps of the conv nets
            ax.set_ylabel("stand-alone training steps per second")
            ax.set_title(f"stand-alone training: {p['speedup']['all']:.2f}x in all (target 2x)", fontsize=10)
            ax.legend(fontsize=8)
        else:
            stacks = {label: main_stages(p[label]["median"]) for label in ("old", "new")}
            bottom = np.zeros(2)
            for stage in stacks["new"]:
                values = np.array([stacks[label].get(stage, 0.0) for label in ("old", "new")])
                ax.bar(["old", "new"], values, bottom=bottom, label=stage)
                bottom += values
            for k, total in enumerate(bottom):
                ax.text(k, total, f"{total:.0f} s", ha="center", va="bottom")
            ax.set_ylabel("seconds")
            ax.set_title(f"main job: {p['speedup']['wall']:.2f}x wall (target 2x)", fontsize=10)
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main_stages(median: dict) -> dict[str, float]:
    """The main job's wall seconds as stages that add up to it (packing split into Fisher, matching, the rest)."""
    seconds = {k: v["seconds"] for k, v in median.items()}
    pack_rest = seconds.get("pack", 0.0) - seconds.get("fisher", 0.0) - seconds.get("matching", 0.0)
    return {"stand-alone": seconds.get("standalone", 0.0), "Fisher": seconds.get("fisher", 0.0),
            "matching": seconds.get("matching", 0.0), "packing, rest": pack_rest, "optimisation": seconds.get("optimize", 0.0),
            "control wait": seconds.get("no_sharing_wait", 0.0), "other": seconds.get("other", 0.0)}


def write_json(payload: dict, out: Path) -> Path:
    """bench.timing.write_result (machine description, atomic write), into `out` instead of results/."""
    saved, timing.RESULTS_DIR = timing.RESULTS_DIR, out
    try:
        out.mkdir(parents=True, exist_ok=True)
        return write_result(NAME, payload)
    finally:
        timing.RESULTS_DIR = saved


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default=BASELINE, help=f"the old code's commit (default {BASELINE}, before issue 25)")
    p.add_argument("--parts", default="dnns,joint,standalone",
                   help="comma-separated, of dnns, joint, standalone (default: all three)")
    p.add_argument("--main-job", action="store_true", help="also time the main job, old and new (minutes each)")
    p.add_argument("--rounds", type=int, default=3, help="old/new rounds per part (default 3)")
    p.add_argument("--dnns", nargs="+", default=None, help="DNN names (default: the offline suite)")
    p.add_argument("--repeat", type=int, default=30, help="dnns: timed forward+backward steps per DNN (default 30)")
    p.add_argument("--joint-steps", type=int, default=40, help="joint: steps timed beyond the short run (default 40)")
    p.add_argument("--train-steps", type=int, default=200, help="standalone: training steps per DNN (default 200)")
    p.add_argument("--main-rounds", type=int, default=1, help="main: old/new rounds (default 1)")
    p.add_argument("--main-train-steps", type=int, default=None, help="main: run's --train-steps (default: the folders')")
    p.add_argument("--main-steps", type=int, default=None, help="main: run's --steps (default: its default)")
    p.add_argument("--quick", action="store_true", help="seconds: 1 round, 3 repeats, 3 joint steps, 10 training steps")
    p.add_argument("--out", type=Path, default=timing.RESULTS_DIR, help="where train_speed.json/.png go (default results/)")
    p.add_argument("--work", type=Path, default=None,
                   help="baseline tree and per-version caches, kept between runs (default <cache>/bench/train_speed)")
    args = p.parse_args(argv)
    args.parts = [s for s in args.parts.split(",") if s] + (["main"] if args.main_job else [])
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown or not args.parts:
        p.error(f"--parts: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(PARTS[:3])}")
    if args.quick:
        args.rounds, args.repeat, args.joint_steps, args.train_steps = 1, 3, 3, 10
    for name in ("rounds", "repeat", "joint_steps", "train_steps", "main_rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    args.dnns = args.dnns or dnn_mod.suite()
    args.work = args.work or dnn_mod.cache_dir() / "bench" / NAME
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    torch.set_num_threads(1)  # as the workers run (machine() records it)
    args.work.mkdir(parents=True, exist_ok=True)
    vs = versions(args, args.work)
    with tempfile.TemporaryDirectory(dir=args.work, prefix="run-") as tmp:
        parts = measure_all(args, vs, Path(tmp))
    changed = git("status", "--porcelain", "--", "weightsep", "suite", "custom_op").splitlines()
    settings = {k: getattr(args, k) for k in ("dnns", "repeat", "joint_steps", "train_steps", "main_rounds",
                                              "main_train_steps", "main_steps", "quick")}
    result = {"command": "python -m bench.train_speed " + " ".join(sys.argv[1:] if argv is None else argv),
              "old": {"rev": args.baseline, "commit": vs[0].commit},
              "new": {"commit": vs[1].commit, "changed_files": [line[3:] for line in changed]},
              "rounds": args.rounds, "settings": settings, "parts": parts, "targets": targets(parts)}
    path = write_json(result, args.out)
    result["machine"] = json.loads(path.read_text())["machine"]
    plot(result, args.out / f"{NAME}.png")
    print("\n" + table(result))
    print(f"\nwrote {path} and {args.out / f'{NAME}.png'}")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(sys.argv[2], json.loads(sys.argv[3]))))
    else:
        raise SystemExit(main())
