"""Switching: bench/switching's baseline ladder against the number of packed DNNs.

For N packed DNNs (2 to 100), a synthetic store (bench.switching.synthetic_state: the scale's model
shapes cycled, random pages and page tables) and one random switching schedule per seed, timed by
bench.switching.run_scale: every rung at every switch in turn (medians, p95) and each rung back to
back. One store at a time, in this process, on the CPU with one thread (timings: no workers, no
neighbours); timings are measured afresh at every run, never cached.

    python -m experiments switching            # ~2-3 minutes on 2 CPU cores
    python -m experiments switching --quick    # N = 2, 10; under 30 s
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

from bench import switching as bench

from . import harness

SECTION = 8
TITLE = "Switching: the gather and baseline ladder against the number of packed DNNs"
QUESTION = ("Does a switch by page-table gather stay as cheap as more DNNs share the pages, and how much faster "
            "than loading a DNN's weights from storage or copying them from host memory is it?")
COUNTS = (2, 5, 10, 20, 50, 100)
QUICK_COUNTS = (2, 10)
SWITCHES = 1000  # per store, a few seconds on one thread (docs/results.md#code-notes)
QUICK_SWITCHES = 100
# bench.switching's ratio -> the same ratio timed back to back; keys of TARGETS, the papers' targets
RATIOS = {"torch.load / gather": "torch.load / gather, back to back",
          "safetensors / gather": "safetensors / gather, back to back",
          "gather / host-copy (at most)": "gather / host-copy, back to back"}


def measure(n_dnns: int, models: dict, switches: int, seed: int) -> dict:
    """The ladder on one synthetic store of `n_dnns` DNNs: a flat row of medians (us), ratios and KiB moved."""
    state, synth_models = bench.synthetic_state(n_dnns, models, seed=seed)
    with tempfile.TemporaryDirectory(prefix="weightsep-switching-") as tmp:
        result = bench.run_scale(f"N={n_dnns}", state, synth_models, torch.device("cpu"), switches, seed, Path(tmp))
    rungs = result["rungs"]
    return {"dnns": n_dnns, "seed": seed, "weights per DNN": result["weights"] / n_dnns,
            "page size": result["page_size"], "shared pages": result["shared_pages"],
            "exclusive pages per DNN": result["exclusive_pages"] / n_dnns,
            **{f"{r} median us": s["median_us"] for r, s in rungs.items()},
            "d-gather p95 us": rungs["d-gather"]["p95_us"],
            **{name: result["ratios"][name] for pair in RATIOS.items() for name in pair},
            "gather KiB moved": rungs["d-gather"]["bytes_moved_per_switch"] / 1024,
            "host-copy KiB moved": rungs["b-host-copy"]["bytes_moved_per_switch"] / 1024}


def summarise(points: list[dict]) -> dict[int, dict[str, dict]]:
    """Per number of DNNs: mean and spread over seeds (harness.stats) of every measured quantity."""
    by_n: dict[int, list[dict]] = {}
    for p in points:
        by_n.setdefault(p["dnns"], []).append(p)
    return {n: {k: harness.stats([p[k] for p in ps]) for k in ps[0] if k not in ("dnns", "seed")}
            for n, ps in sorted(by_n.items())}


def trend(first: dict, last: dict) -> str:
    """How a quantity moves from one setting to another (harness.stats of each): beyond the seeds' range or not."""
    if last["min"] > first["max"]:
        return "grows"
    if last["max"] < first["min"]:
        return "shrinks"
    return "stays within the seeds' range"


def run(scale: harness.Scale, fresh: bool = False) -> dict:
    """Every N for every seed (at least three: a store takes seconds), sequentially. `fresh` changes nothing."""
    seeds = scale.seeds if len(scale.seeds) >= 3 else tuple(range(3))
    counts, switches = (QUICK_COUNTS, QUICK_SWITCHES) if scale.quick else (COUNTS, SWITCHES)
    models = bench.template_models(list(scale.dnns))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    threads_note = harness.torch_threads_note()
    try:  # seeds outermost: a burst of machine load lands on one seed of every N, not on every seed of one N
        points = [measure(n, models, switches, seed)
                  for seed, n in tqdm([(s, n) for s in seeds for n in counts], desc="switching", unit="store")]
    finally:
        torch.set_num_threads(threads)
    summary = summarise(points)
    rows = [{"dnns": n, "seeds": s["d-gather median us"]["n"],
             **{k: v for key, st in s.items() for k, v in ((key, st["mean"]), (f"{key} std", st["std"]))}}
            for n, s in summary.items()]
    store = summary[counts[-1]]
    setup = (f"Synthetic stores of N DNNs (bench.switching.synthetic_state: the model shapes of {', '.join(models)} "
             f"cycled, so a smaller N uses the first N; pages of {store['page size']['mean']:.0f} weights, "
             f"{store['shared pages']['mean']:.0f} shared pages, {store['exclusive pages per DNN']['mean']:.0f} exclusive "
             f"pages per DNN, random page tables), {switches} random switches per store (the schedule seeded by the "
             "seed), every rung timed at every switch in turn (the medians below) and also back to back over the "
             "schedule's first switches (bench.switching.run_scale; warm caches, mean per switch). Stores run one at "
             f"a time in the parent process on the CPU, {threads_note}; the weight files are in the "
             "page cache.")
    return {"setup": setup, "table": table(summary), "rows": rows, "answer": answer(summary),
            "points": points, "counts": list(counts), "targets": bench.TARGETS,
            "scale_text": f"seeds {', '.join(map(str, seeds))} (no optimisation: timings only)"}


