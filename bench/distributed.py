"""Scale-out benchmark: joint-optimisation steps per second against ranks, the all-reduce's share,
and a model of larger scales built from figures measured here (docs/distributed.md).

1. steps: the DNNs (default the ten of the offline suite, seed 0's stand-alone models, packed once
   as the main job packs them) are optimised for `--steps` joint steps on 1 rank and on 2 ranks,
   interleaved (1, 2, 1, 2, ...) `--repeats` times so machine load hits both alike; every rank is a
   new spawned process with one torch thread. Reported per repeat: seconds (the optimiser's own
   clock: steps plus its two validation checks), steps per second, the ratio 2 ranks / 1 rank,
   each rank's time inside the shared gradient's all-reduce (the transfer plus waiting for the
   slower rank; the least of them, the rank that never waits, is the transfer) and the final mean
   validation accuracy.
2. all-reduce: gloo SUM all-reduce of float32 buffers from 4 KiB to 64 MiB between 2 ranks on this
   machine (loopback), median of `--reduce-repeats`; and Adam's step on a buffer of the same size
   (every rank repeats the shared pages' Adam step, so it does not shrink with ranks).
3. model: for 10, 100 and 1,000 DNNs like the suite's (compute per DNN-step and shared-page floats
   per DNN measured in 1 and 2), the step time on R ranks = compute / R + shared Adam + all-reduce,
   with the all-reduce as measured here (loopback) and as a ring over a 10 Gbit/s network
   (2 (R-1)/R x bytes / bandwidth + 2 (R-1) x the measured small-message latency); the table says
   the share of communication and from how many ranks it passes 10%.

    python -m bench.distributed                       # ~7 minutes on 2 cores -> results/distributed.{json,png}
    python -m bench.distributed --dnns dna letters satellite --steps 40 --repeats 1 --reduce-repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.timing import write_result
from weightsep import distributed
from weightsep import dnn as dnn_mod
from weightsep.errors import USER_ERRORS
from weightsep.fisher import FisherConfig
from weightsep.group import Group
from weightsep.optimize import OptimizeConfig, optimize
from weightsep.pack import PackConfig
from weightsep.packing import pack_records
from weightsep.pipeline import hold
from weightsep.records import Reference, load
from weightsep.train import set_single_thread, standalone_models, worker_pool

NETWORK_BYTES_PER_SECOND = 10e9 / 8  # 10 Gbit/s Ethernet
SCALES = (10, 100, 1000)
RANKS = (2, 4, 8, 16, 32, 64)


def timed_joint(state, standalone: dict[str, torch.Tensor], config: OptimizeConfig) -> dict:
    """One rank's part of a timed joint optimisation (its DNNs' data loaded here); rank 0's figures."""
    set_single_thread()
    group = Group.current()
    loaded = load(list(standalone), data=group.all_local)
    mine = hold(loaded, config)
    tasks = {n: loaded[n].task(standalone[n]) for n in mine}
    _, history = optimize(group.part_of(state, mine), tasks, config, progress=False, group=group)
    in_reduce = group.all_gather(history.communication_seconds)
    return {"seconds": history.seconds, "dnns_per_rank": group.all_gather(mine),
            "in_allreduce_seconds": in_reduce,  # per rank: the transfer plus waiting for the slower rank
            "communication_seconds": min(in_reduce),  # the last rank to arrive waits for nobody: the transfer
            "val_mean": history.mean(len(history.steps) - 1), "dnn_batches": history.steps[-1]}


def measure_steps(state, standalone: dict[str, torch.Tensor], config: OptimizeConfig, repeats: int) -> list[dict]:
    rows = []
    for repeat in range(repeats):
        for ranks in (1, 2):
            if ranks == 1:  # a fresh process too, like each of the two ranks
                with worker_pool(1) as pool:
                    out = pool.apply(timed_joint, (state, standalone, config))
            else:
                out = distributed.launch(ranks, timed_joint, state, standalone, config)
            out.update(repeat=repeat, ranks=ranks, steps_per_second=config.steps / out["seconds"])
            print(f"repeat {repeat}, {ranks} rank(s): {out['seconds']:.1f} s, {out['steps_per_second']:.2f} steps/s, "
                  f"all-reduce {out['communication_seconds']:.2f} s, validation {100 * out['val_mean']:.2f}%",
                  file=sys.stderr, flush=True)
            rows.append(out)
    return rows


