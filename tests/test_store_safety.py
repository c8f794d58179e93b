"""The store's safety targets (issue 11): damage detected and recoverable, kill -9, concurrent writers,
a received store's code never run. The cases, the environment and the trials: store_safety_cases.py
beside this file (bench/store_safety.py until issue 26).

Every damage case in process (Store.load, `list` through `cli.main`, and Store.restore_previous;
every 8th also `eval` and the `restore` command), a few through the real CLI in subprocesses (marked
e2e); kill -9 and concurrent writers as real processes (e2e: three kill trials, two writer pairs, and
the bench's default runs: seven kills of each command, marked slow, every pair at two offsets);
and the checks that a store never makes weightsep run code other than the discovered DNN folders'
current dnn.py, through `cli.main` in process (the root scripts as subprocesses). One module-scoped
environment (a private WEIGHTSEP_CACHE with the tiny DNNs' stand-alone models, a template store of
three generations) is built once (~1 min) and copied per case.
"""
from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import store_safety_cases as ss
import torch

from weightsep.dnn import data_dir
from weightsep.pages import to_pages
from weightsep.store import sealed

CASES = ss.corruptions()


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> ss.Env:
    if not (data_dir() / "letters.npz").exists():
        pytest.skip(f"offline data not prepared in {data_dir()} (run ./setup.sh)")
    return ss.prepare(tmp_path_factory.mktemp("store_safety"))


@pytest.fixture(scope="module")
def refs(env) -> dict[Path, tuple[ss.Snapshot, ss.Snapshot]]:
    """The current and previous generation of each template (float32, int8)."""
    return {t: (ss.Snapshot.of(t), ss.Snapshot.of(t, previous=True)) for t in (env.template, env.quantised)}


def test_the_template_has_no_file_shared_between_generations(env, refs):
    current, previous = refs[env.template]
    assert (current.generation, previous.generation) == (3, 2)
    assert not set(ss._file_names(ss._manifest(env.template))) & set(ss._file_names(ss._manifest(env.template, True)))
    assert len(CASES) >= 60


FULL_EVERY = 8  # every 8th case also `eval` and the `restore` command (each in process)


@pytest.mark.parametrize("name", list(CASES))
def test_damage_is_refused_and_the_last_good_state_recovers(env, refs, name):
    """Store.load() raises StoreError (nothing else, nothing written); `list` exits 2 with one
    `error:` line and no Traceback, writing nothing (previous-generation damage: it works);
    Store.restore_previous() brings back the previous generation exactly (previous-generation damage:
    restore refuses and the current generation is untouched). Every 8th case also `eval`, and the
    `restore` command instead of the function."""
    target, apply = CASES[name]
    full = list(CASES).index(name) % FULL_EVERY == 0
    row = ss.check_corruption(env, name, target, apply, *refs[ss.template_of(name, env)],
                              cli=("list", "eval") if full else ("list",), key=f"t-{abs(hash(name))}",
                              cli_restore=full, in_process=True)
    assert row["problems"] == [], row


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["shared: bit flip in the data", "consistent: page table entry out of range",
                                  "manifest: newer format_version", "hostile: vnn file a link to /dev/zero",
                                  "hostile: manifest a named pipe", "hostile: DNN renamed with path parts",
                                  "int8: a shared page's scale 1e30"])
def test_damage_through_the_cli(env, refs, name):
    """`list` and `eval` exit 2 with `error: ...` naming the problem and no Traceback; `restore` recovers."""
    target, apply = CASES[name]
    row = ss.check_corruption(env, name, target, apply, *refs[ss.template_of(name, env)], cli=("list", "eval"),
                              key=f"cli-{abs(hash(name))}")
    assert row["problems"] == [], row
    assert row["detected"] and row["recoverable"]
    for result in row["cli"].values():
        assert "restore" in result["stderr"] or "upgrade weightsep" in result["stderr"], result


