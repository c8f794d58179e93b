"""What every experiment shares: runs of the pipeline (experiments/runs.py: `Setting`, `Scale`,
`run_all`), their statistics over seeds, the no-sharing control beside every accuracy change, and
the results written as JSON, CSV and a plot.

An experiment (experiments/<name>.py, found by experiments/report.py) lists `Setting`s, hands them
to `run_all` with the `Scale` (DNNs, seeds, budget), and turns the rows it gets back into a table
and an answer with `summary_row`, `paired` and `stats`; an accuracy change is set beside the
no-sharing control's (`with_controls` adds each setting's `control` to the runs, `against_control`
gives packed minus control). Nothing here changes a run, so editing it reruns nothing.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path

import scipy.stats
import torch

from weightsep import dnn as dnn_mod
from weightsep.evaluate import spread
from weightsep.files import atomic_file, atomic_write_text

from .runs import (  # noqa: F401 (the experiments' one import)
    QUICK_DNNS,
    TUNING_SEEDS,
    Scale,
    Setting,
    check_interval,
    code_hash,
    configs,
    matching_seconds,
    model_keys,
    paper_dnns_present,
    run_setting,
)
from .schedule import quiet_pool, run_all, runs_dir  # noqa: F401


def weights(names: tuple[str, ...], folders: list[Path] | tuple = ()) -> list[int]:
    """Each named DNN's weight count (its model built, no data loaded), found in the suite or `folders`
    (--dnn-folder): what settings sized by bytes read."""
    return [dnn_mod.get(n, folders).build_model().n_weights for n in names]


def stats(values: list[float]) -> dict:
    """Mean, sample standard deviation, min, max, n and the 95% t-interval's half-width (`evaluate.spread`)
    of a list of numbers, Nones left out."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0, "ci95": None}
    return spread(values)


def paired(a: list[dict], b: list[dict], key: str = "mean_difference_pp") -> dict:
    """a minus b over the seeds both have: the mean difference, its standard error, the half-width of
    its 95% Student-t interval and the paired t-test's two-sided p-value (1 with fewer than two seeds:
    no evidence). `noise` (no difference shown at the 5% level) is this one comparison's; a table of
    several corrects them together with `holm` (`compared` does both)."""
    by_seed = {r["seed"]: r[key] for r in b}
    return differences([r[key] - by_seed[r["seed"]] for r in a if r["seed"] in by_seed])


def differences(d: list[float]) -> dict:
    """`paired`'s statistics of paired differences, one per seed (or per run where runs are pooled)."""
    s = stats(d)
    if s["n"] < 2:
        return {**s, "se": None, "ci95": None, "p": 1.0, "noise": True}
    se = s["std"] / math.sqrt(s["n"])
    if se == 0:  # every seed gave the same difference: none at all, or the same in every seed
        p = 1.0 if s["mean"] == 0 else 0.0
    else:
        p = float(2 * scipy.stats.t.sf(abs(s["mean"]) / se, s["n"] - 1))
    return {**s, "se": se, "ci95": float(scipy.stats.t.ppf(0.975, s["n"] - 1)) * se, "p": p, "noise": p >= 0.05}


SHARING_ONLY = ("lam", "max_harm")  # optimiser fields that act only between DNNs that share pages


def control(setting: Setting) -> Setting:
    """The no-sharing control of a packed setting: its DNNs and seeds, each DNN alone with every page
    exclusive, optimised with the same optimiser config and budget. What acts only through sharing
    (packing, page size, Fisher, page formats, the overlap loss) is left out, so settings that differ
    only there share one control, labelled by what it keeps: one cached run for all of them. It keeps
    the setting's DNNs: a DNN's batches per joint step depend on the set packed (cheap DNNs take extra ones)."""
    optimize = {k: v for k, v in sorted(setting.optimize.items()) if k not in SHARING_ONLY}
    kept = [f"{k} {v}" for k, v in optimize.items()]
    if setting.same_budget or setting.turns != Setting.turns:
        kept.append(f"{'joint budget, ' if setting.same_budget else ''}{setting.turns} turn{'s' * (setting.turns != 1)}")
    kept += ["+".join(setting.dnns)] if setting.dnns else []
    return Setting("no sharing" + (f" ({', '.join(kept)})" if kept else ""), optimize=optimize, dnns=setting.dnns,
                   control=True, same_budget=setting.same_budget, turns=setting.turns, seeds=setting.seeds)


