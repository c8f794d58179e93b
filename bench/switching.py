"""Switching benchmark: the baseline ladder of docs/algorithms.md §3.7 in ONE process, on one random schedule.

Rungs, timed interleaved (switch i: every rung in turn, so machine load hits them alike):

  a-safetensors  load the DNN's weights from a file on storage with safetensors (warm page cache)
  a-torch.load   model.load_state_dict(torch.load(state-dict file)), as users often do
  b-host-copy    copy the DNN's stand-alone weights from host memory into a preallocated device buffer
  c-resident     all DNNs resident on the device (no memory saving, the ceiling): pick the tensor
  d-gather       PackedModel(mode="gather").switch: exclusive pages + page table host -> device,
                 then one page-table gather into the flat weights (the published method), with
                 weightsep.ops.gather_pages_into (the C++/CUDA extension when built), in place
  d-gather-isel  the same switch with kernel="index_select": torch.index_select(out=) into the
                 preallocated weight buffer (no allocation)
  e-zero-copy    PackedModel(mode="zero-copy").switch: exclusive pages + page table only; the
                 forward resolves weights per layer (its cost moves into the forward, measured too)
  d-gather-<fmt> the d-gather switch of the same store with every page in float16, int8 or int4
                 (weightsep.precision, rounded from its float32 pages: bytes and time, not accuracy):
                 exclusive rows and scales + page table host -> device, then one dequantising gather
                 (weightsep.ops.gather_dequant_into) into the float32 weights

(a)-(c) use each DNN's flat weights as resolved from the store (the same size as its stand-alone
weights; timing depends only on the size). Two scales: the packed store (./state) and a
synthetic store of 100 DNNs (random pages, the suite's shapes cycled (--dnns), S=128, ~10 random
exclusive pages each, random page tables). Reports per-switch median and p95 latency per rung,
ratios (a)/(d) for both load kinds and (d)/(b), the quantised gathers over the float32 one (time and
bytes moved), bytes moved per switch and device memory per rung (by format in the JSON).
Interleaving leaves each rung with the caches the previous rungs left (file loads evict them), so
every rung is also timed BACK TO BACK (each alone over the first 500 switches of the schedule,
bench.timing.measure, 5 repeats; mean per switch, warm caches: how the prototype measured);
writes results/switching.json and results/switching.png.

    python -m bench.switching --store /tmp/st4                  # ~1 minute on 2 CPU cores
    python -m bench.switching --store state --device cuda --switches 5000
"""
from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch

from bench.timing import RESULTS_DIR, measure, sync, write_result
from weightsep import dnn as dnn_mod
from weightsep.evaluate import packed_theta
from weightsep.execution import PackedModel
from weightsep.formats import FLOAT32
from weightsep.pages import n_pages
from weightsep.precision import PrecisionConfig, assign, format_counts
from weightsep.records import load_packed
from weightsep.state import VNN, PackedState, exclusive_entries
from weightsep.store import Store

QUANTISED = ("float16", "int8", "int4")
RUNGS = ("a-safetensors", "a-torch.load", "b-host-copy", "c-resident", "d-gather", "d-gather-isel", "e-zero-copy",
         *(f"d-gather-{fmt}" for fmt in QUANTISED))
ZERO_COPY_TARGET = 1.5  # zero-copy forward / forward on dense resident weights, on a GPU
TARGETS = {"torch.load / gather": 50.0, "safetensors / gather": 30.0, "gather / host-copy (at most)": 1.2}
QUANTISED_TARGETS = {"gather int8 / gather float32 (at most)": 1.3, "bytes moved int8 / float32 (at most)": 1 / 3}


