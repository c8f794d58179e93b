"""The experiments' comparisons: the paired t-interval and test by hand, Holm's correction by hand, and
by simulation under no effect at all, the family-wise error of a table of comparisons against the rule
it replaced ("within seed noise": the seeds disagree on the sign, or |mean| under two standard errors);
the spread every table cell, row and error bar shows: the 95% t-interval's half-width, by hand."""
import math

import numpy as np
import pytest

from experiments import harness
from experiments.harness import compared, holm, paired


def rows(values: list[float]) -> list[dict]:
    return [{"seed": seed, "mean_difference_pp": v} for seed, v in enumerate(values)]


def test_paired_by_hand():
    """Differences 1, 2, 3: mean 2, se 1 / sqrt(3); t = 2 sqrt(3) on 2 degrees of freedom, two-sided
    p = 1 - 2 sqrt(3) / sqrt(2 + 12) = 0.07418 (the t distribution with 2 df has a closed form);
    the 95% interval's half-width t(0.975, 2) se = 4.302653 / sqrt(3)."""
    d = paired(rows([11.0, 22.0, 33.0]), rows([10.0, 20.0, 30.0]))
    assert d["mean"] == pytest.approx(2.0) and d["se"] == pytest.approx(1 / math.sqrt(3))
    t = 2 * math.sqrt(3)
    assert d["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-9)
    assert d["ci95"] == pytest.approx(4.302653 / math.sqrt(3), abs=1e-6) and d["noise"]  # p > 0.05
    assert paired(rows([1.0]), rows([0.0]))["noise"] and paired(rows([1.0]), rows([0.0]))["p"] == 1.0
    same = paired(rows([1.5, 2.5]), rows([1.0, 2.0]))  # the same difference in every seed: no spread
    assert same["p"] == 0.0 and not same["noise"]


T_HALF_WIDTH_123 = 4.302653 / math.sqrt(3)  # 1, 2, 3: sample std 1, t(0.975, 2 df) / sqrt(3); min-max would be 1


def test_a_cell_is_the_mean_and_its_95_t_half_width_and_says_so():
    assert harness.fmt(harness.stats([1.0, 2.0, 3.0])) == "+2.00 ± 2.48 (95% t)"
    assert harness.fmt(harness.stats([1.0, 2.0, 3.0]), 1, False, "x") == "2.0x ± 2.5 (95% t)"
    assert harness.fmt(harness.stats([0.01, 0.02, 0.03]), 3, False, style="g") == "0.02 ± 0.0248 (95% t)"
    assert harness.fmt(harness.stats([5.0])) == "+5.00"  # one seed: no interval, no ± 0
    assert harness.fmt(harness.stats([])) == "–"
    up = paired(rows([3.0, 4.1, 4.9]), rows([1.0, 2.0, 3.0]))
    assert harness.versus(up) == harness.fmt(up) and harness.versus(paired(rows([1.0, 2.0]), rows([1.5, 1.0]))).endswith(" ~")


def test_a_rows_spread_fields_carry_the_mean_std_and_95_t_half_width():
    fields = harness.spread_fields("mean_change_pp", harness.stats([1.0, 2.0, 3.0]))
    assert set(fields) == {"mean_change_pp", "mean_change_std", "mean_change_ci95"}
    assert (fields["mean_change_pp"], fields["mean_change_std"]) == (2.0, pytest.approx(1.0))
    assert fields["mean_change_ci95"] == pytest.approx(T_HALF_WIDTH_123, abs=1e-6)
    assert harness.spread_fields("overlap_loss", harness.stats([4.0]))["overlap_loss_ci95"] is None


def test_error_bars_are_the_95_t_half_width_over_seeds():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    harness.errorbar(ax, [1, 2], [[1.0, 2.0, 3.0], [7.0]], "line", marker="s")
    line, _, (bars,) = ax.containers[0]
    ends = [(low[1], high[1]) for low, high in bars.get_segments()]  # one vertical bar per x
    assert ends[0] == (pytest.approx(2 - T_HALF_WIDTH_123, abs=1e-6), pytest.approx(2 + T_HALF_WIDTH_123, abs=1e-6))
    assert ends[1] == (7.0, 7.0)  # one seed: no bar
    assert line.get_marker() == "s"
    plt.close(fig)


def test_holm_by_hand():
    """p = 0.01, 0.04, 0.03 at 5%: 0.01 < 0.05/3 is shown; 0.03 is not below 0.05/2, so it and 0.04 are not."""
    got = holm([{"p": 0.01}, {"p": 0.04}, {"p": 0.03}])
    assert [c["noise"] for c in got] == [False, True, True]
    assert [c["noise"] for c in holm([{"p": 0.001}, {"p": 0.02}])] == [False, False]  # 0.02 < 0.05/1


def test_compared_pairs_every_setting_with_the_reference():
    runs = {"ref": rows([1.0, 2.0, 3.0]), "same": rows([1.0, 2.0, 3.0]), "up": rows([3.0, 4.1, 4.9])}
    out = compared(runs, "ref")
    assert out["ref"]["mean"] == 0 and out["ref"]["noise"] and out["same"]["noise"]
    assert out["up"]["mean"] == pytest.approx(2.0) and not out["up"]["noise"]


def test_under_no_effect_a_table_calls_a_difference_real_at_most_five_percent_of_the_time():
    """4,000 tables of four comparisons, three seeds each, every difference pure noise (a fixed seed,
    so the figures are the same every run). The old rule calls one comparison real about 18% of the
    time; Holm over the paired t-tests calls any comparison of a table real at most 5% of the time."""
    rng = np.random.default_rng(0)
    tables, per_table, seeds = 4000, 4, 3
    old_real, new_any = 0, 0
    for _ in range(tables):
        reference = rng.normal(size=seeds)
        comparisons = []
        for _ in range(per_table):
            other = rng.normal(size=seeds)
            c = paired(rows(list(other)), rows(list(reference)))
            comparisons.append(c)
            old_noise = c["min"] < 0 < c["max"] or abs(c["mean"]) < 2 * c["se"]
            old_real += not old_noise
        new_any += any(not c["noise"] for c in holm(comparisons))
    assert 0.14 < old_real / (tables * per_table) < 0.22
    assert new_any / tables <= 0.055


def test_the_report_corrects_every_comparison_across_its_sections(tmp_path):
    """Each section keeps the comparisons it made; the report's last section Holm-corrects all of them together,
    so a p-value that passes one table's correction can fail the report's."""
    from experiments import report

    def section(title, ps):
        return {"title": title, "comparisons": [{"setting": f"s{i}", "against": "ours", "mean": 1.0, "ci95": 0.5, "p": p,
                                                 "n": 5} for i, p in enumerate(ps)]}

    alone = harness.holm([{"p": 0.03}])[0]["noise"]  # A's own table (one comparison) calls 0.03 real
    text = report.across([section("A", [0.03]), section("B", [0.004, 0.02, 0.3]), {"title": "old"}], 9)
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| section")]
    verdicts = [r.split(" | ")[-1].strip(" |") for r in rows]  # smallest p first: 0.004 < 0.05/4, 0.02 > 0.05/3
    assert not alone and verdicts == ["yes", "no", "no", "no"] and "| A | s0 | ours | +1.00 ± 0.50 | 0.03 | no |" in text
    assert "4 paired comparisons" in text and "left out: old" in text
    with harness.recording() as made:  # what compared() records, beside its per-table correction
        harness.compared({"ours": [{"seed": s, "v": 0.0} for s in range(3)],
                          "x": [{"seed": s, "v": 1.0 + 0.1 * s} for s in range(3)]}, "ours", key="v")
    assert [(c["setting"], c["against"]) for c in made] == [("x", "ours (v)")] and made[0]["p"] < 0.01
