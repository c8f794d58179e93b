"""The published execution benchmark, packed side: N random DNN switches, each followed by inference
on that DNN's whole test set, from a packed store placed in two levels (weightsep.execution).

Prints the total switching time, the total inference time and each DNN's packed test accuracy,
which equals `python -m weightsep eval NAME` (the evaluate.packed_theta path) exactly.
`baseline_execution.py` runs the same schedule with stand-alone DNNs loaded from storage.

    python ws_execution.py --store state --switches 50 --seed 0 [--device cuda] [--mode zero-copy]
"""
from __future__ import annotations

import sys

from weightsep import exit_with, guarded, interruptible

with interruptible():  # Ctrl-C during the imports: `interrupted`, exit 130
    import argparse
    import random
    import time
    from pathlib import Path

    import torch

    from weightsep.checks import Parser, int_at_least


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def schedule(names: list[str], switches: int, seed: int) -> list[str]:
    """The random switch order; the same for ws_execution.py and baseline_execution.py given the seed."""
    rng = random.Random(seed)
    return [rng.choice(names) for _ in range(switches)]


def common_args(description: str) -> argparse.ArgumentParser:
    p = Parser(description=description)
    p.add_argument("--store", type=Path, default=Path("state"), help="packed store directory (default ./state)")
    p.add_argument("--dnn-folder", type=Path, action="append", default=[], help="an extra DNN folder (repeatable)")
    p.add_argument("--allow-changed-code", action="store_true",
                   help="use a packed DNN whose dnn.py changed since it was packed (default: refuse)")
    p.add_argument("--switches", type=int_at_least(0), default=50, help="random DNN switches (default 50)")
    p.add_argument("--seed", type=int, default=0, help="schedule seed (default 0)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--batch", type=int_at_least(1), default=2000, help="inference batch (default 2000, as `eval`)")
    return p


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """What can fail before any work: --device cuda without a GPU, --store that is a file."""
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available here (torch.cuda.is_available() is False); use --device cpu")
    if args.store.exists() and not args.store.is_dir():
        p.error(f"--store {args.store} is a file, not a store directory")


def open_packed(args: argparse.Namespace):
    """The store at --store, its DNNs (folders, models, data) and their test sets on --device; None
    after printing the error when the store cannot be read."""
    with interruptible():  # imported when needed (the argument checks come first); Ctrl-C: exit 130
        from weightsep.records import load_packed
        from weightsep.store import Store, StoreError

    try:
        state = Store(args.store).load()
    except StoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return None
    device = torch.device(args.device)
    loaded = load_packed(state, extra=args.dnn_folder, allow_changed_code=args.allow_changed_code)
    data = {n: (torch.from_numpy(item.data.test.x).to(device), torch.from_numpy(item.data.test.y).to(device))
            for n, item in loaded.items()}
    return state, loaded, data, device


def report(kind: str, switch_s: float, infer_s: float, switches: int, acc: dict[str, float], label: str) -> None:
    print(f"{kind}: {switches} switches, total switching time {switch_s * 1e3:.3f} ms "
          f"({switch_s / max(1, switches) * 1e6:.1f} us per switch), total inference time {infer_s:.3f} s")
    for name, a in acc.items():
        print(f"{name}: {label} test accuracy {100 * a:.2f}% ({a!r})")


def main(argv: list[str] | None = None) -> int:
    p = common_args(__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("gather", "zero-copy"), default="gather")
    p.add_argument("--kernel", choices=("ops", "index_select"), default="ops",
                   help="the gather: weightsep.ops.gather_pages_into (default) or torch.index_select into the buffer")
    args = p.parse_args(argv)
    check_args(p, args)
    torch.set_num_threads(1)
    with interruptible():
        from weightsep.execution import PackedModel

    if (opened := open_packed(args)) is None:
        return 2
    state, loaded, data, device = opened
    names = list(state.vnns)
    pm = PackedModel(state, {n: item.model for n, item in loaded.items()}, device, args.mode, args.kernel)
    for name in names:  # untimed warm-up: the ops backend resolves (and may build) on first use
        pm.switch(name)
    print(f"packed store {args.store}: {len(names)} DNNs, {state.n_shared} shared pages of {state.page_size}; "
          f"device memory {pm.device_bytes() / 1024:.1f} KiB, host (level 2) {pm.host_bytes() / 1024:.1f} KiB; "
          f"mode {args.mode} ({args.kernel}) on {device}")

    switch_s = infer_s = 0.0
    correct: dict[str, int] = {}
    for name in schedule(names, args.switches, args.seed):
        sync(device)
        start = time.perf_counter()
        pm.switch(name)
        sync(device)
        mid = time.perf_counter()
        c = pm.correct(*data[name], batch=args.batch)
        sync(device)
        switch_s += mid - start
        infer_s += time.perf_counter() - mid
        if correct.setdefault(name, c) != c:
            raise RuntimeError(f"{name}: {c} correct now, {correct[name]} before: switching is not deterministic")
    for name in names:  # DNNs the schedule missed are scored too
        if name not in correct:
            pm.switch(name)
            correct[name] = pm.correct(*data[name], batch=args.batch)
    report("weight separation", switch_s, infer_s, args.switches,
           {n: correct[n] / len(data[n][1]) for n in names}, "packed")
    return 0


if __name__ == "__main__":
    exit_with(guarded(main))
