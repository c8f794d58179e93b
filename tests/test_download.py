"""download_dataset.sh: logic checked against a local file source (the Drive is out of reach here)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e  # each test runs download_dataset.sh in a subprocess
SCRIPT = REPO / "download_dataset.sh"


def hhar_source(root: Path, n_train: int = 12, n_test: int = 5, label_rows: int | None = None) -> Path:
    folder = root / "hhar"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.save(folder / "hhar_train_data.npy", rng.random((n_train, 20, 120, 1), dtype=np.float32))
    np.save(folder / "hhar_train_label.npy", np.eye(6, dtype=np.float32)[rng.integers(0, 6, label_rows or n_train)])
    np.save(folder / "hhar_test_data.npy", rng.random((n_test, 20, 120, 1), dtype=np.float32))
    np.save(folder / "hhar_test_label.npy", np.eye(6, dtype=np.float32)[rng.integers(0, 6, n_test)])
    return root


def run(tmp_path: Path, source: str, *dnns: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WS_DATA_SOURCE": source, "WEIGHTSEP_CACHE": str(tmp_path / "cache"), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *dnns], capture_output=True, text=True, env=env, timeout=600)


def test_fetches_verifies_and_skips_on_rerun(tmp_path):
    source = hhar_source(tmp_path / "src")
    first = run(tmp_path, str(source), "hhar")
    assert first.returncode == 0, first.stderr
    dest = tmp_path / "cache" / "data" / "hhar"
    assert np.array_equal(np.load(dest / "hhar_train_data.npy"), np.load(source / "hhar" / "hhar_train_data.npy"))
    second = run(tmp_path, str(source), "hhar")
    assert second.returncode == 0 and second.stdout.count("already there") == 4


def test_resumes_a_partial_download(tmp_path):
    source = hhar_source(tmp_path / "src")
    dest = tmp_path / "cache" / "data" / "hhar"
    dest.mkdir(parents=True)
    whole = (source / "hhar" / "hhar_train_data.npy").read_bytes()
    (dest / "hhar_train_data.npy.part").write_bytes(whole[: len(whole) // 2])
    result = run(tmp_path, f"file://{source}", "hhar")
    assert result.returncode == 0, result.stderr
    assert (dest / "hhar_train_data.npy").read_bytes() == whole


@pytest.mark.parametrize("problem", ["shape", "count"])
def test_a_bad_file_is_refused(tmp_path, problem):
    source = hhar_source(tmp_path / "src", label_rows=7 if problem == "count" else None)
    if problem == "shape":
        np.save(source / "hhar" / "hhar_test_data.npy", np.zeros((5, 10, 10), np.float32))
    result = run(tmp_path, str(source), "hhar")
    assert result.returncode == 1
    assert ("hhar_test_data" in result.stderr) if problem == "shape" else ("hhar/hhar_train_data has 12" in result.stderr)
    if problem == "shape":
        assert not (tmp_path / "cache" / "data" / "hhar" / "hhar_test_data.npy").exists()


def test_no_network_gives_a_clear_message(tmp_path):
    result = run(tmp_path, "http://127.0.0.1:9", "hhar")  # nothing listens on the discard port
    assert result.returncode == 1
    assert "could not fetch hhar/hhar_test_data.npy" in result.stderr and "no network?" in result.stderr
