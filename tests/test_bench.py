"""Smoke tests of the benchmarks' measuring functions on tiny inputs (correctness, not speed)."""
import torch

from bench import gather as bench_gather
from bench import switching
from weightsep import dnn


def test_gather_bench_row_checks_and_reports_every_kernel():
    row = bench_gather.switch_row(torch.device("cpu"), page_size=8, n_logical=4, rounds=2, g=torch.Generator().manual_seed(0))
    assert set(row["us"]) == set(bench_gather.SWITCH_KERNELS)
    assert all(t > 0 for t in row["us"].values())
    assert row["weights"] == 32 and row["extension / memcpy"] > 0


def test_switching_ladder_on_a_small_synthetic_store(tmp_path):
    models = {n: dnn.get(n).build_model() for n in ("letters", "satellite")}
    state, synth_models = switching.synthetic_state(3, models, exclusive=2)
    result = switching.run_scale("tiny", state, synth_models, torch.device("cpu"), switches=12, seed=0, tmp=tmp_path)
    rungs = result["rungs"]
    assert set(rungs) == set(switching.RUNGS)
    assert rungs["c-resident"]["bytes_moved_per_switch"] == 0
    assert rungs["d-gather"]["bytes_moved_per_switch"] < rungs["b-host-copy"]["bytes_moved_per_switch"]
    assert rungs["e-zero-copy"]["device_bytes"] < rungs["d-gather"]["device_bytes"]
    assert set(result["targets_met"]) >= set(switching.TARGETS)
    assert "tiny: 3 DNNs" in switching.table(result)
