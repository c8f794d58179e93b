"""Memory budget: the accuracy-against-bytes Pareto front of the published and our separations.

Published WS separation (each DNN keeps its pages of highest Fisher mass until 1 - margin of it)
on a grid of shared pages S x margin; our budget separation at ratios 4, 6, 8 and the most that our
S (the largest DNN's pages: 128 for the suite) reaches (ratios 10 and 12 cannot be reached with
these DNNs: `reachable`); and the paper-faithful pipeline (every published setting) at the
published S = 128, margin 0.1, all at the main job's budget with each setting's no-sharing
control. Packed bytes include the page tables. The published WS operating point (10 DNNs,
-0.22 pp, 5.87x by count) is marked at its ratio by bytes; its DNNs differ from these, so it
places the papers' claim, it does not compare runs.

    python -m experiments budget
"""
from __future__ import annotations

import math

from dnnkit import paper
from weightsep.pack import PUBLISHED_SHARED_PAGES, PackConfig, shared_pages_needed
from weightsep.separation import reach

from . import harness

SECTION = 7
TITLE = "Memory budget: accuracy against bytes"
QUESTION = ("Which trade-off between packed bytes and accuracy do the published separation (shared pages S x margin) "
            "and our budget separation reach, and where do the paper-faithful settings and the published point lie?")
SHARED = (64, 256)  # beside the published 128, at the published margin
MARGINS = (0.05, 0.3)  # beside the published 0.1, at the published S
RATIOS = (4.0, 6.0, 8.0)  # and the most our S reaches (`reachable`)
WS_POINT = paper.published_ws_point()  # WS, PerCom 2022: 10 DNNs, -0.22 pp, 5.87x by count
PUBLISHED_POINT = {"ratio": WS_POINT["ratio_by_bytes"], "change_pp": WS_POINT["change_pp"]}  # on the by-bytes axis
PAPER = {"pack": {"separation": "margin", "matching": "greedy", "shared_content": "random", "n_shared": PUBLISHED_SHARED_PAGES},
         "fisher": {"estimator": "paper"}, "optimize": {"optimizer": "round-robin"}}


def settings(scale: harness.Scale) -> dict[str, tuple[str, harness.Setting]]:
    """label -> (family, setting)."""
    grid = [(PUBLISHED_SHARED_PAGES, PackConfig.margin)]
    if not scale.quick:
        grid += [(s, PackConfig.margin) for s in SHARED] + [(PUBLISHED_SHARED_PAGES, m) for m in MARGINS]
    out = {}
    for s, m in grid:
        label = f"margin {m:g}, S={s}"
        out[label] = ("published separation", harness.Setting(label, pack={"separation": "margin", "margin": m,
                                                                           "n_shared": s}))
    for r in (*RATIOS, reachable(scale)):
        label = "ours" if r == PackConfig.ratio else f"budget ratio {r:g}"
        out[label] = ("our budget separation", harness.Setting(label, pack={} if r == PackConfig.ratio else {"ratio": r}))
    out["paper (all published)"] = ("paper-faithful", harness.Setting("paper (all published)", same_budget=True,
                                                                       turns=10, **PAPER))
    return out


def reachable(scale: harness.Scale) -> float:
    """The highest ratio by count our S shared pages allow (no exclusive page; two decimals, rounded down):
    a DNN's pages lie on distinct shared pages, so the store holds at least the largest DNN's (`separation.Reach`)."""
    sizes = harness.weights(scale.dnns)
    S = shared_pages_needed(sizes, PackConfig())
    return math.floor(100 * reach(dict(zip(scale.dnns, sizes)), PackConfig.page_size, S).ratio) / 100


