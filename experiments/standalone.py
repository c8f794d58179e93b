"""Stand-alone training: which stopping rule trains each DNN to its plateau, judged on validation data?

The stand-alone models are the reference every accuracy change is measured against, so they must be
trained to convergence: if they are not, the extra training that packing gives can pass for a gain.
Each rule trains every DNN from the same seeded start, then each model gets the no-sharing control's
extra training, and what that still gains on validation says how far from its plateau the model was.
The choice is made on validation accuracy (test accuracy is recorded, never used to choose), on the
tuning seeds (default 0 1 2), and the chosen rule becomes the DNN folders' default (weightsep/train.py's
TrainConfig).

    python -m experiments standalone --steps 1500    # the control at the main job's budget
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from tqdm import tqdm

from weightsep import dnn as dnn_mod
from weightsep import records, train
from weightsep.control import trained_alone
from weightsep.files import atomic_write_text
from weightsep.optimize import OptimizeConfig
from weightsep.pack import PackConfig
from weightsep.step_cost import planned_batches

from . import harness

SECTION = 11
IN_ALL = False  # trains 10 DNNs x 3 seeds x each rule: about 30 min on 2 cores, run on its own
SEEDS = harness.TUNING_SEEDS  # the default when --seeds is not given
TITLE = "Stand-alone training to a plateau"
QUESTION = ("Which stopping rule trains the stand-alone DNNs to their plateau, judged by validation accuracy, by what "
            "the no-sharing control's extra training still gains on validation, and by time?")
CAP = 5  # a plateau rule may run up to this many times the fixed budget (a folder's steps are the cap)
RULES = {  # label -> TrainConfig changes; the first is the reference
    "fixed budget": {"patience": None, "lr_drops": 0, "restore_best": False},
    "patience 10, 2 drops": {"patience": 10, "lr_drops": 2, "restore_best": False},
    "patience 10, 2 drops, restore best": {"patience": 10, "lr_drops": 2, "restore_best": True},
}
QUICK_RULES = ("fixed budget", "patience 10, 2 drops, restore best")


def config(dnn: dnn_mod.DNN, rule: dict, seed: int, steps: int | None) -> train.TrainConfig:
    """The folder's training with a rule's changes: a plateau rule up to the folder's cap (`steps`), the
    fixed budget a CAP-th of it at a constant learning rate (the suite's budgets before the rule)."""
    base = train.config_for(dnn, steps, seed)
    return dataclasses.replace(base, **rule, steps=base.steps if rule["patience"] is not None else max(1, base.steps // CAP))


def _train(name: str, rule: str, cfg: dict, control: dict) -> dict:
    """Train one DNN alone under `cfg`, then give the result the no-sharing control's extra training
    (`control`: its optimisation steps, batches per step and the set's size, as the main job's control)."""
    train.set_single_thread()
    record = records.load([name])[name]
    result = train.train_theta(record.model, record.data, train.TrainConfig(**cfg))
    record.reference, record.batches = records.Reference.of(result), control["batches"]
    theta = trained_alone(record, OptimizeConfig(steps=control["steps"]).alone(control["dnns"]), PackConfig().page_size)
    return {"dnn": name, "rule": rule, "seed": cfg["seed"], "val_accuracy": result.val_accuracy,
            "test_accuracy": result.test_accuracy, "best_step": result.best_step,
            "steps_run": result.history[-1][0], "cap": cfg["steps"], "seconds": result.seconds,
            "control_val_accuracy": record.accuracy(theta, "val"), "control_test_accuracy": record.accuracy(theta, "test")}


def _unpack(job):
    return _train(*job)


def cached(name: str, cfg: dict, control: dict, scale: harness.Scale) -> Path:
    """A run's row, keyed as the model cache keys a model (DNN code and data, training code, config)
    and by the control's budget."""
    key = train.cache_path(dnn_mod.get(name), train.TrainConfig(**cfg)).stem
    return harness.runs_dir(scale) / f"standalone-{key}-control{control['steps']}x{control['batches']}of{control['dnns']}.json"


def controls(scale: harness.Scale) -> dict[str, dict]:
    """Each DNN's no-sharing control as the main job would run it for the set `scale.dnns`: `scale.steps`
    optimisation steps, the batches per step the optimiser's rule gives it in the set."""
    config = OptimizeConfig(steps=scale.steps)
    per_step, _ = planned_batches({n: r.model for n, r in records.load(list(scale.dnns), data=False).items()}, config)
    return {n: {"steps": scale.steps, "batches": per_step[n], "dnns": len(scale.dnns)} for n in scale.dnns}


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    rules = {k: RULES[k] for k in (QUICK_RULES if scale.quick else RULES)}
    control = controls(scale)
    jobs = [(name, label, dataclasses.asdict(config(dnn_mod.get(name), rule, seed, scale.train_steps)), control[name])
            for seed in scale.seeds for name in scale.dnns for label, rule in rules.items()]
    paths = [cached(name, cfg, ctl, scale) for name, _, cfg, ctl in jobs]
    rows = [json.loads(path.read_text()) | {"rule": label} for (_, label, _, _), path in zip(jobs, paths)
            if path.exists() and not fresh]
    todo = sorted(((job, path) for job, path in zip(jobs, paths) if fresh or not path.exists()), key=lambda j: -j[0][2]["steps"])
    if todo:  # the longest first: the two workers finish together
        with harness.quiet_pool(scale.workers) as pool, tqdm(total=len(todo), desc="stand-alone training", unit="run") as bar:
            for (_, path), row in zip(todo, pool.imap(_unpack, [job for job, _ in todo])):
                atomic_write_text(path, json.dumps(row) + "\n")
                rows.append(row)
                bar.set_postfix_str(f"{row['dnn']} {row['rule']}: val {100 * row['val_accuracy']:.2f}%")
                bar.update()
    rows.sort(key=lambda r: (list(rules).index(r["rule"]), r["dnn"], r["seed"]))
    return summarise(rows, list(rules), scale)


def summarise(rows: list[dict], rules: list[str], scale: harness.Scale) -> dict:
    """Per DNN and rule: validation accuracy (mean over seeds), its paired difference from the fixed
    budget (mean ± 95% t), what the no-sharing control's extra training still gains on validation,
    steps and seconds; then the suite's mean per seed, and the choice."""
    reference = rules[0]

    def runs(label: str, name: str | None = None) -> list[dict]:
        return [r for r in rows if r["rule"] == label and name in (None, r["dnn"])]

    def val(rs: list[dict]) -> list[dict]:  # paired by seed, in %
        return [{"seed": r["seed"], "v": 100 * r["val_accuracy"]} for r in rs]

    def per_seed(label: str, key: str, reduce) -> list[dict]:
        return [{"seed": s, "v": reduce([r[key] for r in runs(label) if r["seed"] == s])} for s in scale.seeds]

    table = ["| DNN | " + " | ".join(f"{label}: val % (vs fixed pp), control's val gain pp, steps, s" for label in rules)
             + " |",
             "|---|" + "---|" * len(rules)]
    per_dnn = []
    for name in scale.dnns:
        cells = []
        for label in rules:
            rs = runs(label, name)
            vs = harness.paired(val(rs), val(runs(reference, name)), "v")
            row = {"dnn": name, "rule": label, "val_mean": harness.stats([v["v"] for v in val(rs)])["mean"],
                   "val_vs_fixed_pp": vs["mean"], "val_vs_fixed_ci95": vs["ci95"],
                   "control_val_gain_pp": harness.stats([100 * (r["control_val_accuracy"] - r["val_accuracy"])
                                                         for r in rs])["mean"],
                   "steps_mean": harness.stats([r["steps_run"] for r in rs])["mean"],
                   "seconds_mean": harness.stats([r["seconds"] for r in rs])["mean"]}
            per_dnn.append(row)
            vs_text = "" if label == reference else f" ({harness.versus(vs)})"
            cells.append(f"{row['val_mean']:.2f}{vs_text}, {row['control_val_gain_pp']:+.2f}, {row['steps_mean']:,.0f}, "
                         f"{row['seconds_mean']:.0f}")
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    means = {label: per_seed(label, "val_accuracy", lambda v: 100 * sum(v) / len(v)) for label in rules}
    cost = {label: harness.stats([s["v"] for s in per_seed(label, "seconds", sum)])["mean"] for label in rules}
    mean = {label: harness.stats([m["v"] for m in means[label]])["mean"] for label in rules}
    comparisons = harness.compared(means, reference, "v")
    largest_gain = {label: max((r for r in per_dnn if r["rule"] == label), key=lambda r: r["control_val_gain_pp"])
                    for label in rules}
    table.append("| mean of the DNNs | " + " | ".join(
        f"**{mean[label]:.2f}**" + ("" if label == reference else f" ({harness.versus(comparisons[label])})")
        + f", largest {largest_gain[label]['control_val_gain_pp']:+.2f} ({largest_gain[label]['dnn']}), –, "
          f"{cost[label]:.0f} in all" for label in rules) + " |")
    # the best mean validation accuracy; among the rules not shown to differ from it, the one that leaves the
    # control least to gain on any DNN (the closest to converged), then the cheaper
    best = max(rules, key=mean.get)
    tied = [label for label in rules
            if label == best or harness.paired(means[label], means[best], "v")["noise"] and label != reference]
    chosen = min(tied, key=lambda label: (round(largest_gain[label]["control_val_gain_pp"], 2), cost[label]))
    worst = min((r for r in per_dnn if r["rule"] == chosen), key=lambda r: r["val_vs_fixed_pp"])
    answer = (f"On validation accuracy over seeds {', '.join(map(str, scale.seeds))}, '{chosen}' is chosen: "
              f"{mean[chosen]:.2f} % mean over the DNNs against {mean[reference]:.2f} % for the fixed budget, "
              f"{cost[chosen]:.0f} s of training per seed on one core against {cost[reference]:.0f} s"
              + ("" if chosen == reference else f"; its smallest gain on one DNN is {worst['dnn']} "
                                                f"{worst['val_vs_fixed_pp']:+.2f} pp")
              + f". The control's extra training then gains at most {largest_gain[chosen]['control_val_gain_pp']:+.2f} pp "
                f"of validation accuracy on one DNN ({largest_gain[chosen]['dnn']}; "
              + ", ".join(f"'{label}' {largest_gain[label]['control_val_gain_pp']:+.2f} ({largest_gain[label]['dnn']})"
                          for label in rules if label != chosen)
              + "). Test accuracy is in the JSON, not used to choose.")
    return {"setup": f"Each DNN trained alone from the same seeded start under each rule; a plateau rule divides the "
                     f"learning rate by 10 at each plateau (`patience` validation checks without a new best) and stops "
                     f"at the plateau after its last drop, capped at the folder's steps; the fixed budget trains a {CAP}th of "
                     f"them at a constant rate; 'restore best' restarts each drop from the best checkpoint. Validation "
                     f"accuracy of the kept (best-validation) checkpoint; then each model gets the no-sharing control's "
                     f"extra training ({scale.steps} optimisation steps, as the main job's control) and the control's "
                     f"validation gain is what a converged model leaves: near 0.",
            "rows": rows, "per_dnn": per_dnn, "chosen": chosen,
            "rules": [{"rule": label, "val_mean": mean[label], "vs_fixed_pp": comparisons[label]["mean"],
                       "vs_fixed_ci95": comparisons[label]["ci95"], "seconds_per_seed": cost[label],
                       "largest_control_val_gain_pp": largest_gain[label]["control_val_gain_pp"],
                       "largest_control_val_gain_dnn": largest_gain[label]["dnn"]} for label in rules],
            "table": "\n".join(table), "answer": answer}


def plot(result: dict, plt) -> None:
    per_dnn = result["per_dnn"]
    rules = list(dict.fromkeys(r["rule"] for r in per_dnn))
    names = list(dict.fromkeys(r["dnn"] for r in per_dnn))
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(17, 4.6))
    width = 0.8 / max(1, len(rules) - 1)
    for i, label in enumerate(rules):
        rs = {r["dnn"]: r for r in per_dnn if r["rule"] == label}
        c.bar([j + (i - (len(rules) - 1) / 2) * 0.8 / len(rules) for j in range(len(names))],
              [rs[n]["control_val_gain_pp"] for n in names], 0.8 / len(rules), label=label, color=f"C{i}")
    for i, label in enumerate(rules[1:]):
        rs = {r["dnn"]: r for r in per_dnn if r["rule"] == label}
        xs = [j + (i - (len(rules) - 2) / 2) * width for j in range(len(names))]
        a.bar(xs, [rs[n]["val_vs_fixed_pp"] for n in names], width,
              yerr=[rs[n]["val_vs_fixed_ci95"] or 0 for n in names], capsize=2, label=label, color=f"C{i + 1}")
        b.bar(xs, [rs[n]["steps_mean"] / next(r["steps_mean"] for r in per_dnn if r["dnn"] == n and r["rule"] == rules[0])
                   for n in names], width, label=label, color=f"C{i + 1}")
    a.axhline(0, color="k", lw=0.8)
    a.set(ylabel="validation accuracy vs fixed budget (pp)", title="gain over the fixed budget (mean ± 95% t)")
    b.axhline(1, color="k", lw=0.8)
    b.set(ylabel="steps run / fixed budget", title="training length")
    c.axhline(0, color="k", lw=0.8)
    c.set(ylabel="control's validation gain (pp, mean)", title="what the control's extra training still gains")
    for ax in (a, b, c):
        ax.set_xticks(range(len(names)), names, rotation=30)
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
    fig.suptitle("Stand-alone training: plateau rules against the folders' fixed budgets (tuning seeds, validation)")
    fig.tight_layout()
