import logging
import os
import time
from pathlib import Path

import pytest
import torch

from weightsep import ops
from weightsep.dnn import data_dir

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("OMP_NUM_THREADS", "1")  # small models: one thread (see weightsep.train)
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def no_global_state_leaks():
    """Whatever a test does to torch's thread count or the ops backend is undone after it."""
    threads, backend = torch.get_num_threads(), (ops._setting, ops._backend)  # read without resolving
    yield
    torch.set_num_threads(threads)
    ops._setting, ops._backend = backend


def _checkout_outputs() -> dict[str, tuple[int, int]]:
    """(size, mtime in ns) of every file under the checkout's results/ and state/ (the main job's)."""
    out = {}
    for top in (REPO / "results", REPO / "state"):
        for path in [top, *top.rglob("*")] if top.exists() else []:
            st = path.lstat()
            out[str(path.relative_to(REPO))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(autouse=True)
def checkout_outputs_untouched(request):
    """A test writes only under its own temporary directory: the checkout's results/ and state/
    (the main job's summary and store) are the same after every test, file for file."""
    before = _checkout_outputs()
    yield
    after = _checkout_outputs()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{request.node.nodeid} changed the checkout's {', '.join(changed[:5])}: write under tmp_path"


@pytest.fixture(scope="module")
def ext():
    """The ops extension, built (or loaded from the cache) once; tests call its torch.ops directly."""
    start, before = time.perf_counter(), (ops._setting, ops._backend)
    try:
        ops.set_backend("extension")
    except ops.ExtensionError as exc:
        pytest.skip(f"extension did not build here: {exc}")
    logging.getLogger("weightsep").info("weightsep_ops ready in %.1f s", time.perf_counter() - start)
    yield torch.ops.weightsep
    ops._setting, ops._backend = before
    ops.set_backend("auto")


# Under CI=true a skip is a failure (a missing fixture folder, a failed extension build, unprepared
# data must not pass quietly), except for these, which need hardware or time CI does not have.
# docs/testing.md lists every skip and its reason.
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SKIPS_ALLOWED_IN_CI = ("needs a CUDA GPU", "nvcc not on PATH", "slow; set WEIGHTSEP_SLOW_TESTS",
                       "no c10/cuda headers")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if not any(allowed in reason for allowed in SKIPS_ALLOWED_IN_CI):
            report.outcome = "failed"
            report.longrepr = f"CI=true: this test would have been skipped, which CI counts as a failure: {reason}"


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


def accuracy_from_store(store: Path, name: str, extra: tuple = ()) -> float:
    """A packed DNN's test accuracy, its weights read page by page from the saved store (its
    buffers too), its folder found by name (among `extra` folders too)."""
    import torch

    from weightsep import dnn as dnn_mod
    from weightsep.flat import load_buffer_state
    from weightsep.store import Store

    state = Store(store).load()
    vnn, P, S = state.vnns[name], state.page_size, state.n_shared
    rows = [int(r) for r in vnn.page_table]
    theta = torch.stack([state.shared_pages[rows[i // P], i % P] if rows[i // P] < S
                         else vnn.exclusive_pages[rows[i // P] - S, i % P] for i in range(vnn.n_weights)])
    folder = dnn_mod.get(name, extra)
    test = folder.load_data().test
    model = folder.build_model().eval()
    load_buffer_state(model, vnn.buffers, name)
    with torch.no_grad():
        predicted = model(torch.from_numpy(test.x), theta).argmax(1)
    return float((predicted == torch.from_numpy(test.y)).double().mean())
