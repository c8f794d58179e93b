"""Fisher estimators: do they agree on which pages matter, and does the choice change accuracy?

Two parts, per seed, on the same stand-alone DNNs:
  agreement  no optimisation: each estimator at each K against a reference (the true Fisher at
             K = 1000 on another draw of samples; K = 100 with --quick): Spearman of the page masses
             and Jaccard of WS's exclusive pages (the fewest highest-mass pages holding 90% of the
             Fisher, margin 0.1), and the seconds each Fisher took;
  accuracy   the whole pipeline with the published estimator (K = 50), ours (predicted, K = 1000),
             predicted at K = 50, empirical and true at K = 1000, everything else at our defaults.

    python -m experiments fisher
"""
from __future__ import annotations

import hashlib
import inspect
import json
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from weightsep import dnn as dnn_mod
from weightsep.files import atomic_write_text
from weightsep.fisher import FisherConfig
from weightsep.pack import PackConfig
from weightsep.packing import fisher_for
from weightsep.pages import n_pages
from weightsep.records import load
from weightsep.separation import contribution_density, separate
from weightsep.train import set_single_thread, standalone_models

from . import harness

SECTION = 6
TITLE = "Fisher estimators: page agreement and accuracy"
QUESTION = ("Do the published Fisher (K = 50), the batched predicted, empirical and true Fisher at K up to 1000 "
            "agree on which pages matter, and does the choice change accuracy after packing?")
ESTIMATORS = ("paper", "predicted", "empirical", "true")
PAGE_SIZE = PackConfig().page_size  # the pipeline's page size and WS margin: the pages separation would see
MARGIN = PackConfig().margin
# the runs of the accuracy part: label -> Fisher config changes ("ours" is the default, shared with other
# experiments); predicted at K=50 computes the paper's values on the same draw (the agreement part shows it), so
# its run would repeat the paper's
RUNS = {"paper K=50": {"estimator": "paper", "samples": 50}, "ours": {},
        "empirical K=1000": {"estimator": "empirical", "samples": 1000},
        "true K=1000": {"estimator": "true", "samples": 1000}}


def grid(scale: harness.Scale) -> list[tuple[str, int]]:
    """(estimator, K) of the agreement part: the published one at its K, the batched ones at each K."""
    ks = (50, 100) if scale.quick else (50, 100, 1000)
    return [("paper", 50)] + [(e, k) for e in ESTIMATORS[1:] for k in ks]


def reference(scale: harness.Scale, seed: int) -> FisherConfig:
    """The reference Fisher: the true one at the largest K, on a draw of samples no configuration uses."""
    return FisherConfig("true", samples=100 if scale.quick else 1000, seed=1000 + seed)


def exclusive_pages(fisher: torch.Tensor, page_size: int = PAGE_SIZE, margin: float = MARGIN) -> set[int]:
    """WS's exclusive pages by its margin rule: the fewest highest-mass pages holding 1 - margin of the
    Fisher mass (every page may be shared, so no overflow page is added)."""
    sep = separate(fisher, page_size, n_shared=n_pages(fisher.numel(), page_size), margin=margin)
    return set(sep.exclusive.tolist())


def agreement(fisher: torch.Tensor, ref: torch.Tensor, page_size: int = PAGE_SIZE, margin: float = MARGIN) -> dict:
    """How far two Fisher vectors of one DNN agree on its pages: Spearman of the page masses (contribution
    densities) and Jaccard of the exclusive-page sets, both 1 when they agree fully."""
    cd, cd_ref = contribution_density(fisher, page_size), contribution_density(ref, page_size)
    a, b = exclusive_pages(fisher, page_size, margin), exclusive_pages(ref, page_size, margin)
    return {"spearman": float(spearmanr(cd.numpy(), cd_ref.numpy()).statistic),
            "jaccard": len(a & b) / len(a | b), "exclusive_pages": len(a)}


