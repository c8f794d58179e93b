"""Quantised pages: what page sharing adds on top of quantisation, in bytes and accuracy, against
every baseline that does not share at the same bytes.

Packed settings (budget separation, joint optimisation trained through the pages' formats): every
page float32 (the main job), every page int8 (at the default ratio, and at ratio 4 by count), every
page int4 at 24x, 32x and 48x by bytes (the count ratio that reaches each, `count_ratio`; the int4
group chosen on validation at 32x on the tuning seeds, `choose_group`), and formats (int4, int8,
float16) chosen page by page by Fisher information under the same three byte budgets (the count
ratio at which int4 pages take `1 - FISHER_UPGRADES` of the budget, the rest for Fisher's upgrades,
or the most the shared pages reach where that is less). The int4 and Fisher rows give the share of
the exclusive pages at packing (the rest promoted to the DNNs furthest below their stand-alone
accuracy on validation) chosen after the group, by the optimiser's balanced score on validation
(`choose_at_packing`), with the main job's share's rows beside them. A budget the shared pages
cannot reach with int4 pages everywhere has no packed row (--quick's three DNNs stop at 2.94x by
count: none, and nothing to choose).

Baselines without sharing, each DNN compressed alone (weightsep/alone.py), each fine-tuned through its
compressor at the main job's budget with each DNN's own batches (quantisation-aware), the per-channel
ones also as they are: per-channel int8 and int4 (3.9x and 7.5x by bytes: below the packing rows, so
beside them, not at equal bytes); and at 24x, 32x and 48x, equal to the packing rows: int8 after
magnitude pruning (sparse storage counted) and a per-DNN vector k-means codebook (its shape chosen on
validation). Bytes include page tables, scales, indices and codebooks; accuracy changes are against
the float32 stand-alone DNNs, and each packed row also against its float32 no-sharing control.

    python -m experiments quantization            # ten suite DNNs, seeds 20-24; the tuning seeds choose the group and share
"""
from __future__ import annotations

from dataclasses import replace

from weightsep.pack import PackConfig
from weightsep.precision import PrecisionConfig, tables_bytes_for
from weightsep.quant import page_bytes

from . import harness
from .budget import PUBLISHED_POINT, reachable

SECTION = 10
IN_ALL = False  # its own budget (the main job's) and seeds: run on its own
TITLE = "Quantised pages: sharing on top of quantisation, against compression alone at equal bytes"
QUESTION = ("How small does the packed store get when its pages are quantised (uniformly, or with bits allocated "
            "by Fisher information), at what accuracy, and does it beat every way of compressing each DNN alone "
            "(quantisation, pruning, a codebook) at the same bytes?")
SEEDS = (20, 21, 22, 23, 24)  # chose nothing: the int4 group and share are chosen on harness.TUNING_SEEDS
RATIOS_BY_BYTES = (24, 32, 48)  # the packing rows and the equal-bytes baselines
GROUPS = (32, 64, 128)  # int4 weights per scale, chosen on validation at GROUP_CHOICE_RATIO
GROUP_CHOICE_RATIO = 32
# shares of the exclusive pages given at packing (the main job's first), chosen on validation after the group
AT_PACKING = (PackConfig.at_packing, 0.25, 0.0)
INT8_RATIO = 4.0  # fewer shared weights (4x by count): int8 pages still beat 12x by bytes
FISHER_UPGRADES = 0.15  # of a Fisher row's bytes: what is left beyond int4 pages everywhere, for Fisher to spend
TARGET = {"ratio_by_bytes": 32.0, "mean_difference_pp": -0.5, "worst_pp": -2.0}  # issue 30, every seed
MAIN_SHARE = " at the main job's share"  # a sub-8-bit family at the main job's share given at packing, beside the chosen
PACKING = ("packing, float32", "packing, int8", "packing, int4", "packing, formats by Fisher",
           "packing, int4" + MAIN_SHARE, "packing, formats by Fisher" + MAIN_SHARE)
FLOAT32 = PACKING[0]  # the main job's configuration


def count_ratio(ratio_by_bytes: float, sizes: list[int], fmt: str, group: int) -> float:
    """The ratio by weight count at which pages of `fmt` (all of them) make a store of DNNs of `sizes` weights
    `ratio_by_bytes` smaller than their float32 bytes, page tables included (`precision.tables_bytes_for`)."""
    P = PackConfig.page_size
    pages = (4 * sum(sizes) / ratio_by_bytes - tables_bytes_for(sizes, P)) / page_bytes(fmt, P, group)
    return sum(sizes) / (pages * P)