@pytest.mark.e2e
@pytest.mark.slow  # 40 s on a loaded 2-core machine (reference runs of the three commands)
def test_kill_9_leaves_the_old_or_the_new_state(env):
    """SIGKILL at random times during add, joint and remove (one trial each)."""
    result = ss.run_kills(env, 3, seed=0)
    assert result["ok"] == 3, result["rows"]


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("command", list(ss.KILL_COMMANDS))
def test_kill_9_at_seven_random_moments_of_each_command(env, command):
    """The bench's default run (21 trials): seven kills of each command, half the delays anywhere in
    it, half in its last 20% (the save)."""
    result = ss.run_kills(env, 7, seed=0, commands=[command])
    assert result["ok"] == 7, result["rows"]


@pytest.mark.e2e
@pytest.mark.parametrize("pair", ss.PAIRS[:2], ids=lambda p: " & ".join(" ".join(op) for op in p))
def test_concurrent_writers_lose_no_update(env, pair):
    """Two writers at once: both updates end up in the store, or one refuses with a clear message
    about the concurrent change; exiting 0 while the other's save overwrites the update is a failure."""
    template = ss.Store(env.template).load()
    row = ss.concurrent_trial(env, pair, 0.0, template, f"w-{pair[0][0]}-{pair[1][0]}")
    assert row["errors"] == [], row
    assert row["lost"] == [], row


_OFFSETS = random.Random(1)  # the bench's default run: ten trials, every pair twice, the second writer 0-0.5 s later


@pytest.mark.e2e
@pytest.mark.parametrize("pair, offset", [(ss.PAIRS[i % len(ss.PAIRS)], round(_OFFSETS.uniform(0, 0.5), 3)) for i in range(10)],
                         ids=lambda p: " & ".join(" ".join(op) for op in p) if isinstance(p, tuple) else f"{p}s")
def test_concurrent_writers_lose_no_update_at_random_offsets(env, pair, offset):
    template = ss.Store(env.template).load()
    row = ss.concurrent_trial(env, pair, offset, template, f"w-{pair[0][0]}-{pair[1][0]}-{offset}")
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
    r = env.main(*args, "--store", store)
    assert "Traceback" not in r.stderr, r.stderr
    assert not marker.exists(), f"`{command}` executed {evil / 'dnn.py'} named by the manifest (exit {r.returncode})"


def test_editing_a_packed_dnns_code_makes_eval_refuse(env, tmp_path):
    """The weights were packed for the code that was there; after dnn.py changes, eval says so."""
    folder = tmp_path / "plugins"
    (folder / "tiny_e").mkdir(parents=True)
    dnn_py = folder / "tiny_e" / "dnn.py"
    dnn_py.write_text(ss.DNN_PY.format(hidden=20))
    store = env.copy("edited")
    env.main("add", "tiny_e", *ss.SMALL, "--dnn-folder", folder, "--store", store, check=True)
    assert env.main("eval", "tiny_e", "--dnn-folder", folder, "--store", store).returncode == 0
    dnn_py.write_text(dnn_py.read_text() + "\nEXTRA = 1  # edited after packing\n")
    r = env.main("eval", "tiny_e", "--dnn-folder", folder, "--store", store)
    assert r.returncode == 2 and "Traceback" not in r.stderr, (r.returncode, r.stdout, r.stderr)
    assert re.search(r"(?i)chang|edit|modif|differ", r.stderr) and re.search(r"dnn\.py|code", r.stderr), r.stderr
    shutil.rmtree(store, ignore_errors=True)


# ---- a store received from someone else (issue 24): inert data, true messages ------------------


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    return victim


