"""Ablations of the tuned defaults, judged on validation accuracy only, at the main job's budget.

Gradient balance, extra batches, the selection rule, promotion and the learning-rate schedule were
first chosen from test accuracies (docs/results.md's exploratory runs). Here each is turned back to
its alternative, one at a time, at the main job's budget (OptimizeConfig's steps and checks), on
the tuning seeds (default 0 1 2, never the headline's), and judged on the validation split: every
DNN's final weights against its stand-alone model's, and against the no-sharing control's.

    python -m experiments defaults --steps 1500
"""
from __future__ import annotations

from weightsep.optimize import OptimizeConfig

from . import harness

SECTION = 12
IN_ALL = False  # at the main job's budget: about 2 min a run, 21 runs
SEEDS = harness.TUNING_SEEDS  # the default when --seeds is not given
TITLE = "The tuned defaults, ablated on validation accuracy"
QUESTION = ("Does each tuned default (balance, extra batches, selection, promotion, schedule) beat its alternative "
            "on validation accuracy, at the main job's budget, on seeds that never report the headline?")
PRODUCT = {"eval_every": OptimizeConfig.eval_every}  # the main job's checks (the harness scales them to --steps)
DEFAULT = "defaults"
ABLATIONS = (  # label, what it turns back, the Setting's changes
    ("balance sum", "gradient balance: plain sum instead of each DNN over its running RMS", {"optimize": {"balance": "sum"}}),
    ("no extra batches", "extra batches for cheap DNNs: none (--extra-compute 0)", {"optimize": {"extra_compute": 0.0}}),
    ("select mean", "selection: best mean validation accuracy instead of mean change plus the worst DNN's",
     {"optimize": {"select": "mean"}}),
    ("no promotion", "promotion: every exclusive page given at packing (--at-packing 1)", {"pack": {"at_packing": 1.0}}),
    ("constant lr 1e-3", "schedule: constant 1e-3 (published) instead of cosine from 2e-3",
     {"optimize": {"schedule": "constant", "lr": 1e-3}}),
)
CONTROL = "no-sharing control"


def settings() -> list[harness.Setting]:
    """The defaults, each ablation, then the defaults' no-sharing control (one for the table: what each
    row turns back acts on sharing, or is the same for one DNN alone)."""
    def setting(label: str, changes: dict) -> harness.Setting:
        return harness.Setting(label, pack=changes.get("pack", {}), optimize={**PRODUCT, **changes.get("optimize", {})})
    packed = [setting(DEFAULT, {})] + [setting(label, changes) for label, _, changes in ABLATIONS]
    return packed + [harness.control(packed[0])]


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    every = settings()
    runs = harness.run_all(every, scale, fresh, "defaults")
    runs[CONTROL] = runs.pop(every[-1].label)
    packed = {label: rs for label, rs in runs.items() if label != CONTROL}
    versus_default = {key: harness.compared(packed, DEFAULT, key)
                      for key in ("mean_val_difference_pp", "worst_val_difference_pp")}
    what = {label: text for label, text, _ in ABLATIONS}
    rows, table = [], ["| setting | turned back | val change pp | worst DNN val pp | val - control pp | "
                       "mean vs defaults pp | worst vs defaults pp |", "|---|---|---|---|---|---|---|"]
    for label, rs in runs.items():
        mean = harness.stats([r["mean_val_difference_pp"] for r in rs])
        worst = harness.stats([r["worst_val_difference_pp"] for r in rs])
        control = harness.stats(harness.minus_control(rs, runs[CONTROL], "val", "final"))
        vs = {k: versus_default[k].get(label) for k in versus_default}
        mean_vs = vs["mean_val_difference_pp"] or {}
        rows.append({"setting": label, "turned_back": what.get(label, ""), "mean_val_change_pp": mean["mean"],
                     "mean_val_change_ci95": mean["ci95"], "worst_val_change_pp": worst["mean"],
                     "val_minus_control_pp": control["mean"],
                     "vs_defaults_pp": mean_vs.get("mean"), "vs_defaults_ci95": mean_vs.get("ci95"),
                     "vs_defaults_noise": mean_vs.get("noise"),
                     "seeds": len(rs)})
        cells = ["–", "–"] if label in (DEFAULT, CONTROL) else [harness.versus(vs[k]) for k in versus_default]
        table.append(f"| {label} | {what.get(label, 'nothing' if label == DEFAULT else 'no sharing, the same budget')} | "
                     f"{harness.fmt(mean)} | {harness.fmt(worst)} | {harness.fmt(control)} | "
                     + " | ".join(cells) + " |")
    beaten = [r["setting"] for r in rows if r["setting"] not in (DEFAULT, CONTROL) and r["vs_defaults_pp"] > 0
              and not r["vs_defaults_noise"]]
    kept = [r["setting"] for r in rows if r["setting"] not in (DEFAULT, CONTROL) and r["vs_defaults_pp"] < 0
            and not r["vs_defaults_noise"]]
    answer = (f"On validation accuracy over seeds {', '.join(map(str, scale.seeds))}: turning back "
              + (", ".join(kept) if kept else "no default") + " costs accuracy (shown, Holm-corrected paired t-test); "
              + (", ".join(beaten) + " does better than the defaults, so that default is not supported"
                 if beaten else "no alternative does better")
              + f"; the rest are not shown to differ at {len(scale.seeds)} seeds. The defaults' mean validation change is "
              f"{rows[0]['mean_val_change_pp']:+.2f} pp, {rows[0]['val_minus_control_pp']:+.2f} pp against the control.")
    return {"setup": "Packing and joint optimisation at the main job's defaults and budget, one default turned back per "
                     "row; validation accuracy of every DNN's final weights (the whole validation split) minus its "
                     "stand-alone model's, and minus the no-sharing control's. Test accuracy is not read.",
            "rows": rows, "table": "\n".join(table), "answer": answer}


def plot(result: dict, plt) -> None:
    rows = [r for r in result["rows"] if r["vs_defaults_pp"] is not None]
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(rows) + 1.6))
    ys = range(len(rows))
    ax.errorbar([r["vs_defaults_pp"] for r in rows], ys, xerr=[r["vs_defaults_ci95"] or 0 for r in rows], fmt="o", capsize=4)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(list(ys), [r["setting"] for r in rows])
    ax.invert_yaxis()
    ax.set(xlabel="mean validation change vs the defaults (pp; mean ± 95% t over seeds)",
           title="Each tuned default turned back (left of 0: the default is better)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
