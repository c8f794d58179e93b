"""Fisher benchmark: the paper's one-at-a-time loop vs batched per-sample gradients, and the default.

Speed (always): the WS MNIST net (65,402 weights, UNTRAINED glorot weights and uniform random inputs:
timing does not depend on either), loop vs batched "predicted" at K = 100 and 1000 for each chunk
size, runs interleaved (loop, batched per chunk, loop, ...) so machine load hits all alike; also the
default `FisherConfig()` per DNN and the one-time cost of the first `torch.func` call in a process.
Quality (--quality): trains that net on real MNIST digits (t10k: 8k train / 2k eval, ~1 min on one
thread, cached outside the repository), then measures how stable each estimator's per-page
contribution density (cd) is across seeds and K, and how the estimators differ.

    python -m bench.fisher                       # speed -> results/fisher.json
    python -m bench.fisher --quality             # speed + the estimator study behind the default
"""
from __future__ import annotations

import argparse
import gzip
import statistics
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.timing import measure, write_result
from weightsep.dnn import REPO_ROOT, cache_dir
from weightsep.fisher import ESTIMATORS, FisherConfig, compute_fisher
from weightsep.model import Conv, TemplateNet
from weightsep.pages import to_pages

MNIST_DIR = REPO_ROOT.parent / "shared" / "fixtures" / "originals" / "mnist_test"
TARGET_SPEEDUP = 2.5  # batched vs loop at K = 1000, from the issue


def mnist_net() -> TemplateNet:
    """WS's MNIST architecture (docs/originals.md §1.1): 65,402 weights."""
    return TemplateNet((1, 28, 28), [Conv(3, 3, 16), Conv(3, 3, 32), Conv(3, 3, 48)], dense=[256, 128], classes=10)