@pytest.mark.parametrize("kind", ["symlink", "hard link", "fifo"])
def test_a_lock_file_that_is_not_the_stores_own_is_never_written(env, tmp_path, kind):
    """`.lock -> ~/.bashrc` in a received store: every writer refuses, naming the lock, and the
    link's target is unchanged (it was truncated and overwritten before)."""
    import os

    from weightsep.store import Store, StoreError

    store, victim = env.copy(f"lock-{kind}"), _victim(tmp_path)
    (store / ".lock").unlink(missing_ok=True)
    {"symlink": lambda: (store / ".lock").symlink_to(victim), "hard link": lambda: os.link(victim, store / ".lock"),
     "fifo": lambda: os.mkfifo(store / ".lock")}[kind]()
    before = ss.snapshot_files(store)
    for write in (lambda: Store(store).restore_previous(), lambda: Store(store).save(Store(store).load()),
                  lambda: Store(store).writing("x").__enter__()):
        with pytest.raises(StoreError, match=r"\.lock"):
            write()
    if kind == "symlink":  # the reproduction, through the command line
        r = env.main("remove", "tiny_a", "--store", store)
        assert ss.clean_refusal(r) and ".lock" in r.stderr and "symbolic link" in r.stderr, r.stderr
    assert victim.read_text() == "precious\n" and ss.snapshot_files(store) == before


def _store_named_like_its_dnn(env, tmp_path: Path, code: str, match_hash: bool) -> tuple[Path, Path, Path]:
    """A received store directory named `tiny_a` holding a dnn.py (which writes a marker when run)
    inside a folder passed as --dnn-folder: discovery would take it for tiny_a's DNN folder. With
    `match_hash` the manifest records that file's hash, as a hostile store would."""
    from weightsep.dnn import code_hash
    from weightsep.store import sealed

    parent, marker = tmp_path / "received", tmp_path / "executed.marker"
    store = parent / "tiny_a"
    parent.mkdir()
    shutil.copytree(env.template, store)
    source = f"open({str(marker)!r}, 'w').write('executed')\n" + code
    (store / "dnn.py").write_text(source)
    if match_hash:
        m = json.loads((store / "manifest.json").read_text())
        next(v for v in m["vnns"] if v["name"] == "tiny_a")["meta"]["code_hash"] = code_hash(source.encode())
        (store / "manifest.json").write_text(json.dumps(sealed(m), indent=2))
    return store, parent, marker


ROOT_SCRIPTS = [pytest.param(c, marks=pytest.mark.e2e) for c in ("ws_execution.py", "baseline_execution.py")]


@pytest.mark.parametrize("command", ["eval", "report", "joint", "train", *ROOT_SCRIPTS])  # cli.main; the scripts as processes
def test_a_dnn_py_inside_the_store_directory_never_runs(env, tmp_path, command):
    """The store's own dnn.py, with the hash its manifest records: never executed, whatever the
    command (the discovered tiny_a's code is then refused by its hash, before it runs)."""
    store, parent, marker = _store_named_like_its_dnn(env, tmp_path, ss.DNN_PY.format(hidden=ss.TINY["tiny_a"]), True)
    args = {"eval": ("eval", "tiny_a"), "report": ("report", "--results", tmp_path / "results"),
            "joint": ("joint", "--steps", "1", *ss.JOINT), "train": ("train", "tiny_a", "--iter", "1")}
    if command.endswith(".py"):
        r = subprocess.run([sys.executable, command, "--store", str(store), "--dnn-folder", str(env.plugins),
                            "--dnn-folder", str(parent), "--switches", "2"], cwd=ss.REPO, env=env.vars(),
                           capture_output=True, text=True, timeout=300)
    else:
        r = env.main(*args[command], "--store", store, "--dnn-folder", parent)
    assert not marker.exists(), f"{command} executed the dnn.py inside the store (exit {r.returncode}): {r.stderr[-500:]}"
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2 and "not the code this DNN was packed with" in r.stderr and "was not run" in r.stderr, r.stderr