def table(summary: dict[int, dict[str, dict]]) -> str:
    """Two markdown tables: median latency per rung, then the ratios and the bytes a switch moves."""
    latency = ["| DNNs | " + " | ".join(bench.RUNGS) + " |", "|---" * (len(bench.RUNGS) + 1) + "|"]
    ratios = ["| DNNs | " + " | ".join(RATIOS) + " | " + " | ".join(f"{r.split(' (')[0]}, back to back" for r in RATIOS)
              + " | d-gather p95 us | KiB moved: gather | KiB moved: host copy |", "|---" * 10 + "|"]
    for n, s in summary.items():
        latency.append(f"| {n} | " + " | ".join(harness.fmt(s[f"{r} median us"], 1, False) for r in bench.RUNGS) + " |")
        cells = [harness.fmt(s[k], 2, False) for k in (*RATIOS, *RATIOS.values())]
        cells += [harness.fmt(s[k], 1, False) for k in ("d-gather p95 us", "gather KiB moved", "host-copy KiB moved")]
        ratios.append(f"| {n} | " + " | ".join(cells) + " |")
    return ("Median switch latency, microseconds (switches interleaved over the rungs):\n\n" + "\n".join(latency)
            + "\n\nRatios (x; interleaved: of the medians, back to back: of the means per switch) and bytes moved "
            "per switch:\n\n" + "\n".join(ratios))


def answer(summary: dict[int, dict[str, dict]]) -> str:
    counts = list(summary)
    first, last = summary[counts[0]], summary[counts[-1]]
    key = "d-gather median us"

    def span(k: str) -> str:
        means = [summary[n][k]["mean"] for n in counts]
        return f"{min(means):.3g}-{max(means):.3g}x"

    ranges = ", ".join(f"{r.split(' (')[0]} {span(r)} ({span(b2b)} back to back; paper target "
                       f"{'<=' if 'at most' in r else '>='} {bench.TARGETS[r]:g})" for r, b2b in RATIOS.items())
    return (f"The gather switch's median goes from {first[key]['mean']:.1f} us with {counts[0]} DNNs to "
            f"{last[key]['mean']:.1f} us with {counts[-1]}: it {trend(first[key], last[key])}. Over N, {ranges}.")


def plot(result: dict, plt) -> None:
    counts = result["counts"]
    by_n = [[p for p in result["points"] if p["dnns"] == n] for n in counts]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    for rung in bench.RUNGS:
        harness.errorbar(a, counts, [[p[f"{rung} median us"] for p in ps] for ps in by_n], rung)
    a.set(yscale="log", ylabel="median switch latency (us, log)", title="per-switch latency, interleaved rungs")
    for (ratio, b2b), color in zip(RATIOS.items(), ("#c44e52", "#dd8452", "#4c72b0")):
        name = ratio.split(" (")[0]
        harness.errorbar(b, counts, [[p[ratio] for p in ps] for ps in by_n], name, color=color)
        harness.errorbar(b, counts, [[p[b2b] for p in ps] for ps in by_n], f"{name}, back to back", color=color, ls=":",
                         mfc="white")
        target = result["targets"][ratio]
        b.axhline(target, color=color, ls="--", lw=1)
        b.annotate(f"target {'<=' if 'at most' in ratio else '>='} {target:g}", (1.01, target), color=color,
                   xycoords=("axes fraction", "data"), va="center", fontsize=8)
    b.set(yscale="log", ylabel="latency ratio (x, log)",
          title="ratios: solid of interleaved medians, dotted back to back;\ndashed: the papers' targets")
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.set_xticks([], minor=True)
        ax.set_xlabel("packed DNNs N (log)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, ncols=3 if ax is a else 2, loc="upper center", bbox_to_anchor=(0.5, -0.17))
    fig.suptitle("Switching on the CPU, one thread: mean ± 95% t-interval over seeds")
    fig.tight_layout()
