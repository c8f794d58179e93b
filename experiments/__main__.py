"""Experiments that answer the papers' open questions, one command each, gathered into a report.

    python -m experiments all                  # every experiment at default sizes, then the report
    python -m experiments all --quick          # every experiment small (three DNNs, two seeds), then the report
    python -m experiments matching --seeds 0 1 2 3 4 5
    python -m experiments all --paper          # the same on the paper's DNNs whose data is here
    python -m experiments paper_gap            # the gap to the published two-DNN accuracy (not in `all`: its own DNNs)
    python -m experiments report               # results/REPORT.md from the results already written

Each experiment writes results/experiments/<name>.{json,csv,png} (with --paper:
results/experiments/paper/); `report` gathers them into results/REPORT.md. Each finished run is
kept as a small JSON in results/experiments/runs (experiments/runs.py), so a second `all`, on this
machine or on a fresh clone, only re-draws the tables and plots, and an interrupted one resumes.
"""
from __future__ import annotations

import sys

from weightsep import exit_with, interruptible

with interruptible():  # Ctrl-C during the imports: `interrupted`, exit 130
    import argparse
    import time
    from dataclasses import replace
    from pathlib import Path

    from weightsep import dnn as dnn_mod
    from weightsep.checks import Parser, writable_dir
    from weightsep.errors import USER_ERRORS
    from weightsep.pipeline import RESULTS_DIR

    from . import harness, report


def parse(argv) -> argparse.Namespace:
    """The arguments, checked: a bad one is one line `error: ...` and exit status 2, before any work."""
    p = Parser(prog="python -m experiments", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="experiments: " + ", ".join(report.experiments()))
    p.add_argument("name", choices=["all", "report", *report.experiments()], help="an experiment, all of them, or the report")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every experiment in minutes")
    p.add_argument("--paper", action="store_true", help="the paper's DNNs whose data is present instead of the suite")
    p.add_argument("--dnns", nargs="+", default=None, help="DNN names (default: the offline suite)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help=f"seeds (default: {' '.join(map(str, harness.Scale.seeds))}; the experiments that tune "
                        f"defaults: the tuning seeds {' '.join(map(str, harness.TUNING_SEEDS))})")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimisation budget, DNN-batches per DNN (default {harness.Scale.steps})")
    p.add_argument("--train-steps", type=int, default=None, help="stand-alone training steps (default: each folder's)")
    p.add_argument("--workers", type=int, default=None, help="runs at once (default 2)")
    p.add_argument("--fresh", action="store_true", help="ignore cached runs")
    p.add_argument("--results", type=Path, default=RESULTS_DIR, help="where experiments/ and REPORT.md go (default results/)")
    args = p.parse_args(argv)
    for flag in ("seeds", "dnns"):
        value = getattr(args, flag)
        if value is not None and (not value or len(set(value)) != len(value)):
            p.error(f"--{flag} must name distinct values")
    for flag in ("steps", "train_steps", "workers"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    try:
        writable_dir(args.results, "--results")
    except ValueError as e:
        p.error(str(e))
    return args


def main(argv=None) -> int:
    args = parse(argv)
    try:
        if args.name == "report":
            print(f"wrote {report.write(args.results)}")
            return 0
        runs = None if args.quick else str(args.results / "experiments" / "runs")  # a smoke run's stay in the cache
        scale = harness.Scale.default(args.quick, args.paper, dnns=tuple(args.dnns) if args.dnns else None,
                                      seeds=tuple(args.seeds) if args.seeds else None, steps=args.steps,
                                      train_steps=args.train_steps, workers=args.workers, runs=runs)
        for name in args.dnns or ():
            dnn_mod.get(name)  # an unknown name fails here, before any work
        names = report.in_all() if args.name == "all" else [args.name]
        start = time.perf_counter()
        for name in names:
            began = time.perf_counter()
            mod = report.module(name)
            print(f"== {name}: {mod.QUESTION}", flush=True)
            seeds = getattr(mod, "SEEDS", None) if args.seeds is None and not args.quick else None  # a tuning experiment's
            png = report.run(name, replace(scale, seeds=seeds) if seeds else scale, args.fresh, args.results)
            print(f"   wrote {png} and its .json, .csv ({time.perf_counter() - began:.0f} s)", flush=True)
        if args.name == "all":
            print(f"all experiments: {time.perf_counter() - start:.0f} s; wrote {report.write(args.results)}")
        return 0
    except (*USER_ERRORS, OSError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; finished runs are kept and a rerun resumes from them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    exit_with(main())
