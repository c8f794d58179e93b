"""Page-table gather kernels, side by side in one run: the switch gather and the training gather.

Switch (in place into a preallocated buffer, no autograd; what PackedModel.switch runs), one row per
size, every kernel timed in turn in each round (so machine load hits them alike):

  ops-extension   torch.ops.weightsep.gather_pages_into (custom_op/gather.cpp: one memcpy per page)
  index_select    torch.index_select(pages, 0, table, out=buffer): the stock ATen gather
  torch-fallback  weightsep.ops' pure-torch in-place path (what runs when the extension cannot build)
  memcpy          buffer.copy_(the same bytes, contiguous): the floor for writing that many weights

Dequantising switch (quantised pages, weightsep.quant's formats): a random page table into a shared
block + exclusive rows, its pages held as float32 (gather_pages_into), int8, bfloat16 or int4
(gather_dequant_into), timed interleaved; us per call, the ratio to float32, and the bytes a switch
reads (values + scales of its pages, and the table). One row per size: 1 weight (the fixed cost of
a call), the offline suite's smallest and largest DNN, and one four times the largest.

Training (what the joint optimiser runs per DNN per step): `materialize` (cat + gather) forward,
then the gradient w.r.t. the page stores, with the extension (C++ kernels, C++ autograd,
scatter-add backward) against plain indexing (index + index_put backward); once for the gather
alone, once for a whole step of the offline suite's five models (batch 64, random inputs).

    python -m bench.gather                 # ~1 minute on 2 CPU cores; results/gather.json
    python -m bench.gather --device cuda
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from bench.timing import interleaved_s, write_result
from weightsep import dnn as dnn_mod
from weightsep import ops, quant
from weightsep.pages import materialize, n_pages
from weightsep.state import exclusive_entries

SWITCH_KERNELS = ("ops-extension", "index_select", "torch-fallback", "memcpy")
DEQUANT_FORMATS = ("int8", "bfloat16", "int4")  # against float32


def interleaved_us(fns: dict, rounds: int, calls: int, device: torch.device) -> dict[str, float]:
    """Median over `rounds` of the mean time per call (us) of `calls` back-to-back calls, kernels in turn."""
    return {k: s * 1e6 for k, s in interleaved_s(fns, rounds, calls, warmup=max(3, calls // 10), device=device).items()}


def random_table(n_logical: int, n_shared: int, n_exclusive: int, g: torch.Generator) -> torch.Tensor:
    """A page table: `n_exclusive` random logical pages exclusive (rows S + e), the rest random shared rows."""
    table = torch.randint(0, n_shared, (n_logical,), generator=g)
    excl = torch.randperm(n_logical, generator=g)[:n_exclusive]
    table[excl] = exclusive_entries(n_shared, 0, len(excl))
    return table


def switch_row(device: torch.device, page_size: int, n_logical: int, rounds: int, g: torch.Generator) -> dict:
    """One size: `n_logical` pages gathered from a store of max(n_logical, 128) shared + n/10 exclusive rows."""
    S, E = max(n_logical, 128), max(1, n_logical // 10)
    store = torch.randn(S + E, page_size, generator=g).to(device)
    table = random_table(n_logical, S, E, g).to(device)
    n = n_logical * page_size
    out = torch.empty(n, device=device)
    out_pages = out.view(n_logical, page_size)
    src = torch.randn(n, generator=g).to(device)
    ext = ops.gather_into_function()
    fns = {"ops-extension": lambda: ext(store, table, out),
           "index_select": lambda: torch.index_select(store, 0, table, out=out_pages),
           "torch-fallback": lambda: ops._gather_into_reference(store, table, out),
           "memcpy": lambda: out.copy_(src)}
    us = interleaved_us(fns, rounds, calls=200 if n_logical <= 128 else 40, device=device)
    ext(store, table, out)
    assert torch.equal(out, ops.gather_pages_reference(store, table, n))
    return {"pages": n_logical, "weights": n, "kib": n * 4 / 1024, "us": us,
            "extension / memcpy": us["ops-extension"] / us["memcpy"],
            "index_select / extension": us["index_select"] / us["ops-extension"]}


def switch_rows(device: torch.device, page_size: int, rounds: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)  # 128 pages: the prototype's case and the suite's ~63k-weight DNNs
    return [switch_row(device, page_size, n_logical, rounds, g) for n_logical in (16, 128, 1024)]


def dequant_row(device: torch.device, page_size: int, group: int, n_weights: int, rounds: int,
                g: torch.Generator) -> dict:
    """One DNN size: its pages from a store of max(n_logical, 128) shared + n/10 exclusive rows, the
    whole store in one format per kernel, the same rows named by every table."""
    n_logical = n_pages(n_weights, page_size)
    S, E = max(n_logical, 128), max(1, n_logical // 10)
    store = torch.randn(S + E, page_size, generator=g)
    rows = random_table(n_logical, S, E, g)
    out = torch.empty(n_weights, device=device)
    gather, dequant = ops.gather_into_function(), ops.gather_dequant_function()
    pages, table = store.to(device), rows.to(device)
    fns = {"float32": lambda: gather(pages, table, out)}
    read = {"float32": n_logical * (quant.page_bytes("float32", page_size, group) + 8)}
    for fmt in DEQUANT_FORMATS:
        codes = torch.full((S + E,), quant.CODE[fmt], dtype=torch.uint8)
        values, scales = quant.quantize(store, codes, group)
        q = ops.dequant_operands(quant.encode(values, codes, scales, group), page_size, group, device=device)
        entries = quant.table_entries(codes[rows], rows).to(device)
        fns[fmt] = lambda q=q, e=entries: dequant(q.pages, q.scales, q.layout, e, out)
        read[fmt] = n_logical * (quant.page_bytes(fmt, page_size, group) + 8)  # + 8: the int64 table entry
        fns[fmt]()
        assert torch.equal(out.cpu(), values[rows].reshape(-1)[:n_weights])
    us = interleaved_us(fns, rounds, calls=min(1000, max(10, 5_000_000 // n_weights)), device=device)
    return {"weights": n_weights, "pages": n_logical, "us": us,
            "ratio to float32": {k: us[k] / us["float32"] for k in DEQUANT_FORMATS}, "bytes read": read}


def dequant_rows(device: torch.device, page_size: int, group: int, rounds: int, names: list[str]) -> list[dict]:
    """1 weight (what a call costs beyond its kernel), the smallest and largest DNN, one 4x the largest."""
    g = torch.Generator().manual_seed(2)
    sizes = sorted({dnn_mod.get(n).build_model().n_weights for n in names})
    return [dequant_row(device, page_size, group, n, rounds, g) for n in (1, sizes[0], sizes[-1], 4 * sizes[-1])]


def training_rows(device: torch.device, page_size: int, rounds: int, names: list[str]) -> dict:
    g = torch.Generator().manual_seed(1)
    models = {n: dnn_mod.get(n).build_model().to(device) for n in names}
    S = 128
    pages = {}
    for name, model in models.items():
        logical = n_pages(model.n_weights, page_size)
        E = max(1, logical // 10)
        pages[name] = (torch.randn(E, page_size, generator=g).to(device).requires_grad_(),
                       random_table(logical, S, E, g).to(device), model.n_weights)
    shared = (torch.randn(S, page_size, generator=g) * 0.05).to(device).requires_grad_()
    x = {n: torch.randn(64, *m.input_shape, generator=g).to(device) for n, m in models.items()}
    y = {n: torch.randint(0, m.classes, (64,), generator=g).to(device) for n, m in models.items()}
    weights = {n: torch.randn(m.n_weights, generator=g).to(device) for n, m in models.items()}

    def gather_only(backend: str):
        def fn():
            for name, (excl, table, n) in pages.items():
                theta = materialize(shared, excl, table, n)
                torch.autograd.grad((theta * weights[name]).sum(), [shared, excl])
        return _with_backend(backend, fn)

    def joint_step(backend: str):
        def fn():
            for name, (excl, table, n) in pages.items():
                theta = materialize(shared, excl, table, n)
                loss = F.cross_entropy(models[name](x[name], theta), y[name])
                torch.autograd.grad(loss, [shared, excl])
        return _with_backend(backend, fn)

    out = {}
    k = len(models)
    for label, make in ((f"gather + backward, {k} DNNs", gather_only), (f"joint step, {k} DNNs (batch 64)", joint_step)):
        us = interleaved_us({"extension": make("extension"), "torch": make("torch")}, rounds, calls=5, device=device)
        out[label] = {"us": us, "torch / extension": us["torch"] / us["extension"]}
    return out


def _with_backend(backend: str, fn):
    def run():
        ops.set_backend(backend)
        try:
            fn()
        finally:
            ops.set_backend("extension")
    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--page-size", type=int, default=512)
    p.add_argument("--rounds", type=int, default=21, help="interleaved rounds (median reported; default 21)")
    p.add_argument("--dnns", nargs="+", default=None,
                   help="DNN shapes for the dequantising and training rows (default: the offline suite)")
    p.add_argument("--group", type=int, default=quant.DEFAULT_GROUP,
                   help=f"int4 weights per scale in the dequantising rows (default {quant.DEFAULT_GROUP})")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    try:
        ops.set_backend("extension")
    except ops.ExtensionError as exc:
        print(f"error: the extension did not build, nothing to compare: {exc}", file=sys.stderr)
        return 1
    switch = switch_rows(device, args.page_size, args.rounds)
    print(f"switch gather, in place, us per call (median of {args.rounds} interleaved rounds), page size {args.page_size}")
    print(f"{'pages':>6}{'KiB':>8}" + "".join(f"{k:>16}" for k in SWITCH_KERNELS) + f"{'ext/memcpy':>12}")
    for r in switch:
        print(f"{r['pages']:>6}{r['kib']:>8.0f}" + "".join(f"{r['us'][k]:>16.2f}" for k in SWITCH_KERNELS)
              + f"{r['extension / memcpy']:>11.2f}x")
    names = args.dnns or dnn_mod.suite()
    dequant = dequant_rows(device, args.page_size, args.group, args.rounds, names)
    print(f"\ndequantising switch gather, in place, us per call, int4 group {args.group}; KiB read per switch")
    print(f"{'weights':>8}{'pages':>6}" + "".join(f"{k:>10}" for k in ("float32", *DEQUANT_FORMATS))
          + "".join(f"{k + '/f32':>14}" for k in DEQUANT_FORMATS) + "   KiB read " + "/".join(("float32", *DEQUANT_FORMATS)))
    for r in dequant:
        print(f"{r['weights']:>8}{r['pages']:>6}" + "".join(f"{r['us'][k]:>10.2f}" for k in ("float32", *DEQUANT_FORMATS))
              + "".join(f"{r['ratio to float32'][k]:>13.2f}x" for k in DEQUANT_FORMATS)
              + "   " + "/".join(f"{b / 1024:.0f}" for b in r["bytes read"].values()))
    training = training_rows(device, args.page_size, max(5, args.rounds // 2), names)
    print("\ntraining gather (forward + gradient w.r.t. the pages), us per call")
    for label, r in training.items():
        print(f"  {label}: extension {r['us']['extension']:.0f}, torch {r['us']['torch']:.0f}"
              f"  -> torch / extension {r['torch / extension']:.2f}x")
    path = write_result("gather", {"command": "python -m bench.gather " + " ".join(sys.argv[1:] if argv is None else argv),
                                   "device": args.device, "page_size": args.page_size, "switch": switch,
                                   "group": args.group, "dequant_switch": dequant, "training": training})
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
