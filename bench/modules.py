"""Ordinary nn.Modules in weightsep (weightsep.flat): what the flat-vector form costs, side by side.

Two measurements per model (the example folders' modules and a suite TemplateNet for reference),
each timed interleaved (every variant in turn, `--repeats` rounds; medians), one torch thread:

  Fisher    the published estimator on K samples: per-sample gradients batched with torch.func
            (vmap over grad, the default "predicted") vs the published loop, one backward pass per
            sample ("paper"); both through `functional_call` on views of the flat vector.
  forward   a batch through the module's own forward on its own parameters ("dense"), the same
            through `PackedModel` in "gather" mode (weights gathered once per switch, then the
            functional forward) and in "zero-copy" mode (each parameter resolved from the page
            store at every forward: a view where its pages are consecutive, else a small gather).
            The packed store: the model and a perturbed twin on shared pages (page size 512, half
            as many shared pages as the model has, random Fisher), so page tables mix shared and
            exclusive pages out of order: a harder case for zero-copy than a store that keeps pages
            in order.

Untrained weights and random inputs: the times depend on shapes only. Writes results/modules.json
and results/modules.png.

    python -m bench.modules                  # ~2 minutes on one CPU thread
    python -m bench.modules --repeats 3 --samples 100 --batch 64     # quick
"""
from __future__ import annotations

import argparse
import sys

import torch

from bench.timing import RESULTS_DIR, interleaved_s, write_result
from weightsep import dnn as dnn_mod
from weightsep.evaluate import packed_theta
from weightsep.execution import PackedModel
from weightsep.fisher import ESTIMATORS
from weightsep.flat import FlatModule, buffer_state
from weightsep.pack import PackConfig, add_vnn, new_state

CPU = torch.device("cpu")  # timed on one CPU thread: nothing to synchronise
FOLDERS = ("examples/dscnn_keywords", "examples/resnet_syndigits", "examples/gru_watch", "suite/keywords")


def packed_store(model, page_size: int = 512):
    """The model and a perturbed twin packed onto shared pages (random Fisher), buffers included."""
    n_pages = -(-model.n_weights // page_size)
    config = PackConfig(page_size=page_size, n_shared=max(2, n_pages // 2), margin=0.5)
    state = new_state(config, config.n_shared)
    theta = model.theta.detach()
    for i, name in enumerate(("net", "twin")):
        fisher = torch.rand(theta.numel(), generator=torch.Generator().manual_seed(i))
        state, _ = add_vnn(state, name, theta + 0.01 * i, fisher, config)
        state.vnns[name].buffers = buffer_state(model)
    return state


def measure_model(folder: str, samples: int, batch: int, repeats: int) -> dict:
    dnn = dnn_mod.get(str(dnn_mod.REPO_ROOT / folder))
    model = dnn.build_model()
    model.reset_parameters(torch.Generator().manual_seed(0))
    model.eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(samples, *model.input_shape, generator=g)
    y = torch.zeros(samples, dtype=torch.long)
    theta = model.theta.detach()
    fisher = interleaved_s({
        "batched": lambda: ESTIMATORS["predicted"].fn(model, theta, x, y, 64),
        "loop": lambda: ESTIMATORS["paper"].fn(model, theta, x, y, 64),
    }, repeats, device=CPU)

    state = packed_store(model)
    xb = torch.randn(batch, *model.input_shape, generator=g)
    own = model.module if isinstance(model, FlatModule) else None
    dense_theta = packed_theta(state, "net", model)
    runs = {}
    for mode in ("gather", "zero-copy"):
        fresh = dnn.build_model()
        runs[mode] = PackedModel(state, {"net": fresh, "twin": dnn.build_model()}, mode=mode)
        runs[mode].switch("net")
    with torch.no_grad():
        reference = model(xb, dense_theta)
        for mode, pm in runs.items():
            assert torch.equal(pm(xb), reference), f"{folder}: {mode} forward differs from the dense forward"
        if own is not None:  # the module's own forward, on its own parameters set to the packed weights
            model.theta.copy_(dense_theta)
            assert torch.equal(own(xb), reference)
        variants = {"dense": (lambda: own(xb)) if own is not None else (lambda: model(xb, dense_theta)),
                    "gather": lambda: runs["gather"](xb), "zero-copy": lambda: runs["zero-copy"](xb)}
        forward = interleaved_s(variants, repeats, device=CPU)
    return {
        "dnn": dnn.name, "model": model.describe(), "weights": model.n_weights,
        "fisher": {"samples": samples, "batched_s": fisher["batched"], "loop_s": fisher["loop"],
                   "speedup": fisher["loop"] / fisher["batched"]},
        "forward": {"batch": batch, **{f"{k}_s": v for k, v in forward.items()},
                    "zero_copy_over_dense": forward["zero-copy"] / forward["dense"],
                    "gather_over_dense": forward["gather"] / forward["dense"],
                    "zero_copy_view_fraction": runs["zero-copy"].view_fraction("net"),
                    "dense_is": "the module's own forward" if own is not None else "TemplateNet on the packed weights"},
    }


def plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["dnn"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    speedups = [r["fisher"]["speedup"] for r in rows]
    bars = left.bar(names, speedups, color="tab:blue")
    left.bar_label(bars, fmt="%.1fx")
    left.set_ylim(0, 1.12 * max(speedups))  # room for the labels
    left.axhline(1, color="gray", linewidth=0.8)
    k = rows[0]["fisher"]["samples"]
    left.set(ylabel="loop time / batched time", title=f"Fisher: batched (vmap) vs per-sample loop, K={k}")
    width = 0.27
    for i, (mode, color) in enumerate((("dense", "tab:gray"), ("gather", "tab:blue"), ("zero-copy", "tab:orange"))):
        values = [1000 * r["forward"][f"{mode}_s"] for r in rows]
        right.bar([j + (i - 1) * width for j in range(len(rows))], values, width, label=mode, color=color)
    right.set_xticks(range(len(rows)), names)
    right.set(ylabel="ms per forward", title=f"forward of a batch of {rows[0]['forward']['batch']}: dense vs packed")
    right.legend()
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--samples", type=int, default=300, help="Fisher samples K (default 300)")
    p.add_argument("--batch", type=int, default=256, help="forward batch (default 256)")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--dnns", nargs="+", default=list(FOLDERS), help="DNN folders, relative to the repository")
    args = p.parse_args(argv)
    if min(args.samples, args.batch, args.repeats) < 1:
        p.error("--samples, --batch and --repeats must be >= 1")
    torch.set_num_threads(1)
    rows = []
    for folder in args.dnns:
        try:
            rows.append(measure_model(folder, args.samples, args.batch, args.repeats))
        except dnn_mod.DNNError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        r = rows[-1]
        print(f"{r['dnn']:<18} {r['weights']:>7,} weights  Fisher batched {r['fisher']['batched_s']:.2f} s, "
              f"loop {r['fisher']['loop_s']:.2f} s: {r['fisher']['speedup']:.1f}x  |  forward ({args.batch}): dense "
              f"{1000 * r['forward']['dense_s']:.1f} ms, gather {r['forward']['gather_over_dense']:.2f}x, zero-copy "
              f"{r['forward']['zero_copy_over_dense']:.2f}x ({r['forward']['zero_copy_view_fraction']:.0%} views)")
    path = write_result("modules", {"args": vars(args), "rows": rows})
    RESULTS_DIR.mkdir(exist_ok=True)
    plot(rows, RESULTS_DIR / "modules.png")
    print(f"wrote {path} and {RESULTS_DIR / 'modules.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