def synthetic_state(n_dnns: int, models: dict, page_size: int = 512, n_shared: int = 128, exclusive: int = 10,
                    seed: int = 0) -> tuple[PackedState, dict]:
    """`n_dnns` DNNs with the given models' shapes cycled, random pages and page tables."""
    g = torch.Generator().manual_seed(seed)
    shapes = list(models.items())
    vnns, dnn_models = {}, {}
    for k in range(n_dnns):
        base, model = shapes[k % len(shapes)]
        name = f"{base}-{k:03d}"
        n = model.n_weights
        pages = n_pages(n, page_size)
        excl = min(exclusive, pages)
        table = torch.empty(pages, dtype=torch.int64)
        order = torch.randperm(pages, generator=g)
        table[order[:excl]] = exclusive_entries(n_shared, 0, excl)
        table[order[excl:]] = torch.randperm(n_shared, generator=g)[: pages - excl]
        vnns[name] = VNN(name, n, table, torch.randn(excl, page_size, generator=g) * 0.05, torch.zeros(n))
        dnn_models[name] = model
    shared = torch.randn(n_shared, page_size, generator=g) * 0.05
    return PackedState(page_size, shared, torch.zeros_like(shared), vnns), dnn_models


def template_models(names: list[str] | None = None) -> dict:
    """A freshly built model per DNN name (default: the offline suite): the shapes `synthetic_state` cycles."""
    return {n: dnn_mod.get(n).build_model() for n in names or dnn_mod.suite()}


