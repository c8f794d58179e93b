"""The no-sharing control beside every accuracy change the experiments report: which control a packed
setting gets (`harness.control`), packed minus control paired by seed and DNN (`harness.minus_control`,
`against_control`), and every accuracy section's table, rows, answer and plot on synthetic runs (no training)."""
from __future__ import annotations

import json

import pytest

from experiments import budget, fisher, harness, matching, optimizers, overlap, page_size, quantization, report, runs, scaling

ACCURACY_SECTIONS = [scaling, page_size, optimizers, overlap, matching, fisher, budget, quantization]

SCALE = harness.Scale(dnns=("a", "b", "c"), seeds=(0, 1, 2), steps=20, quick=True)
STANDALONE = 0.80


def packed_accuracy(dnn: str, seed: int) -> float:
    """Packed runs: each DNN 1 pp + 0.1 pp per seed below its control (which is at stand-alone + 0.5 pp)."""
    return STANDALONE + 0.005 - 0.01 * (1 + 0.1 * seed) - 0.001 * "abc".index(dnn)


def expected_minus_control(dnns: tuple[str, ...], seeds: tuple[int, ...]) -> float:
    return sum(100 * (packed_accuracy(d, s) - STANDALONE - 0.005) for d in dnns for s in seeds) / (len(dnns) * len(seeds))


def fake_row(st: harness.Setting, scale: harness.Scale, seed: int) -> dict:
    names = st.dnns or scale.dnns
    accs = {n: STANDALONE + 0.005 if st.control else packed_accuracy(n, seed) for n in names}
    per_dnn = {n: {"standalone": STANDALONE, "packed": a, "difference_pp": 100 * (a - STANDALONE)} for n, a in accs.items()}
    diffs = [d["difference_pp"] for d in per_dnn.values()]
    return {"label": st.label, "seed": seed, "dnns": list(names), "per_dnn": per_dnn,
            "mean_difference_pp": sum(diffs) / len(diffs), "worst_difference_pp": min(diffs),
            "mean_packed_accuracy": sum(accs.values()) / len(accs), "ratio_by_count": 6.0, "ratio_by_bytes": 5.0 + seed,
            "packed_weights": 100_000, "packed_bytes": 400_000, "shared_pages": st.pack.get("n_shared", 128),
            "optimize_seconds": 1.0, "peak_rss_mb": 100.0,
            "matching_cost": 1.0 + 0.1 * len(st.label) + 0.05 * seed, "ms_per_step": 10.0, "ms_per_dnn_batch": 1.0,
            "seconds": 1.0, "measured": True, "overlap_loss": 0.5 + seed, "page_formats": {"float32": 3},
            "mean_val_difference_pp": -0.1 * seed - 0.01 * len(st.label), "worst_val_difference_pp": -0.5,
            "curve": {"dnn_batches": [0, 10], "best_index": 1,
                      "val": [{n: 0.5 + 0.01 * seed - 0.001 * len(st.label) for n in names}, {n: 0.7 for n in names}]}}


@pytest.fixture(autouse=True)
def fake_models(monkeypatch):
    """The synthetic DNNs a, b, c have no folder: their stand-alone models are named by name and seed."""
    monkeypatch.setattr(runs, "model_keys", lambda names, train_steps, seed: {n: f"{n}-{seed}" for n in names})


@pytest.fixture
def fake_runs(monkeypatch):
    """harness.run_all (and the experiments' other measurements) on synthetic rows; returns the settings run."""
    ran: list[harness.Setting] = []

    def run_all(settings, scale, fresh=False, desc="runs"):
        assert len({st.label for st in settings}) == len(settings), "a setting given twice would run twice"
        ran.extend(settings)
        return {st.label: [fake_row(st, scale, s) for s in st.seeds or scale.seeds] for st in settings}

    def agreement_runs(scale, fresh=False):
        return {seed: {n: {f"{e} {k}": {"spearman": 0.9 - 0.01 * seed, "jaccard": 0.8, "seconds": 1.0 + k / 100,
                                        "exclusive_pages": 3} for e, k in fisher.grid(scale)} for n in scale.dnns}
                for seed in scale.seeds}

    monkeypatch.setattr(harness, "run_all", run_all)
    monkeypatch.setattr(harness, "weights", lambda names: [60_000 + 1_000 * i for i, _ in enumerate(names)])
    monkeypatch.setattr(harness, "matching_seconds", lambda settings, scale: {st.label: 0.1 for st in settings})
    monkeypatch.setattr(fisher, "agreement_runs", agreement_runs)
    return ran


