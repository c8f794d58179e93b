"""experiments/compare.py runs to its end and writes its table (it once crashed there)."""
import json

import pytest

from experiments import compare
from weightsep.train import standalone_models


@pytest.mark.slow  # trains two DNNs and runs every configuration end to end (about a minute on 2 cores)
@pytest.mark.e2e
def test_compare_runs_every_configuration_and_writes_the_table(cache_with_data, tmp_path, monkeypatch):
    monkeypatch.setattr(compare, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(compare, "standalone_models", lambda dnns: standalone_models(dnns, workers=1, steps=50))
    assert compare.main(["--dnns", "satellite", "letters", "--budget", "10", "--steps-per-turn", "5"]) == 0
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    assert [r["config"] for r in rows] == list(compare.CONFIGS)
    assert all(set(r["per_dnn"]) == {"satellite", "letters"} for r in rows)
    table = (tmp_path / "compare.md").read_text()
    assert all(f"| {label} |" in table for label in compare.CONFIGS)