def within_reach(ratio_by_bytes: float, sizes: list[int], group: int, most: float) -> bool:
    """Whether shared pages that reach `most` by count (`budget.reachable`) reach `ratio_by_bytes` with int4 pages
    everywhere (--quick's three DNNs do not)."""
    return count_ratio(ratio_by_bytes, sizes, "int4", group) <= most


def reserve(at_packing: float) -> tuple[dict, str]:
    """A packed row's `PackConfig` field and label suffix for its share of exclusive pages given at packing
    (nothing where it is the main job's)."""
    return ({}, "") if at_packing == PackConfig.at_packing else ({"at_packing": at_packing}, f", {at_packing:g} at packing")


def int4_packing(ratio_by_bytes: float, sizes: list[int], group: int,
                 at_packing: float = PackConfig.at_packing) -> harness.Setting:
    pack, suffix = reserve(at_packing)
    return harness.Setting(f"int4 packing, {ratio_by_bytes:g}x, group {group}{suffix}",
                           pack={"ratio": count_ratio(ratio_by_bytes, sizes, "int4", group), **pack},
                           precision={"precision": "int4", "group": group})


def choose_group(scale: harness.Scale, fresh: bool) -> tuple[int, list[dict]]:
    """The int4 group with the best mean validation change (over DNNs, then the tuning seeds) at
    GROUP_CHOICE_RATIO by bytes, and one row per group; PrecisionConfig's group and no row where the shared pages
    cannot reach that ratio (--quick's three DNNs: no int4 row then needs one)."""
    sizes = harness.weights(scale.dnns)
    groups = [g for g in GROUPS if within_reach(GROUP_CHOICE_RATIO, sizes, g, reachable(scale))]
    if not groups:
        return PrecisionConfig.group, []
    tuning = [replace(int4_packing(GROUP_CHOICE_RATIO, sizes, g), seeds=harness.TUNING_SEEDS) for g in groups]
    runs = harness.run_all(tuning, scale, fresh, "int4 group")
    rows = [{"group": g, "val_change_pp": harness.stats([r["mean_val_difference_pp"] for r in runs[st.label]])["mean"],
             "ratio_by_bytes": harness.stats([r["ratio_by_bytes"] for r in runs[st.label]])["mean"]}
            for g, st in zip(groups, tuning)]
    return max(rows, key=lambda r: r["val_change_pp"])["group"], rows


def choose_at_packing(scale: harness.Scale, fresh: bool, group: int) -> tuple[float, list[dict]]:
    """The share of exclusive pages given at packing (AT_PACKING; the rest promoted during optimisation to the
    DNNs furthest below their stand-alone validation accuracy) with the best balanced validation score, the
    optimiser's selection rule (mean change plus the worst DNN's), over the tuning seeds at GROUP_CHOICE_RATIO
    with the chosen group; and one row per share (the main job's share and none where that ratio is out of reach)."""
    sizes = harness.weights(scale.dnns)
    if not within_reach(GROUP_CHOICE_RATIO, sizes, group, reachable(scale)):
        return PackConfig.at_packing, []
    tuning = [replace(int4_packing(GROUP_CHOICE_RATIO, sizes, group, a), seeds=harness.TUNING_SEEDS) for a in AT_PACKING]
    runs = harness.run_all(tuning, scale, fresh, "int4 reserve")
    rows = []
    for a, st in zip(AT_PACKING, tuning):
        val = {k: harness.stats([r[f"{k}_val_difference_pp"] for r in runs[st.label]])["mean"] for k in ("mean", "worst")}
        rows.append({"at_packing": a, "val_change_pp": val["mean"], "worst_val_pp": val["worst"],
                     "score": val["mean"] + val["worst"]})
    return max(rows, key=lambda r: r["score"])["at_packing"], rows


