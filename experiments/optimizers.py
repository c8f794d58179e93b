"""Optimisers: is true joint optimisation better than the published round-robin and sequential ones?

All at the same DNN-batch budget (joint's total, extra batches for cheap DNNs included, given to
the published optimisers as equal turns), next to the no-sharing control (each DNN alone, all its
pages exclusive, the joint optimiser's config), with validation accuracy along the way.

    python -m experiments optimizers
"""
from __future__ import annotations

from . import harness

SECTION = 3
TITLE = "Optimisers: joint, round-robin, sequential, no sharing"
QUESTION = ("Does true joint optimisation converge, and does it beat the published round-robin and sequential "
            "optimisers at the same DNN-batch budget?")
SETTINGS = (
    harness.Setting("ours"),  # joint, the default
    harness.Setting("round-robin", optimize={"optimizer": "round-robin"}, same_budget=True, turns=10),
    harness.Setting("sequential", optimize={"optimizer": "sequential"}, same_budget=True, turns=1),
    harness.Setting("no sharing", control=True),
)
NAMES = {"ours": "joint (ours)", "round-robin": "round-robin (published, lambda 0.1)",
         "sequential": "sequential (one turn each)", "no sharing": "no-sharing control"}


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    packed = [st for st in SETTINGS if not st.control]
    runs = harness.run_all(harness.with_controls(list(SETTINGS)), scale, fresh, "optimizers")
    rows, table = [], ["| optimiser | packed - control pp | packed - stand-alone pp | worst DNN pp | vs joint pp | DNN-batches |",
                       "|---|---|---|---|---|---|"]
    comparisons = harness.compared({st.label: runs[st.label] for st in SETTINGS}, "ours")
    versus_control = harness.against_control(runs, packed)
    for st in SETTINGS:
        rs = runs[st.label]
        s = harness.summary_row(rs)
        vs = comparisons[st.label]
        batches = harness.stats([r["curve"]["dnn_batches"][-1] for r in rs])
        rows.append({"optimizer": NAMES[st.label], **harness.control_fields(versus_control.get(st.label)),
                     **harness.spread_fields("mean_change_pp", s["mean_difference_pp"]),
                     "worst_pp": s["worst_difference_pp"]["mean"],
                     **harness.versus_fields("joint", vs), "dnn_batches": batches["mean"],
                     "seeds": len(rs)})
        control = harness.versus(versus_control[st.label]) if st.label in versus_control else "–"
        table.append(f"| {NAMES[st.label]} | {control} | {harness.fmt(s['mean_difference_pp'])} | "
                     f"{harness.fmt(s['worst_difference_pp'])} | {harness.versus(vs) if st.label != 'ours' else '–'} | "
                     f"{batches['mean']:,.0f} |")
    by = {r["optimizer"]: r for r in rows}
    joint, rr, sq, ctl = (by[NAMES[k]] for k in ("ours", "round-robin", "sequential", "no sharing"))
    gain, late = _progress(runs["ours"])
    answer = (f"Joint optimisation's mean validation accuracy rises by {harness.fmt(gain, 1, unit=' pp')} from "
              f"packing to the best check, and by {harness.fmt(late, unit=' pp')} over the last fifth of "
              f"the budget. At the same budget round-robin is {rr['vs_joint_pp']:+.2f} pp against "
              f"joint ({harness.seed_noise(rr['vs_joint_noise'])}) and sequential {sq['vs_joint_pp']:+.2f} pp "
              f"({harness.seed_noise(sq['vs_joint_noise'])}); the no-sharing control is {ctl['vs_joint_pp']:+.2f} pp, "
              f"the cost of sharing at this budget. Against each optimiser's own no-sharing control (each DNN alone "
              f"with that optimiser's config and budget) joint is {joint['minus_control_pp']:+.2f} pp "
              f"({harness.seed_noise(joint['minus_control_noise'])}), round-robin {rr['minus_control_pp']:+.2f} pp "
              f"({harness.seed_noise(rr['minus_control_noise'])}) and sequential {sq['minus_control_pp']:+.2f} pp "
              f"({harness.seed_noise(sq['minus_control_noise'])}).")
    curves = {st.label: [{**r["curve"], "seed": r["seed"]} for r in runs[st.label]] for st in SETTINGS}
    return {"setup": "Same stand-alone DNNs per seed; packing at our defaults; the published optimisers get joint's "
                     "total DNN-batches as 10 rounds (round-robin) or one turn per DNN (sequential); each optimiser's "
                     "no-sharing control trains each DNN alone in its turns.",
            "rows": rows, "table": "\n".join(table), "answer": answer, "curves": curves, "names": NAMES}


def _progress(rows: list[dict]) -> tuple[dict, dict]:
    """Per seed, mean validation accuracy (pp): the best check minus right after packing, and the last
    check minus the check a fifth of the budget before it (near 0: the optimisation has levelled off)."""
    gain, late = [], []
    for r in rows:
        means = [100 * sum(v.values()) / len(v) for v in r["curve"]["val"]]
        gain.append(max(means) - means[0])
        late.append(means[-1] - means[-1 - max(1, len(means) // 5)])
    return harness.stats(gain), harness.stats(late)


def plot(result: dict, plt) -> None:
    curves, names = result["curves"], result["names"]
    fig, axes = plt.subplots(1, len(curves) + 1, figsize=(4.2 * (len(curves) + 1), 4), sharey=True)
    for ax, (label, runs) in zip(axes, curves.items()):
        first = runs[0]
        n = len(first["val"][0])
        xs = [b / n for b in first["dnn_batches"]]
        for dnn in first["val"][0]:
            ax.plot(xs, [100 * v[dnn] for v in first["val"]], lw=1, marker="o", ms=4, label=dnn)  # a marker per check
        ax.set(title=f"{names[label]}\nseed {first['seed']}", xlabel="DNN-batches per DNN")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy (%)")
    axes[0].legend(fontsize=7, ncol=2)
    mean_ax = axes[-1]
    for label, runs in curves.items():
        checks = min(len(r["val"]) for r in runs)
        n = len(runs[0]["val"][0])
        xs = [runs[0]["dnn_batches"][i] / n for i in range(checks)]
        ys = [sum(100 * sum(r["val"][i].values()) / n for r in runs) / len(runs) for i in range(checks)]
        mean_ax.plot(xs, ys, marker="o", ms=4, label=names[label])
    mean_ax.set(title="mean over DNNs and seeds", xlabel="DNN-batches per DNN")
    mean_ax.grid(alpha=0.3)
    mean_ax.legend(fontsize=7)
    fig.suptitle("Convergence at the same DNN-batch budget (validation accuracy, a marker per check)")
    fig.tight_layout()