def _agreement_job(name: str, seed: int, scale: harness.Scale) -> dict:
    """One DNN and seed (in a worker): every configuration's agreement with the reference, and its seconds."""
    set_single_thread()
    loaded = load([name])[name]
    theta = standalone_models([loaded.source], 1, scale.train_steps, seed=seed)[name].theta
    # the reference goes first: it also pays the process's one-time torch.func start-up (docs/results.md#code-notes), which
    # would otherwise land on the first timed batched estimator
    ref = fisher_for(loaded, theta, reference(scale, seed))
    out = {}
    for estimator, k in grid(scale):
        start = time.perf_counter()
        fisher = fisher_for(loaded, theta, FisherConfig(estimator, samples=k, seed=seed))
        seconds = time.perf_counter() - start
        out[f"{estimator} {k}"] = {**agreement(fisher, ref), "seconds": seconds}
    return out


MEASURED_BY = (grid, reference, exclusive_pages, agreement, _agreement_job)  # their code keys the cache


def _cache_path(name: str, seed: int, scale: harness.Scale) -> Path:
    blob = json.dumps({"dnn": name, "seed": seed, "grid": grid(scale), "reference": repr(reference(scale, seed)),
                       "train_steps": scale.train_steps, "page_size": PAGE_SIZE, "margin": MARGIN,
                       "models": harness.model_keys((name,), scale.train_steps, seed),
                       "code": harness.code_hash(), "measure": [inspect.getsource(f) for f in MEASURED_BY]},
                      sort_keys=True)
    return harness.runs_dir(scale) / f"fisher-agreement-{hashlib.sha256(blob.encode()).hexdigest()[:20]}.json"


def agreement_runs(scale: harness.Scale, fresh: bool = False) -> dict[int, dict[str, dict]]:
    """seed -> DNN -> "estimator K" -> agreement and seconds; kept like the harness's runs (a kept one
    needs no stand-alone model)."""
    harness.runs_dir(scale).mkdir(parents=True, exist_ok=True)
    out = {seed: {} for seed in scale.seeds}
    jobs = []
    for seed in scale.seeds:
        for name in scale.dnns:
            path = _cache_path(name, seed, scale)
            if path.exists() and not fresh:
                out[seed][name] = json.loads(path.read_text())
            else:
                jobs.append((name, seed, path))
    if not jobs:
        return out
    for seed in sorted({seed for _, seed, _ in jobs}):  # trained (or loaded) in the parent: the workers only read the cache
        standalone_models([dnn_mod.get(n) for n in sorted({n for n, s, _ in jobs if s == seed})], scale.workers,
                          scale.train_steps, seed=seed)
    with harness.quiet_pool(min(scale.workers, len(jobs))) as pool:
        pending = [(name, seed, path, pool.apply_async(_agreement_job, (name, seed, scale))) for name, seed, path in jobs]
        for name, seed, path, job in pending:
            try:
                result = job.get()
            except Exception as e:
                raise RuntimeError(f"Fisher agreement, DNN {name!r}, seed {seed}: {type(e).__name__}: {e}") from e
            atomic_write_text(path, json.dumps(result) + "\n")
            out[seed][name] = result
            print(f"   agreement: {name} seed {seed} done", flush=True)
    return out


