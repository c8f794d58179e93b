"""Quantised pages: what page sharing adds on top of quantisation, in bytes and accuracy.

Packed settings (budget separation at the default ratio, joint optimisation trained through the
pages' formats): every page float32 (today's packing), every page int8 (one scale per page; also at
ratio 4 by weight count, where int8 pages still leave the store above 12x by bytes), and
formats (int4, int8, float16) chosen page by page by Fisher information under a byte budget a
little below the int8 store's (`--precision fisher --budget-kib 112`): uniform against Fisher-
allocated bits at equal bytes. Baselines without sharing, each DNN alone: per-channel int8
post-training quantisation of the stand-alone weights, and the same fine-tuned through the
quantiser (quantisation-aware) with the joint optimiser's config and each DNN's own batches. Bytes
include page tables and scales; accuracy changes are against the float32 stand-alone DNNs.

The default budget is the main job's (`OptimizeConfig.steps` DNN-batches per DNN), where the issue's
targets are set; `--steps` (other than the experiments' default) sets another.

    python -m experiments quantization            # ten suite DNNs, seeds 0 1 2 (about 70 minutes on 2 cores)
"""
from __future__ import annotations

from . import harness
from .budget import PUBLISHED_POINT

SECTION = 10
IN_ALL = False  # its own budget (the main job's): run on its own
TITLE = "Quantised pages: sharing on top of quantisation"
QUESTION = ("How small does the packed store get when its pages are quantised (uniformly, or with bits allocated "
            "by Fisher information), at what accuracy, and what does sharing add over quantising each DNN alone?")
INT8_RATIO = 4.0  # fewer shared weights (4x by count): int8 pages still beat 12x by bytes (docs/results.md#code-notes)
FISHER_BUDGET_KIB = 112  # a little below the int8 store of the ten suite DNNs (about 113 KiB)
SETUP = ("Ten suite DNNs packed at the default ratio (6x by weight count; one int8 setting at 4x), pages in the "
         "formats named, joint optimisation through a per-page fake quantiser (straight-through); quantisation "
         "alone: each DNN's 2-D+ tensors per-channel int8, biases float32, without and with fine-tuning at the same "
         "optimiser config. Bytes include scales and page tables.")
FLOAT32 = "packing, float32"  # the family compared with the no-sharing control (float32, each DNN alone)
TARGET = {"ratio_by_bytes": 12.0, "mean_difference_pp": -0.5}  # the target (ten DNNs, every seed)


