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


def test_the_ratio_warning_says_what_the_store_reached_and_what_it_could():
    """A budget plan's ratio, on a store whose pages no longer follow it (`add` with the margin, `remove`):
    the warning gives the store's ratio by count and the most its S allows (534 weights, S = 6 > 5 pages)."""
    from dataclasses import replace

    state, _ = state_of_two()
    rows = [make_row(state, "a", 0.9, 0.9), make_row(state, "b", 0.8, 0.8)]
    assert summarize(state, rows).totals.ratio_warning is None  # no ratio asked: no budget plan
    planned = state.replace(config=replace(state.config, budget={"ratio": 6.0}))
    t = summarize(planned, rows).totals
    assert t.ratio_warning == ("ratio 6 asked, 1.04x reached: S = 6 shared pages are more than the largest DNN, 'a', "
                               "has (5), so at most 1.39x; leave --shared-pages unset (S = 5: at most 1.67x), drop 'a', "
                               "pack more DNNs with it, or ask for at most 1.39x")
    assert f"{t.ratio_by_count:.2f}x reached" in t.ratio_warning and 534 / (64 * 6) == pytest.approx(1.39, abs=0.005)
    assert summarize(planned.replace(config=replace(state.config, budget={"ratio": 1.35})), rows).totals.ratio_warning is None


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


def blob_net(seed: int, hidden: int):
    """A small dense classifier of 8 inputs, 3 classes, with Gaussian-blob data (train, validation)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(3, 8, generator=g) * 2
    y = torch.randint(0, 3, (300,), generator=g)
    x = centres[y] + torch.randn(300, 8, generator=g)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3))
    return net, (x[:200], y[:200]), (x[200:], y[200:])


@pytest.mark.parametrize("change, warned", [({}, True), ({"ratio": 1.05}, False), ({"mode": "nwv"}, False),
                                            ({"separation": "margin"}, False)])
def test_a_ratio_out_of_reach_is_a_warning_naming_the_dnn_in_the_api_and_the_summary(change, warned):
    """One DNN of 38 pages beside two of 2: no store of fewer than 38 pages holds it, so 3x cannot be
    reached (2,673 weights in 38 pages of 64: 1.10x). The budget separation warns, naming it; NWV and
    the margin separation ask for no ratio, and 1.05x is reached."""
    import warnings

    from weightsep import api
    from weightsep.evaluate import format_table
    from weightsep.optimize import OptimizeConfig

    nets = {"small": blob_net(0, 12), "big": blob_net(1, 200), "tiny": blob_net(2, 10)}
    config = PackConfig(**{"page_size": P, "ratio": 3.0, "margin": 0.5, **change})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = api.pack(nets, config, optimize_config=OptimizeConfig(steps=2, eval_every=1))
    said = [str(w.message) for w in caught if issubclass(w.category, UserWarning) and "asked" in str(w.message)]
    rows = [make_row(state, name, 0.9, 0.9) for name in nets]
    summary = summarize(state, rows).to_json()
    if not warned:
        assert not said and "ratio_warning" not in summary["totals"] and "warning" not in format_table(summary)
        return
    assert said == ["ratio 3 asked, 1.10x reached: DNN 'big' has 38 pages and S = 38 shared pages must hold them, "
                    "so at most 1.10x; drop it, pack more DNNs with it, or ask for at most 1.10x"]
    assert summary["totals"]["ratio_by_count"] == pytest.approx(2673 / (64 * 38))  # what the warning says it reached
    assert summary["totals"]["ratio_warning"] == said[0] and f"warning:     {said[0]}" in format_table(summary)