def _reduce_and_adam(sizes: list[int], repeats: int) -> dict:
    """On each rank: median seconds of a SUM all-reduce and of one Adam step, per buffer size (floats)."""
    out = {}
    for n in sizes:
        buffer = torch.ones(n)
        reduce_times = []
        for _ in range(repeats + 1):
            distributed.any_(False)  # line the ranks up
            start = time.perf_counter()
            distributed.sum_(buffer)
            reduce_times.append(time.perf_counter() - start)
        p = torch.zeros(n, requires_grad=True)
        opt = torch.optim.Adam([p], lr=1e-3)
        adam_times = []
        for _ in range(repeats + 1):
            p.grad = torch.ones(n)
            start = time.perf_counter()
            opt.step()
            adam_times.append(time.perf_counter() - start)
        out[n] = {"allreduce_s": statistics.median(reduce_times[1:]), "adam_s": statistics.median(adam_times[1:])}
    return out


def measure_collectives(repeats: int, sizes: tuple[int, ...] = tuple(1 << k for k in range(10, 25, 2))) -> list[dict]:
    """The all-reduce and Adam curve (default 1,024 .. 16.8M floats: 4 KiB .. 64 MiB) on 2 ranks."""
    sizes = list(sizes)
    result = distributed.launch(2, _reduce_and_adam, sizes, repeats)
    return [{"floats": n, "bytes": 4 * n, **result[n]} for n in sizes]


def _interpolate(curve: list[dict], key: str, floats: float) -> float:
    """Log-linear interpolation of a measured curve (linear extrapolation by size beyond its ends)."""
    xs = [row["floats"] for row in curve]
    if floats <= xs[0]:
        return curve[0][key]
    if floats >= xs[-1]:
        return curve[-1][key] * floats / xs[-1]
    for lo, hi in zip(curve, curve[1:]):
        if lo["floats"] <= floats <= hi["floats"]:
            t = (floats - lo["floats"]) / (hi["floats"] - lo["floats"])
            return lo[key] + t * (hi[key] - lo[key])
    raise AssertionError


def model(per_dnn_step_s: float, shared_floats_per_dnn: float, curve: list[dict]) -> list[dict]:
    """Step time and communication share for SCALES DNNs on RANKS ranks (see the module docstring)."""
    latency = curve[0]["allreduce_s"]  # a 4 KiB all-reduce: the per-message cost here
    rows = []
    for n in SCALES:
        floats = shared_floats_per_dnn * n
        adam = _interpolate(curve, "adam_s", floats)
        loopback = _interpolate(curve, "allreduce_s", floats)
        for ranks in (1, *RANKS):
            if ranks > n:
                continue
            compute = per_dnn_step_s * n / ranks
            network = 0.0 if ranks == 1 else 2 * (ranks - 1) / ranks * 4 * floats / NETWORK_BYTES_PER_SECOND \
                + 2 * (ranks - 1) * latency
            step = compute + adam + network
            rows.append({"dnns": n, "ranks": ranks, "shared_floats": floats, "compute_s": compute, "adam_s": adam,
                         "allreduce_loopback_s": loopback if ranks > 1 else 0.0, "allreduce_network_s": network,
                         "step_s": step, "communication_share": network / step,
                         "speedup": (per_dnn_step_s * n + adam) / step})
    return rows