def run_scale(label: str, state: PackedState, models: dict, device: torch.device, switches: int, seed: int,
              tmp: Path, forward_check: dict | None = None) -> dict:
    names = list(state.vnns)
    thetas = {n: packed_theta(state, n).detach().contiguous() for n in names}
    n_max = max(t.numel() for t in thetas.values())
    cuda = device.type == "cuda"
    st_files, pt_files = {}, {}
    for n, theta in thetas.items():  # the stand-alone files on storage
        st_files[n] = tmp / f"{label}-{n}.safetensors"
        pt_files[n] = tmp / f"{label}-{n}.pt"
        safetensors.torch.save_file({"theta": theta}, st_files[n])
        torch.save({"theta": theta}, pt_files[n])
    host = {n: (t.pin_memory() if cuda else t.clone()) for n, t in thetas.items()}
    buffer = torch.empty(n_max, device=device)
    resident = {n: t.to(device) for n, t in thetas.items()}
    gather = PackedModel(state, models, device, "gather")
    isel = PackedModel(state, models, device, "gather", kernel="index_select")
    zero = PackedModel(state, models, device, "zero-copy")
    float32 = state.with_format(FLOAT32)  # a quantised store's pages are floats too: each format is rounded from them
    pm_states = {fmt: assign(float32, PrecisionConfig(precision=fmt)) for fmt in QUANTISED}
    quantised = {fmt: PackedModel(st, models, device, "gather") for fmt, st in pm_states.items()}
    loadee = {n: models[n] for n in names}
    sink = {}

    def a_st(n):
        sink["t"] = safetensors.torch.load_file(st_files[n], device=str(device))["theta"]

    def a_pt(n):
        loadee[n].load_state_dict(torch.load(pt_files[n], map_location=device, weights_only=True))

    def b(n):
        sink["t"] = buffer[: host[n].numel()].copy_(host[n], non_blocking=True)

    def c(n):
        sink["t"] = resident[n]

    fns = {"a-safetensors": a_st, "a-torch.load": a_pt, "b-host-copy": b, "c-resident": c,
           "d-gather": gather.switch, "d-gather-isel": isel.switch, "e-zero-copy": zero.switch,
           **{f"d-gather-{fmt}": pm.switch for fmt, pm in quantised.items()}}
    for n in names:  # warm the page cache, the allocator, and each code path once per DNN
        for fn in fns.values():
            fn(n)
    sync(device)
    rng = random.Random(seed)
    order = [rng.choice(names) for _ in range(switches)]
    times = {r: [] for r in RUNGS}
    clock = time.perf_counter
    for n in order:  # one call per rung per switch; bench.timing.measure's per-call cuda check costs
        for r in RUNGS:  # as much as a switch itself (docs/results.md#code-notes), so the loop times directly
            fn = fns[r]
            start = clock()
            fn(n)
            sync(device)
            times[r].append(clock() - start)

    # back to back: each rung alone over the schedule (warm caches; how the prototype measured)
    k = min(len(order), 500)
    back = {r: 1e6 * measure(lambda fn=fns[r]: [fn(n) for n in order[:k]], repeat=5)["median_s"] / k for r in RUNGS}
    gather.switch(order[-1])
    isel.switch(order[-1])
    assert torch.equal(gather.theta.cpu(), thetas[order[-1]])  # the gathers resolved the right weights
    assert torch.equal(isel.theta.cpu(), thetas[order[-1]])

    def stats(ts):
        ts = sorted(ts)
        return {"median_us": 1e6 * statistics.median(ts), "p95_us": 1e6 * ts[min(len(ts) - 1, round(0.95 * (len(ts) - 1)))]}

    total = sum(t.numel() for t in thetas.values()) * 4
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    per = {r: stats(times[r]) for r in RUNGS}
    bytes_moved = {
        "a-safetensors": mean([st_files[n].stat().st_size for n in order]),
        "a-torch.load": mean([pt_files[n].stat().st_size for n in order]),
        "b-host-copy": mean([thetas[n].numel() * 4 for n in order]),
        "c-resident": 0,
        "d-gather": mean([gather.bytes_moved_per_switch(n) for n in order]),
        "d-gather-isel": mean([isel.bytes_moved_per_switch(n) for n in order]),
        "e-zero-copy": mean([zero.bytes_moved_per_switch(n) for n in order]),
        **{f"d-gather-{fmt}": mean([pm.bytes_moved_per_switch(n) for n in order]) for fmt, pm in quantised.items()},
    }
    device_mem = {"a-safetensors": n_max * 4, "a-torch.load": n_max * 4, "b-host-copy": n_max * 4,
                  "c-resident": total, "d-gather": gather.device_bytes(), "d-gather-isel": isel.device_bytes(),
                  "e-zero-copy": zero.device_bytes(),
                  **{f"d-gather-{fmt}": pm.device_bytes() for fmt, pm in quantised.items()}}
    by_format = {"d-gather": gather.device_bytes_by_format(), "e-zero-copy": zero.device_bytes_by_format(),
                 **{f"d-gather-{fmt}": pm.device_bytes_by_format() for fmt, pm in quantised.items()}}
    host_mem = {"a-safetensors": 0, "a-torch.load": 0, "b-host-copy": total, "c-resident": 0,
                "d-gather": gather.host_bytes(), "d-gather-isel": isel.host_bytes(), "e-zero-copy": zero.host_bytes(),
                **{f"d-gather-{fmt}": pm.host_bytes() for fmt, pm in quantised.items()}}
    for r in RUNGS:
        per[r].update(back_to_back_mean_us=back[r], bytes_moved_per_switch=bytes_moved[r],
                      device_bytes=device_mem[r], host_bytes=host_mem[r])
        if r in by_format:
            per[r]["device_bytes_by_format"] = by_format[r]
    ratios, met = {}, {}
    for rung, tag in (("d-gather", ""), ("d-gather-isel", " [isel]")):
        d = per[rung]["median_us"]
        mine = {"torch.load / gather": per["a-torch.load"]["median_us"] / d,
                "safetensors / gather": per["a-safetensors"]["median_us"] / d,
                "gather / host-copy (at most)": d / per["b-host-copy"]["median_us"],
                "gather / zero-copy": d / per["e-zero-copy"]["median_us"]}
        mine["torch.load / gather, back to back"] = back["a-torch.load"] / back[rung]
        mine["safetensors / gather, back to back"] = back["a-safetensors"] / back[rung]
        mine["gather / host-copy, back to back"] = back[rung] / back["b-host-copy"]
        ratios.update({k + tag: v for k, v in mine.items()})
        met.update({k + tag: (mine[k] <= v if "at most" in k else mine[k] >= v) for k, v in TARGETS.items()})
    for fmt, pm in quantised.items():
        pm.switch(order[-1])
        assert torch.equal(pm.theta.cpu(), packed_theta(pm_states[fmt], order[-1]))
    ratios["gather int8 / gather float32 (at most)"] = per["d-gather-int8"]["median_us"] / per["d-gather"]["median_us"]
    ratios["bytes moved int8 / float32 (at most)"] = bytes_moved["d-gather-int8"] / bytes_moved["d-gather"]
    ratios.update({f"gather {fmt} / gather float32": per[f"d-gather-{fmt}"]["median_us"] / per["d-gather"]["median_us"]
                   for fmt in QUANTISED if fmt != "int8"})
    if set(format_counts(state)) == {"float32"}:  # the float32 gather is d-gather only for a float32 store
        met.update({k: ratios[k] <= v for k, v in QUANTISED_TARGETS.items()})
    out = {"label": label, "dnns": len(names), "switches": switches, "page_size": state.page_size,
           "shared_pages": state.n_shared, "exclusive_pages": sum(v.n_exclusive for v in state.vnns.values()),
           "weights": total // 4, "rungs": per, "ratios": ratios, "targets": {**TARGETS, **QUANTISED_TARGETS},
           "targets_met": met}
    if forward_check:  # the other side of zero-copy: what the forward costs per call
        out["forward"] = forward_cost(gather, zero, list(forward_check), forward_check)
        out["zero_copy_view_fraction"] = {n: zero.view_fraction(n) for n in names}
    return out


