"""Page size: how do accuracy, matching cost and time, and the packing ratio depend on P?

P in {64, ..., 2048} with the shared pages' weights held at the published 128 x 512 (so S = 65,536 / P)
and the packed BYTES held at what P=512 takes at our default ratio 6: smaller pages need more
page-table entries, so they get fewer page bytes (a higher ratio by count); everything else at our
defaults.

    python -m experiments page_size
"""
from __future__ import annotations

from weightsep.evaluate import BYTES_PER_WEIGHT
from weightsep.pack import PUBLISHED_SHARED_PAGES, PackConfig
from weightsep.precision import tables_bytes_for

from . import harness

SECTION = 2
TITLE = "Page size"
QUESTION = "How do accuracy after optimisation, matching cost and time, and the packing ratio depend on the page size?"
SIZES = (64, 128, 256, 512, 1024, 2048)
QUICK_SIZES = (128, 512, 2048)
SHARED_WEIGHTS = PUBLISHED_SHARED_PAGES * PackConfig.page_size  # the published store's, held at every P


def equal_bytes_ratio(sizes: list[int], page_size: int) -> float:
    """The ratio by weight count at which pages of `page_size` pack DNNs of `sizes` weights into the bytes
    that our default page size and ratio take (float32 pages plus page tables, as the store counts them)."""
    total = BYTES_PER_WEIGHT * sum(sizes)
    return total / (total / PackConfig.ratio + tables_bytes_for(sizes, PackConfig.page_size)
                    - tables_bytes_for(sizes, page_size))


def setting(p: int, sizes: list[int]) -> harness.Setting:
    if p == PackConfig.page_size:
        return harness.Setting("ours")
    return harness.Setting(f"P={p}", pack={"page_size": p, "n_shared": SHARED_WEIGHTS // p,
                                           "ratio": round(equal_bytes_ratio(sizes, p), 4)})


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    sizes = harness.weights(scale.dnns)
    settings = {p: setting(p, sizes) for p in (QUICK_SIZES if scale.quick else SIZES)}
    runs = harness.run_all(harness.with_controls(list(settings.values())), scale, fresh, "page size")
    timed = harness.matching_seconds(list(settings.values()), scale)
    rows, table = [], ["| P | S | packed - control pp | packed - stand-alone pp | worst DNN pp | vs P=512 pp | "
                       "matching cost | matching s | ratio by count | ratio by bytes |",
                       "|---|---|---|---|---|---|---|---|---|---|"]
    comparisons = harness.compared({st.label: runs[st.label] for st in settings.values()}, "ours")
    versus_control = harness.against_control(runs, list(settings.values()))
    for p, st in settings.items():
        rs = runs[st.label]
        s = harness.summary_row(rs)
        vs = comparisons[st.label]
        rows.append({"page_size": p, "shared_pages": SHARED_WEIGHTS // p, **harness.control_fields(versus_control[st.label]),
                     **harness.spread_fields("mean_change_pp", s["mean_difference_pp"]),
                     "worst_pp": s["worst_difference_pp"]["mean"], **harness.versus_fields("512", vs),
                     **harness.spread_fields("matching_cost", s["matching_cost"]), "matching_seconds": timed[st.label],
                     "ratio_by_count": s["ratio_by_count"]["mean"], "ratio_by_bytes": s["ratio_by_bytes"]["mean"],
                     "seeds": len(rs)})
        table.append(f"| {p} | {SHARED_WEIGHTS // p} | {harness.versus(versus_control[st.label])} | "
                     f"{harness.fmt(s['mean_difference_pp'])} | "
                     f"{harness.fmt(s['worst_difference_pp'])} | {'–' if st.label == 'ours' else harness.versus(vs)} | "
                     f"{harness.fmt(s['matching_cost'], 3, False)} | {timed[st.label]:.2f} | "
                     f"{harness.fmt(s['ratio_by_count'], 2, False)}x | {harness.fmt(s['ratio_by_bytes'], 2, False)}x |")
    best = max(rows, key=lambda r: r["minus_control_pp"])
    first, last = rows[0], rows[-1]
    more = lambda a, b: "more" if a > b else "less"  # noqa: E731
    answer = (f"From P={first['page_size']} to P={last['page_size']} the matching cost goes from "
              f"{first['matching_cost']:.3g} to {last['matching_cost']:.3g}, matching takes {first['matching_seconds']:.2f} s "
              f"vs {last['matching_seconds']:.2f} s ({more(first['matching_seconds'], last['matching_seconds'])} for small "
              f"pages) and the ratio by bytes (page tables included) {first['ratio_by_bytes']:.2f}x vs "
              f"{last['ratio_by_bytes']:.2f}x. Accuracy is best at P={best['page_size']}: "
              f"{best['minus_control_pp']:+.2f} pp against the no-sharing control (each DNN optimised alone at the same budget; "
              f"{harness.seed_noise(best['minus_control_noise'])}), {best['mean_change_pp']:+.2f} pp against "
              f"stand-alone; "
              f"P={first['page_size']} is {first['vs_512_pp']:+.2f} pp against P=512 "
              f"({harness.seed_noise(first['vs_512_noise'])}), P={last['page_size']} {last['vs_512_pp']:+.2f} pp "
              f"({harness.seed_noise(last['vs_512_noise'])}).")
    return {"setup": f"Shared pages x page size held at {SHARED_WEIGHTS:,} weights; packed bytes (page tables "
                     f"included) held at P={PackConfig.page_size}'s at ratio {PackConfig.ratio:g} by setting each P's "
                     "ratio by count (budget separation); matching cost summed over the DNNs (same units at every P); "
                     "matching seconds for all DNNs, timed one setting at a time (first seed).",
            "rows": rows, "table": "\n".join(table), "answer": answer}


def plot(result: dict, plt) -> None:
    rows = result["rows"]
    xs = [r["page_size"] for r in rows]
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.5))
    a.errorbar(xs, [r["mean_change_pp"] for r in rows], yerr=[r["mean_change_ci95"] or 0 for r in rows], marker="o",
               capsize=3, label="mean over DNNs")
    a.plot(xs, [r["worst_pp"] for r in rows], marker="s", ls="--", label="worst DNN")
    a.set(ylabel="test accuracy change (pp)", title="accuracy after optimisation")
    a.legend()
    b.errorbar(xs, [r["matching_cost"] for r in rows], yerr=[r["matching_cost_ci95"] or 0 for r in rows], marker="o",
               capsize=3, color="C2")
    b.set(ylabel="matching cost (Fisher-weighted squared distance)", title="matching cost (left) and time (right)")
    twin = b.twinx()
    twin.plot(xs, [r["matching_seconds"] for r in rows], marker="^", color="C3", ls=":")
    twin.set_ylabel("matching time (s, all DNNs; log)", color="C3")
    twin.set_yscale("log")
    c.plot(xs, [r["ratio_by_count"] for r in rows], marker="o", label="by weight count")
    c.plot(xs, [r["ratio_by_bytes"] for r in rows], marker="s", label="by bytes (page tables included)")
    c.set(ylabel="packing ratio (x)", title="packing ratio")
    c.legend()
    for ax in (a, b, c):
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("page size P (weights)")
        ax.grid(alpha=0.3)
    fig.suptitle("Page size, shared weights held constant (error bars: mean ± 95% t-interval over seeds)")
    fig.tight_layout()