def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (higher ratio, higher accuracy), by ratio."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(x2 >= x and y2 >= y and (x2, y2) != (x, y) for x2, y2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    plan = settings(scale)
    packed = [st for _, st in plan.values()]
    runs = harness.run_all(harness.with_controls(packed), scale, fresh, "budget")
    versus_control = harness.against_control(runs, packed)
    rows, summaries = [], {label: harness.summary_row(runs[label]) for label in plan}
    for label, (family, _) in plan.items():
        s = summaries[label]
        rows.append({"setting": label, "family": family, **harness.spread_fields("ratio_by_bytes", s["ratio_by_bytes"]),
                     "packed_kib": s["packed_bytes"]["mean"] / 1024, **harness.control_fields(versus_control[label]),
                     **harness.spread_fields("mean_change_pp", s["mean_difference_pp"]),
                     "worst_pp": s["worst_difference_pp"]["mean"], "seeds": s["mean_difference_pp"]["n"]})
    front = pareto([(r["ratio_by_bytes"], r["mean_change_pp"]) for r in rows])
    for i, r in enumerate(rows):
        r["pareto"] = i in front
    table = ["| setting | family | packed KiB | ratio by bytes | packed - control pp | packed - stand-alone pp | "
             "worst DNN pp | on the front |", "|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['setting']} | {r['family']} | {r['packed_kib']:.0f} | "
              f"{harness.fmt(summaries[r['setting']]['ratio_by_bytes'], 2, False, 'x')} | "
              f"{harness.versus(versus_control[r['setting']])} | {harness.fmt(summaries[r['setting']]['mean_difference_pp'])} | "
              f"{r['worst_pp']:+.2f} | {'yes' if r['pareto'] else ''} |" for r in rows]
    on_front = [rows[i] for i in front]
    families = sorted({r["family"] for r in on_front})
    ours = next(r for r in rows if r["setting"] == "ours")
    paper = next(r for r in rows if r["family"] == "paper-faithful")
    answer = (f"The front is made of {', '.join(families)} points ({len(on_front)} of {len(rows)}). At our default "
              f"ratio the budget separation packs {ours['ratio_by_bytes']:.2f}x by bytes at {ours['minus_control_pp']:+.2f} pp "
              f"against the no-sharing control ({harness.seed_noise(ours['minus_control_noise'])}; each DNN optimised "
              f"alone at the same budget), {ours['mean_change_pp']:+.2f} pp against stand-alone; the paper-faithful "
              f"pipeline {paper['ratio_by_bytes']:.2f}x at {paper['minus_control_pp']:+.2f} pp against its control "
              f"(round-robin's turns alone; {harness.seed_noise(paper['minus_control_noise'])}), "
              f"{paper['mean_change_pp']:+.2f} pp against stand-alone.")
    S = shared_pages_needed(harness.weights(scale.dnns), PackConfig())
    return {"setup": f"Published separation at the published S={PUBLISHED_SHARED_PAGES}, margin 0.1, then S in {SHARED} "
                     f"at that margin and margin in {MARGINS} at that S; "
                     f"budget separation at ratios {RATIOS} by weight count (S={S}, the largest DNN's pages) and at "
                     f"{reachable(scale):g}, the most {S} shared pages reach (no exclusive page: each DNN's pages lie on "
                     "distinct shared pages, so higher ratios cannot be reached with float32 pages of 512); the "
                     "paper-faithful pipeline at the published S "
                     "(paper Fisher K=50, greedy, random store, round-robin at the same budget).",
            "rows": rows, "table": "\n".join(table), "answer": answer, "published_point": PUBLISHED_POINT}


def plot(result: dict, plt) -> None:
    """Left: packed minus stand-alone, with the published point (the paper reports no control); right: packed
    minus each setting's no-sharing control, the headline difference."""
    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharex=True)
    markers = {"published separation": "ov^<>", "our budget separation": "sPXd", "paper-faithful": "D"}
    for ax, key, what in ((axes[0], "mean_change", "packed - stand-alone"), (axes[1], "minus_control", "packed - control")):
        for color, (family, shapes) in enumerate(markers.items()):  # a legend, not labels: the points crowd
            for r, marker in zip((r for r in rows if r["family"] == family), shapes, strict=False):
                harness.point(ax, r["ratio_by_bytes"], r[f"{key}_pp"], r[f"{key}_ci95"],
                              f"{family}: {r['setting'].replace('budget ', '')}", marker, f"C{color}")
        front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["ratio_by_bytes"])
        ax.plot([r["ratio_by_bytes"] for r in front], [r[f"{key}_pp"] for r in front], color="grey", ls="--", lw=1,
                label="Pareto front (packed - stand-alone)")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xlabel="packing ratio by bytes (stand-alone bytes / packed bytes, x)",
               ylabel=f"mean test accuracy, {what} (pp)", title=f"{what} (mean ± 95% t-interval over seeds)")
        ax.grid(alpha=0.3)
    p = result["published_point"]
    axes[0].scatter([p["ratio"]], [p["change_pp"]], marker="*", s=200, color="gold", edgecolor="black", zorder=5,
                    label="published WS (10 paper DNNs)")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[1].legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle("Accuracy against memory at the main job's budget")
    fig.tight_layout()