def settings(scale: harness.Scale) -> dict[str, tuple[str, harness.Setting]]:
    """label -> (family, setting)."""
    out = {"float32 packing": (FLOAT32, harness.Setting("float32 packing"))}
    out["int8 packing"] = ("packing, int8", harness.Setting("int8 packing", precision={"precision": "int8"}))
    out[f"int8 packing, ratio {INT8_RATIO:g}"] = ("packing, int8", harness.Setting(
        f"int8 packing, ratio {INT8_RATIO:g}", pack={"ratio": INT8_RATIO}, precision={"precision": "int8"}))
    label = f"Fisher packing, {FISHER_BUDGET_KIB} KiB"
    out[label] = ("packing, formats by Fisher", harness.Setting(
        label, precision={"precision": "fisher", "budget_kib": float(FISHER_BUDGET_KIB)}))
    out["int8 alone (PTQ)"] = ("quantisation alone", harness.Setting("int8 alone (PTQ)", control=True, alone="int8-ptq"))
    out["int8 alone (QAT)"] = ("quantisation alone", harness.Setting("int8 alone (QAT)", control=True, alone="int8-qat"))
    return out


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    plan = settings(scale)
    float32 = [st for family, st in plan.values() if family == FLOAT32]
    others = [st for family, st in plan.values() if family != FLOAT32]
    runs = harness.run_all(harness.with_controls(float32) + others, scale, fresh, "quantization")
    versus_control = harness.against_control(runs, float32)
    rows, summaries = [], {label: harness.summary_row(runs[label]) for label in plan}
    for label, (family, _) in plan.items():
        s = summaries[label]
        seeds = runs[label]
        rows.append({"setting": label, "family": family, "packed_kib": s["packed_bytes"]["mean"] / 1024,
                     **harness.control_fields(versus_control.get(label)),
                     **harness.spread_fields("ratio_by_bytes", s["ratio_by_bytes"]),
                     **harness.spread_fields("mean_change_pp", s["mean_difference_pp"]),
                     "mean_change_min": s["mean_difference_pp"]["min"], "worst_pp": s["worst_difference_pp"]["mean"],
                     "per_seed_change_pp": [r["mean_difference_pp"] for r in seeds],
                     "per_seed_ratio": [r["ratio_by_bytes"] for r in seeds],
                     "page_formats": seeds[0].get("page_formats"), "seeds": len(seeds),
                     "meets_target": all(r["ratio_by_bytes"] >= TARGET["ratio_by_bytes"]
                                         and r["mean_difference_pp"] >= TARGET["mean_difference_pp"] for r in seeds)})
    table = ["| setting | packed KiB | ratio by bytes | packed - control pp | packed - stand-alone pp (per seed) | "
             "worst DNN pp | pages | 12x at >= -0.5 pp, every seed |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pages = ", ".join(f"{n} {f}" for f, n in (r["page_formats"] or {}).items()) or "per-channel int8"
        control = harness.versus(versus_control[r["setting"]]) if r["setting"] in versus_control else "–"
        s = summaries[r["setting"]]
        table.append(f"| {r['setting']} | {r['packed_kib']:.1f} | {harness.fmt(s['ratio_by_bytes'], 2, False, 'x')} | "
                     f"{control} | {harness.fmt(s['mean_difference_pp'])} "
                     f"({', '.join(f'{v:+.2f}' for v in r['per_seed_change_pp'])}) | {r['worst_pp']:+.2f} | {pages} | "
                     f"{'yes' if r['meets_target'] else 'no'} |")
    return {"setup": SETUP, "rows": rows, "table": "\n".join(table), "answer": summary(rows), "target": TARGET,
            "published_point": PUBLISHED_POINT,
            "scale_text": scale.describe()}


def summary(rows: list[dict]) -> str:
    """The answer: which settings meet the target, float32 packing against its control, and packing against
    int8 alone at equal accuracy."""
    by = {r["setting"]: r for r in rows}
    met = [r["setting"] for r in rows if r["meets_target"]]
    alone, int8, f32 = by["int8 alone (QAT)"], by["int8 packing"], by["float32 packing"]
    fisher = next(r for r in rows if r["family"] == "packing, formats by Fisher")
    versus_alone = harness.differences([a - b for a, b in zip(int8["per_seed_change_pp"], alone["per_seed_change_pp"])])
    change = lambda r: harness.fmt({"mean": r["mean_change_pp"], "ci95": r["mean_change_ci95"]}, unit=" pp")  # noqa: E731
    return (f"Settings at >= {TARGET['ratio_by_bytes']:g}x by bytes with a mean change >= "
            f"{TARGET['mean_difference_pp']:+g} pp in every seed: {', '.join(met) or 'none'}. "
            f"float32 packing is {f32['minus_control_pp']:+.2f} pp against the no-sharing control (each DNN optimised "
            f"alone in float32 at the same budget; {harness.seed_noise(f32['minus_control_noise'])}) and "
            f"{f32['mean_change_pp']:+.2f} pp against stand-alone. "
            f"Each DNN quantised alone (per-channel int8) is {alone['ratio_by_bytes']:.2f}x by bytes: "
            f"{by['int8 alone (PTQ)']['mean_change_pp']:+.2f} pp as is, {alone['mean_change_pp']:+.2f} pp fine-tuned. "
            f"int8 packing ({change(int8)}) is {versus_alone['mean']:+.2f} ± {versus_alone['ci95'] or 0:.2f} pp against "
            f"that fine-tuned int8 alone, paired by seed ({'not shown' if versus_alone['noise'] else 'shown'}, paired "
            f"t-test, 5%), in a store {int8['ratio_by_bytes'] / alone['ratio_by_bytes']:.1f}x smaller "
            f"({int8['ratio_by_bytes']:.2f}x). "
            f"Formats chosen by Fisher at about the int8 store's bytes ({fisher['packed_kib']:.0f} KiB against "
            f"{int8['packed_kib']:.0f}) {'beat' if fisher['mean_change_pp'] > int8['mean_change_pp'] else 'did not beat'} "
            f"uniform int8: {change(fisher)}, worst DNN {fisher['worst_pp']:+.2f} against {int8['worst_pp']:+.2f} pp.")


def plot(result: dict, plt) -> None:
    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {"packing, float32": ("s", "tab:blue"), "packing, int8": ("oP", "tab:green"),
               "packing, formats by Fisher": ("^", "tab:purple"), "quantisation alone": ("Dv", "tab:red")}
    for family, (shapes, color) in markers.items():  # a legend, not labels: the points crowd
        pts = [r for r in rows if r["family"] == family]
        ax.plot([r["ratio_by_bytes"] for r in pts], [r["mean_change_pp"] for r in pts], color=color, lw=1)
        for r, marker in zip(pts, shapes):
            harness.point(ax, r["ratio_by_bytes"], r["mean_change_pp"], r["mean_change_ci95"], r["setting"], marker, color)
    p = result["published_point"]
    ax.scatter([p["ratio"]], [p["change_pp"]], marker="*", s=200, color="gold", edgecolor="black", zorder=5,
               label="published WS (10 paper DNNs, by bytes)")
    t = result["target"]
    ax.axvline(t["ratio_by_bytes"], color="grey", ls=":", lw=1)
    ax.axhline(t["mean_difference_pp"], color="grey", ls=":", lw=1, label="target: >= 12x at >= -0.5 pp")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ticks = [3, 4, 6, 8, 12, 16, 24, 32]
    ax.set_xticks(ticks, [f"{t}x" for t in ticks], minor=False)
    ax.set_xticks([], minor=True)
    low = min(t["mean_difference_pp"], *(r["mean_change_pp"] - (r["mean_change_ci95"] or 0) for r in rows))
    ax.set_ylim(bottom=low - 0.3)
    ax.set(xlabel="compression by bytes (stand-alone float32 bytes / stored bytes, log scale)",
           ylabel="mean test accuracy change (pp)",
           title="Accuracy against bytes, ten suite DNNs (mean ± 95% t-interval over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the intervals fill the axes
