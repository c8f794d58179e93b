"""How much one packing's outcome varies: the same DNNs, stand-alone models and no-sharing control,
packed and optimised under several seeds at one ratio.

A search that packs to an accuracy (`run --max-loss`, experiments/max_loss.py) judges each size by
one packing, and the grid it is measured against calls a ratio "keeps every DNN within 1 pp" from one
run. Both read a draw: packing (Fisher sampling, matching) and optimisation are seeded. Here each set's
stand-alone models (one models seed) are packed at each ratio under REPEATS seeds; the control is
trained once (with the first) and held for the others, so what varies is the packing and the
optimisation alone (`pipeline.run_seed`'s `models_seed`). Each run's summary is kept under the runs
folder, in spread/<hash of the code it ran>/.

    python -m experiments spread          # ten suite DNNs at 6x, 4x and 3x, seed 23's models, 5 packings each (about 12 minutes)
    python -m experiments spread --quick  # two DNNs, one ratio, 2 packings, short budgets: a smoke run
"""
from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from weightsep import dnn as dnn_mod
from weightsep import files
from weightsep.files import atomic_write_text
from weightsep.pack import PackConfig
from weightsep.pipeline import RunConfig, run_seed
from weightsep.records import load
from weightsep.train import set_single_thread

from . import harness
from .max_loss import SETS, within
from .schedule import quiet_pool

SECTION = 14
IN_ALL = False  # its own sets, models seed and ratios
TITLE = "Run to run: one store packed and optimised under several seeds"
QUESTION = ("With the stand-alone models and the control held, how much does each DNN's packed - control change "
            "from one packing and optimisation to the next, and how often does a ratio keep every DNN within 1 pp?")
MODELS_SEED = 23  # max_loss's development seed: its grid and searches are the runs this spread qualifies
REPEATS = 5  # packings per ratio: seeds MODELS_SEED (the max_loss grid's own run), then 101, 102, ...
PLAN = {"N=10": (6.0, 4.0, 3.0)}  # the ratios: the main job's, and the max_loss grid's smallest that kept every DNN
QUICK = {"plan": {"N=2": (1.5,)}, "repeats": 2, "steps": 30, "train_steps": 100}


def packing_seeds(repeats: int) -> list[int]:
    return [MODELS_SEED, *range(101, 100 + repeats)]


def code() -> str:
    """The hash of what a run computes (the pipeline and every weightsep module it imports)."""
    return files.behaviour_hash(dnn_mod.REPO_ROOT / "weightsep" / "pipeline.py", dnn_mod.REPO_ROOT / "weightsep")


def run_one(dnns: tuple[str, ...], ratio: float, seed: int, control: dict[str, float] | None,
            budgets: dict) -> dict:
    """One packing of MODELS_SEED's stand-alone models at `ratio` under `seed` (with `control`: held; else
    trained beside, as the main job does). The seed's summary. One torch thread, as the CLI runs: a run's
    numbers depend on the thread count."""
    set_single_thread()
    with tempfile.TemporaryDirectory(prefix="weightsep-spread-") as tmp:
        config = RunConfig(dnns=list(dnns), store=Path(tmp) / "state", results=Path(tmp),
                           pack=PackConfig(ratio=ratio), train_steps=budgets.get("train_steps"))
        if "steps" in budgets:
            config = replace(config, optimize=replace(config.optimize, steps=budgets["steps"]))
        return run_seed(config, load(list(dnns)), seed, control=control, models_seed=MODELS_SEED)


def run_all(plan: dict[str, tuple[float, ...]], repeats: int, budgets: dict, root: Path, fresh: bool,
            workers: int = 1) -> dict[tuple[str, float, int], dict]:
    """Every (set, ratio, seed) summary: kept ones read, the rest run. Each set's first (its first ratio,
    MODELS_SEED) runs first and trains the control (beside, in a second process); the others hold that
    control and run `workers` at a time."""
    jobs = [(name, ratio, seed) for name, ratios in plan.items() for ratio in ratios for seed in packing_seeds(repeats)]
    path = {j: root / code() / "threads1" / j[0].replace("=", "") / f"r{j[1]:g}" / f"s{j[2]}.json" for j in jobs}
    out = {j: json.loads(path[j].read_text()) for j in jobs if path[j].exists() and not fresh}
    firsts = {name: (name, ratios[0], MODELS_SEED) for name, ratios in plan.items()}
    bar = tqdm(total=sum(j not in out for j in jobs), desc="spread runs", unit="run")

    def keep(j: tuple, summary: dict) -> None:
        out[j] = summary
        path[j].parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path[j], json.dumps(summary, indent=1) + "\n")
        bar.update()

    for j in firsts.values():
        if j not in out:
            keep(j, run_one(SETS[j[0]], j[1], j[2], None, budgets))
    held = {name: {r["name"]: r["control_accuracy"] for r in out[j]["rows"]} for name, j in firsts.items()}
    rest = [(j, (SETS[j[0]], j[1], j[2], held[j[0]], budgets)) for j in jobs if j not in out]
    if workers == 1:
        for j, args in rest:
            keep(j, run_one(*args))
    elif rest:
        with quiet_pool(min(workers, len(rest))) as pool:
            for j, job in [(j, pool.apply_async(run_one, args)) for j, args in rest]:
                keep(j, job.get())
    bar.close()
    return out