@pytest.mark.parametrize("code", ["dnn", "not a dnn"])
def test_a_dnn_py_inside_the_store_with_a_wrong_hash_or_no_dnn_never_runs(env, tmp_path, code):
    """The store's own dnn.py, not matching the recorded hash, or no DNN at all: never run; the
    discovered tiny_a (matching the record) is used, or its absence named truly."""
    source = ss.DNN_PY.format(hidden=ss.TINY["tiny_a"]) if code == "dnn" else "x = 1\n"
    store, parent, marker = _store_named_like_its_dnn(env, tmp_path, source, False)
    r = env.main("eval", "tiny_a", "--store", store, "--dnn-folder", parent)
    assert not marker.exists() and r.returncode == 0, r.stderr
    direct = env.main("eval", "tiny_a", "--store", store, "--dnn-folder", store)  # the store itself as a DNN folder
    assert ss.clean_refusal(direct) and "store directory" in direct.stderr and not marker.exists(), direct.stderr


def test_an_edited_dnn_py_is_refused_before_its_code_runs(env, tmp_path):
    """The hash is checked on the file's bytes before import: module-level code of an edited
    dnn.py never runs (it did, and was refused only afterwards)."""
    folder, marker = tmp_path / "plugins", tmp_path / "imported.marker"
    shutil.copytree(env.plugins / "tiny_a", folder / "tiny_a")
    dnn_py = folder / "tiny_a" / "dnn.py"
    dnn_py.write_text(f"open({str(marker)!r}, 'w').write('executed')\n" + dnn_py.read_text())
    store = env.copy("edited-before-import")
    r = env.main("eval", "tiny_a", "--store", store, "--dnn-folder", folder)
    assert ss.clean_refusal(r) and "not the code this DNN was packed with" in r.stderr, r.stderr
    assert not marker.exists()
    allowed = env.main("eval", "tiny_a", "--store", store, "--dnn-folder", folder, "--allow-changed-code")
    assert allowed.returncode == 0 and marker.exists(), allowed.stderr  # asked for: then it runs


@pytest.mark.parametrize("problem, words", [
    ("raise RuntimeError('broken on purpose')\n", ["importing dnn.py failed", "RuntimeError", "broken on purpose"]),
    ("def build_model():\n    pass\n", ["lacks META"]),
])
def test_discovery_errors_say_what_is_wrong_with_which_folder(env, tmp_path, problem, words):
    folder = tmp_path / "plugins" / "tiny_a"
    folder.mkdir(parents=True)
    (folder / "dnn.py").write_text(problem)
    store = env.copy(f"discovery-{len(problem)}")
    r = env.main("eval", "tiny_a", "--store", store, "--dnn-folder", tmp_path / "plugins", "--allow-changed-code")
    assert ss.clean_refusal(r) and str(folder) in r.stderr and all(w in r.stderr for w in words), r.stderr
    missing = env.main("eval", "tiny_a", "--store", store, "--dnn-folder", tmp_path / "nowhere")
    assert ss.clean_refusal(missing) and "no such folder" in missing.stderr, missing.stderr


def test_a_damaged_dnn_in_a_single_generation_store_can_be_removed_keeping_the_others(env, tmp_path):
    """No previous generation, tiny_b's file damaged: every command says so and names `remove
    tiny_b`; that removes it without reading it and keeps tiny_a exactly."""
    from weightsep.store import Store, StoreError

    store = env.copy("salvage")
    (store / "manifest.prev.json").unlink()
    good = Store(store).load()
    ss.raw("tiny_b", ss.flip_at(ss._mid_data))(store)
    with pytest.raises(StoreError, match="no previous generation") as info:
        Store(store).load()
    assert "remove 'tiny_b'" in str(info.value)
    listed = env.main("list", "--store", store)
    assert ss.clean_refusal(listed) and "remove 'tiny_b'" in listed.stderr, listed.stderr
    r = env.main("remove", "tiny_b", "--store", store)
    assert r.returncode == 0 and "damaged" in r.stdout, r.stderr
    kept = Store(store).load()
    assert list(kept.vnns) == ["tiny_a"] and torch.equal(ss.theta(kept, "tiny_a"), ss.theta(good, "tiny_a"))
    a = good.vnns["tiny_a"]  # the Fisher left on the shared pages is tiny_a's alone, page by page
    on_shared = a.page_table < good.n_shared
    assert torch.equal(kept.shared_fisher[a.page_table[on_shared]], to_pages(a.fisher, good.page_size)[on_shared])
    assert not kept.shared_fisher[[p for p in range(good.n_shared) if p not in a.page_table.tolist()]].any()


