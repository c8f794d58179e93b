"""Stand-alone training: which stopping rule trains each DNN to its plateau, judged on validation data?

The stand-alone models are the reference every accuracy change is measured against, so they must be
trained to convergence: if they are not, the extra training that packing gives can pass for a gain.
Each rule trains every DNN from the same seeded start; the choice is made on validation accuracy
(test accuracy is recorded, never used to choose), on the tuning seeds (default 0 1 2), and the
chosen rule becomes the DNN folders' default (weightsep/train.py's TrainConfig).

    python -m experiments standalone
"""
from __future__ import annotations

import dataclasses
import math

from tqdm import tqdm

from weightsep import dnn as dnn_mod
from weightsep import train

from . import harness

SECTION = 11
IN_ALL = False  # trains 10 DNNs x 3 seeds x each rule: about 30 min on 2 cores, run on its own
TITLE = "Stand-alone training to a plateau"
QUESTION = "Which stopping rule trains the stand-alone DNNs to their plateau, by validation accuracy and time?"
CAP = 5  # a plateau rule may run up to this many times the folder's fixed budget (steps)
RULES = {  # label -> TrainConfig changes; the first is the reference
    "fixed budget": {"patience": None, "lr_drops": 0},
    "patience 5, 2 drops": {"patience": 5, "lr_drops": 2},
    "patience 10, 2 drops": {"patience": 10, "lr_drops": 2},
}
QUICK_RULES = ("fixed budget", "patience 5, 2 drops")


def config(dnn: dnn_mod.DNN, rule: dict, seed: int, steps: int | None) -> train.TrainConfig:
    """The folder's fixed budget with a rule's changes; a plateau rule gets CAP times the steps."""
    base = dataclasses.replace(train.config_for(dnn, steps, seed), patience=None, lr_drops=0)
    cap = base.steps * (CAP if rule["patience"] is not None else 1)
    return dataclasses.replace(base, **rule, steps=cap)


def _train(name: str, rule: str, cfg: dict) -> dict:
    train.set_single_thread()
    dnn = dnn_mod.get(name)
    result = train.train_theta(dnn.build_model(), dnn.load_data(), train.TrainConfig(**cfg))
    return {"dnn": name, "rule": rule, "seed": cfg["seed"], "val_accuracy": result.val_accuracy,
            "test_accuracy": result.test_accuracy, "best_step": result.best_step,
            "steps_run": result.history[-1][0], "cap": cfg["steps"], "seconds": result.seconds}


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    rules = {k: RULES[k] for k in (QUICK_RULES if scale.quick else RULES)}
    jobs = [(name, label, dataclasses.asdict(config(dnn_mod.get(name), rule, seed, scale.train_steps)))
            for seed in scale.seeds for name in scale.dnns for label, rule in rules.items()]
    jobs.sort(key=lambda j: -j[2]["steps"])  # the longest first: the two workers finish together
    rows = []
    with harness.quiet_pool(scale.workers) as pool, tqdm(total=len(jobs), desc="stand-alone training", unit="run") as bar:
        for row in pool.imap_unordered(_unpack, jobs):
            rows.append(row)
            bar.set_postfix_str(f"{row['dnn']} {row['rule']}: val {100 * row['val_accuracy']:.2f}%")
            bar.update()
    rows.sort(key=lambda r: (list(rules).index(r["rule"]), r["dnn"], r["seed"]))
    return summarise(rows, list(rules), scale)


def _unpack(job):
    return _train(*job)