def forward_cost(gather: PackedModel, zero: PackedModel, names: list[str], inputs: dict) -> dict:
    rows = {}
    for batch in (1, 256):
        g_t, z_t = [], []
        for n in names:
            x = inputs[n][:batch].to(gather.device)
            gather.switch(n)
            zero.switch(n)
            with torch.no_grad():
                assert torch.equal(gather.forward(x), zero.forward(x))
                g_t.append(measure(lambda x=x: gather.forward(x), repeat=20)["median_s"])
                z_t.append(measure(lambda x=x: zero.forward(x), repeat=20)["median_s"])
        rows[f"batch_{batch}"] = {"gather_forward_us": 1e6 * statistics.mean(g_t),
                                  "zero_copy_forward_us": 1e6 * statistics.mean(z_t),
                                  "zero-copy / dense": statistics.mean(z_t) / statistics.mean(g_t)}
    return rows


def table(result: dict) -> str:
    lines = [f"{result['label']}: {result['dnns']} DNNs, {result['weights']:,} weights, "
             f"{result['shared_pages']} shared + {result['exclusive_pages']} exclusive pages of {result['page_size']}, "
             f"{result['switches']} switches",
             f"{'rung':<15}{'median us':>11}{'p95 us':>11}{'b2b us':>9}{'KiB moved':>11}{'device KiB':>12}{'host KiB':>10}"]
    for r, s in result["rungs"].items():
        lines.append(f"{r:<15}{s['median_us']:>11.2f}{s['p95_us']:>11.2f}{s['back_to_back_mean_us']:>9.2f}"
                     f"{s['bytes_moved_per_switch'] / 1024:>11.1f}"
                     f"{s['device_bytes'] / 1024:>12.1f}{s['host_bytes'] / 1024:>10.1f}")
    for k, v in result["ratios"].items():
        target = result["targets"].get(k.replace(" [isel]", "")) if k in result["targets_met"] else None
        mark = "" if target is None else f"   target {'<=' if 'at most' in k else '>='} {target}: " + (
            "met" if result["targets_met"][k] else "NOT met")
        lines.append(f"  {k}: {v:.2f}x{mark}")
    for b, f in result.get("forward", {}).items():
        lines.append(f"  forward {b}: dense weights (gather = all resident) {f['gather_forward_us']:.1f} us, zero-copy "
                     f"{f['zero_copy_forward_us']:.1f} us: {f['zero-copy / dense']:.2f}x (GPU target <= {ZERO_COPY_TARGET})")
    return "\n".join(lines)


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(8 * len(results), 8), squeeze=False)
    colors = ["#c44e52", "#dd8452", "#8172b3", "#937860", "#4c72b0", "#64b5cd", "#55a868", "#8c8c8c", "#da8bc3",
              "#ccb974"]
    for j, res in enumerate(results):
        med = [res["rungs"][r]["median_us"] for r in RUNGS]
        p95 = [res["rungs"][r]["p95_us"] for r in RUNGS]
        ax = axes[0][j]
        ax.bar(RUNGS, med, color=colors)
        ax.scatter(RUNGS, p95, marker="_", s=300, color="black", label="p95")
        ax.set_yscale("log")
        ax.set_ylabel("switch latency, median (us)")
        ax.set_title(f"{res['label']}: {res['dnns']} DNNs")
        ax.legend()
        for i, m in enumerate(med):
            ax.text(i, m, f"{m:.3g}", ha="center", va="bottom", fontsize=8)
        ax = axes[1][j]
        mem = [res["rungs"][r]["device_bytes"] / 1024 for r in RUNGS]
        ax.bar(RUNGS, mem, color=colors)
        ax.set_yscale("log")
        ax.set_ylabel("device memory (KiB)")
        for i, m in enumerate(mem):
            ax.text(i, m, f"{m:,.0f}", ha="center", va="bottom", fontsize=8)
        for a in axes[:, j]:
            a.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", type=Path, default=Path("state"), help="packed store (default ./state)")
    p.add_argument("--no-store", action="store_true",
                   help="only the synthetic scale, forward cost on random inputs: needs no store and no data "
                        "(e.g. on a lent GPU)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--switches", type=int, default=2000, help="random switches per scale (default 2000)")
    p.add_argument("--synthetic", type=int, default=100, help="DNNs in the synthetic store (0: skip; default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dnns", nargs="+", default=None,
                   help="DNN shapes the synthetic store cycles through (default: the offline suite)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    results = []
    with tempfile.TemporaryDirectory(prefix="weightsep-switching-") as tmp:
        if not args.no_store:
            state = Store(args.store).load()
            loaded = load_packed(state)  # by name, code hash checked
            models = {n: item.model for n, item in loaded.items()}
            inputs = {n: torch.from_numpy(item.data.test.x[:256]) for n, item in loaded.items()}  # forward-cost check
            results.append(run_scale("store", state, models, device, args.switches, args.seed, Path(tmp), inputs))
            print(table(results[-1]), flush=True)
        if args.synthetic or args.no_store:
            base = template_models(args.dnns)
            synth, synth_models = synthetic_state(max(args.synthetic, len(base)), base, seed=args.seed)
            g = torch.Generator().manual_seed(args.seed)  # forward cost: one DNN of each shape, random inputs
            inputs = {n: torch.randn(256, *synth_models[n].input_shape, generator=g) for n in list(synth.vnns)[: len(base)]}
            results.append(run_scale("synthetic", synth, synth_models, device, args.switches, args.seed, Path(tmp),
                                     inputs if args.no_store else None))
            print("\n" + table(results[-1]))
    RESULTS_DIR.mkdir(exist_ok=True)
    plot(results, RESULTS_DIR / "switching.png")
    command = "python -m bench.switching " + " ".join(sys.argv[1:] if argv is None else argv)
    path = write_result("switching", {"command": command, "store": None if args.no_store else str(args.store),
                                      "device": args.device, "scales": results,
                                      "rung_descriptions": __doc__.split("\n\n")[1]})
    print(f"\nwrote {path} and {RESULTS_DIR / 'switching.png'}")
    return 0 if math.isfinite(results[0]["ratios"]["torch.load / gather"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
