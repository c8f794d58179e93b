"""The overlap regulariser: what does lambda do to the published round-robin optimiser?

Round-robin (docs/algorithms.md §3.5) adds lambda times the overlap loss (the other DNNs' Fisher
times the squared distance to their last weights on the pages they share) to each DNN's loss.
lambda in {0, 0.01, 0.1 (published WS), 1, 10 (published NWV)}, same budget as the optimiser
experiment; the overlap loss reported is at lambda 1 after the last round, so it compares.

    python -m experiments overlap
"""
from __future__ import annotations

from . import harness

SECTION = 4
TITLE = "The overlap regulariser lambda"
QUESTION = "What does the overlap regulariser's weight lambda do to accuracy and to the overlap loss?"
LAMBDAS = (0.0, 0.01, 0.1, 1.0, 10.0)
QUICK_LAMBDAS = (0.0, 0.1, 10.0)
PUBLISHED = 0.1


def setting(lam: float) -> harness.Setting:
    label = "round-robin" if lam == PUBLISHED else f"round-robin lambda {lam:g}"  # 0.1 is the optimiser experiment's
    return harness.Setting(label, optimize={"optimizer": "round-robin", **({} if lam == PUBLISHED else {"lam": lam})},
                           same_budget=True, turns=10)


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    settings = {lam: setting(lam) for lam in (QUICK_LAMBDAS if scale.quick else LAMBDAS)}
    runs = harness.run_all(harness.with_controls(list(settings.values())), scale, fresh, "overlap")
    rows, table = [], ["| lambda | packed - control pp | packed - stand-alone pp | worst DNN pp | vs lambda 0.1 pp | "
                       "overlap loss (lambda 1) |", "|---|---|---|---|---|---|"]
    comparisons = harness.compared({st.label: runs[st.label] for st in settings.values()}, settings[PUBLISHED].label)
    versus_control = harness.against_control(runs, list(settings.values()))
    for lam, st in settings.items():
        rs = runs[st.label]
        s = harness.summary_row(rs)
        vs = comparisons[st.label]
        overlap = harness.stats([r["overlap_loss"] for r in rs])
        rows.append({"lambda": lam, **harness.control_fields(versus_control[st.label]),
                     **harness.spread_fields("mean_change_pp", s["mean_difference_pp"]),
                     "worst_pp": s["worst_difference_pp"]["mean"], **harness.versus_fields("published", vs),
                     **harness.spread_fields("overlap_loss", overlap), "seeds": len(rs)})
        table.append(f"| {lam:g}{' (published WS)' if lam == PUBLISHED else ''} | "
                     f"{harness.versus(versus_control[st.label])} | {harness.fmt(s['mean_difference_pp'])} | "
                     f"{harness.fmt(s['worst_difference_pp'])} | "
                     f"{'–' if lam == PUBLISHED else harness.versus(vs)} | {harness.fmt(overlap, 3, False, style='g')} |")
    best = max(rows, key=lambda r: r["minus_control_pp"])
    low, high = rows[0], rows[-1]
    direction = "falls" if high["overlap_loss"] < low["overlap_loss"] else "does not fall"
    answer = (f"The overlap loss {direction} from {low['overlap_loss']:.3g} at lambda 0 to {high['overlap_loss']:.3g} at "
              f"lambda {high['lambda']:g}. Accuracy is best at "
              f"lambda {best['lambda']:g}: {best['minus_control_pp']:+.2f} pp against the no-sharing control (each DNN alone, "
              f"round-robin's turns at the same budget; {harness.seed_noise(best['minus_control_noise'])}), "
              f"{best['mean_change_pp']:+.2f} pp against stand-alone; against the published 0.1, lambda 0 is "
              f"{low['vs_published_pp']:+.2f} pp ({harness.seed_noise(low['vs_published_noise'])}) and lambda {high['lambda']:g} "
              f"{high['vs_published_pp']:+.2f} pp ({harness.seed_noise(high['vs_published_noise'])}).")
    return {"setup": "Round-robin at joint's DNN-batch budget in 10 rounds, packing at our defaults; only lambda "
                     "changes. The no-sharing control trains each DNN alone in the same turns (lambda acts only "
                     "between DNNs that share pages, so one control serves every lambda).",
            "rows": rows, "table": "\n".join(table), "answer": answer}


def plot(result: dict, plt) -> None:
    rows = result["rows"]
    xs = range(len(rows))  # lambda as categories: it spans 0 and four decades
    names = [f"{r['lambda']:g}" + (" (WS)" if r["lambda"] == PUBLISHED else "") for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.errorbar(xs, [r["mean_change_pp"] for r in rows], yerr=[r["mean_change_ci95"] or 0 for r in rows], marker="o", capsize=3,
               label="mean over DNNs")
    a.plot(xs, [r["worst_pp"] for r in rows], marker="s", ls="--", label="worst DNN")
    a.set(ylabel="test accuracy change (pp)", title="accuracy (mean ± 95% t-interval over seeds)")
    a.legend()
    b.errorbar(xs, [r["overlap_loss"] for r in rows], yerr=[r["overlap_loss_ci95"] or 0 for r in rows], marker="o", capsize=3)
    b.set(ylabel="overlap loss at lambda 1\n(Fisher-weighted squared distance)",
          title="overlap loss after the last round\n(mean ± 95% t-interval over seeds)",
          yscale="log")
    for ax in (a, b):
        ax.set_xticks(list(xs), names)
        ax.set_xlabel("lambda, the overlap loss's weight")
        ax.grid(alpha=0.3)
    fig.suptitle("Round-robin's overlap regulariser (published: WS 0.1, NWV 10)")
    fig.tight_layout()