def test_restore_names_the_generations_and_dnns_it_brought_back_and_replaced(env):
    store = env.copy("restore-message")
    env.main("remove", "tiny_a", "--store", store, check=True)  # generation 4: tiny_b only
    r = env.main("restore", "--store", store)
    assert r.returncode == 0, r.stderr
    assert "generation 3 (tiny_a, tiny_b) is current again, as generation 5" in r.stdout, r.stdout
    assert "replaced generation 4 (tiny_b); back: tiny_a" in r.stdout and "restore` again to undo" in r.stdout, r.stdout


def test_nan_logits_at_evaluation_are_reported_not_scored(env):
    """Pages that are finite but overflow the forward pass (3e38): eval says so, naming the DNN."""
    store = env.copy("nan-logits")
    ss.retensor("shared", lambda t: t["shared_pages"].fill_(3e38))(store)
    r = env.main("eval", "tiny_a", "--store", store)
    assert ss.clean_refusal(r) and "tiny_a" in r.stderr and "NaN or inf logits" in r.stderr, r.stderr


def test_a_round_robin_turn_that_wrecks_the_others_is_undone(env):
    """`train tiny_a --lr 1e6` helps tiny_a and costs tiny_b on their shared pages (13 pp here): with a
    bound below that, undone, nothing written, the message names tiny_b's fall; a --max-harm of 100
    keeps it. (The default bound against a published turn: test_optimize and bench/turn_harm.py.)"""
    from weightsep.store import Store

    store = env.root / "trials" / "guard"  # four shared pages: the two DNNs must share some
    shutil.rmtree(store, ignore_errors=True)
    env.main("add", "tiny_a", "--store", store, "--page-size", "64", "--shared-pages", "4", *ss.SMALL, check=True)
    env.main("add", "tiny_b", "--store", store, *ss.SMALL, check=True)
    assert Store(store).load().sharing("tiny_a") == ["tiny_b"]
    before = ss.Snapshot.of(store)
    r = env.main("train", "tiny_a", "--iter", "30", "--lr", "1e6", "--max-harm", "1", "--store", store)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr  # after the progress bar: the error line
    assert "error: the turn on tiny_a was undone" in r.stderr and "tiny_b" in r.stderr and "--max-harm" in r.stderr
    assert before.equals(store)
    kept = env.main("train", "tiny_a", "--iter", "30", "--lr", "1e6", "--max-harm", "100", "--store", store)
    assert kept.returncode == 0, kept.stderr
    assert Store(store).read_manifest()["generation"] == before.generation + 1


def test_an_interrupt_after_the_commit_says_the_new_generation_is_there(env, monkeypatch, capsys):
    """Ctrl-C between the save and the end of the command: the message says what the store now
    holds (it said "the store keeps its last good state", which a user would restore over)."""
    from weightsep import cli
    from weightsep.store import Store

    store, save = env.copy("interrupted-after-commit"), Store.save

    def save_then_interrupt(self, state):
        save(self, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(Store, "save", save_then_interrupt)
    assert cli.main(["remove", "tiny_a", "--store", str(store)]) == 130
    err = capsys.readouterr().err
    assert f"{store} holds the new generation 4" in err and "last good state" not in err, err
    assert list(Store(store).load().vnns) == ["tiny_b"]