def speed(ks: list[int], chunks: list[int], repeat: int) -> dict:
    torch.manual_seed(0)
    net = mnist_net()
    theta = net.theta.detach()
    x = torch.rand(4000, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(4000, dtype=torch.long)

    start = time.perf_counter()
    compute_fisher(net, theta, x, y, FisherConfig("predicted", 2, normalize=False))
    first_call_s = time.perf_counter() - start  # mostly torch.func importing torch._dynamo, once per process

    rows = []
    for k in ks:
        runs = {"loop": lambda k=k: compute_fisher(net, theta, x, y, FisherConfig("paper", k, normalize=False))}
        for c in chunks:
            runs[f"chunk {c}"] = lambda k=k, c=c: compute_fisher(
                net, theta, x, y, FisherConfig("predicted", k, chunk=c, normalize=False))
        for fn in runs.values():  # warm up outside the timed rounds
            fn()
        times = {name: [] for name in runs}
        for _ in range(repeat):
            for name, fn in runs.items():
                times[name].append(measure(fn, repeat=1, warmup=0)["median_s"])
        loop_s = statistics.median(times["loop"])
        print(f"K={k}: loop {loop_s:.3f} s ({1e3 * loop_s / k:.2f} ms/sample)")
        for c in chunks:
            batched_s = statistics.median(times[f"chunk {c}"])
            ratio = loop_s / batched_s
            print(f"  batched chunk {c:4d}: {batched_s:.3f} s  speed-up {ratio:.2f}x")
            rows.append({"k": k, "chunk": c, "loop_median_s": loop_s, "batched_median_s": batched_s,
                         "speedup": ratio, "loop_runs_s": times["loop"], "batched_runs_s": times[f"chunk {c}"]})

    default = FisherConfig()
    stats = measure(lambda: compute_fisher(net, theta, x, y, default), repeat=repeat)
    print(f"default {default.estimator} K={default.k} chunk={default.chunk}: {stats['median_s']:.3f} s per DNN "
          f"(p95 {stats['p95_s']:.3f}); first torch.func call in a process: {first_call_s:.2f} s once")
    at_target = [r for r in rows if r["k"] == max(ks)]
    best = max(at_target, key=lambda r: r["speedup"])
    default_row = next((r for r in at_target if r["chunk"] == default.chunk), None)
    verdict = "met" if best["speedup"] >= TARGET_SPEEDUP else "NOT met"
    print(f"best at K={max(ks)}: chunk {best['chunk']}, {best['speedup']:.2f}x "
          f"(target >= {TARGET_SPEEDUP}x: {verdict})")
    return {"weights": "untrained (glorot, seed 0), uniform random inputs", "n_weights": net.n_weights,
            "rows": rows, "first_call_s": first_call_s, "target_speedup": TARGET_SPEEDUP,
            "best": {"k": best["k"], "chunk": best["chunk"], "speedup": best["speedup"]},
            "default_chunk_speedup": default_row and default_row["speedup"],
            "default": {"estimator": default.estimator, "k": default.k, "chunk": default.chunk,
                        "median_s": stats["median_s"], "p95_s": stats["p95_s"]}}


def load_mnist(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The 10k MNIST test digits (IDX gz), x / 255 as [N, 1, 28, 28], labels int64."""
    raw = gzip.open(root / "t10k-images-idx3-ubyte.gz").read()
    x = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32) / 255
    y = np.frombuffer(gzip.open(root / "t10k-labels-idx1-ubyte.gz").read(), np.uint8, offset=8).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def trained_mnist(x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[TemplateNet, float]:
    """Adam lr 1e-3, batch 100 on the first 8k digits; cached by step count. Returns net, eval accuracy."""
    path = cache_dir() / "bench" / f"fisher_mnist_{steps}.pt"
    torch.manual_seed(0)
    net = mnist_net()
    if path.is_file():
        net.theta.data.copy_(torch.load(path)["theta"])
    else:
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(0)
        for _ in range(steps):
            batch = torch.randint(0, 8000, (100,), generator=g)
            loss = F.cross_entropy(net(x[batch]), y[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"theta": net.theta.detach().clone()}, path)
    with torch.no_grad():
        accuracy = (net(x[8000:]).argmax(1) == y[8000:]).float().mean().item()
    return net, accuracy


def page_cd(fisher: torch.Tensor, page_size: int) -> np.ndarray:
    """Contribution density per logical page: sum of F in the page / sum of F."""
    mass = to_pages(fisher.double(), page_size).sum(1)
    return (mass / mass.sum()).numpy()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def top_mass_set(cd: np.ndarray, mass: float = 0.9) -> set[int]:
    """The fewest highest-cd pages holding `mass` of the Fisher (WS's exclusive pages at margin 0.1)."""
    order = np.argsort(-cd)
    return set(order[: int(np.searchsorted(np.cumsum(cd[order]), mass)) + 1].tolist())


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def compare(f1: torch.Tensor, f2: torch.Tensor, page_size: int) -> dict:
    """How alike two Fisher vectors are where it matters: page ranking, 90%-mass page set, mass moved."""
    c1, c2 = page_cd(f1, page_size), page_cd(f2, page_size)
    s1, s2 = top_mass_set(c1), top_mass_set(c2)
    w1, w2 = f1.double() / f1.double().sum(), f2.double() / f2.double().sum()
    return {"spearman_pages": spearman(c1, c2), "jaccard_top90": jaccard(s1, s2),
            "pages_top90": (len(s1) + len(s2)) / 2, "page_mass_moved": 0.5 * float(np.abs(c1 - c2).sum()),
            "weight_mass_moved": 0.5 * float((w1 - w2).abs().sum())}


def mean_dicts(ds: list[dict]) -> dict:
    return {key: statistics.mean(d[key] for d in ds) for key in ds[0]}


def quality(mnist_dir: Path, steps: int, page_sizes: list[int], seeds: int, reference_k: int) -> dict:
    x, y = load_mnist(mnist_dir)
    net, accuracy = trained_mnist(x, y, steps)
    theta, x_train, y_train = net.theta.detach(), x[:8000], y[:8000]
    print(f"trained WS MNIST net: {steps} Adam steps, eval accuracy {accuracy:.4f}; {seeds} seeds; "
          f"rho, Jaccard: mean over seed pairs (vs ref: over seeds, ref = predicted K={reference_k})")

    def fisher(estimator: str, k: int, seed: int) -> torch.Tensor:
        return compute_fisher(net, theta, x_train, y_train, FisherConfig(estimator, k, seed=seed, normalize=False))

    reference = fisher("predicted", reference_k, 10_000)
    runs = [("predicted", k) for k in (50, 200, 1000, 4000)] + [("empirical", 1000), ("true", 100), ("true", 1000)]
    stability, store = [], {}
    for estimator, k in runs:
        start = time.perf_counter()
        fs = [fisher(estimator, k, seed) for seed in range(seeds)]
        seconds = (time.perf_counter() - start) / seeds
        store[estimator, k] = fs
        for page_size in page_sizes:
            between = mean_dicts([compare(a, b, page_size) for a, b in combinations(fs, 2)])
            to_ref = mean_dicts([compare(f, reference, page_size) for f in fs])
            stability.append({"estimator": estimator, "k": k, "page_size": page_size, "seconds": seconds,
                              "between_seeds": between, "to_reference": to_ref})
            print(f"{estimator:9s} K={k:5d} P={page_size:3d} ({seconds:5.2f} s): seeds rho "
                  f"{between['spearman_pages']:.3f}, top-90% Jaccard {between['jaccard_top90']:.3f}, "
                  f"page mass moved {between['page_mass_moved']:.3f}, weight mass moved "
                  f"{between['weight_mass_moved']:.3f} | vs ref: rho {to_ref['spearman_pages']:.3f}, "
                  f"Jaccard {to_ref['jaccard_top90']:.3f}, top-90% pages {to_ref['pages_top90']:.1f}")

    pairs = []
    names = [("predicted", 4000), ("empirical", 1000), ("true", 1000)]
    for (e1, k1), (e2, k2) in combinations(names, 2):
        for page_size in page_sizes:
            c = mean_dicts([compare(a, b, page_size) for a, b in zip(store[e1, k1], store[e2, k2])])
            pairs.append({"a": f"{e1} K={k1}", "b": f"{e2} K={k2}", "page_size": page_size, **c})
            print(f"{e1} K={k1} vs {e2} K={k2}, P={page_size}: rho {c['spearman_pages']:.3f}, "
                  f"top-90% Jaccard {c['jaccard_top90']:.3f}, page mass moved {c['page_mass_moved']:.3f}")
    return {"model": f"WS MNIST, {steps} Adam steps, eval accuracy {accuracy:.4f}",
            "seeds": seeds, "reference": f"predicted K={reference_k}", "stability": stability, "estimators": pairs}


def main(*, ks: list[int], chunks: list[int], repeat: int, run_quality: bool, mnist_dir: Path, steps: int,
         page_sizes: list[int], seeds: int, reference_k: int) -> Path:
    torch.set_num_threads(1)
    payload = {"estimators": {name: e.description for name, e in ESTIMATORS.items()},
               "speed": speed(ks, chunks, repeat)}
    if run_quality:
        payload["quality"] = quality(mnist_dir, steps, page_sizes, seeds, reference_k)
    path = write_result("fisher", payload)
    print(f"wrote {path}")
    return path


def cli() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fisher", description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", type=int, nargs="+", default=[100, 1000], help="sample counts K to time")
    parser.add_argument("--chunks", type=int, nargs="+", default=[32, 64, 128, 256, 512],
                        help="per-sample gradients held at once by the batched estimator")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved timed rounds (median reported)")
    parser.add_argument("--quality", action="store_true", help="also run the estimator study on a trained MNIST net")
    parser.add_argument("--mnist-dir", type=Path, default=MNIST_DIR, help="folder with the t10k IDX .gz files")
    parser.add_argument("--steps", type=int, default=1500, help="Adam steps to train the MNIST net")
    parser.add_argument("--page-sizes", type=int, nargs="+", default=[512, 100],
                        help="page sizes for contribution densities (WS 512, NWV 100)")
    parser.add_argument("--seeds", type=int, default=4, help="independent sample draws per (estimator, K)")
    parser.add_argument("--reference-k", type=int, default=16000, help="K of the reference Fisher")
    args = parser.parse_args()
    if args.quality and not (args.mnist_dir / "t10k-images-idx3-ubyte.gz").is_file():
        parser.error(f"--quality needs the MNIST t10k IDX .gz files; none in {args.mnist_dir} (set --mnist-dir)")
    main(ks=args.k, chunks=args.chunks, repeat=args.repeat, run_quality=args.quality, mnist_dir=args.mnist_dir,
         steps=args.steps, page_sizes=args.page_sizes, seeds=args.seeds, reference_k=args.reference_k)


if __name__ == "__main__":
    cli()
