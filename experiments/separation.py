"""The published separation next to the budget separation, per seed, in one table; and why they differ.

    python -m experiments.separation                       # the offline suite, seeds 0 1 2
    python -m experiments.separation --seeds 0 --dnns mnist10k fashion letters

For every seed the whole pipeline runs once per configuration on the same stand-alone DNNs (trained
once per seed, cached), with the same optimisation budget; the no-sharing control runs once per
seed, beside the first configuration, and is the reference of both. Configurations:
  published  WS as published: each DNN keeps pages until 90% of its Fisher mass (margin 0.1)
  budget     ours (the default): one exclusive-page budget for the set from --ratio, half given at
             packing, half promoted during optimisation to the DNNs lagging on validation data
A second table measures how concentrated each DNN's Fisher is (pages holding 50% and 90% of its
mass), which is what decides the published separation's exclusive pages. Writes
results/separation.{json,md}; the stores go to $WEIGHTSEP_CACHE/experiments/separation.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from weightsep import dnn as dnn_mod
from weightsep.evaluate import aggregate, spread
from weightsep.files import atomic_write_text, source_commit
from weightsep.pipeline import RESULTS_DIR, RunConfig, run_seed
from weightsep.records import load
from weightsep.separation import contribution_density
from weightsep.store import Store
from weightsep.train import set_single_thread

CONFIGS = {"published": dict(separation="margin"), "budget": dict(separation="budget")}


def concentration(fisher: torch.Tensor, page_size: int) -> dict:
    """Pages (highest Fisher mass first) that hold 50% and 90% of a DNN's Fisher mass, of all its pages."""
    cd = torch.sort(contribution_density(fisher, page_size), descending=True).values.cumsum(0)
    return {"pages": len(cd), "pages_50": int((cd < 0.5).sum()) + 1, "pages_90": int((cd < 0.9).sum()) + 1}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dnns", nargs="+", default=None, help="default: the offline suite")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="joint optimisation steps (default: OptimizeConfig's)")
    p.add_argument("--ratio", type=float, default=None, help="the budget's packing ratio (default: PackConfig's)")
    p.add_argument("--train-steps", type=int, default=None, help="stand-alone steps (default: each folder's TRAIN)")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="where separation.{json,md} go")
    args = p.parse_args(argv)
    set_single_thread()
    base = RunConfig(dnns=args.dnns or dnn_mod.suite(), seeds=args.seeds, train_steps=args.train_steps)
    if args.steps:
        base.optimize = replace(base.optimize, steps=args.steps)
    if args.ratio:
        base.pack = replace(base.pack, ratio=args.ratio)
    loaded = load(base.dnns)
    root = dnn_mod.cache_dir() / "experiments" / "separation"
    results = {label: [] for label in CONFIGS}
    fisher = {name: [] for name in loaded}
    for seed in args.seeds:
        control = None
        for label, change in CONFIGS.items():
            print(f"== seed {seed}: {label}", flush=True)
            config = replace(base, pack=replace(base.pack, **change), store=root / label, control=True, seeds=[seed])
            # the control does not depend on the packing: the first configuration's serves both
            summary = run_seed(config, loaded, seed, control)
            control = {r["name"]: r["control_accuracy"] for r in summary["rows"]}
            results[label].append(summary)
            if label == "published":
                state = Store(root / label).load()
                for name, vnn in state.vnns.items():
                    fisher[name].append(concentration(vnn.fisher, state.page_size))

    agg = {label: aggregate(runs) for label, runs in results.items()}
    lines = [f"DNNs: {', '.join(loaded)}; seeds {', '.join(map(str, args.seeds))}; "
             f"{base.optimize.steps} joint steps; budget ratio {base.pack.ratio}; mean [min, max] over seeds", "",
             "| separation | exclusive pages | ratio by count | ratio by bytes | mean diff pp | worst DNN pp | "
             "mean vs no-sharing pp | worst vs no-sharing pp |", "|---|---|---|---|---|---|---|---|"]
    cell = lambda d, f="{:+.2f}": f"{f.format(d['mean'])} [{f.format(d['min'])}, {f.format(d['max'])}]"  # noqa: E731
    for label, a in agg.items():
        t = a["totals"]
        lines.append(f"| {label} | {cell(t['exclusive_pages'], '{:.1f}')} | {cell(t['ratio_by_count'], '{:.2f}')}x | "
                     f"{cell(t['ratio_by_bytes'], '{:.2f}')}x | {cell(t['mean_difference_pp'])} | "
                     f"{cell(t['worst_difference_pp'])} | {cell(t['mean_packed_minus_control_pp'])} | "
                     f"{cell(t['worst_packed_minus_control_pp'])} |")
    lines += ["", "Per DNN: exclusive pages (published / budget), Fisher concentration (pages holding 50% / 90% of "
              "its Fisher mass, of all its pages) and test accuracy change against stand-alone (pp).", "",
              "| DNN | pages | Fisher 50% | Fisher 90% | exclusive, published | exclusive, budget | "
              "diff pp, published | diff pp, budget |", "|---|---|---|---|---|---|---|---|"]
    for name in loaded:
        conc = {k: spread([c[k] for c in fisher[name]]) for k in ("pages_50", "pages_90")}
        pub, bud = agg["published"]["dnns"][name], agg["budget"]["dnns"][name]
        lines.append(f"| {name} | {fisher[name][0]['pages']} | {cell(conc['pages_50'], '{:.1f}')} | "
                     f"{cell(conc['pages_90'], '{:.1f}')} | {cell(pub['exclusive_pages'], '{:.1f}')} | "
                     f"{cell(bud['exclusive_pages'], '{:.1f}')} | {cell(pub['difference_pp'])} | {cell(bud['difference_pp'])} |")
    print("\n".join(lines))
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results / "separation.json", json.dumps(
        {"seeds": args.seeds, "runs": results, "aggregate": agg, "fisher_concentration": fisher,
         "commit": source_commit()}, indent=2) + "\n")
    atomic_write_text(args.results / "separation.md", "# Published vs budget separation\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
