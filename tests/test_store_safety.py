"""The store's safety targets (issue 11), through the real CLI in subprocesses where it matters.

Fast versions of `python -m bench.store_safety` (which holds the damage cases, the kill -9 and
concurrent-writer trials and the tiny DNN folders): every damage case in process (Store.load and
Store.restore_previous, what `list`/`eval`/`restore` call), a few through the CLI, three kill -9
trials, two concurrent-writer trials; and two checks that a store never makes weightsep run code
other than the discovered DNN folders' current dnn.py. One module-scoped environment (a private
WEIGHTSEP_CACHE with the tiny DNNs' stand-alone models, a template store of three generations) is
built once (~1 min) and copied per case.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bench import store_safety as ss
from weightsep.dnn import data_dir
from weightsep.store import sealed

CASES = ss.corruptions()


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> ss.Env:
    if not (data_dir() / "letters.npz").exists():
        pytest.skip(f"offline data not prepared in {data_dir()} (run ./setup.sh)")
    return ss.prepare(tmp_path_factory.mktemp("store_safety"))


@pytest.fixture(scope="module")
def refs(env) -> tuple[ss.Snapshot, ss.Snapshot]:
    return ss.Snapshot.of(env.template), ss.Snapshot.of(env.template, previous=True)


def test_the_template_has_no_file_shared_between_generations(env, refs):
    current, previous = refs
    assert (current.generation, previous.generation) == (3, 2)
    assert not set(ss._file_names(ss._manifest(env.template))) & set(ss._file_names(ss._manifest(env.template, True)))
    assert len(CASES) >= 30


@pytest.mark.parametrize("name", list(CASES))
def test_damage_is_refused_and_the_last_good_state_recovers(env, refs, name):
    """Store.load() raises StoreError (nothing else, nothing written); Store.restore_previous()
    brings back the previous generation exactly (previous-generation damage: restore refuses and the
    current generation is untouched)."""
    target, apply = CASES[name]
    row = ss.check_corruption(env, name, target, apply, *refs, cli=(), key=f"t-{abs(hash(name))}",
                              cli_restore=False)
    assert row["problems"] == [], row


@pytest.mark.parametrize("name", ["shared: bit flip in the data", "consistent: page table entry out of range",
                                  "manifest: newer format_version"])
def test_damage_through_the_cli(env, refs, name):
    """`list` and `eval` exit 2 with `error: ...` naming the problem and no Traceback; `restore` recovers."""
    target, apply = CASES[name]
    row = ss.check_corruption(env, name, target, apply, *refs, cli=("list", "eval"), key=f"cli-{abs(hash(name))}")
    assert row["problems"] == [], row
    assert row["detected"] and row["recoverable"]
    for result in row["cli"].values():
        assert "restore" in result["stderr"] or "upgrade weightsep" in result["stderr"], result


def test_kill_9_leaves_the_old_or_the_new_state(env):
    """SIGKILL at random times during add, joint and remove (one trial each)."""
    result = ss.run_kills(env, 3, seed=0)
    assert result["ok"] == 3, result["rows"]


@pytest.mark.parametrize("pair", ss.PAIRS[:2], ids=lambda p: " & ".join(" ".join(op) for op in p))
def test_concurrent_writers_lose_no_update(env, pair):
    """Two writers at once: both updates end up in the store, or one refuses with a clear message
    about the concurrent change; exiting 0 while the other's save overwrites the update is a failure."""
    template = ss.Store(env.template).load()
    row = ss.concurrent_trial(env, pair, 0.0, template, f"w-{pair[0][0]}-{pair[1][0]}")
    assert row["errors"] == [], row
    assert row["lost"] == [], row


def _point_meta_folder(store: Path, name: str, folder: Path) -> None:
    path = store / "manifest.json"
    m = json.loads(path.read_text())
    next(v for v in m["vnns"] if v["name"] == name)["meta"]["folder"] = str(folder)
    path.write_text(json.dumps(sealed(m), indent=2))  # a consistent manifest: only the name-based lookup stands between


@pytest.mark.parametrize("command, where", [("eval", "store"), ("report", "store"), ("joint", "store"),
                                            ("list", "store"), ("eval", "elsewhere")])
def test_a_recorded_folder_outside_the_discovered_ones_is_never_imported(env, tmp_path, command, where):
    """A manifest's meta 'folder' is data, not a licence to import: a store whose tiny_a points at a
    folder in the store directory (or anywhere else) with a dnn.py that writes a marker file when
    imported must not execute it, whatever the command does instead (use the discovered tiny_a,
    or refuse)."""
    store = env.copy(f"foreign-{command}-{where}")
    marker = tmp_path / "imported.marker"
    evil = (store if where == "store" else tmp_path / "elsewhere") / "tiny_a"
    evil.mkdir(parents=True)
    (evil / "dnn.py").write_text(f"open({str(marker)!r}, 'w').write('executed')\n"
                                 + ss.DNN_PY.format(hidden=ss.TINY["tiny_a"]))
    _point_meta_folder(store, "tiny_a", evil)
    args = {"eval": ("eval", "tiny_a"), "report": ("report", "--results", tmp_path / "results"),
            "joint": ("joint", "--steps", "1", *ss.JOINT), "list": ("list",)}[command]
    r = env.cli(*args, "--store", store)
    assert "Traceback" not in r.stderr, r.stderr
    assert not marker.exists(), f"`{command}` executed {evil / 'dnn.py'} named by the manifest (exit {r.returncode})"


def test_editing_a_packed_dnns_code_makes_eval_refuse(env, tmp_path):
    """The weights were packed for the code that was there; after dnn.py changes, eval says so."""
    folder = tmp_path / "plugins"
    (folder / "tiny_e").mkdir(parents=True)
    dnn_py = folder / "tiny_e" / "dnn.py"
    dnn_py.write_text(ss.DNN_PY.format(hidden=20))
    store = env.copy("edited")
    env.cli("add", "tiny_e", *ss.SMALL, "--dnn-folder", folder, "--store", store, check=True)
    assert env.cli("eval", "tiny_e", "--dnn-folder", folder, "--store", store).returncode == 0
    dnn_py.write_text(dnn_py.read_text() + "\nEXTRA = 1  # edited after packing\n")
    r = env.cli("eval", "tiny_e", "--dnn-folder", folder, "--store", store)
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stdout, r.stderr)
    assert re.search(r"(?i)chang|edit|modif|differ", r.stderr) and re.search(r"dnn\.py|code", r.stderr), r.stderr
    shutil.rmtree(store, ignore_errors=True)