def row(name: str, ratio: float, summaries: list[dict]) -> dict:
    """One set and ratio over its packings: each DNN's packed - control (pp) per packing and its spread."""
    per_dnn = {r["name"]: [] for r in summaries[0]["rows"]}
    for s in summaries:
        for r in s["rows"]:
            per_dnn[r["name"]].append(r["packed_minus_control_pp"])
    sd = {n: statistics.stdev(v) if len(v) > 1 else 0.0 for n, v in per_dnn.items()}
    return {"set": name, "ratio": ratio, "packings": len(summaries),
            "kept_every_dnn": sum(within(s) for s in summaries),
            "worst_pp": [min(r["packed_minus_control_pp"] for r in s["rows"]) for s in summaries],
            "ratio_reached": [s["totals"]["ratio_by_count"] for s in summaries],
            "per_dnn_pp": per_dnn, "per_dnn_sd_pp": sd, "median_sd_pp": statistics.median(sd.values())}


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    plan, repeats = (QUICK["plan"], QUICK["repeats"]) if scale.quick else (PLAN, REPEATS)
    budgets = {k: QUICK[k] for k in ("steps", "train_steps")} if scale.quick else {}
    summaries = run_all(plan, repeats, budgets, harness.runs_dir(scale) / "spread", fresh, scale.workers)
    rows = [row(name, ratio, [summaries[(name, ratio, s)] for s in packing_seeds(repeats)])
            for name, ratios in plan.items() for ratio in ratios]
    table = ["| set | ratio | packings keeping every DNN within 1 pp on test | worst DNN per packing, pp | "
             "median DNN's sd, pp | largest sd, pp (DNN) |", "|---|---|---|---|---|---|"]
    for r in rows:
        big = max(r["per_dnn_sd_pp"], key=r["per_dnn_sd_pp"].get)
        table.append(f"| {r['set']} | {r['ratio']:g}x | {r['kept_every_dnn']} of {r['packings']} | "
                     f"{', '.join(f'{w:+.2f}' for w in r['worst_pp'])} | {r['median_sd_pp']:.2f} | "
                     f"{r['per_dnn_sd_pp'][big]:.2f} ({big}) |")
    return {"setup": setup(plan, repeats, budgets), "table": "\n".join(table), "rows": rows, "answer": answer(rows),
            "scale_text": f"models seed {MODELS_SEED}; packing seeds {', '.join(map(str, packing_seeds(repeats)))}; "
                          + ("the main job's budget" if not budgets else f"budgets {budgets}")
                          + "; the scale's DNNs and seeds are not used"}


def setup(plan: dict, repeats: int, budgets: dict) -> str:
    return (f"Each set's stand-alone models of seed {MODELS_SEED}, packed and optimised at each ratio "
            f"({'; '.join(f'{k}: ' + ', '.join(f'{r:g}x' for r in v) for k, v in plan.items())}) under {repeats} seeds "
            f"({', '.join(map(str, packing_seeds(repeats)))}), in process (`pipeline.run_seed`, the main job's code, "
            "one thread each), the set's first alone, then two at a time; the no-sharing control trained with the "
            "first run of each set and held for the rest, "
            + ("the main job's budget." if not budgets else f"budgets {budgets}."))


def answer(rows: list[dict]) -> str:
    parts = [f"{r['set']} at {r['ratio']:g}x: {r['kept_every_dnn']} of {r['packings']}" for r in rows]
    sds = [sd for r in rows for sd in r["per_dnn_sd_pp"].values()]
    return (f"Packings that kept every DNN within 1 pp of the held control on test: {'; '.join(parts)}. A DNN's "
            f"packed - control moved between packings by a standard deviation of {min(sds):.2f}-{max(sds):.2f} pp "
            f"(median {statistics.median(sds):.2f}): one run's pass or fail at a 1 pp bound is a draw.")


def plot(result: dict, plt) -> None:
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(11, 4.2))
    names = list(rows[0]["per_dnn_pp"])
    width = 0.8 / len(rows)
    for k, r in enumerate(rows):
        for i, n in enumerate(names):
            xs = [i - 0.4 + width * (k + 0.5)] * len(r["per_dnn_pp"][n])
            ax.plot(xs, r["per_dnn_pp"][n], "o", ms=4, color=f"C{k}", alpha=0.8,
                    label=f"{r['set']} at {r['ratio']:g}x, one packing" if i == 0 else None)
    ax.axhline(-1, ls="--", color="grey", label="the 1 pp bound")
    ax.set(xticks=range(len(names)), xticklabels=names, ylabel="packed - held no-sharing control on test (pp)",
           title=f"the same stand-alone models (seed {MODELS_SEED}) packed and optimised under several seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