def test_settings_that_differ_only_in_sharing_share_one_control_run():
    joint = [harness.Setting("ours"), page_size.setting(128, [60_000, 65_000]),
             harness.Setting("f", fisher={"estimator": "true"}),
             harness.Setting("q", precision={"precision": "int8"}), harness.Setting("m", measure=True)]
    controls = [harness.control(st) for st in joint]
    assert len({(c.label, c.key(SCALE, 0)) for c in controls}) == 1
    control = controls[0]
    assert control.control and control.label == "no sharing"
    assert control.key(SCALE, 0) == optimizers.SETTINGS[-1].key(SCALE, 0)  # the optimisers' no-sharing row: one run
    lams = {harness.control(overlap.setting(lam)).key(SCALE, 0) for lam in overlap.LAMBDAS}
    assert len(lams) == 1 and lams != {control.key(SCALE, 0)}  # lambda acts only through sharing; the turns do not
    subset = harness.control(harness.Setting("N=2", dnns=("a", "b")))
    assert subset.dnns == ("a", "b") and subset.label != control.label  # batches per step depend on the DNN set


def test_control_labels_tell_controls_apart_exactly_when_their_runs_differ():
    settings = [harness.Setting("x", optimize=o, same_budget=b, turns=t, dnns=d)
                for o in ({}, {"optimizer": "round-robin"}, {"optimizer": "round-robin", "lam": 1.0}, {"lr": 1e-3})
                for b in (False, True) for t in (1, 10) for d in (None, ("a",))]
    controls = [harness.control(st) for st in settings]
    assert len({c.label for c in controls}) == len({c.key(SCALE, 0) for c in controls}) == 24  # lam: no difference alone
    assert len(harness.with_controls(settings)) == 1 + 24  # by label: "x" once, each control once


def test_minus_control_pairs_by_seed_and_dnn_and_restricts_a_larger_control():
    st = harness.Setting("N=2", dnns=("a", "b"))
    packed = [fake_row(st, SCALE, s) for s in (0, 1, 2)]
    everyone = [fake_row(harness.control(harness.Setting("ours")), SCALE, s) for s in (1, 2, 3)]
    gaps = harness.minus_control(packed, everyone)
    assert gaps == pytest.approx([100 * (packed_accuracy("a", s) + packed_accuracy("b", s)) / 2 - 100 * (STANDALONE + 0.005)
                                  for s in (1, 2)])  # seed 0 has no control, seed 3 no packed run
    runs = {"N=2": packed, "N=2 again": packed, harness.control(st).label: everyone}
    pooled = harness.against_control(runs, [st, harness.Setting("N=2 again", dnns=("a", "b"))], group=lambda s: 2)
    assert pooled[2]["n"] == 4 and pooled[2]["mean"] == pytest.approx(expected_minus_control(("a", "b"), (1, 2)))
    assert not pooled[2]["noise"] and pooled[2]["ci95"] > 0


def control_cells(table: str) -> list[str]:
    """The `packed - control pp` column of a markdown table (its first table)."""
    lines = table.splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    assert "packed - control pp" in head, head
    column = head.index("packed - control pp")
    assert head[column + 1].startswith("packed - stand-alone pp"), "the stand-alone difference stays beside it"
    body = lines[2:lines.index("")] if "" in lines else lines[2:]
    return [[c.strip() for c in line.strip("|").split("|")][column] for line in body]


@pytest.mark.parametrize("module", ACCURACY_SECTIONS)
def test_every_accuracy_section_shows_packed_minus_control_beside_packed_minus_stand_alone(module, fake_runs):
    result = module.run(SCALE)
    controls = [st for st in fake_runs if st.control and st.alone is None]
    assert controls, "the no-sharing control was not run"
    cells = control_cells(result["table"])
    with_control = [r for r in result["rows"] if "minus_control_pp" in r]
    assert with_control and len([c for c in cells if c != "–"]) == len(with_control)
    seeds = SCALE.seeds
    pair = next((st.dnns for st in fake_runs if st.dnns and len(st.dnns) == 2 and not st.control), None)  # scaling's
    for row in with_control:
        dnns = pair if row.get("n") == 2 else SCALE.dnns
        assert row["minus_control_pp"] == pytest.approx(expected_minus_control(dnns, seeds))
        assert row["minus_control_ci95"] > 0 and row["minus_control_noise"] is False
    assert f"{with_control[-1]['minus_control_pp']:+.2f} pp" in result["answer"]
    assert "no-sharing control" in result["answer"]