def settings(scale: harness.Scale, group: int, at_packing: float) -> dict[str, tuple[str, harness.Setting]]:
    """label -> (family, setting)."""
    sizes = harness.weights(scale.dnns)
    out = {"float32 packing": (FLOAT32, harness.Setting("float32 packing")),
           "int8 packing": ("packing, int8", harness.Setting("int8 packing", precision={"precision": "int8"})),
           f"int8 packing, ratio {INT8_RATIO:g}": ("packing, int8", harness.Setting(
               f"int8 packing, ratio {INT8_RATIO:g}", pack={"ratio": INT8_RATIO}, precision={"precision": "int8"}))}
    most = reachable(scale)
    for share in dict.fromkeys((at_packing, PackConfig.at_packing)):  # the chosen share, then the main job's beside it
        beside = "" if share == at_packing else MAIN_SHARE
        for x in RATIOS_BY_BYTES:
            if not within_reach(x, sizes, group, most):
                continue
            st = int4_packing(x, sizes, group, share)
            out[st.label] = (PACKING[2] + beside, st)
            pack, suffix = reserve(share)
            label = f"Fisher packing, {x}x{suffix}"
            kib = 4 * sum(sizes) / x / 1024
            ratio = min(count_ratio(x / (1 - FISHER_UPGRADES), sizes, "int4", group), most)
            out[label] = (PACKING[3] + beside, harness.Setting(
                label, pack={"ratio": ratio, **pack}, precision={"precision": "fisher", "budget_kib": kib, "group": group}))
    for fmt in ("int8", "int4"):
        for how, name in (("ptq", "PTQ"), ("qat", "QAT")):
            label = f"{fmt} alone ({name})"
            out[label] = ("quantisation alone", harness.Setting(label, control=True, alone=f"{fmt}-{how}"))
    for x in RATIOS_BY_BYTES:
        for family, spec, label in (("pruning alone", f"prune-int8-{x}x", f"int8 pruned alone, {x}x (QAT)"),
                                    ("codebook alone", f"codebook-{x}x", f"codebook alone, {x}x (QAT)")):
            out[label] = (family, harness.Setting(label, control=True, alone=f"{spec}-qat"))
    return out