def per_seed(runs: dict[int, dict[str, dict]], config: str) -> list[dict]:
    """One row per seed for a configuration: its measures averaged over the DNNs."""
    rows = []
    for seed, by_dnn in sorted(runs.items()):
        values = [v[config] for v in by_dnn.values()]
        rows.append({"seed": seed, **{k: sum(v[k] for v in values) / len(values)
                                      for k in ("spearman", "jaccard", "seconds", "exclusive_pages")}})
    return rows


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    settings = [harness.Setting(label, fisher=change) for label, change in RUNS.items()]
    accuracy = harness.run_all(harness.with_controls(settings), scale, fresh, "fisher")
    agree = agreement_runs(scale, fresh)
    configs = grid(scale)
    base = ("predicted", max(k for e, k in configs if e == "predicted"))  # ours, or the nearest K with --quick
    run_of = {(FisherConfig(**change).estimator, FisherConfig(**change).k): label for label, change in RUNS.items()}
    keys = sorted(set(configs) | set(run_of), key=lambda c: (ESTIMATORS.index(c[0]), c[1]))
    rows, curves = [], {e: {"k": [], "spearman": [], "jaccard": []} for e in ESTIMATORS}
    table = ["| estimator | K | Spearman of page masses | Jaccard of exclusive pages | Fisher s per DNN | "
             "packed - control pp | packed - stand-alone pp | vs ours pp |", "|---|---|---|---|---|---|---|---|"]
    by_config = {f"{e} {k}": per_seed(agree, f"{e} {k}") for e, k in configs}
    versus_base = {m: harness.compared(by_config, f"{base[0]} {base[1]}", m) for m in ("spearman", "jaccard", "seconds")}
    versus_ours = harness.compared({st.label: accuracy[st.label] for st in settings}, "ours")
    versus_control = harness.against_control(accuracy, settings)
    for estimator, k in keys:
        row = {"estimator": estimator, "samples": k}
        cells = ["–"] * 6
        if (estimator, k) in configs:
            seeds = per_seed(agree, f"{estimator} {k}")
            for i, measure in enumerate(("spearman", "jaccard", "seconds")):
                s = harness.stats([r[measure] for r in seeds])
                vs = versus_base[measure][f"{estimator} {k}"]
                row.update({**harness.spread_fields(measure, s), f"{measure}_vs_base": vs["mean"],
                            f"{measure}_vs_base_noise": vs["noise"]})
                mark = " ~" if measure != "seconds" and (estimator, k) != base and vs["noise"] else ""
                cells[i] = harness.fmt(s, 3 if measure != "seconds" else 2, False) + mark
            row["exclusive_pages"] = harness.stats([r["exclusive_pages"] for r in seeds])["mean"]
            curves[estimator]["k"].append(k)
            curves[estimator]["spearman"].append([r["spearman"] for r in seeds])
            curves[estimator]["jaccard"].append([r["jaccard"] for r in seeds])
        if (estimator, k) in run_of:
            rs = accuracy[run_of[(estimator, k)]]
            s = harness.stats([r["mean_difference_pp"] for r in rs])
            vs = versus_ours[run_of[(estimator, k)]]
            row.update({"run": run_of[(estimator, k)], **harness.control_fields(versus_control[run_of[(estimator, k)]]),
                        **harness.spread_fields("accuracy_change_pp", s), **harness.versus_fields("ours", vs)})
            cells[3:] = (harness.versus(versus_control[run_of[(estimator, k)]]), harness.fmt(s),
                         harness.versus(vs) if run_of[(estimator, k)] != "ours" else "–")
        row["seeds"] = len(scale.seeds)
        rows.append(row)
        name = f"**{estimator}**" if (estimator, k) == ("predicted", 1000) else estimator
        table.append(f"| {name} | {k} | " + " | ".join(cells) + " |")
    ref = reference(scale, 0)
    ours = next(r for r in rows if r.get("run") == "ours")
    return {"setup": (f"Agreement: every configuration's Fisher of each DNN's stand-alone weights against the "
                      f"{ref.estimator} Fisher at K = {ref.k} on another draw of samples (so the true Fisher is "
                      f"compared with itself), page size {PAGE_SIZE}; exclusive pages are the fewest highest-mass pages "
                      f"holding {1 - MARGIN:.0%} of the Fisher (WS's margin rule), averaged over the DNNs per seed; "
                      f"seconds are one CPU thread with {scale.workers} jobs at once. Accuracy: the whole pipeline "
                      f"at our defaults but the Fisher, against the no-sharing control (each DNN optimised alone at "
                      f"the same budget) and against stand-alone. ~ marks no difference shown from predicted at "
                      f"K = {base[1]}, from the control, or in accuracy from ours (predicted, K = 1000, bold): paired "
                      f"by seed, t-test, Holm-corrected over each column."),
            "reference": {"estimator": ref.estimator, "samples": ref.k},
            "rows": rows, "table": "\n".join(table), "answer": _answer(rows, base), "curves": curves,
            "accuracy": [{"label": r["run"], "estimator": r["estimator"], "vs_ours_pp": r["vs_ours_pp"],
                          "vs_ours_ci95": r["vs_ours_ci95"], "vs_ours_noise": r["vs_ours_noise"]}
                         for r in rows if "run" in r and r["run"] != "ours"],
            "ours_minus_control": {k: ours[k] for k in ("minus_control_pp", "minus_control_ci95")},
            "per_dnn": {str(seed): by_dnn for seed, by_dnn in agree.items()}}