def test_quantization_compares_every_packed_row_and_no_baseline_with_the_float32_control(fake_runs):
    result = quantization.run(SCALE)
    assert [r["setting"] for r in result["rows"] if "minus_control_pp" in r] == [
        r["setting"] for r in result["rows"] if r["family"] in quantization.PACKING]
    assert {st.label for st in fake_runs if st.control and st.alone is None} == {"no sharing"}


def test_the_report_names_packed_minus_control_the_headline(tmp_path, fake_runs):
    out = tmp_path / "experiments"
    out.mkdir()
    result = page_size.run(SCALE) | {"title": page_size.TITLE, "question": page_size.QUESTION, "scale_text": "",
                                     "command": "python -m experiments page_size", "date": "today"}
    (out / "page_size.json").write_text(json.dumps(result))
    text = report.write(tmp_path).read_text()
    assert "The headline difference is packed minus the no-sharing control (`packed - control pp`)" in text
    assert "| packed - control pp | packed - stand-alone pp |" in text


@pytest.fixture
def plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def drawn(module, plt) -> tuple[dict, object]:
    """A section run on synthetic runs (three seeds) and its plot: the result and the figure."""
    result = module.run(SCALE) | {"scale": {"steps": SCALE.steps, "seeds": list(SCALE.seeds)}}
    module.plot(result, plt)
    return result, plt.gcf()


@pytest.mark.parametrize("module", [scaling, page_size, overlap, fisher, budget, quantization])
def test_every_error_bar_is_a_95_t_half_width_the_rows_carry(module, fake_runs, plt):
    """The synthetic runs' spreads differ from seed to seed, so a std or min-max bar would match no `_ci95`."""
    result, fig = drawn(module, plt)
    intervals = [v for r in result["rows"] for k, v in r.items() if k.endswith("_ci95") and v]
    bars = [(high[1] - low[1]) / 2 for ax in fig.axes for c in ax.containers if hasattr(c, "has_yerr")
            for low, high in c[2][0].get_segments() if high[1] != low[1]]
    assert bars and all(any(abs(b - i) < 1e-9 for i in intervals) for b in bars), (bars, intervals)
    assert all(i == pytest.approx(2.484138 * r[k.replace("_ci95", "_std")], rel=1e-5)  # t(0.975, 2) / sqrt(3) x std
               for r in result["rows"] for k, i in r.items() if k.endswith("_ci95") and i and k != "minus_control_ci95")


def test_legends_hide_no_point_and_the_cost_axis_reads_plainly(fake_runs, plt):
    for module in (matching, budget, quantization):
        _, fig = drawn(module, plt)
        fig.canvas.draw()
        legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
        assert legends and not any(leg.get_window_extent().overlaps(ax.get_window_extent())
                                   for leg in legends for ax in fig.axes), module.__name__
        assert not any(ax.texts for ax in fig.axes)  # no point labels to collide
    _, fig = drawn(matching, plt)
    fig.canvas.draw()
    for ax in fig.axes:
        assert ax.get_xscale() == "linear"
        assert all(t.get_text().endswith("x") and "$" not in t.get_text() for t in ax.get_xticklabels())


def test_budget_plots_every_setting_and_the_published_point_in_its_legend(fake_runs, plt):
    result, fig = drawn(budget, plt)
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert len(labels) == len(result["rows"]) + 2 and "published WS (10 paper DNNs)" in labels
    for ax, key in zip(fig.axes, ("mean_change_pp", "minus_control_pp")):  # both differences, every setting
        ys = sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_label() and line.get_label()[0] != "_"
                    and "front" not in line.get_label())
        assert ys == sorted(r[key] for r in result["rows"])


def test_convergence_curves_mark_every_check(fake_runs, plt):
    result, fig = drawn(optimizers, plt)
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    checks = {len(c["dnn_batches"]) for runs in result["curves"].values() for c in runs}
    assert lines and all(line.get_marker() not in (None, "", "None") for line in lines)
    assert {len(line.get_xdata()) for line in lines} == checks
    assert all(ax.get_title().endswith("seed 0") for ax in fig.axes[:-1])


def test_fishers_accuracy_panel_says_after_optimisation_at_the_scales_budget(fake_runs, plt):
    _, fig = drawn(fisher, plt)
    title = fig.axes[2].get_title()
    assert f"after optimisation ({SCALE.steps} DNN-batches per DNN)" in title and "packing" not in title
    bars = [patch.get_height() for patch in fig.axes[2].patches]
    others = [r for r in fisher.run(SCALE)["rows"] if r.get("run") not in (None, "ours")]
    assert bars == pytest.approx([r["vs_ours_pp"] for r in others])  # the paired difference from ours, not from stand-alone
