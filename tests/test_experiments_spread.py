"""experiments/spread.py: one store packed under several seeds with the models and the control held, the
spread it reports, kept runs, and `spread --quick` end to end."""
import json
import subprocess
import sys

import pytest
from conftest import REPO

from experiments import harness, spread


def summary(pp: dict[str, float], ratio: float = 4.0, control: float = 0.9) -> dict:
    """A `run_seed` summary with what `row` reads."""
    return {"rows": [{"name": n, "packed_minus_control_pp": v, "control_accuracy": control} for n, v in pp.items()],
            "totals": {"ratio_by_count": ratio}}


def test_a_row_counts_packings_that_keep_every_dnn_and_each_dnns_spread():
    runs = [summary({"a": -0.5, "b": 1.0}), summary({"a": -1.5, "b": 1.0}), summary({"a": -1.0, "b": 2.0})]
    r = spread.row("N=2", 4.0, runs)
    assert r["kept_every_dnn"] == 2 and r["worst_pp"] == [-0.5, -1.5, -1.0]  # exactly -1 pp is within
    assert r["per_dnn_pp"] == {"a": [-0.5, -1.5, -1.0], "b": [1.0, 1.0, 2.0]}
    assert r["per_dnn_sd_pp"]["a"] == pytest.approx(0.5) and r["per_dnn_sd_pp"]["b"] == pytest.approx(0.57735, rel=1e-4)
    assert r["median_sd_pp"] == pytest.approx((0.5 + 0.57735) / 2, rel=1e-4)
    text = spread.answer([r])
    assert "N=2 at 4x: 2 of 3" in text and "0.50-0.58 pp" in text


def test_the_first_packing_trains_the_control_and_the_others_hold_it(tmp_path, monkeypatch):
    plan = {"N=2": (4.0, 3.0)}
    kept = tmp_path / spread.code() / "threads1" / "N2" / "r3" / f"s{spread.MODELS_SEED}.json"
    kept.parent.mkdir(parents=True)
    kept.write_text(json.dumps(summary({"satellite": 0.0, "watch": 0.0}, 3.0)))
    calls = []

    def run_one(dnns, ratio, seed, control, budgets):
        calls.append((ratio, seed, control))
        return summary({n: -0.1 for n in dnns}, ratio, control=0.8)

    monkeypatch.setattr(spread, "run_one", run_one)
    out = spread.run_all(plan, 2, {}, tmp_path, fresh=False, workers=1)
    seeds = spread.packing_seeds(2)
    assert len(out) == 4 and calls[0] == (4.0, spread.MODELS_SEED, None)  # the set's first: trains its control
    assert [c[:2] for c in calls[1:]] == [(4.0, seeds[1]), (3.0, seeds[1])]  # the kept one is read
    assert all(c[2] == {"satellite": 0.8, "watch": 0.8} for c in calls[1:])  # held: the first run's
    assert (tmp_path / spread.code() / "threads1" / "N2" / "r4" / f"s{seeds[1]}.json").is_file()


def test_the_plot_draws_from_rows(tmp_path):
    rows = [spread.row("N=10", r, [summary({"a": -0.5 + k / 10, "b": 0.3}) for k in range(3)]) for r in (6.0, 4.0)]
    result = {"rows": rows, "table": "", "answer": spread.answer(rows), "setup": ""}
    assert harness.write_outputs("spread", result, spread.plot, tmp_path).stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.e2e
def test_spread_quick_packs_one_store_twice_through_the_pipeline(tmp_path, cache_with_data):
    """Its runs kept in the test's own cache (a smoke run's), its outputs under the test's results."""
    done = subprocess.run([sys.executable, "-m", "experiments", "spread", "--quick", "--results", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "experiments" / "spread.json").read_text())
    (row,) = result["rows"]
    assert row["set"] == "N=2" and row["packings"] == spread.QUICK["repeats"] and len(row["per_dnn_pp"]) == 2
    runs = list((cache_with_data / "experiments" / "runs" / "spread").rglob("*.json"))
    assert len(runs) == spread.QUICK["repeats"]
    first, second = (json.loads(p.read_text()) for p in sorted(runs))  # s101 before s23: the second holds the first's control
    assert [r["control_accuracy"] for r in first["rows"]] == [r["control_accuracy"] for r in second["rows"]]
