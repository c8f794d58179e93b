"""Smoke tests of the benchmarks' measuring functions on tiny inputs (correctness, not speed)."""
import pytest
import torch

from bench import gather as bench_gather
from bench import switching
from weightsep import dnn


def test_gather_bench_row_checks_and_reports_every_kernel():
    row = bench_gather.switch_row(torch.device("cpu"), page_size=8, n_logical=4, rounds=2, g=torch.Generator().manual_seed(0))
    assert set(row["us"]) == set(bench_gather.SWITCH_KERNELS)
    assert all(t > 0 for t in row["us"].values())
    assert row["weights"] == 32 and row["extension / memcpy"] > 0


def test_gather_bench_dequant_row_checks_and_reports_every_format():
    row = bench_gather.dequant_row(torch.device("cpu"), page_size=16, group=8, n_weights=57, rounds=2,
                                   g=torch.Generator().manual_seed(0))
    assert set(row["us"]) == {"float32", *bench_gather.DEQUANT_FORMATS} and all(t > 0 for t in row["us"].values())
    assert set(row["ratio to float32"]) == set(bench_gather.DEQUANT_FORMATS)
    assert row["bytes read"]["int4"] < row["bytes read"]["int8"] < row["bytes read"]["float32"]


def test_switching_ladder_on_a_small_synthetic_store(tmp_path):
    models = {n: dnn.get(n).build_model() for n in ("letters", "satellite")}
    state, synth_models = switching.synthetic_state(3, models, exclusive=2)
    result = switching.run_scale("tiny", state, synth_models, torch.device("cpu"), switches=12, seed=0, tmp=tmp_path)
    rungs = result["rungs"]
    assert set(rungs) == set(switching.RUNGS)
    assert rungs["c-resident"]["bytes_moved_per_switch"] == 0
    assert rungs["d-gather"]["bytes_moved_per_switch"] < rungs["b-host-copy"]["bytes_moved_per_switch"]
    assert rungs["e-zero-copy"]["device_bytes"] < rungs["d-gather"]["device_bytes"]
    assert set(result["targets_met"]) >= set(switching.TARGETS) | set(switching.QUANTISED_TARGETS)
    moved = {fmt: rungs[f"d-gather-{fmt}"]["bytes_moved_per_switch"] for fmt in switching.QUANTISED}
    # exclusive pages of 512 at 2048, 1024, 516 and 288 bytes, plus the same page table
    assert rungs["d-gather"]["bytes_moved_per_switch"] > moved["float16"] > moved["int8"] > moved["int4"]
    assert set(rungs["d-gather-int8"]["device_bytes_by_format"]) == {"int8", "page_table", "weight_buffer"}
    assert "tiny: 3 DNNs" in switching.table(result)


def test_distributed_bench_measures_collectives_on_two_ranks_and_models_by_the_formula():
    import pytest

    from bench import distributed as bench_distributed
    curve = bench_distributed.measure_collectives(repeats=1, sizes=(1024, 4096))
    assert [c["floats"] for c in curve] == [1024, 4096] and [c["bytes"] for c in curve] == [4096, 16384]
    assert all(c["allreduce_s"] > 0 and c["adam_s"] > 0 for c in curve)
    curve = [{"floats": 1024, "allreduce_s": 1e-4, "adam_s": 1e-5}, {"floats": 1 << 20, "allreduce_s": 1e-2, "adam_s": 1e-3}]
    rows = bench_distributed.model(per_dnn_step_s=0.01, shared_floats_per_dnn=1000.0, curve=curve)
    two = next(m for m in rows if m["dnns"] == 10 and m["ranks"] == 2)
    network = 2 * 1 / 2 * 4 * 10_000 / bench_distributed.NETWORK_BYTES_PER_SECOND + 2 * 1 * 1e-4  # ring: bytes + latency
    assert two["compute_s"] == pytest.approx(0.05) and two["allreduce_network_s"] == pytest.approx(network)
    assert two["step_s"] == pytest.approx(0.05 + two["adam_s"] + network)
    assert two["communication_share"] == pytest.approx(network / two["step_s"])
    assert not [m for m in rows if m["ranks"] > m["dnns"]]
    shares = [m["communication_share"] for m in rows if m["dnns"] == 100]
    assert shares == sorted(shares)  # more ranks, more of each step is communication


@pytest.mark.slow
def test_train_speed_quick_runs_old_and_new_side_by_side(tmp_path, monkeypatch):
    import json
    import math

    import pytest

    from bench import train_speed
    monkeypatch.setenv("WEIGHTSEP_OPS_BACKEND", "torch")  # the baseline's extension is not built in tmp_path
    out = tmp_path / "out"
    assert train_speed.main(["--quick", "--parts", "dnns,joint", "--dnns", "letters", "satellite",
                             "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["train_speed.json", "train_speed.png"]
    result = json.loads((out / "train_speed.json").read_text())
    assert result["old"]["commit"].startswith(train_speed.BASELINE) and result["rounds"] == 1
    dnns = result["parts"]["dnns"]
    for label in ("old", "new"):
        rows = dnns[label]["median"]
        assert set(rows) == {"letters", "satellite", "all"}
        assert all(r["ms"] > 0 and r["flops"] > 0 and 0 < r["share"] < 1 for r in rows.values())
        assert rows["all"]["ms"] == pytest.approx(rows["letters"]["ms"] + rows["satellite"]["ms"])
        assert dnns[label]["sgemm_gflops"] > 0
        step = result["parts"]["joint"][label]["median"]["step"]
        # a difference of two timings (2 + steps against 2 steps): --quick's few steps on a loaded machine can
        # make it negative, so the test checks that it is a number, not its size (timings are the bench's)
        assert math.isfinite(step["ms_per_step"]) and step["dnns"] == 2 and step["dnn_batches_per_step"] >= 2
    assert set(dnns["speedup"]) == {"letters", "satellite", "all"}
    assert math.isfinite(result["parts"]["joint"]["speedup"]["step"])
    assert [t["target"] for t in result["targets"]] == ["joint step speed-up", "forward+backward share of sgemm, all",
                                                       "forward+backward share of sgemm, worst DNN"]


def test_forward_layout_variants_compute_the_same_logits():
    """bench.forward_layout times the same arithmetic four ways: each variant's logits agree."""
    from bench.forward_layout import VARIANTS, forward
    from weightsep.model import Conv, TemplateNet

    torch.manual_seed(0)
    net = TemplateNet((3, 16, 16), [Conv(3, 3, 8), Conv(3, 3, 16)], dense=[32], classes=5)
    x = torch.randn(4, 3, 16, 16).half()
    outs = {v: forward(net, x, *flags) for v, flags in VARIANTS.items()}
    for v, out in outs.items():
        torch.testing.assert_close(out, outs["plain"], rtol=1e-5, atol=1e-5, msg=v)