def with_controls(settings: list[Setting]) -> list[Setting]:
    """`settings` and, once each, their no-sharing controls: what `run_all` runs for `against_control`."""
    out = {st.label: st for st in settings}
    for st in settings:
        out.setdefault(control(st).label, control(st))
    return list(out.values())


def against_control(runs: dict[str, list[dict]], settings: list[Setting], group=None) -> dict:
    """Packed minus no-sharing control test accuracy (pp) by label, or by `group(setting)` where several
    settings' runs are pooled: per run the mean over its DNNs of packed minus the control's accuracy of
    the same DNN and seed (`minus_control`), then over the runs as `paired`, Holm-corrected together."""
    gaps: dict = {}
    for st in settings:
        gaps.setdefault(group(st) if group else st.label, []).extend(minus_control(runs[st.label], runs[control(st).label]))
    out = {key: differences(d) for key, d in gaps.items()}
    holm(list(out.values()))
    _record(out, "its no-sharing control")
    return out


def minus_control(rows: list[dict], controls: list[dict], part: str = "per_dnn", field: str = "packed") -> list[float]:
    """Per packed row (one seed): the mean over its DNNs of packed minus the control's test accuracy of
    the same DNN and seed, in pp (a control of more DNNs gives its accuracies of these); `part`, `field`:
    "val", "final" for validation accuracy (`_validation`)."""
    alone = {r["seed"]: r[part] for r in controls}
    return [100 * sum(d[field] - alone[r["seed"]][n][field] for n, d in r[part].items()) / len(r[part])
            for r in rows if r["seed"] in alone]


def control_fields(p: dict | None) -> dict:
    """A table row's fields for its packed minus control difference (from `against_control`; None: no fields)."""
    if p is None:
        return {}
    return {"minus_control_pp": p["mean"], "minus_control_ci95": p["ci95"], "minus_control_noise": p["noise"]}


_MADE: list[dict] | None = None  # the comparisons made while `recording`, for the report's correction across sections


@contextlib.contextmanager
def recording():
    """Collect every comparison `compared` and `against_control` make (report.run keeps them with each
    section's result, and the report corrects for multiplicity across all of them)."""
    global _MADE
    previous, _MADE = _MADE, []
    try:
        yield _MADE
    finally:
        _MADE = previous


def _record(out: dict, against: str) -> None:
    if _MADE is not None:
        _MADE.extend({"setting": str(label), "against": against, "mean": p["mean"], "ci95": p["ci95"], "p": p["p"],
                      "n": p["n"]} for label, p in out.items() if p["n"] >= 2)


def holm(comparisons: list[dict], alpha: float = 0.05) -> list[dict]:
    """Holm's step-down correction over one table's comparisons (each from `paired`): the i-th
    smallest p-value is held to alpha / (m - i), stopping at the first that fails, so the chance of
    calling any difference in the table real when there is none stays at most alpha. Sets each
    comparison's `noise` and returns them."""
    order = sorted(range(len(comparisons)), key=lambda i: comparisons[i]["p"])
    rejecting = True
    for rank, i in enumerate(order):
        rejecting = rejecting and comparisons[i]["p"] < alpha / (len(comparisons) - rank)
        comparisons[i]["noise"] = not rejecting
    return comparisons


def compared(runs: dict[str, list[dict]], reference: str, key: str = "mean_difference_pp") -> dict[str, dict]:
    """Each run set against `reference`'s, paired by seed, Holm-corrected over the table (the
    reference against itself: a difference of 0, no evidence, outside the correction)."""
    out = {label: paired(rs, runs[reference], key) for label, rs in runs.items() if label != reference}
    holm(list(out.values()))
    _record(out, f"{reference} ({key})")
    return {label: out.get(label) or paired(runs[reference], runs[reference], key) | {"p": 1.0, "noise": True}
            for label in runs}


