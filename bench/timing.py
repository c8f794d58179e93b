"""The timing helpers the benchmarks share: warm up, synchronise, report medians (and p95).

    from bench.timing import measure, write_result
    stats = measure(lambda: solve(cost), repeat=20)    # {'median_s': ..., 'p95_s': ..., 'runs': 20}
    seconds = interleaved_s({"a": f, "b": g}, rounds=9)  # {'a': median s per call, 'b': ...}, a and b in turn
    write_result("matching", {"rows": rows})            # results/matching.json, atomically
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from weightsep.files import atomic_write_text, source_commit

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


def sync(device: torch.device | None = None) -> None:
    """Wait for queued GPU work (`device`'s, or the current CUDA device's when None); no-op on CPU."""
    if device is None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    elif device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[], object], repeat: int = 10, warmup: int = 1) -> dict:
    """Run `fn` `warmup` times untimed, then `repeat` times; seconds as median and p95."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return {"median_s": statistics.median(times), "p95_s": p95, "runs": repeat}


def interleaved_s(fns: dict[str, Callable[[], object]], rounds: int, calls: int = 1, warmup: int = 1,
                  device: torch.device | None = None) -> dict[str, float]:
    """Median seconds per call of each function, timed in turn (one after another in every round, so
    machine load hits them alike): `warmup` untimed calls each, then `rounds` rounds in which each
    runs `calls` times back to back, synchronised (`sync(device)`) before its clock stops."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(t) for name, t in times.items()}


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


def write_result(name: str, payload: dict) -> Path:
    """Write results/NAME.json atomically (temp file + rename), with the machine description and the commit."""
    path = RESULTS_DIR / f"{name}.json"
    result = {"benchmark": name, "machine": machine(), "commit": source_commit(), **payload}
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return path
