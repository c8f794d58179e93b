"""Matching: does a lower matching cost train to a better accuracy?

Greedy (published), optimal, optimal under the greedy's occupancy footprint, and a random
assignment (the control that ignores the cost), each packing the same stand-alone DNNs with
everything else at our defaults.

    python -m experiments matching
"""
from __future__ import annotations

import scipy.stats

from weightsep.pack import PackConfig

from . import harness

SECTION = 5
TITLE = "Matching: cost against accuracy"
QUESTION = "Does a lower matching cost train to a better accuracy after optimisation?"
MATCHERS = ("optimal", "optimal-occupancy", "greedy", "random")
REFERENCE = "greedy"


def plan(scale: harness.Scale) -> list[harness.Setting]:
    """Our default matcher is `ours`, the run the other experiments share; the others change only the matcher."""
    return [harness.Setting("ours") if m == PackConfig.matching else harness.Setting(m, pack={"matching": m})
            for m in MATCHERS]


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    settings = plan(scale)
    runs = harness.run_all(harness.with_controls(settings), scale, fresh, "matching")
    timed = harness.matching_seconds(settings, scale)
    labels = dict(zip(MATCHERS, (s.label for s in settings)))
    ref = runs[labels[REFERENCE]]
    rows, table = [], ["| matcher | matching cost / greedy's | val. accuracy before optimisation % | packed - control pp | "
                       "packed - stand-alone pp | worst DNN pp | vs greedy pp | matching s |",
                       "|---|---|---|---|---|---|---|---|"]
    comparisons = harness.compared({m: runs[labels[m]] for m in MATCHERS}, REFERENCE)
    versus_control = harness.against_control(runs, settings)
    for m in MATCHERS:
        rs = runs[labels[m]]
        cost = harness.stats([r["matching_cost"] / g["matching_cost"] for r, g in zip(rs, ref)])
        before = harness.stats([100 * _mean(r["curve"]["val"][0].values()) for r in rs])
        s = harness.summary_row(rs)
        vs = comparisons[m]
        rows.append({"matcher": m, **harness.spread_fields("cost_vs_greedy", cost),
                     "val_before_pct": before["mean"], **harness.control_fields(versus_control[labels[m]]),
                     **harness.spread_fields("mean_change_pp", s["mean_difference_pp"]),
                     "worst_pp": s["worst_difference_pp"]["mean"],
                     **harness.versus_fields("greedy", vs), "matching_seconds": timed[labels[m]],
                     "seeds": len(rs)})
        table.append(f"| {m} | {harness.fmt(cost, 3, False)} | {harness.fmt(before, 2, False)} | "
                     f"{harness.versus(versus_control[labels[m]])} | {harness.fmt(s['mean_difference_pp'])} | "
                     f"{harness.fmt(s['worst_difference_pp'])} | "
                     f"{harness.versus(vs) if m != REFERENCE else '–'} | {timed[labels[m]]:.2f} |")
    by = {r["matcher"]: r for r in rows}
    opt, rnd = by["optimal"], by["random"]
    every = [(r["matching_cost"] / g["matching_cost"], r) for m in MATCHERS for r, g in zip(runs[labels[m]], ref)]
    rho_before = spearman([c for c, _ in every], [_mean(r["curve"]["val"][0].values()) for _, r in every])
    rho_after = spearman([c for c, _ in every], [r["mean_difference_pp"] for _, r in every])
    answer = (f"Optimal matching costs {opt['cost_vs_greedy']:.2f}x the greedy's and random {rnd['cost_vs_greedy']:.2f}x. "
              f"Over all runs, the Spearman correlation of cost with validation accuracy right after packing is "
              f"{rho_before:+.2f} and with the final accuracy change {rho_after:+.2f} (negative: lower cost, higher "
              f"accuracy); after optimisation optimal vs greedy is {opt['vs_greedy_pp']:+.2f} pp "
              f"({harness.seed_noise(opt['vs_greedy_noise'])}) and random vs greedy {rnd['vs_greedy_pp']:+.2f} pp "
              f"({harness.seed_noise(rnd['vs_greedy_noise'])}) over {opt['seeds']} seeds. Against the no-sharing control (each "
              f"DNN optimised alone at the same budget) optimal packing is {opt['minus_control_pp']:+.2f} pp "
              f"({harness.seed_noise(opt['minus_control_noise'])}) and greedy {by['greedy']['minus_control_pp']:+.2f} pp "
              f"({harness.seed_noise(by['greedy']['minus_control_noise'])}).")
    points = {m: [(r["matching_cost"] / g["matching_cost"], r["mean_difference_pp"], 100 * _mean(r["curve"]["val"][0].values()))
                  for r, g in zip(runs[labels[m]], ref)] for m in MATCHERS}
    return {"spearman_cost_before": rho_before, "spearman_cost_after": rho_after,
            "setup": "Every matcher packs the same stand-alone DNNs per seed; separation, Fisher and joint "
                     "optimisation at our defaults; cost is the Fisher-weighted distance summed over all DNNs' "
                     "matched pages (docs/matching.md), relative to the greedy's for the same seed; matching seconds "
                     "for all DNNs, timed one matcher at a time (first seed).",
            "rows": rows, "table": "\n".join(table), "answer": answer, "points": points}


def spearman(x: list[float], y: list[float]) -> float:
    return float(scipy.stats.spearmanr(x, y).statistic)


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def plot(result: dict, plt) -> None:
    from matplotlib.ticker import FormatStrFormatter

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for m, pts in result["points"].items():
        cost, after, before = zip(*pts)
        a.scatter(cost, before, label=m, s=30)
        b.scatter(cost, after, label=m, s=30)
    a.set(xlabel="matching cost / greedy's (same seed; linear)", ylabel="mean validation accuracy before optimisation (%)",
          title="right after packing")
    b.set(xlabel="matching cost / greedy's (same seed; linear)", ylabel="mean test accuracy change (pp)",
          title="after joint optimisation")
    for ax in (a, b):
        ax.xaxis.set_major_formatter(FormatStrFormatter("%.2fx"))
        ax.grid(alpha=0.3)
    b.axhline(0, color="grey", lw=0.8)
    fig.suptitle("Matching: does lower cost train better?")
    fig.tight_layout()
    fig.legend(*a.get_legend_handles_labels(), title="matcher (one point per seed)", ncol=4, loc="upper center",
               bbox_to_anchor=(0.5, 0.0))  # below the axes: it hides no point
