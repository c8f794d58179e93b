"""Scaling: how do packed size, accuracy, optimisation time and memory grow with the number of DNNs?

N = 2, 3, 5, 7 and all of the scale's DNNs (two random subsets per N below all, fixed across
seeds), everything at our defaults; the first seed of each runs alone in a fresh process, so its
time per step and peak memory (the whole process: data, pages, Adam state, activations) are its
own. Then synthetic replicas (each DNN packed several times, its data shared) up to 50 DNNs for
time and memory only, at a short optimisation.

    python -m experiments scaling
"""
from __future__ import annotations

import random

from weightsep.pack import PackConfig

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


def subsets(dnns: tuple[str, ...], per_size: int = SUBSETS) -> list[tuple[int, tuple[str, ...]]]:
    """(N, DNNs) pairs: `per_size` random subsets for each N in SIZES below len(dnns), then all of them."""
    rng = random.Random(0)
    out = [(n, tuple(sorted(rng.sample(dnns, n)))) for n in SIZES if n < len(dnns) for _ in range(per_size)]
    return out + [(len(dnns), tuple(dnns))]


def plan(scale: harness.Scale) -> tuple[list, list]:
    real = [(n, harness.Setting(f"N={n} {'+'.join(d)}", dnns=d, measure=True) if n < len(scale.dnns) else
             harness.Setting(f"N={n} all", measure=True)) for n, d in subsets(scale.dnns, 1 if scale.quick else SUBSETS)]
    replicas = REPLICAS[:2] if scale.quick else REPLICAS
    synthetic = [(r * len(scale.dnns), harness.Setting(f"{r} x {len(scale.dnns)} replicas", replicas=r, measure=True,
                                                       seeds=scale.seeds[:1],
                                                       optimize={"steps": REPLICA_STEPS, "eval_every": REPLICA_STEPS}))
                 for r in replicas]
    return real, synthetic


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    real, synthetic = plan(scale)
    packed = [st for _, st in real]
    runs = harness.run_all(harness.with_controls(packed) + [st for _, st in synthetic], scale, fresh, "scaling")
    n_of = {st.label: n for n, st in real}
    by_n: dict[int, list[dict]] = {}
    for n, st in real:
        by_n.setdefault(n, []).extend(runs[st.label])
    versus_control = harness.against_control(runs, packed, group=lambda st: n_of[st.label])
    rows, table = [], ["| N | runs | packed weights | ratio by count | ratio by bytes | packed - control pp | "
                       "packed - stand-alone pp | worst DNN pp | ms per step | optimisation s | peak RSS MB |",
                       "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, rs in sorted(by_n.items()):
        s = harness.summary_row(rs)
        timed = [r for r in rs if r.get("measured")]
        t = harness.summary_row(timed)
        rows.append({"kind": "real", "n": n, "runs": len(rs), "packed_weights": s["packed_weights"]["mean"],
                     "ratio_by_count": s["ratio_by_count"]["mean"], "ratio_by_bytes": s["ratio_by_bytes"]["mean"],
                     **harness.control_fields(versus_control[n]),
                     **harness.spread_fields("mean_change_pp", s["mean_difference_pp"]),
                     **harness.spread_fields("worst_pp", s["worst_difference_pp"]),
                     "ms_per_step": t["ms_per_step"]["mean"], "optimize_seconds": t["optimize_seconds"]["mean"],
                     "peak_rss_mb": t["peak_rss_mb"]["max"]})
        table.append(f"| {n} | {len(rs)} | {harness.fmt(s['packed_weights'], 0, False)} | "
                     f"{harness.fmt(s['ratio_by_count'], 2, False)}x | {harness.fmt(s['ratio_by_bytes'], 2, False)}x | "
                     f"{harness.versus(versus_control[n])} | "
                     f"{harness.fmt(s['mean_difference_pp'])} | {harness.fmt(s['worst_difference_pp'])} | "
                     f"{t['ms_per_step']['mean']:.0f} | {t['optimize_seconds']['mean']:.0f} | {t['peak_rss_mb']['max']:.0f} |")
    table += ["", "Synthetic replicas (time and memory only; accuracy is not meaningful for copies):", "",
              "| DNNs | ms per step | ms per DNN-batch | peak RSS MB |", "|---|---|---|---|"]
    for n, st in synthetic:
        r = runs[st.label][0]
        rows.append({"kind": "synthetic", "n": n, "ms_per_step": r["ms_per_step"], "ms_per_dnn_batch": r["ms_per_dnn_batch"],
                     "peak_rss_mb": r["peak_rss_mb"]})
        table.append(f"| {n} | {r['ms_per_step']:.0f} | {r['ms_per_dnn_batch']:.1f} | {r['peak_rss_mb']:.0f} |")
    real_rows = [r for r in rows if r["kind"] == "real"]
    syn = [r for r in rows if r["kind"] == "synthetic"]
    small, full = real_rows[0], real_rows[-1]
    shared_only = [r["n"] for r in real_rows if r["packed_weights"] <= PackConfig.n_shared * PackConfig.page_size]
    no_exclusive = (f"; with N = {', '.join(map(str, shared_only))} the {PackConfig.n_shared} shared pages alone hold "
                    f"more than the ratio asked for allows, so those sets get no exclusive page" if shared_only else "")
    answer = (f"From {small['n']} to {full['n']} DNNs the packing ratio goes from {small['ratio_by_bytes']:.2f}x to "
              f"{full['ratio_by_bytes']:.2f}x by bytes; packed minus the no-sharing control (the same DNNs each optimised "
              f"alone at the same budget) goes from {small['minus_control_pp']:+.2f} to {full['minus_control_pp']:+.2f} pp "
              f"(at N = {full['n']} {harness.seed_noise(full['minus_control_noise'])}), packed minus stand-alone from "
              f"{small['mean_change_pp']:+.2f} to {full['mean_change_pp']:+.2f} pp (worst DNN {full['worst_pp']:+.2f} pp)"
              f"{no_exclusive}. A joint step takes {small['ms_per_step']:.0f} to {full['ms_per_step']:.0f} ms (the "
              f"subsets differ in cost per DNN); on copies of the same {syn[0]['n']} DNNs the time per DNN-batch stays "
              f"at {syn[0]['ms_per_dnn_batch']:.1f} to {syn[-1]['ms_per_dnn_batch']:.1f} ms from {syn[0]['n']} to "
              f"{syn[-1]['n']} DNNs, so a step grows linearly with N. The joint optimisation of {full['n']} DNNs peaks "
              f"at {full['peak_rss_mb']:.0f} MB (target {MEMORY_TARGET_MB} MB: "
              f"{'met' if full['peak_rss_mb'] < MEMORY_TARGET_MB else 'NOT met'}); {syn[-1]['n']} DNNs at "
              f"{syn[-1]['peak_rss_mb']:.0f} MB.")
    return {"setup": f"Subsets drawn once (seeded), {SUBSETS} per N; ms per step and peak RSS from each setting's first "
                     f"seed, run alone in a fresh process with one thread (time per step includes the validation "
                     f"checks); replicas optimise {REPLICA_STEPS} steps with one check, so checks weigh more in "
                     "their time per step. Each subset has its own no-sharing control: a DNN's batches per joint step "
                     "depend on the set packed.",
            "rows": rows, "table": "\n".join(table), "answer": answer, "memory_target_mb": MEMORY_TARGET_MB}


def plot(result: dict, plt) -> None:
    real = [r for r in result["rows"] if r["kind"] == "real"]
    syn = [r for r in result["rows"] if r["kind"] == "synthetic"]
    fig, (a, r, b, c) = plt.subplots(1, 4, figsize=(18, 4.2))
    ns = [row["n"] for row in real]
    a.errorbar(ns, [row["mean_change_pp"] for row in real], yerr=[row["mean_change_ci95"] or 0 for row in real], marker="o",
               capsize=3, label="mean, packed - stand-alone")
    a.plot(ns, [row["minus_control_pp"] for row in real], marker="^", label="mean, packed - no-sharing control")
    a.errorbar(ns, [row["worst_pp"] for row in real], yerr=[row["worst_ci95"] or 0 for row in real], marker="s", capsize=3,
               ls="--", label="worst DNN, packed - stand-alone")
    a.axhline(0, color="grey", lw=0.8)
    a.set(ylabel="test accuracy change (pp)", title="accuracy (mean ± 95% t-interval over runs:\nsubsets x seeds)")
    a.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below: the bars fill the axes
    r.plot(ns, [row["ratio_by_count"] for row in real], marker="o", label="by weight count")
    r.plot(ns, [row["ratio_by_bytes"] for row in real], marker="s", ls="--", label="by bytes (page tables included)")
    r.set(ylabel="packing ratio (x)", title="packing ratio")
    r.legend()
    b.plot(ns, [row["ms_per_step"] for row in real], marker="o", label="real DNNs")
    b.plot([row["n"] for row in syn], [row["ms_per_step"] for row in syn], marker="s", ls="--", label="synthetic replicas")
    b.set(ylabel="time per joint step (ms, one thread)", title="optimisation time per step")
    b.legend()
    c.plot(ns, [row["peak_rss_mb"] for row in real], marker="o", label="real DNNs")
    c.plot([row["n"] for row in syn], [row["peak_rss_mb"] for row in syn], marker="s", ls="--", label="synthetic replicas")
    c.axhline(result["memory_target_mb"], color="red", ls=":", label="1 GB target (10 DNNs)")
    c.set(ylabel="peak RSS of the process (MB)", title="memory of the joint optimisation")
    c.set_ylim(bottom=0)
    c.legend()
    for ax in (a, r, b, c):
        ax.set_xlabel("DNNs packed")
        ax.grid(alpha=0.3)
    fig.suptitle("Scaling with the number of DNNs (time and memory: first seed, alone, one thread)")
    fig.tight_layout()
