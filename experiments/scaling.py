"""Scaling: how do packed size, accuracy, optimisation time and memory grow with the number of DNNs?

N = 2, 3, 5, 7 and all of the scale's DNNs (two random subsets per N below all, fixed across
seeds), each packed in SERIES that hold the packing ratio by count AND the exclusive pages per DNN
fixed as N grows (the shared pages S follow: `shared_pages`), so N's effect is not the ratio's. A
DNN's pages lie on distinct shared pages, so a ratio is reachable only from some N on (6x from
N = 7 with these DNNs); 1.8x is reachable at every N. The frontier at N = 10 (experiments/budget.py)
varies the ratio. The first seed of each subset in the first series runs alone in a fresh process,
so its time per step and peak memory (the whole process: data, pages, Adam state, activations) are
its own. Then synthetic replicas (each DNN packed several times, its data shared) up to 50 DNNs for
time and memory only, at a short optimisation.

    python -m experiments scaling
"""
from __future__ import annotations

import random

from weightsep.pack import PackConfig
from weightsep.pages import n_pages

from . import harness

SECTION = 1
TITLE = "Scaling with the number of DNNs"
QUESTION = ("How do the packed size, the accuracy change, optimisation time and memory grow with 2, 3, 5, 7 and 10 "
            "DNNs, and how far does the joint optimisation scale?")
SIZES = (2, 3, 5, 7)
SUBSETS = 2
REPLICAS = (1, 2, 3, 5)  # x the scale's DNNs: 10, 20, 30, 50 with the suite
REPLICA_STEPS = 20
MEMORY_TARGET_MB = 1024  # the target for the joint optimisation of 10 DNNs
SERIES = ((1.8, 7), (6.0, 2))  # (ratio by count, exclusive pages per DNN), each held fixed as N grows


def subsets(dnns: tuple[str, ...], per_size: int = SUBSETS) -> list[tuple[int, tuple[str, ...]]]:
    """(N, DNNs) pairs: `per_size` random subsets for each N in SIZES below len(dnns), then all of them."""
    rng = random.Random(0)
    out = [(n, tuple(sorted(rng.sample(dnns, n)))) for n in SIZES if n < len(dnns) for _ in range(per_size)]
    return out + [(len(dnns), tuple(dnns))]


