"""experiments/max_loss.py: the grid each set is measured against, the comparison with the grid's
smallest store that keeps every DNN, kept runs, and `max_loss --quick` end to end."""
import json
import subprocess
import sys

import pytest
from conftest import REPO

from experiments import harness
from experiments import max_loss as ml


def summary(pp: dict[str, float], weights: int, ratio: float, seconds: float = 10.0, tried=None) -> dict:
    """A `run` summary as the kept JSON holds it (one seed), with what `row` reads."""
    out = {"rows": [{"name": n, "packed_minus_control_pp": v} for n, v in pp.items()],
           "totals": {"packed_weights": weights, "ratio_by_count": ratio},
           "timings": {"standalone_seconds": 100.0, "optimize_seconds": seconds, "pack_seconds": 1.0,
                       "peak_memory_mb": 500.0}}
    if tried is not None:
        out["max_loss"] = {"rounds": [{"ratio": r} for r in tried]}
    return out


def test_the_grid_starts_at_the_smallest_store_and_steps_down_the_ladder():
    ten = ml.SETS["N=10"]
    assert ml.grid(ten) == [ml.smallest_ratio(ten), *ml.LADDER]
    assert ml.grid(ml.SETS["N=2"]) == [ml.smallest_ratio(ml.SETS["N=2"]), 1.75, 1.5, 1.25]
    for dnns in ml.SETS.values():
        g = ml.grid(dnns)
        assert g == sorted(g, reverse=True) and g[1] < g[0]
    # mobilenet_signs alone needs 419 shared pages: the set's smallest store is well below the main job's 6x
    assert ml.smallest_ratio(ml.SETS["mobilenet_signs+5"]) == pytest.approx(2.43)


def test_the_examples_sets_name_their_folder_and_run_on_fresh_seeds_only():
    assert ml.folders(ml.SETS["N=6"]) == [] and ml.folders(ml.SETS["gru_watch+5"]) == [ml.EXAMPLES]
    assert ml.seeds_of("N=6", ml.SEEDS) == ml.SEEDS
    assert ml.seeds_of("gru_watch+5", ml.SEEDS) == (26, 27, 28)
    assert all(set(d) >= set(ml.FIVE) and len(d) == 6 for d in ml.EXAMPLE_SETS.values())


def test_a_row_compares_the_search_with_the_smallest_grid_store_that_keeps_every_dnn_on_test():
    search = summary({"a": -0.4, "b": 0.2}, weights=90_000, ratio=3.5, seconds=30.0, tried=[4.5, 4.0, 3.5])
    grid = {4: summary({"a": -1.3, "b": 0.0}, 80_000, 4.0),  # a beyond 1 pp: not kept
            3.5: summary({"a": -0.9, "b": 100 * (0.5 - 0.51)}, 88_000, 3.5),  # exactly 1 pp (with float error): kept
            3: summary({"a": 0.0, "b": 0.1}, 100_000, 3.0)}
    r = ml.row("N=2", 23, search, grid)
    assert r["search_within"] and r["search_worst_pp"] == -0.4 and r["search_ratios_tried"] == [4.5, 4.0, 3.5]
    assert r["grid_smallest_weights"] == 88_000 and r["size_vs_grid"] == pytest.approx(90_000 / 88_000)
    assert r["grid_kept"] == {"4": False, "3.5": True, "3": True}
    assert r["search_seconds"] == 31.0 and r["time_vs_main_job"] is None  # no ratio-6 run: no main job to time
    grid[6] = summary({"a": -3.0, "b": 0.0}, 60_000, 6.0, seconds=9.0)
    assert ml.row("N=2", 23, search, grid)["time_vs_main_job"] == pytest.approx(31.0 / 10.0)
    first = summary({"a": 0.0}, 60_000, 6.0, seconds=30.0, tried=[6.0, 4.0])
    first["timings"]["search_seconds"] = 20.0  # the later passes, beside the main job's 31 s in the same run
    assert ml.row("N=10", 23, first, grid)["time_vs_main_job"] == pytest.approx(51.0 / 31.0)
    worse = ml.row("N=2", 23, summary({"a": -1.2, "b": 0.0}, 70_000, 4.5, tried=[4.5]), {4: grid[4]})
    assert not worse["search_within"] and worse["size_vs_grid"] is None  # no grid store kept every DNN