def table(result: dict) -> str:
    steps = result["steps"]
    lines = ["| repeat | ranks | seconds | steps/s | all-reduce transfer s (share) | in all-reduce per rank s | "
             "final validation % |", "|---|---|---|---|---|---|---|"]
    for r in steps:
        lines.append(f"| {r['repeat']} | {r['ranks']} | {r['seconds']:.1f} | {r['steps_per_second']:.2f} | "
                     f"{r['communication_seconds']:.2f} ({100 * r['communication_seconds'] / r['seconds']:.1f}%) | "
                     f"{', '.join(f'{t:.2f}' for t in r['in_allreduce_seconds'])} | {100 * r['val_mean']:.2f} |")
    s = result["speedup"]
    lines.append(f"\n2 ranks / 1 rank, steps per second: median {s['median']:.2f}x, mean {s['mean']:.2f}x "
                 f"(min {s['min']:.2f}, max {s['max']:.2f}) over {len(s['per_repeat'])} repeat(s)")
    lines.append("\n| DNNs | ranks | compute/rank ms | shared Adam ms | all-reduce ms, 10 Gbit/s ring | step ms | "
                 "communication share | speedup |\n|---|---|---|---|---|---|---|---|")
    for m in result["model"]:
        lines.append(f"| {m['dnns']:,} | {m['ranks']} | {1e3 * m['compute_s']:.1f} | {1e3 * m['adam_s']:.2f} | "
                     f"{1e3 * m['allreduce_network_s']:.2f} | {1e3 * m['step_s']:.1f} | "
                     f"{100 * m['communication_share']:.1f}% | {m['speedup']:.1f}x |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    curve = result["collectives"]
    left.loglog([c["bytes"] / 1024 for c in curve], [1e3 * c["allreduce_s"] for c in curve], "o-",
                label="gloo all-reduce, 2 ranks, loopback (measured)")
    left.loglog([c["bytes"] / 1024 for c in curve], [1e3 * c["adam_s"] for c in curve], "s--",
                label="Adam step on the same floats (measured)")
    for n in SCALES:
        floats = result["shared_floats_per_dnn"] * n
        left.axvline(4 * floats / 1024, color="grey", lw=0.8, ls=":")
        left.text(4 * floats / 1024, 0.03, f" {n:,} DNNs", rotation=90, va="bottom", ha="right", fontsize=8,
                  color="grey", transform=left.get_xaxis_transform())
    left.set_xlabel("buffer (KiB)")
    left.set_ylabel("time (ms)")
    left.set_title("the shared gradient's all-reduce and Adam step\n"
                   "(dotted: the shared pages of N DNNs like the suite's)", fontsize=10)
    left.legend(fontsize=8, loc="upper left")
    for n in SCALES:
        rows = [m for m in result["model"] if m["dnns"] == n and m["ranks"] > 1]
        right.semilogx([m["ranks"] for m in rows], [100 * m["communication_share"] for m in rows], "o-",
                       label=f"{n:,} DNNs", base=2)
    right.axhline(10, color="red", lw=0.8, ls="--", label="10% of a step")
    right.set_xticks(RANKS, [str(r) for r in RANKS])
    right.set_xlabel("ranks (one thread each)")
    right.set_ylabel("communication share of a step (%)")
    right.set_title("model: compute per DNN as measured here,\nring all-reduce over 10 Gbit/s Ethernet", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.distributed", description=__doc__.split("\n\n")[0])
    p.add_argument("--dnns", nargs="+", default=None, help="DNN folders (default: the offline suite)")
    p.add_argument("--steps", type=int, default=150, help="joint steps per timed run (default 150)")
    p.add_argument("--repeats", type=int, default=6, help="timed runs per rank count, interleaved (default 6)")
    p.add_argument("--reduce-repeats", type=int, default=30, help="all-reduces per buffer size (default 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", default="distributed", help="results/NAME.json and .png (default distributed)")
    args = p.parse_args(argv)
    set_single_thread()
    names = args.dnns or dnn_mod.suite()
    try:
        loaded = load(names)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    names = list(loaded)
    trained = standalone_models([item.source for item in loaded.values()], 2, seed=args.seed)
    for name, record in loaded.items():
        record.reference = Reference.of(trained[name])
    state, _ = pack_records(loaded, replace(PackConfig(), seed=args.seed), replace(FisherConfig(), seed=args.seed))
    del loaded
    config = OptimizeConfig(steps=args.steps, eval_every=args.steps, seed=args.seed,
                            promote_pages=state.config.budget.get("spare", 0) if state.config.budget else 0)
    steps = measure_steps(state, {n: trained[n].theta for n in names}, config, args.repeats)
    one = [r for r in steps if r["ranks"] == 1]
    two = [r for r in steps if r["ranks"] == 2]
    ratios = [b["steps_per_second"] / a["steps_per_second"] for a, b in zip(one, two)]
    collectives = measure_collectives(args.reduce_repeats)
    per_dnn_step_s = statistics.median(r["seconds"] for r in one) / args.steps / len(names)
    shared_floats_per_dnn = state.shared_pages.numel() / len(names)
    result = {"dnns": names, "steps_per_run": args.steps, "shared_floats": state.shared_pages.numel(),
              "shared_floats_per_dnn": shared_floats_per_dnn, "steps": steps,
              "speedup": {"per_repeat": ratios, "mean": statistics.mean(ratios), "median": statistics.median(ratios),
                          "min": min(ratios), "max": max(ratios)},
              "communication_share_2_ranks": [r["communication_seconds"] / r["seconds"] for r in two],
              "collectives": collectives, "per_dnn_step_s": per_dnn_step_s,
              "model": model(per_dnn_step_s, shared_floats_per_dnn, collectives),
              "network_bytes_per_second": NETWORK_BYTES_PER_SECOND}
    out = write_result(args.name, result)
    plot(result, out.with_suffix(".png"))
    print(table(result))
    print(f"\nwrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