def shared_pages(sizes: list[int], ratio: float, per_dnn: int) -> int | None:
    """S that packs DNNs of `sizes` weights `ratio` times smaller by count with `per_dnn` exclusive pages each
    (the budget separation gives E = floor(sum n / (ratio P)) - S of them); None where no S can: a DNN's
    pages lie on distinct shared pages, so S must hold all of the largest DNN's pages but its exclusive ones."""
    P = PackConfig.page_size
    s = int(sum(sizes) // (ratio * P)) - per_dnn * len(sizes)
    return s if s >= max(n_pages(n, P) for n in sizes) - per_dnn else None


def plan(scale: harness.Scale) -> tuple[list, list, list]:
    """(series, N, setting) of the real DNNs, (N, setting) of the replicas, and the (series, N, subset) that
    cannot be packed at that series' ratio."""
    real, unreachable = [], []
    for n, d in subsets(scale.dnns, 1 if scale.quick else SUBSETS):
        for i, (ratio, per_dnn) in enumerate(SERIES):
            s = shared_pages(harness.weights(d), ratio, per_dnn)
            if s is None:
                unreachable.append(((ratio, per_dnn), n, d))
                continue
            name = "all" if n == len(scale.dnns) else "+".join(d)
            real.append(((ratio, per_dnn), n, harness.Setting(
                f"N={n} {name}, {ratio:g}x, {per_dnn} exclusive each", dnns=d if n < len(scale.dnns) else None,
                pack={"n_shared": s, "ratio": ratio}, measure=i == 0)))
    replicas = REPLICAS[:2] if scale.quick else REPLICAS
    synthetic = [(r * len(scale.dnns), harness.Setting(f"{r} x {len(scale.dnns)} replicas", replicas=r, measure=True,
                                                       seeds=scale.seeds[:1],
                                                       optimize={"steps": REPLICA_STEPS, "eval_every": REPLICA_STEPS}))
                 for r in replicas]
    return real, synthetic, unreachable


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    real, synthetic, unreachable = plan(scale)
    packed = [st for _, _, st in real]
    runs = harness.run_all(harness.with_controls(packed) + [st for _, st in synthetic], scale, fresh, "scaling")
    group = {st.label: (series, n) for series, n, st in real}
    by_group: dict[tuple, list[dict]] = {}
    for series, n, st in real:
        by_group.setdefault((series, n), []).extend(runs[st.label])
    versus_control = harness.against_control(runs, packed, group=lambda st: pooled(*group[st.label]))
    rows, table = [], ["| ratio asked | exclusive pages per DNN | N | runs | shared pages | ratio by count | ratio by bytes | "
                       "packed - control pp | packed - stand-alone pp | worst DNN pp | ms per step | optimisation s | "
                       "peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ((ratio, per_dnn), n), rs in sorted(by_group.items()):
        s = harness.summary_row(rs)
        timed = harness.summary_row([r for r in rs if r.get("measured")])
        shared = harness.stats([r["shared_pages"] for r in rs])
        cost = {k: timed[k]["mean"] if k != "peak_rss_mb" else timed[k]["max"]
                for k in ("ms_per_step", "optimize_seconds", "peak_rss_mb")}
        rows.append({"kind": "real", "ratio": ratio, "exclusive_per_dnn": per_dnn, "n": n, "runs": len(rs),
                     "shared_pages": shared["mean"], "packed_weights": s["packed_weights"]["mean"],
                     "ratio_by_count": s["ratio_by_count"]["mean"], "ratio_by_bytes": s["ratio_by_bytes"]["mean"],
                     **harness.control_fields(versus_control[pooled((ratio, per_dnn), n)]),
                     **harness.spread_fields("mean_change_pp", s["mean_difference_pp"]),
                     **harness.spread_fields("worst_pp", s["worst_difference_pp"]), **cost})
        timing = " | ".join("–" if v is None else f"{v:.0f}" for v in cost.values())
        table.append(f"| {ratio:g}x | {per_dnn} | {n} | {len(rs)} | {shared['mean']:.0f} | "
                     f"{harness.fmt(s['ratio_by_count'], 2, False)}x | {harness.fmt(s['ratio_by_bytes'], 2, False)}x | "
                     f"{harness.versus(versus_control[pooled((ratio, per_dnn), n)])} | "
                     f"{harness.fmt(s['mean_difference_pp'])} | {harness.fmt(s['worst_difference_pp'])} | {timing} |")
    table += ["", "Synthetic replicas (time and memory only; accuracy is not meaningful for copies):", "",
              "| DNNs | ms per step | ms per DNN-batch | peak RSS MB |", "|---|---|---|---|"]
    for n, st in synthetic:
        r = runs[st.label][0]
        rows.append({"kind": "synthetic", "n": n, "ms_per_step": r["ms_per_step"], "ms_per_dnn_batch": r["ms_per_dnn_batch"],
                     "peak_rss_mb": r["peak_rss_mb"]})
        table.append(f"| {n} | {r['ms_per_step']:.0f} | {r['ms_per_dnn_batch']:.1f} | {r['peak_rss_mb']:.0f} |")
    return {"setup": f"Subsets drawn once (seeded), {SUBSETS} per N; series (ratio by count, exclusive pages per DNN) "
                     f"{', '.join(f'{r:g}x with {e}' for r, e in SERIES)}, S set per subset to hold both; "
                     f"{_unreachable_text(unreachable)}. ms per step and peak RSS from the first series' first seed, "
                     "run alone in a fresh process with one thread (time per step includes the validation checks); "
                     f"replicas optimise {REPLICA_STEPS} steps with one check, so checks weigh more in their time per "
                     "step. Each subset has its own no-sharing control (shared by the series): a DNN's batches per "
                     "joint step depend on the set packed.",
            "rows": rows, "table": "\n".join(table), "answer": _answer(rows), "memory_target_mb": MEMORY_TARGET_MB,
            "series": [list(x) for x in SERIES]}


def pooled(series: tuple[float, int], n: int) -> str:
    """The label under which the subsets of N DNNs in a series are pooled (both subsets, every seed)."""
    return f"N={n} at {series[0]:g}x, {series[1]} exclusive each"


def _unreachable_text(unreachable: list) -> str:
    by_series: dict = {}
    for series, n, _ in unreachable:
        by_series.setdefault(series, set()).add(n)
    if not by_series:
        return "every N reaches every series"
    return "; ".join(f"{r:g}x with {e} exclusive pages each cannot be reached at N = {', '.join(map(str, sorted(ns)))}"
                     for (r, e), ns in by_series.items())


def _answer(rows: list[dict]) -> str:
    real = [r for r in rows if r["kind"] == "real"]
    syn = [r for r in rows if r["kind"] == "synthetic"]
    parts = []
    for ratio, per_dnn in SERIES:
        series = [r for r in real if (r["ratio"], r["exclusive_per_dnn"]) == (ratio, per_dnn)]
        if not series:
            continue
        small, full = series[0], series[-1]
        between = "; ".join(f"N = {r['n']}: {r['minus_control_pp']:+.2f}" for r in series[1:-1])
        parts.append(f"at {ratio:g}x with {per_dnn} exclusive pages per DNN, packed minus the no-sharing control goes "
                     f"from {small['minus_control_pp']:+.2f} pp (± {small['minus_control_ci95'] or 0:.2f}, 95% t) at N = "
                     f"{small['n']} to {full['minus_control_pp']:+.2f} pp (± {full['minus_control_ci95'] or 0:.2f}) at "
                     f"N = {full['n']} ({between}{'; ' if between else ''}worst DNN against stand-alone "
                     f"{full['worst_pp']:+.2f} pp at N = {full['n']})")
    timed = [r for r in real if r["ms_per_step"] is not None]
    full = timed[-1]
    return ("With the packing ratio and each DNN's exclusive pages held fixed, " + "; ".join(parts) + ". "
            f"A joint step takes {timed[0]['ms_per_step']:.0f} to {full['ms_per_step']:.0f} ms from N = {timed[0]['n']} "
            f"to {full['n']} (the subsets differ in cost per DNN); on copies of the same {syn[0]['n']} DNNs the time per "
            f"DNN-batch stays at {syn[0]['ms_per_dnn_batch']:.1f} to {syn[-1]['ms_per_dnn_batch']:.1f} ms from "
            f"{syn[0]['n']} to {syn[-1]['n']} DNNs, so a step grows linearly with N. The joint optimisation of "
            f"{full['n']} DNNs peaks at {full['peak_rss_mb']:.0f} MB (target {MEMORY_TARGET_MB} MB: "
            f"{'met' if full['peak_rss_mb'] < MEMORY_TARGET_MB else 'NOT met'}); {syn[-1]['n']} DNNs at "
            f"{syn[-1]['peak_rss_mb']:.0f} MB.")


def plot(result: dict, plt) -> None:
    real = [r for r in result["rows"] if r["kind"] == "real"]
    syn = [r for r in result["rows"] if r["kind"] == "synthetic"]
    fig, (a, r, b, c) = plt.subplots(1, 4, figsize=(19, 4.4))
    for i, (ratio, per_dnn) in enumerate(result["series"]):
        series = [row for row in real if (row["ratio"], row["exclusive_per_dnn"]) == (ratio, per_dnn)]
        ns, name = [row["n"] for row in series], f"{ratio:g}x, {per_dnn} exclusive each"
        a.errorbar(ns, [row["minus_control_pp"] for row in series], yerr=[row["minus_control_ci95"] or 0 for row in series],
                   marker="o", capsize=3, color=f"C{i}", label=f"{name}: packed - control")
        a.errorbar(ns, [row["mean_change_pp"] for row in series], yerr=[row["mean_change_ci95"] or 0 for row in series],
                   marker="s", capsize=3, ls="--", color=f"C{i}", alpha=0.6, label=f"{name}: packed - stand-alone")
        r.plot(ns, [row["ratio_by_bytes"] for row in series], marker="o", color=f"C{i}", label=f"{name}: by bytes")
    a.axhline(0, color="grey", lw=0.8)
    a.set(ylabel="mean test accuracy change (pp)", title="accuracy (mean ± 95% t-interval over runs:\nsubsets x seeds)")
    a.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below: the bars fill the axes
    r.set(ylabel="packing ratio by bytes (x)", title="packing ratio (by count held at the series' ratio)")
    r.legend(fontsize=8)
    timed = [row for row in real if row["ms_per_step"] is not None]
    ns = [row["n"] for row in timed]
    b.plot(ns, [row["ms_per_step"] for row in timed], marker="o", label="real DNNs")
    b.plot([row["n"] for row in syn], [row["ms_per_step"] for row in syn], marker="s", ls="--", label="synthetic replicas")
    b.set(ylabel="time per joint step (ms, one thread)", title="optimisation time per step")
    b.legend()
    c.plot(ns, [row["peak_rss_mb"] for row in timed], marker="o", label="real DNNs")
    c.plot([row["n"] for row in syn], [row["peak_rss_mb"] for row in syn], marker="s", ls="--", label="synthetic replicas")
    c.axhline(result["memory_target_mb"], color="red", ls=":", label="1 GB target (10 DNNs)")
    c.set(ylabel="peak RSS of the process (MB)", title="memory of the joint optimisation")
    c.set_ylim(bottom=0)
    c.legend()
    for ax in (a, r, b, c):
        ax.set_xlabel("DNNs packed")
        ax.grid(alpha=0.3)
    fig.suptitle("Scaling with the number of DNNs at a fixed ratio and exclusive share (time and memory: first seed, "
                 "alone, one thread)")
    fig.tight_layout()
