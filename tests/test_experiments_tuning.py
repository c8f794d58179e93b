"""The tuning experiments choose on validation accuracy only: the stand-alone stopping rule
(experiments/standalone.py) and the tuned defaults' ablations (experiments/defaults.py), on synthetic
rows (no training)."""
from __future__ import annotations

import pytest

from experiments import defaults, harness, standalone

SCALE = harness.Scale(dnns=("a", "b"), seeds=(0, 1, 2), steps=20)


def standalone_rows(gain: dict[str, float], seconds: dict[str, float], test: float = 0.5,
                    control_gain: dict[str, float] | None = None) -> list[dict]:
    """Validation accuracy 0.80 + a rule's gain (+ seed noise shared by the rules), the control's
    validation accuracy its `control_gain` above that (default 0); test accuracy fixed."""
    rows = []
    for rule in gain:
        for d in SCALE.dnns:
            for s in SCALE.seeds:
                val = 0.80 + gain[rule] + 0.003 * s + 0.001 * (d == "b")
                rows.append({"dnn": d, "rule": rule, "seed": s, "val_accuracy": val, "test_accuracy": test,
                             "best_step": 100, "steps_run": 200, "cap": 1000, "seconds": seconds[rule],
                             "control_val_accuracy": val + (control_gain or {}).get(rule, 0.0) * (d == "a"),
                             "control_test_accuracy": test})
    return rows


def test_the_stopping_rule_is_chosen_on_validation_and_the_cheaper_one_wins_a_tie():
    rules = list(standalone.RULES)
    fixed, ten, restore = rules
    clear = standalone.summarise(standalone_rows({fixed: 0.0, ten: 0.02, restore: 0.03}, {fixed: 1, ten: 2, restore: 3}),
                                 rules, SCALE)
    assert clear["chosen"] == restore  # the same gain on every seed: shown, and the best
    assert "a |" in clear["table"] and "mean of the DNNs" in clear["table"]
    tie = standalone.summarise(standalone_rows({fixed: 0.0, ten: 0.02, restore: 0.02}, {fixed: 1, ten: 2, restore: 3}),
                               rules, SCALE)
    assert tie["chosen"] == ten  # no difference between the plateau rules, the control gains nothing: the cheaper one
    # test accuracy never enters: a rule far better on test but worse on validation is not chosen
    rows = standalone_rows({fixed: 0.0, ten: 0.02, restore: -0.01}, {fixed: 1, ten: 2, restore: 3})
    for r in rows:
        r["test_accuracy"] = r["control_test_accuracy"] = 0.99 if r["rule"] == restore else 0.5
    assert standalone.summarise(rows, rules, SCALE)["chosen"] == ten


def test_among_equally_accurate_rules_the_one_the_control_improves_least_is_chosen():
    rules = list(standalone.RULES)
    fixed, ten, restore = rules
    rows = standalone_rows({fixed: 0.0, ten: 0.02, restore: 0.02}, {fixed: 1, ten: 2, restore: 3},
                           control_gain={fixed: 0.02, ten: 0.01, restore: 0.0})
    result = standalone.summarise(rows, rules, SCALE)
    assert result["chosen"] == restore  # the cheaper rule leaves 1 pp on dnn a for the control: not converged
    gains = {r["rule"]: r["control_val_gain_pp"] for r in result["per_dnn"] if r["dnn"] == "a"}
    assert gains == pytest.approx({fixed: 2.0, ten: 1.0, restore: 0.0})
    assert "+1.00 (a)" in result["answer"]
    by_rule = {r["rule"]: r for r in result["rules"]}
    assert by_rule[ten]["largest_control_val_gain_pp"] == pytest.approx(1.0)
    assert by_rule[ten]["largest_control_val_gain_dnn"] == "a"
    assert by_rule[restore]["vs_fixed_pp"] == pytest.approx(2.0) and by_rule[fixed]["vs_fixed_pp"] == 0


def test_a_plateau_rule_gets_the_cap_and_the_fixed_budget_its_steps():
    from weightsep import dnn as dnn_mod

    dnn = dnn_mod.get("letters")
    fixed = standalone.config(dnn, standalone.RULES["fixed budget"], seed=3, steps=100)
    plateau = standalone.config(dnn, standalone.RULES["patience 10, 2 drops, restore best"], seed=3, steps=100)
    assert (fixed.steps, fixed.patience, fixed.seed, fixed.restore_best) == (100 // standalone.CAP, None, 3, False)
    assert (plateau.steps, plateau.patience, plateau.lr_drops, plateau.restore_best) == (100, 10, 2, True)


def fake_defaults_row(st: harness.Setting, seed: int) -> dict:
    """Validation: the defaults 0.80, `balance sum` 1 pp lower in every seed, the rest at noise; the
    control 0.81. Test accuracies are 0.99 for the ablations: the experiment must not read them."""
    val = 0.81 if st.control else 0.80 - (0.01 if st.label == "balance sum" else 0.0) + 0.002 * ((seed + len(st.label)) % 3 - 1)
    test = 0.5 if st.control or st.label == defaults.DEFAULT else 0.99
    per_dnn = {n: {"standalone": 0.8, "packed": test, "difference_pp": 100 * (test - 0.8)} for n in SCALE.dnns}
    v = {n: {"standalone": 0.8, "final": val} for n in SCALE.dnns}
    return {"label": st.label, "seed": seed, "per_dnn": per_dnn, "val": v,
            "mean_val_difference_pp": 100 * (val - 0.8), "worst_val_difference_pp": 100 * (val - 0.8)}


def test_defaults_are_ablated_on_validation_with_the_control_beside(monkeypatch):
    def run_all(settings, scale, fresh=False, desc=""):
        return {st.label: [fake_defaults_row(st, s) for s in scale.seeds] for st in settings}

    monkeypatch.setattr(harness, "run_all", run_all)
    result = defaults.run(SCALE)
    rows = {r["setting"]: r for r in result["rows"]}
    assert set(rows) == {defaults.DEFAULT, defaults.CONTROL, *(label for label, _, _ in defaults.ABLATIONS)}
    assert rows["balance sum"]["vs_defaults_pp"] == pytest.approx(-1.0, abs=0.3)
    assert rows[defaults.DEFAULT]["val_minus_control_pp"] == pytest.approx(-1.0, abs=0.3)
    assert "balance sum costs accuracy" in result["answer"]
    for label, _, _ in defaults.ABLATIONS:  # test accuracy 0.99 was never read
        assert rows[label]["mean_val_change_pp"] < 1
