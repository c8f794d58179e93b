"""Each change to the template's conv blocks on its own (issue 25): forward + backward of the suite DNNs.

The four variants of `TemplateNet`'s conv block, side by side in one process with one thread, on the
same random float16 batch of 100 per DNN (train mode, cross-entropy, gradient w.r.t. theta):

  plain          NCHW memory, LeakyReLU then max-pool (the template before issue 25)
  pool first     NCHW, max-pool then LeakyReLU (the same values: LeakyReLU is increasing)
  channels-last  channels-last input and kernel (oneDNN then gives channels-last outputs, where
                 CPU max-pooling is fast), LeakyReLU then max-pool
  both           channels-last and pool first: weightsep.model.TemplateNet.forward_with today

The variants take turns in each of `--rounds` rounds (medians reported), so machine noise hits all
alike. Writes results/forward_layout.json and prints ms per variant and DNN with the share of the
process's sgemm rate (FLOPs counted by torch; the same for every variant).

    python -m bench.forward_layout            # about a minute on 2 cores
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from bench.timing import measure, write_result
from bench.train_speed import sgemm_gflops
from weightsep import dnn as dnn_mod
from weightsep.model import ACTIVATIONS, TemplateNet, channels_last_kernel

VARIANTS = {"plain": (False, False), "pool first": (False, True), "channels-last": (True, False), "both": (True, True)}


def forward(net: TemplateNet, x: torch.Tensor, channels_last: bool, pool_first: bool) -> torch.Tensor:
    """The template's forward with the two changes switched on or off (`both` is the model's own)."""
    if channels_last and pool_first:
        return net(x)
    t, i = net.tensors(), 0
    x = x.float()
    if channels_last and net.convs:
        x = x.contiguous(memory_format=torch.channels_last)
    for conv in net.convs:
        kernel = channels_last_kernel(t[f"weight_{i}"]) if channels_last else t[f"weight_{i}"].permute(3, 2, 0, 1)
        x = F.conv2d(x, kernel, t[f"bias_{i}"])
        if pool_first:
            x = F.leaky_relu(F.max_pool2d(x, conv.pool, conv.pool), 0.2)
        else:
            x = F.max_pool2d(F.leaky_relu(x, 0.2), conv.pool, conv.pool)
        i += 1
    x = x.permute(0, 2, 3, 1).reshape(len(x), -1) if net.convs else x.reshape(len(x), -1)
    for layer in range(len(net.dense) + 1):
        x = x @ t[f"weight_{i}"] + t[f"bias_{i}"]
        x = ACTIVATIONS[net.hidden_act](x) if layer < len(net.dense) else x
        i += 1
    return x


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--dnns", nargs="+", default=None, help="suite DNNs (default: all ten)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the four variants in turn (default 5)")
    p.add_argument("--repeat", type=int, default=10, help="timed steps per variant, DNN and round (default 10)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = args.dnns or dnn_mod.suite()
    g = torch.Generator().manual_seed(0)
    cases = {}
    for name in names:
        net = dnn_mod.get(name).build_model()
        net.train()
        cases[name] = (net, torch.randn(100, *net.input_shape, generator=g).half(),
                       torch.randint(0, net.classes, (100,), generator=g))
    flops = {}
    for name, (net, x, y) in cases.items():
        with FlopCounterMode(display=False) as counter:
            torch.autograd.grad(F.cross_entropy(net(x), y), [net.theta])
        flops[name] = counter.get_total_flops()
    ms = {v: {n: [] for n in names} for v in VARIANTS}
    sgemm = []
    for r in range(args.rounds):
        sgemm.append(sgemm_gflops())
        for name, (net, x, y) in cases.items():
            for variant, flags in VARIANTS.items():
                def step(net=net, x=x, y=y, flags=flags):
                    torch.autograd.grad(F.cross_entropy(forward(net, x, *flags), y), [net.theta])
                ms[variant][name].append(1e3 * measure(step, repeat=args.repeat, warmup=2)["median_s"])
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{v} {sum(ms[v][n][-1] for n in names):.1f} ms" for v in VARIANTS), flush=True)
    rate = statistics.median(sgemm)
    rows = {v: {n: statistics.median(ms[v][n]) for n in names} for v in VARIANTS}
    for v in VARIANTS:
        rows[v]["all"] = sum(rows[v][n] for n in names)
    flops["all"] = sum(flops.values())
    share = {v: {n: flops[n] / (rows[v][n] / 1e3) / 1e9 / rate for n in rows[v]} for v in VARIANTS}
    print(f"\nforward + backward, batch 100, ms (share of the {rate:.0f} GFLOP/s sgemm rate), median of {args.rounds}")
    print(f"{'DNN':<12}" + "".join(f"{v:>22}" for v in VARIANTS))
    for n in [*names, "all"]:
        print(f"{n:<12}" + "".join(f"{rows[v][n]:>13.2f} ({100 * share[v][n]:4.1f}%)" for v in VARIANTS))
    print("speed-up over plain, all: " + ", ".join(f"{v} {rows['plain']['all'] / rows[v]['all']:.2f}x" for v in VARIANTS))
    result = {"sgemm_gflops": rate, "rounds": args.rounds, "flops": flops, "ms": rows, "share": share,
              "speedup_over_plain": {v: rows["plain"]["all"] / rows[v]["all"] for v in VARIANTS}}
    write_result("forward_layout", result)
    return result


if __name__ == "__main__":
    main()
