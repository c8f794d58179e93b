"""Running settings over seeds: the rows kept in `Scale.runs`, the rest in worker processes.

What a row holds, and the key it is kept under, are experiments/runs.py's; this file only schedules
(which runs are missing, which processes run them, in what order), so an edit here keeps every run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm import tqdm

from weightsep import dnn as dnn_mod
from weightsep.files import atomic_write_text
from weightsep.train import standalone_models, worker_pool

from .runs import Scale, Setting, run_in_worker


def runs_dir(scale: Scale) -> Path:
    return Path(scale.runs) if scale.runs else dnn_mod.cache_dir() / "experiments" / "runs"


def quiet_pool(processes: int):
    """`worker_pool` whose workers show no progress bars (theirs would garble the parent's)."""
    previous, os.environ["TQDM_DISABLE"] = os.environ.get("TQDM_DISABLE"), "1"
    try:
        return worker_pool(processes)
    finally:
        if previous is None:
            del os.environ["TQDM_DISABLE"]
        else:
            os.environ["TQDM_DISABLE"] = previous


def _result(job, setting: Setting, seed: int) -> dict:
    try:
        return job.get()
    except Exception as e:
        raise RuntimeError(f"setting {setting.label!r}, seed {seed}: {type(e).__name__}: {e}") from e


def run_all(settings: list[Setting], scale: Scale, fresh: bool = False, desc: str = "runs") -> dict[str, list[dict]]:
    """Every setting for each of its seeds: kept rows, the rest in fresh processes. Returns label -> rows by seed.

    Kept rows need no stand-alone model (their keys name the models): a fresh clone redraws the
    report without training. The first seed of a setting marked `measure` runs one at a time after
    the others, so its timings see no neighbour (peak memory is a process's own either way)."""
    root = runs_dir(scale)
    root.mkdir(parents=True, exist_ok=True)
    jobs, out = [], {st.label: [] for st in settings}
    for st in settings:
        for seed in st.seeds or scale.seeds:
            path = root / f"{st.key(scale, seed)}.json"
            if path.exists() and not fresh:
                out[st.label].append(json.loads(path.read_text()))
            else:
                jobs.append((st, seed, path, st.measure and seed == (st.seeds or scale.seeds)[0]))
    for seed in sorted({seed for _, seed, _, _ in jobs}):  # each seed's stand-alone models, trained in parallel first
        names = sorted({n for st, s, _, _ in jobs if s == seed for n in (st.dnns or scale.dnns)})
        standalone_models([dnn_mod.get(n) for n in names], scale.workers, scale.train_steps, seed=seed)
    bar = tqdm(total=len(jobs), desc=desc, unit="run")
    def done(st: Setting, seed: int, path: Path, row: dict) -> None:
        atomic_write_text(path, json.dumps(row) + "\n")
        out[st.label].append(row)
        for warning in row["warnings"]:
            tqdm.write(f"{st.label}, seed {seed}: {warning}")
        bar.set_postfix_str(f"{st.label} seed {seed}: {row['mean_difference_pp']:+.2f} pp")
        bar.update()

    shared = [j[:3] for j in jobs if not j[3]]
    if shared:
        with quiet_pool(min(scale.workers, len(shared))) as pool:
            pending = [(st, seed, path, pool.apply_async(run_in_worker, (st, scale, seed, False))) for st, seed, path in shared]
            for st, seed, path, job in pending:
                done(st, seed, path, _result(job, st, seed))
    for st, seed, path, _ in (j for j in jobs if j[3]):  # alone, each in a new process: its peak memory is its own
        with quiet_pool(1) as pool:
            done(st, seed, path, _result(pool.apply_async(run_in_worker, (st, scale, seed, True)), st, seed))
    bar.close()
    for rows in out.values():
        rows.sort(key=lambda r: r["seed"])
    return out