def versus(p: dict) -> str:
    """A paired difference as a cell (`fmt`), "~" when the table's Holm-corrected paired t-test shows no difference."""
    return fmt(p) + (" ~" if p["noise"] else "")


def seed_noise(noise: bool) -> str:
    test = "Holm-corrected paired t-test, 5%"
    return f"not shown over the seeds ({test})" if noise else f"shown over the seeds ({test})"


def fmt(s: dict, digits: int = 2, signed: bool = True, unit: str = "", style: str = "f") -> str:
    """A cell: the mean over seeds ± the half-width of its 95% t-interval, labelled "(95% t)" (the mean alone
    with one seed); `style`: the format type of both ("f", or "g" for `digits` significant digits)."""
    if s["mean"] is None:
        return "–"
    interval = f" ± {s['ci95']:.{digits}{style}} (95% t)" if s["ci95"] is not None else ""
    return f"{s['mean']:{'+' if signed else ''}.{digits}{style}}{unit}{interval}"


def spread_fields(key: str, s: dict) -> dict:
    """A table row's fields for one quantity over seeds (`stats`): `key` its mean and, named without the unit
    `_pp`, its sample standard deviation `_std` and its 95% t-interval's half-width `_ci95` (the error bar)."""
    name = key.removesuffix("_pp")
    return {key: s["mean"], f"{name}_std": s["std"], f"{name}_ci95": s["ci95"]}


def versus_fields(name: str, p: dict) -> dict:
    """A table row's fields for its paired difference from the reference `name` (from `compared` or
    `differences`): `vs_<name>_pp` its mean, `_ci95` the half-width of its 95% t-interval, `_noise` the verdict."""
    return {f"vs_{name}_pp": p["mean"], f"vs_{name}_ci95": p["ci95"], f"vs_{name}_noise": p["noise"]}


def summary_row(rows: list[dict]) -> dict:
    """Mean and spread over seeds of the quantities every run has."""
    keys = ("mean_difference_pp", "worst_difference_pp", "mean_packed_accuracy", "ratio_by_count", "ratio_by_bytes",
            "packed_weights", "packed_bytes", "optimize_seconds", "peak_rss_mb", "matching_cost", "ms_per_step",
            "ms_per_dnn_batch", "seconds")
    return {k: stats([r.get(k) for r in rows]) for k in keys}


def write_outputs(name: str, result: dict, plot, out_dir: Path) -> Path:
    """results/experiments/<name>.json (everything), .csv (the table rows) and .png (the plot)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / f"{name}.json", json.dumps(result, indent=1, default=float) + "\n")
    rows = result["rows"]
    if rows:
        buf = io.StringIO()
        keys = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(out_dir / f"{name}.csv", buf.getvalue())
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plot(result, plt)
    png = out_dir / f"{name}.png"
    with atomic_file(png) as f:
        plt.savefig(f, format="png", dpi=110, bbox_inches="tight")
    plt.close("all")
    return png


def errorbar(ax, xs, values_by_x: list[list[float]], label: str, **kw) -> None:
    """A line of means over seeds with error bars of the half-width of their 95% t-interval (none for one seed)."""
    s = [stats(values) for values in values_by_x]
    ax.errorbar(xs, [v["mean"] for v in s], yerr=[v["ci95"] or 0 for v in s], label=label, capsize=3,
                **{"marker": "o", **kw})


def point(ax, x: float, y: float, ci95: float | None, label: str | None, marker: str, color: str,
          face: str | None = None, alpha: float = 1.0) -> None:
    """One point with its error bar (the half-width of its 95% t-interval; none for one seed), in the legend by its
    marker alone: a plot whose points crowd names them in a legend, not in labels that would overlap. `face`: the
    marker's fill where it is not `color` (hollow: "white")."""
    ax.errorbar([x], [y], yerr=[ci95 or 0], fmt="none", ecolor=color, capsize=3)
    ax.plot([x], [y], marker, ms=8, color=face or color, mec="black", mew=0.5, alpha=alpha, label=label)


def torch_threads_note() -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} thread per process"