def test_the_answer_counts_seeds_within_the_bound_and_the_size_tolerance_fresh_seeds_apart_from_development_ones():
    rows = [{"set": "N=10", "seed": 26, "search_within": True, "size_vs_grid": 1.05, "dnns": 10, "time_vs_main_job": 2.5},
            {"set": "N=10", "seed": 27, "search_within": False, "size_vs_grid": 1.2, "dnns": 10, "time_vs_main_job": 2.9},
            {"set": "N=2", "seed": 26, "search_within": True, "size_vs_grid": None, "dnns": 2, "time_vs_main_job": None},
            {"set": "N=2", "seed": 23, "search_within": False, "size_vs_grid": 0.9, "dnns": 2, "time_vs_main_job": None},
            {"set": "gru_watch+5", "seed": 28, "search_within": True, "size_vs_grid": 0.8, "dnns": 6, "time_vs_main_job": None}]
    text = ml.answer(rows)
    fresh, rest = text.split(" Seeds 28 (the examples' sets): ")
    examples, development = rest.split(" Seeds 23 (suite sets, development): ")
    assert fresh.startswith("Seeds 26, 27 (suite sets): in 2 of 3 set-seeds every DNN")
    assert "in 1 of 2 (no grid point kept every DNN in 1); both in 1." in fresh
    assert examples.startswith("in 1 of 1 set-seeds") and "in 1 of 1; both in 1." in examples
    assert development.startswith("in 0 of 1 set-seeds") and "in 1 of 1; both in 0." in development
    assert "took 2.50-2.90x the main job's time" in text
    assert ml.answer(rows[3:4]).startswith("Seeds 23 (suite sets, development): in 0 of 1")


def test_a_grid_chain_stops_at_its_first_run_that_keeps_every_dnn_and_kept_runs_are_read(tmp_path, monkeypatch):
    sets = {"N=2": ml.SETS["N=2"]}
    knobs = [f"{r:g}" for r in ml.grid(sets["N=2"])]  # the smallest store's ratio, 1.75, 1.5, 1.25
    kept = tmp_path / ml.code(knobs[0]) / "N2" / "s7" / f"{knobs[0]}.json"
    kept.parent.mkdir(parents=True)
    kept.write_text(json.dumps(summary({"a": -2.0}, 1, 2.0)))  # kept: read, not run; beyond the bound
    ran = []

    def fake(dnns, seed, knob, flags, path):
        ran.append(knob)
        out = summary({"a": -0.5 if knob == "1.5" else -1.5}, 1, float(knob) if knob != ml.SEARCH else 1.0)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out))  # kept, as run_one keeps it
        return out

    monkeypatch.setattr(ml, "run_one", fake)
    chains = [[("N=2", 7, ml.SEARCH)], [("N=2", 7, k) for k in knobs]]
    out = ml.run_all(chains, sets, (), tmp_path, workers=2, fresh=False)
    assert ran[0] == ml.SEARCH  # a seed's first run goes alone: it trains the stand-alone models
    assert sorted(ran[1:]) == ["1.5", "1.75"]  # 1.5 kept every DNN: 1.25 is not run
    assert set(out) == {("N=2", 7, k) for k in (ml.SEARCH, knobs[0], "1.75", "1.5")}
    assert out[("N=2", 7, knobs[0])]["rows"][0]["packed_minus_control_pp"] == -2.0
    (kept.parent / "1.25.json").write_text(json.dumps(summary({"a": 0.0}, 1, 1.25)))  # as an older full grid kept it
    ran.clear()
    again = ml.run_all(chains, sets, (), tmp_path, workers=2, fresh=False)
    assert ran == [] and ("N=2", 7, "1.25") in again  # every run kept: read, past the first that keeps too


def test_a_grid_run_is_keyed_without_the_search_so_a_new_search_rule_keeps_the_grid():
    from weightsep import files

    pipeline, package = ml.dnn_mod.REPO_ROOT / "weightsep" / "pipeline.py", ml.dnn_mod.REPO_ROOT / "weightsep"
    assert ml.code(ml.SEARCH) == files.behaviour_hash(pipeline, package)
    assert ml.code("4") == ml.code("2.5") == files.behaviour_hash(pipeline, package, skip=("bound.py",)) != ml.code(ml.SEARCH)


def test_the_plot_draws_from_rows(tmp_path):
    rows = [ml.row(name, seed, summary({"a": -0.5 + seed / 10, "b": 0.3}, 90_000 + seed, 3.0, tried=[3.5, 3.0]),
                   {3: summary({"a": -0.2, "b": 0.1}, 88_000, 3.0)}) for name in ("N=2", "N=10") for seed in (1, 2, 3)]
    result = {"rows": rows, "table": "", "answer": ml.answer(rows), "setup": ""}
    assert harness.write_outputs("max_loss", result, ml.plot, tmp_path).stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.e2e
def test_max_loss_quick_runs_the_search_and_the_grid_through_the_cli(tmp_path, cache_with_data):
    """Its runs kept in the test's own cache (a smoke run's), its outputs under the test's results."""
    done = subprocess.run([sys.executable, "-m", "experiments", "max_loss", "--quick", "--results", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "experiments" / "max_loss.json").read_text())
    (row,) = result["rows"]
    assert row["set"] == "N=2" and 1 <= len(row["grid_kept"]) <= len(ml.grid(ml.SETS["N=2"]))
    assert list(row["grid_kept"].values()).count(True) <= 1  # the grid stops at its first store that keeps every DNN
    assert row["search_ratios_tried"][0] == pytest.approx(ml.smallest_ratio(ml.SETS["N=2"]), abs=0.01)  # 6x: not reachable
    assert row["search_weights"] > 0
    assert result["answer"].startswith("Seeds 0 (suite sets): in ")
    assert len(list((cache_with_data / "experiments" / "runs" / "max_loss").rglob("*.json"))) == 1 + len(row["grid_kept"])