def summarise(rows: list[dict], rules: list[str], scale: harness.Scale) -> dict:
    """Per DNN and rule: validation accuracy (mean ± 95% t over seeds), the paired difference from
    the fixed budget, steps and seconds; then the suite's mean and the choice."""
    def cell(label: str, name: str | None, key: str) -> list[dict]:
        return [{"seed": r["seed"], key: r[key]} for r in rows if r["rule"] == label and (name is None or r["dnn"] == name)]

    def per_seed_mean(label: str, key: str) -> list[dict]:
        by_seed: dict[int, list[float]] = {}
        for r in rows:
            if r["rule"] == label:
                by_seed.setdefault(r["seed"], []).append(r[key])
        return [{"seed": s, key: 100 * sum(v) / len(v)} for s, v in sorted(by_seed.items())]

    reference = rules[0]
    table = ["| DNN | " + " | ".join(f"{label}: val % (vs fixed pp), steps, s" for label in rules) + " |",
             "|---|" + "---|" * len(rules)]
    per_dnn = []
    for name in scale.dnns:
        cells = []
        for label in rules:
            val = harness.stats([100 * v["val_accuracy"] for v in cell(label, name, "val_accuracy")])
            steps = harness.stats([r["steps_run"] for r in rows if r["rule"] == label and r["dnn"] == name])
            secs = harness.stats([r["seconds"] for r in rows if r["rule"] == label and r["dnn"] == name])
            vs = harness.paired([{"seed": c["seed"], "v": 100 * c["val_accuracy"]} for c in cell(label, name, "val_accuracy")],
                                [{"seed": c["seed"], "v": 100 * c["val_accuracy"]} for c in cell(reference, name, "val_accuracy")], "v")
            per_dnn.append({"dnn": name, "rule": label, "val_mean": val["mean"], "val_vs_fixed_pp": vs["mean"],
                            "val_vs_fixed_ci95": vs["ci95"], "steps_mean": steps["mean"], "seconds_mean": secs["mean"]})
            vs_text = "" if label == reference else f" ({vs['mean']:+.2f})"
            cells.append(f"{val['mean']:.2f}{vs_text}, {steps['mean']:,.0f}, {secs['mean']:.0f}")
        table.append(f"| {name} | " + " | ".join(cells) + " |")
    means = {label: per_seed_mean(label, "val_accuracy") for label in rules}
    seconds = {label: [{"seed": s["seed"], "seconds": sum(r["seconds"] for r in rows if r["rule"] == label and r["seed"] == s["seed"])}
                       for s in means[label]] for label in rules}
    comparisons = harness.compared({label: [{"seed": m["seed"], "v": m["val_accuracy"]} for m in ms] for label, ms in means.items()},
                                   reference, "v")
    mean_cells = []
    for label in rules:
        m = harness.stats([x["val_accuracy"] for x in means[label]])
        t = harness.stats([x["seconds"] for x in seconds[label]])
        vs = "" if label == reference else f" ({harness.versus(comparisons[label])})"
        mean_cells.append(f"**{m['mean']:.2f}{vs}**, –, {t['mean']:.0f} in all")
    table.append("| mean of the DNNs | " + " | ".join(mean_cells) + " |")
    # the choice: the best mean validation accuracy; a rule within the table's noise of a cheaper one loses to it
    best = max(rules, key=lambda label: sum(x["val_accuracy"] for x in means[label]))
    cost = {label: sum(x["seconds"] for x in seconds[label]) for label in rules}
    ties = [label for label in rules if label == best or (label != reference and _tied(means, label, best))]
    chosen = min(ties, key=cost.get)
    worst = min((r for r in per_dnn if r["rule"] == chosen and chosen != reference), key=lambda r: r["val_vs_fixed_pp"],
                default=None)
    answer = (f"On validation accuracy over seeds {', '.join(map(str, scale.seeds))}, '{chosen}' is chosen "
              f"({sum(x['val_accuracy'] for x in means[chosen]) / len(means[chosen]):.2f} % mean over the DNNs against "
              f"{sum(x['val_accuracy'] for x in means[reference]) / len(means[reference]):.2f} % for the fixed budget; "
              f"{cost[chosen] / len(scale.seeds):.0f} s of training per seed on one core against "
              f"{cost[reference] / len(scale.seeds):.0f} s)"
              + (f"; its smallest gain on one DNN is {worst['dnn']} {worst['val_vs_fixed_pp']:+.2f} pp" if worst else "")
              + ". The chosen rule is weightsep's default (TrainConfig); test accuracy is in the JSON, not used.")
    return {"setup": f"Each DNN trained alone from the same seeded start under each rule; a plateau rule divides the "
                     f"learning rate by 10 at each plateau (validation checks without a new best) and stops at the plateau "
                     f"after its last drop, capped at {CAP}x the folder's fixed budget. Validation accuracy of the kept "
                     f"(best-validation) checkpoint.", "rows": rows, "per_dnn": per_dnn, "chosen": chosen,
            "table": "\n".join(table), "answer": answer}


def _tied(means: dict, a: str, b: str) -> bool:
    """Rules a and b's mean validation accuracies are not shown to differ (paired t-test, 5%)."""
    p = harness.paired([{"seed": m["seed"], "v": m["val_accuracy"]} for m in means[a]],
                       [{"seed": m["seed"], "v": m["val_accuracy"]} for m in means[b]], "v")
    return a == b or p["noise"] or math.isclose(p["mean"], 0.0)


def plot(result: dict, plt) -> None:
    per_dnn = result["per_dnn"]
    rules = list(dict.fromkeys(r["rule"] for r in per_dnn))
    names = list(dict.fromkeys(r["dnn"] for r in per_dnn))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4))
    width = 0.8 / max(1, len(rules) - 1)
    for i, label in enumerate(rules[1:]):
        rs = {r["dnn"]: r for r in per_dnn if r["rule"] == label}
        xs = [j + (i - (len(rules) - 2) / 2) * width for j in range(len(names))]
        a.bar(xs, [rs[n]["val_vs_fixed_pp"] for n in names], width,
              yerr=[rs[n]["val_vs_fixed_ci95"] or 0 for n in names], capsize=2, label=label)
        b.bar(xs, [rs[n]["steps_mean"] / next(r["steps_mean"] for r in per_dnn if r["dnn"] == n and r["rule"] == rules[0])
                   for n in names], width, label=label)
    a.axhline(0, color="k", lw=0.8)
    a.set(ylabel="validation accuracy vs fixed budget (pp)", title="gain over the fixed budget (mean ± 95% t)")
    b.axhline(1, color="k", lw=0.8)
    b.set(ylabel="steps run / fixed budget", title="training length")
    for ax in (a, b):
        ax.set_xticks(range(len(names)), names, rotation=30)
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
    fig.suptitle("Stand-alone training: plateau rules against the folders' fixed budgets (tuning seeds, validation)")
    fig.tight_layout()
