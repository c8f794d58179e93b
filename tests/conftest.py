import os
from pathlib import Path

import pytest

from weightsep.dnn import data_dir

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("OMP_NUM_THREADS", "1")  # small models: one thread (see weightsep.train)


@pytest.fixture
def cache_with_data(tmp_path, monkeypatch):
    """An empty cache (no trained models) that sees the prepared data, for end-to-end runs."""
    data = data_dir()
    needed = [data / f"{name}.npz" for name in ("satellite", "letters")]
    if not all(p.exists() for p in needed):
        pytest.skip(f"offline data not prepared in {data} (run ./setup.sh)")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "data").symlink_to(data)
    build = data.parent / "build"  # the ops extension, built once (weightsep.ops), not per test
    build.mkdir(parents=True, exist_ok=True)
    (cache / "build").symlink_to(build)
    monkeypatch.setenv("WEIGHTSEP_CACHE", str(cache))
    return cache
