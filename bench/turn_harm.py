"""How far one round-robin turn lowers the DNNs it does not train: the basis of `--max-harm`.

`train X --iter N` (the originals' -mode=t) trains X through its page table and writes its weights
back into the shared pages, which the DNNs sharing them also run on. This runs that turn for every
packed DNN of a store, one at a time, each from the store as it is, at the published learning rate
and at a wrecking one, with the guard off, and measures every other DNN's validation accuracy before
and after (the same validation subset the optimiser scores). `OptimizeConfig.max_harm` must lie
above what a published turn does and below what a wrecking one does.

    python -m bench.turn_harm --store state                 # results/turn_harm.json
    python -m bench.turn_harm --store state --iter 320 --lrs 1e-3 --dnns letters watch
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from tqdm import tqdm

from bench.timing import write_result
from weightsep.evaluate import accuracy, packed_theta
from weightsep.optimize import OptimizeConfig, optimize
from weightsep.page_optimizer import validation_subset
from weightsep.records import load_packed
from weightsep.store import Store
from weightsep.train import set_single_thread


def val_accuracies(state, loaded, tasks, names: list[str], config: OptimizeConfig) -> dict[str, float]:
    """Each DNN's validation accuracy on the optimiser's validation subset, weights from `state`."""
    out = {}
    for n in names:
        x, y = validation_subset(tasks[n], config.val_samples, config.seed)
        out[n] = accuracy(loaded[n].model, packed_theta(state, n, loaded[n].model), x, y)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.turn_harm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", type=Path, default=Path("state"), help="a packed store (default ./state)")
    parser.add_argument("--dnn-folder", type=Path, action="append", default=[], help="an extra DNN folder")
    parser.add_argument("--dnns", nargs="+", help="the DNNs to train a turn each (default: every packed DNN)")
    parser.add_argument("--iter", type=int, default=2000, help="steps of the turn (default 2000, as -mode=t)")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e6],
                        help="learning rates (default: the published 1e-3 and a wrecking 1e6)")
    args = parser.parse_args()
    set_single_thread()
    state = Store(args.store).load()
    loaded = load_packed(state, extra=args.dnn_folder)
    tasks = {n: item.task() for n, item in loaded.items()}
    rows, start = [], time.perf_counter()
    trained = args.dnns or list(state.vnns)
    with tqdm(total=len(trained) * len(args.lrs), desc="turns", unit="turn") as bar:
        for lr in args.lrs:
            for name in trained:
                others = state.sharing(name)
                config = OptimizeConfig(optimizer="round-robin", rounds=1, steps_per_turn=args.iter, lr=lr,
                                        dnns=(name,), max_harm=100.0)  # the guard off: measure, never undo
                before = val_accuracies(state, loaded, tasks, [name, *others], config)
                result, _ = optimize(state, {n: tasks[n] for n in [name, *others]}, config, progress=False)
                after = val_accuracies(result, loaded, tasks, [name, *others], config)
                change = {n: 100 * (after[n] - before[n]) for n in others}
                rows.append({"lr": lr, "dnn": name, "own_change_pp": 100 * (after[name] - before[name]),
                             "others_change_pp": change, "worst_other_pp": min(change.values(), default=0.0)})
                bar.update()
    bound = OptimizeConfig.max_harm
    summary = {str(lr): {"worst_other_pp": min(r["worst_other_pp"] for r in rows if r["lr"] == lr),
                         "turns_the_default_bound_undoes": sum(r["worst_other_pp"] < -bound for r in rows if r["lr"] == lr),
                         "turns": sum(r["lr"] == lr for r in rows)} for lr in args.lrs}
    print(f"\n{'lr':>8}  {'DNN trained':<12} {'own pp':>8} {'worst other pp':>15}  (the other DNN)")
    for r in rows:
        worst = min(r["others_change_pp"], key=r["others_change_pp"].get, default="-")
        print(f"{r['lr']:>8g}  {r['dnn']:<12} {r['own_change_pp']:>+8.2f} {r['worst_other_pp']:>+15.2f}  ({worst})")
    for lr, s in summary.items():
        print(f"lr {lr}: worst change of another DNN {s['worst_other_pp']:+.2f} pp; turns the default --max-harm "
              f"{bound:g} pp undoes: {s['turns_the_default_bound_undoes']} of {s['turns']}")
    path = write_result("turn_harm", {"store": str(args.store), "iter": args.iter, "default_max_harm_pp": bound,
                                      "summary": summary, "rows": rows,
                                      "seconds": round(time.perf_counter() - start, 1)})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
