"""Paper-faithful modes next to our defaults, in one run, on the same DNNs and the same budget.

    python -m experiments.compare                     # the offline suite; results/compare.{json,md}
    python -m experiments.compare --budget 600 --dnns satellite letters

Every configuration packs the same stand-alone DNNs and gets the same number of training batches
per DNN (`--budget`): joint optimisation runs `budget` steps of all DNNs; round-robin runs rounds
of `steps_per_turn` steps per DNN adding up to the same. Rows:
  ours      budget separation, predicted Fisher K=1000, optimal matching, Fisher-mean shared content,
            joint with promotion and the cosine schedule
  matching  the same with the published greedy matcher (does lower matching cost train better?)
  optimizer the same with the published round-robin optimizer (lambda 0.1)
  paper     everything published: margin separation, paper Fisher (K=50, loop), greedy, random store,
            round-robin, 128 shared pages (the others: the largest DNN's pages)
Selection on validation data; test accuracy scored once per configuration.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from weightsep import dnn as dnn_mod
from weightsep.evaluate import make_row, packed_theta, summarize
from weightsep.files import atomic_write_text, source_commit
from weightsep.fisher import FisherConfig
from weightsep.optimize import OptimizeConfig
from weightsep.pack import PUBLISHED_SHARED_PAGES, PackConfig
from weightsep.packing import pack_and_optimize_records
from weightsep.pipeline import RESULTS_DIR
from weightsep.records import Reference, load
from weightsep.train import set_single_thread, standalone_models

CONFIGS = {
    "ours": dict(),
    "greedy matching": dict(matching="greedy"),
    "round-robin optimizer": dict(optimizer="round-robin"),
    "paper (all published)": dict(fisher="paper", matching="greedy", shared_content="random", optimizer="round-robin",
                                  separation="margin", n_shared=PUBLISHED_SHARED_PAGES),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dnns", nargs="+", default=None, help="default: the offline suite")
    p.add_argument("--budget", type=int, default=1500, help="training batches per DNN (default 1500)")
    p.add_argument("--steps-per-turn", type=int, default=300, help="round-robin turn length (default 300)")
    p.add_argument("--mode", choices=("ws", "nwv"), default="ws")
    args = p.parse_args(argv)
    set_single_thread()
    loaded = load(args.dnns or dnn_mod.suite())
    trained = standalone_models([item.source for item in loaded.values()])
    rows = []
    for label, change in CONFIGS.items():
        pack_config = PackConfig(mode=args.mode, matching=change.get("matching", "optimal"),
                                 shared_content=change.get("shared_content", "fisher-mean"),
                                 separation=change.get("separation", PackConfig.separation),
                                 n_shared=change.get("n_shared"))
        fisher = FisherConfig(change.get("fisher", "predicted"))
        optimizer = change.get("optimizer", "joint")
        opt = OptimizeConfig(optimizer=optimizer, steps=args.budget, steps_per_turn=args.steps_per_turn,
                             rounds=max(1, args.budget // args.steps_per_turn), eval_every=max(1, args.budget // 10))
        start = time.perf_counter()
        records = {n: replace(item, reference=Reference.of(trained[n])) for n, item in loaded.items()}  # Fisher unset
        state, history, _, timings = pack_and_optimize_records(records, pack_config, fisher, opt)
        seconds = time.perf_counter() - start
        dnn_rows = [make_row(state, n, trained[n].test_accuracy, item.test_accuracy(packed_theta(state, n, item.model)))
                    for n, item in loaded.items()]
        table = summarize(state, dnn_rows)
        cost = sum(v.provenance.pack_info.matching_cost for v in state.vnns.values())
        rows.append({"config": label, **change, "matching_cost": cost, "fisher_seconds": timings["fisher_seconds"],
                     "matching_seconds": timings["matching_seconds"], "seconds": seconds,
                     "best_mean_val": history.mean(history.best_index),
                     "mean_val_before_training": history.mean(0),  # the first check is at step 0
                     **{k: getattr(table.totals, k) for k in ("mean_standalone_accuracy", "mean_packed_accuracy",
                                                        "mean_difference_pp", "packed_weights", "ratio_by_count")},
                     "per_dnn": {r.name: r.packed_accuracy for r in table.rows}})
        print(f"{label}: matching cost {cost:.4g}, mean test {100 * rows[-1]['mean_packed_accuracy']:.2f}% "
              f"({rows[-1]['mean_difference_pp']:+.2f} pp), {seconds:.0f} s", flush=True)
    lines = [f"DNNs: {', '.join(loaded)}; {args.budget} training batches per DNN; mode {args.mode}", "",
             "| configuration | matching cost | val acc. before training % | mean test % | diff pp | best mean val % | s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['config']} | {r['matching_cost']:.4g} | {100 * r['mean_val_before_training']:.2f} | "
              f"{100 * r['mean_packed_accuracy']:.2f} | {r['mean_difference_pp']:+.2f} | {100 * r['best_mean_val']:.2f} | "
              f"{r['seconds']:.0f} |" for r in rows]
    print("\n".join(lines))
    RESULTS_DIR.mkdir(exist_ok=True)
    result = {"budget": args.budget, "rows": rows, "commit": source_commit()}
    atomic_write_text(RESULTS_DIR / "compare.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(RESULTS_DIR / "compare.md", "# Paper-faithful modes vs defaults\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
