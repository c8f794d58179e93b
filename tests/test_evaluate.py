"""The summary table's totals against hand-worked numbers, and bytes against what execution holds."""
import pytest
import torch

from weightsep.evaluate import make_row, spread, summarize
from weightsep.execution import PackedModel
from weightsep.model import TemplateNet
from weightsep.pack import PackConfig, add_vnn, new_state

P, S = 64, 6


def state_of_two():
    """a: 8-24-3 (291 weights, 5 pages), b: 8-20-3 (243 weights, 4 pages), one exclusive page each."""
    config = PackConfig(page_size=P, n_shared=S)
    state, models = new_state(config, S), {}
    for seed, (name, hidden) in enumerate([("a", 24), ("b", 20)]):
        torch.manual_seed(seed)
        models[name] = TemplateNet((8,), [], dense=[hidden], classes=3)
        theta = models[name].theta.detach().clone()
        state, _ = add_vnn(state, name, theta, torch.rand_like(theta), config, n_exclusive=1)
    return state, models


def test_summary_totals_by_hand():
    state, _ = state_of_two()
    rows = [make_row(state, "a", 0.90, 0.88, control_accuracy=0.91), make_row(state, "b", 0.80, 0.81, control_accuracy=0.80)]
    t = summarize(state, rows).totals
    assert [r.weights for r in rows] == [291, 243] and [r.pages for r in rows] == [5, 4]
    assert t.standalone_weights == 534
    assert t.packed_weights == (6 + 2) * 64 == 512
    assert t.ratio_by_count == pytest.approx(534 / 512)
    assert t.standalone_bytes == 534 * 4
    assert t.packed_bytes == 512 * 4 + 9 * 8  # float32 pages + nine int64 page-table entries
    assert t.ratio_by_bytes == pytest.approx(534 * 4 / (512 * 4 + 72))
    assert t.mean_difference_pp == pytest.approx((-2.0 + 1.0) / 2)
    assert t.worst_difference_pp == pytest.approx(-2.0)
    assert t.mean_packed_minus_control_pp == pytest.approx((-3.0 + 1.0) / 2)
    assert t.worst_packed_minus_control_pp == pytest.approx(-3.0)


def test_the_controls_validation_gain_is_written_where_measured_and_summarised_over_seeds():
    from weightsep.evaluate import aggregate, format_aggregate

    state, _ = state_of_two()
    assert "control_val_gain_pp" not in make_row(state, "a", 0.9, 0.88, control_accuracy=0.91).to_json()  # as before
    seeds = []
    for seed, gain in enumerate([0.5, 1.5]):
        rows = [make_row(state, "a", 0.9, 0.88, 0.91, control_val_gain_pp=gain),
                make_row(state, "b", 0.8, 0.81, 0.80, control_val_gain_pp=0.0)]
        assert rows[0].to_json()["control_val_gain_pp"] == gain
        seeds.append({**summarize(state, rows).to_json(), "seed": seed})
    agg = aggregate(seeds)
    assert agg["dnns"]["a"]["control_val_gain_pp"]["mean"] == pytest.approx(1.0)
    assert "on validation the control gains at most +1.00 pp on one DNN (a" in format_aggregate(agg)


def test_bytes_count_page_tables_at_the_width_execution_holds_them():
    state, models = state_of_two()
    packed = PackedModel(state, models)
    width = {packed._tables[n].element_size() for n in state.vnns}
    rows = [make_row(state, n, 1.0, 1.0) for n in state.vnns]
    t = summarize(state, rows).totals
    assert t.packed_bytes - t.packed_weights * 4 == 9 * width.pop()


def test_spread_over_seeds_by_hand():
    """1, 2, 3: mean 2, sample std 1, the 95% t-interval's half-width t(0.975, df 2) / sqrt(3) = 4.302653 / 1.732051;
    one value has no interval (and the table leaves it out)."""
    s = spread([1.0, 2.0, 3.0])
    assert (s["mean"], s["min"], s["max"], s["std"], s["n"]) == (2.0, 1.0, 3.0, 1.0, 3)
    assert s["ci95"] == pytest.approx(4.302653 / 3 ** 0.5, abs=1e-6)
    assert spread([5.0])["ci95"] is None and spread([5.0])["std"] == 0.0