def equal_bytes(label: str, plan: dict) -> list[str]:
    """The baselines at the same bytes as a packed row at one of RATIOS_BY_BYTES (none for the others)."""
    x = next((x for x in RATIOS_BY_BYTES if label.startswith(("int4 packing", "Fisher packing")) and f", {x}x" in label),
             None)
    return [lb for lb, (family, _) in plan.items() if x and family.endswith("alone") and f", {x}x " in lb]


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    group, group_rows = choose_group(scale, fresh)
    at_packing, reserve_rows = choose_at_packing(scale, fresh, group)
    plan = settings(scale, group, at_packing)
    packed = [st for family, st in plan.values() if family in PACKING]
    others = [st for family, st in plan.values() if family not in PACKING]
    runs = harness.run_all(harness.with_controls(packed) + others, scale, fresh, "quantization")
    versus_control = harness.against_control(runs, packed)
    versus_baselines = {label: {b: harness.paired(runs[label], runs[b]) for b in equal_bytes(label, plan)} for label in plan}
    harness.holm([p for d in versus_baselines.values() for p in d.values()])
    rows, summaries = [], {label: harness.summary_row(runs[label]) for label in plan}
    for label, (family, _) in plan.items():
        s, seeds = summaries[label], runs[label]
        rows.append({"setting": label, "family": family, "packed_kib": s["packed_bytes"]["mean"] / 1024,
                     **harness.control_fields(versus_control.get(label)),
                     **harness.spread_fields("ratio_by_bytes", s["ratio_by_bytes"]),
                     **harness.spread_fields("mean_change_pp", s["mean_difference_pp"]),
                     "mean_change_min": s["mean_difference_pp"]["min"], "worst_pp": s["worst_difference_pp"]["min"],
                     "per_seed_change_pp": [r["mean_difference_pp"] for r in seeds],
                     "per_seed_worst_pp": [r["worst_difference_pp"] for r in seeds],
                     "per_seed_ratio": [r["ratio_by_bytes"] for r in seeds],
                     "versus_equal_bytes": {b: {k: p[k] for k in ("mean", "ci95", "p", "noise")}
                                            for b, p in versus_baselines[label].items()},
                     "page_formats": seeds[0].get("page_formats"), "seeds": len(seeds),
                     "meets_target": meets_target(seeds, versus_control.get(label))})
    table = ["| setting | packed KiB | ratio by bytes | packed - control pp | packed - stand-alone pp (per seed) | "
             "worst DNN pp | against each equal-bytes baseline, pp (paired) | pages |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pages = ", ".join(f"{n} {f}" for f, n in (r["page_formats"] or {}).items()) or "–"
        control = harness.versus(versus_control[r["setting"]]) if r["setting"] in versus_control else "–"
        s = summaries[r["setting"]]
        against = "; ".join(f"{b}: {harness.versus(p)}" for b, p in versus_baselines[r["setting"]].items()) or "–"
        table.append(f"| {r['setting']} | {r['packed_kib']:.1f} | {harness.fmt(s['ratio_by_bytes'], 2, False, 'x')} | "
                     f"{control} | {harness.fmt(s['mean_difference_pp'])} "
                     f"({', '.join(f'{v:+.2f}' for v in r['per_seed_change_pp'])}) | {r['worst_pp']:+.2f} | {against} | "
                     f"{pages} |")
    return {"setup": setup(len(scale.dnns), group, group_rows, at_packing, reserve_rows), "rows": rows, "table": "\n".join(table),
            "answer": summary(rows),
            "target": TARGET, "published_point": PUBLISHED_POINT, "group_choice": group_rows,
            "at_packing_choice": reserve_rows,
            "scale_text": scale.describe()}


def meets_target(seeds: list[dict], versus_control: dict | None) -> bool:
    """Issue 30's target in every seed: at least 32x by bytes, a mean change of at least -0.5 pp against the
    stand-alone DNNs and (a packed row) against its float32 control, and no DNN below -2 pp."""
    return all(r["ratio_by_bytes"] >= TARGET["ratio_by_bytes"] and r["mean_difference_pp"] >= TARGET["mean_difference_pp"]
               and r["worst_difference_pp"] >= TARGET["worst_pp"] for r in seeds) and (
        versus_control is None or versus_control["min"] >= TARGET["mean_difference_pp"])


def setup(n_dnns: int, group: int, group_rows: list[dict], at_packing: float, reserve_rows: list[dict]) -> str:
    if not group_rows:
        return (f"{n_dnns} DNNs: the shared pages cannot reach {GROUP_CHOICE_RATIO}x by bytes with int4 pages, so there is "
                "no int4 or Fisher row (nor a group or share to choose). Bytes include page tables, scales, indices "
                "and codebooks.")
    choice = ", ".join(f"group {r['group']}: {r['val_change_pp']:+.2f} pp" for r in group_rows)
    shares = ", ".join(f"{r['at_packing']:g}: {r['val_change_pp']:+.2f} mean, {r['worst_val_pp']:+.2f} worst"
                       for r in reserve_rows)
    return (f"{n_dnns} DNNs. Packed: budget separation, joint optimisation through a per-page fake quantiser "
            "(straight-through); int4 and Fisher rows at 24x, 32x and 48x by bytes. The int4 group was chosen on "
            f"validation at {GROUP_CHOICE_RATIO}x on the tuning seeds ({choice}): group {group}; then the share of the "
            f"exclusive pages given at packing, the rest promoted by validation deficit, by the balanced score, mean "
            f"plus worst DNN's validation change, pp ({shares}): {at_packing:g}. Alone: each DNN's "
            "2-D+ tensors compressed, biases float32, fine-tuned through the compressor at the same optimiser config. "
            "Bytes include page tables, scales, indices and codebooks.")


def summary(rows: list[dict]) -> str:
    """The answer: which settings meet the target, and each packed row against its equal-bytes baselines."""
    met = [r["setting"] for r in rows if r["meets_target"]]
    out = [f"Settings at >= {TARGET['ratio_by_bytes']:g}x by bytes, mean change >= {TARGET['mean_difference_pp']:+g} pp "
           f"against stand-alone and the control, no DNN below {TARGET['worst_pp']:+g} pp, in every seed: "
           f"{', '.join(met) or 'none'}."]
    for r in rows:  # a packed row at the target's bytes in every seed that misses: which part, in how many seeds
        if r["meets_target"] or r.get("minus_control_pp") is None or not r.get("per_seed_worst_pp") or \
                min(r["per_seed_ratio"]) < TARGET["ratio_by_bytes"]:
            continue
        worst = [w for w in r["per_seed_worst_pp"] if w < TARGET["worst_pp"]]
        low = [c for c in r["per_seed_change_pp"] if c < TARGET["mean_difference_pp"]]
        out.append(f"{r['setting']} misses it: a DNN below {TARGET['worst_pp']:+g} pp in {len(worst)} of "
                   f"{len(r['per_seed_worst_pp'])} seeds" + (f" ({', '.join(f'{w:+.2f}' for w in worst)})" if worst else "")
                   + f", the mean below {TARGET['mean_difference_pp']:+g} pp in {len(low)}.")
    controlled = [r for r in rows if r.get("minus_control_pp") is not None]
    if controlled:
        out.append("Against the float32 no-sharing control (each DNN optimised alone in float32 at the same budget): "
                   + ", ".join(f"{r['setting']} {r['minus_control_pp']:+.2f} pp" for r in controlled) + ".")
    for r in rows:
        if not r["versus_equal_bytes"]:
            continue
        ahead = [b for b, p in r["versus_equal_bytes"].items() if p["mean"] > 0 and p["mean"] - (p["ci95"] or 0) > 0]
        out.append(f"{r['setting']} ({r['ratio_by_bytes']:.1f}x, {r['mean_change_pp']:+.2f} pp): ahead of "
                   f"{len(ahead)} of {len(r['versus_equal_bytes'])} equal-bytes baselines with the paired 95% interval "
                   f"above zero" + (f" (not: {', '.join(sorted(set(r['versus_equal_bytes']) - set(ahead)))})"
                                    if len(ahead) < len(r["versus_equal_bytes"]) else "") + ".")
    return " ".join(out)


REFERENCES = {"YONO (reported, IPSN 2022)": 12.37, "VQ4ALL (reported, 2024)": 16.0}  # ratios by bytes, not measured here


STYLES = {"packing, float32": ("s", "tab:blue"), "packing, int8": ("o", "tab:green"),  # family -> (marker, colour)
          "packing, int4": ("o", "tab:olive"), "packing, formats by Fisher": ("^", "tab:purple"),
          "quantisation alone": ("D", "tab:red"), "pruning alone": ("X", "tab:brown"), "codebook alone": ("*", "tab:grey")}
ZOOM_PP = (-4.0, 3.0)  # the right panel's accuracy range: where the packed rows and quantisation alone lie


def plot(result: dict, plt) -> None:
    """Left every row, right a zoom on the packed rows (the baselines fall tens of pp); one legend entry per family,
    a line joining its sizes, PTQ (hollow) apart from QAT where a method has both, and a sub-8-bit family at the
    main job's share given at packing pale and dashed beside the chosen share's."""
    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharex=True)
    for ax in axes:
        for family in (f for base in STYLES for f in (base, base + MAIN_SHARE) if any(r["family"] == f for r in rows)):
            (marker, color), main_share = STYLES[family.removesuffix(MAIN_SHARE)], family.endswith(MAIN_SHARE)
            pts = sorted((r for r in rows if r["family"] == family), key=lambda r: r["ratio_by_bytes"])
            if family != "quantisation alone":  # two methods at two sizes, not one family's sizes
                ax.plot([r["ratio_by_bytes"] for r in pts], [r["mean_change_pp"] for r in pts], color=color, lw=1,
                        ls="--" if main_share else "-", alpha=0.5 if main_share else 1.0)
            named = next((r for r in pts if "(PTQ)" not in r["setting"]), None)  # the legend's marker filled
            for r in pts:
                harness.point(ax, r["ratio_by_bytes"], r["mean_change_pp"], r["mean_change_ci95"],
                              family if r is named else None, marker, color,
                              face="white" if "(PTQ)" in r["setting"] else None, alpha=0.5 if main_share else 1.0)
        p = result["published_point"]
        ax.scatter([p["ratio"]], [p["change_pp"]], marker="*", s=200, color="gold", edgecolor="black", zorder=5,
                   label="published WS (10 paper DNNs, by bytes)")
        for i, (name, ratio) in enumerate(REFERENCES.items()):
            ax.axvline(ratio, color="black", ls=(0, (1, 3 + i)), lw=1, label=f"{name}: {ratio:g}x, accuracy not comparable")
        t = result["target"]
        ax.axvline(t["ratio_by_bytes"], color="grey", ls=":", lw=1)
        ax.axhline(t["mean_difference_pp"], color="grey", ls=":", lw=1,
                   label=f"target: >= {t['ratio_by_bytes']:g}x at >= {t['mean_difference_pp']:g} pp")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ticks = [2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
        ax.set_xticks(ticks, [f"{t}x" for t in ticks], minor=False)
        ax.set_xticks([], minor=True)
        ax.set(xlabel="compression by bytes (stand-alone float32 bytes / stored bytes, log scale)")
        ax.grid(alpha=0.3)
    axes[0].set(ylabel="mean test accuracy change (pp)", title="every row (PTQ hollow, QAT filled)")
    axes[1].set(ylim=ZOOM_PP, title=f"zoom: {ZOOM_PP[0]:g} to {ZOOM_PP[1]:+g} pp")
    fig.suptitle("Accuracy against bytes, ten suite DNNs (mean ± 95% t-interval over seeds)")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: the intervals fill the axes