def _answer(rows: list[dict], base: tuple[str, int]) -> str:
    """From the numbers: agreement of the published and the best batched Fisher, then accuracy."""
    by = {(r["estimator"], r["samples"]): r for r in rows}
    paper, best, emp = by[("paper", 50)], by[base], by[("empirical", base[1])]
    same = by[("predicted", 50)]
    text = (f"Against the reference, the published Fisher (K = 50) ranks pages with Spearman {paper['spearman']:.3f} "
            f"and agrees on the exclusive pages with Jaccard {paper['jaccard']:.3f} (batched predicted at K = 50: "
            f"{same['spearman']:.3f} and {same['jaccard']:.3f}, {paper['seconds'] / same['seconds']:.1f}x faster); "
            f"predicted at K = {base[1]} reaches {best['spearman']:.3f} and {best['jaccard']:.3f} "
            f"(the gap: Spearman {harness.seed_noise(paper['spearman_vs_base_noise'])}, "
            f"Jaccard {harness.seed_noise(paper['jaccard_vs_base_noise'])}), empirical at K = {base[1]} {emp['spearman']:.3f} "
            f"and {emp['jaccard']:.3f}. ")
    ours = next(r for r in rows if r.get("run") == "ours")
    text += (f"Packed with ours, accuracy is {ours['minus_control_pp']:+.2f} pp against the no-sharing control "
             f"({harness.seed_noise(ours['minus_control_noise'])}) and {ours['accuracy_change_pp']:+.2f} pp against "
             f"stand-alone. ")
    runs = [r for r in rows if "run" in r and r["run"] != "ours"]
    worst = max(runs, key=lambda r: abs(r["vs_ours_pp"]))
    beyond = [r["run"] for r in runs if not r["vs_ours_noise"]]
    text += (f"After optimisation, the largest accuracy difference from ours is {worst['run']} at {worst['vs_ours_pp']:+.2f} pp "
             f"({harness.seed_noise(worst['vs_ours_noise'])}); " + (f"a difference shown for: {', '.join(beyond)}." if beyond else
                                                         "no estimator's difference is shown over the seeds."))
    return text


def plot(result: dict, plt) -> None:
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.5))
    ks = sorted({k for curve in result["curves"].values() for k in curve["k"]})
    for i, (estimator, curve) in enumerate(result["curves"].items()):
        if not curve["k"]:
            continue
        nudge = 1.04 ** (i - 1.5)  # estimators side by side at each K, so their bars do not hide each other
        style = {"markersize": 9, "marker": "s"} if estimator == "paper" else {"marker": "o"}
        for ax, measure in ((a, "spearman"), (b, "jaccard")):
            harness.errorbar(ax, [k * nudge for k in curve["k"]], curve[measure], estimator, **style)
    ref = result["reference"]
    for ax, what in ((a, "Spearman of page masses"), (b, "Jaccard of exclusive pages (90% mass)")):
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.minorticks_off()
        ax.set(xlabel="samples K (log scale)", ylabel=what, title=f"{what}\nvs {ref['estimator']} Fisher, "
               f"K = {ref['samples']}, another draw")
        ax.grid(alpha=0.3)
    fig.legend(*a.get_legend_handles_labels(), title="estimator (mean ± 95% t-interval over seeds)", ncol=4,
               loc="upper center", bbox_to_anchor=(0.34, 0.0))
    bars, ours = result["accuracy"], result["ours_minus_control"]
    c.bar(range(len(bars)), [r["vs_ours_pp"] for r in bars], yerr=[r["vs_ours_ci95"] or 0 for r in bars], capsize=4,
          color=[f"C{ESTIMATORS.index(r['estimator'])}" for r in bars])  # the estimator's line colour
    c.set_xticks(range(len(bars)), [r["label"].replace(" ", "\n") + ("" if r["vs_ours_noise"] else "\n(shown)")
                                    for r in bars])
    c.axhline(0, color="black", lw=1.2)
    c.set(xlabel=f"zero: ours, predicted K=1000 ({ours['minus_control_pp']:+.2f} ± {ours['minus_control_ci95'] or 0:.2f} "
                 "pp against its no-sharing control)", ylabel="test accuracy, paired difference\nfrom ours (pp)",
          title=f"accuracy after optimisation ({result['scale']['steps']} DNN-batches per DNN)\n"
                "(mean paired difference by seed ± 95% t-interval)")
    c.grid(alpha=0.3, axis="y")
    fig.suptitle("Fisher estimators: agreement with a reference Fisher, and accuracy after packing and optimisation")
    fig.tight_layout()
