"""Scale-out (weightsep/distributed.py): the joint optimiser over ranks equals the one-process one.

The ranks are real processes in a gloo group over loopback, started by `distributed.launch`."""
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_optimize import blobs

from weightsep import cli as cli_mod
from weightsep import distributed
from weightsep.model import TemplateNet
from weightsep.optimize import OPTIMIZERS, OptimizeConfig, optimize
from weightsep.pack import PackConfig, add_vnn, new_state
from weightsep.page_optimizer import Task
from weightsep.precision import PrecisionConfig, assign
from weightsep.store import Store

P = 64
HIDDEN = {"a": [48], "b": [40], "c": [24], "d": [8], "e": [56]}


def packed(names: list[str], n_shared: int = 8):
    """Small dense DNNs packed into `n_shared` shared pages (they must overlap), with tasks."""
    config = PackConfig(page_size=P, n_shared=n_shared, margin=0.5)
    state, tasks = new_state(config, n_shared), {}
    for seed, name in enumerate(names):
        torch.manual_seed(seed)
        net = TemplateNet((8,), [], dense=HIDDEN[name], classes=3)
        x, y = blobs(seed)
        theta = net.theta.detach().clone()
        state, _ = add_vnn(state, name, theta, torch.rand_like(theta), config)
        tasks[name] = Task(net, x[:300], y[:300], x[300:], y[300:], standalone=theta)
    return state, tasks


def optimise_here(names: list[str], owner: dict[str, int], config: OptimizeConfig, precision: dict | None = None):
    """One rank's part: its DNNs' tasks only; returns the packed pages (whole on rank 0); `precision`:
    the pages quantised first (a PrecisionConfig's fields)."""
    state, tasks = packed(names)
    if precision:
        state = assign(state, PrecisionConfig(**precision))
    rank = distributed.current().rank
    result, history = optimize(state, {n: t for n, t in tasks.items() if owner[n] == rank}, config, progress=False)
    return ({"shared": result.shared_pages, **{n: v.exclusive_pages for n, v in result.vnns.items()}},
            {n: v.page_table for n, v in result.vnns.items()}, history.val_accuracy, history.promoted)


CONFIGS = {
    "all DNNs each step": OptimizeConfig(steps=30, eval_every=10, batch_size=50),
    "sampled DNNs, promotion, plain sum": OptimizeConfig(steps=30, eval_every=5, batch_size=50, dnns_per_step=2,
                                                         promote_pages=3, promote_start=0.0, balance="sum"),
}


@pytest.mark.slow
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_two_ranks_give_the_pages_of_one_process_with_uneven_dnns_per_rank(config):
    names = ["a", "b", "c"]  # 2 DNNs on one rank, 1 on the other
    alone = optimise_here(names, {n: 0 for n in names}, config)
    owner = {"a": 0, "b": 1, "c": 1}
    split = distributed.launch(2, optimise_here, names, owner, config)
    for key in alone[0]:
        torch.testing.assert_close(split[0][key], alone[0][key], rtol=1e-5, atol=1e-6)
    assert all(torch.equal(split[1][n], alone[1][n]) for n in names)  # the same promotions, the same tables
    assert split[3] == alone[3] and bool(alone[3]) == bool(config.promote_pages)  # pages were promoted
    assert len(split[2]) == len(alone[2])
    for mine, theirs in zip(split[2], alone[2]):
        assert list(mine) == names and mine == pytest.approx(theirs, abs=1e-9)


@pytest.mark.slow
def test_two_ranks_train_quantised_pages_as_one_process():
    names, config = ["a", "b", "c"], CONFIGS["sampled DNNs, promotion, plain sum"]
    precision = {"precision": "int4", "exclusive_dtype": "int8", "group": 16}
    alone = optimise_here(names, {n: 0 for n in names}, config, precision)
    split = distributed.launch(2, optimise_here, names, {"a": 0, "b": 1, "c": 1}, config, precision)
    assert split[3] == alone[3] and bool(alone[3])  # the same promotions
    for key in alone[0]:  # float32 sums differ in the last bits between ranks: a rare weight may round
        differ = split[0][key] != alone[0][key]  # to the neighbouring grid point, nothing more
        assert float(differ.float().mean()) < 0.01, key
        assert float((split[0][key] - alone[0][key]).abs().max()) <= float(alone[0][key].abs().max()) / 7 + 1e-6


@pytest.mark.slow
def test_pages_differ_when_the_ranks_do_not_sum_the_shared_gradient(monkeypatch):
    """The test above can fail: ranks that skip the all-reduce train different pages."""
    names, config = ["a", "b", "c"], CONFIGS["all DNNs each step"]
    alone = optimise_here(names, {n: 0 for n in names}, config)
    split = distributed.launch(2, _without_all_reduce, names, {"a": 0, "b": 1, "c": 1}, config)
    assert not torch.allclose(split[0]["shared"], alone[0]["shared"], atol=1e-4)


def _without_all_reduce(names, owner, config):
    distributed.sum_ = lambda tensor: tensor
    return optimise_here(names, owner, config)


def test_assign_balances_cost_and_is_the_same_everywhere():
    costs = {"a": 10.0, "b": 7.0, "c": 6.0, "d": 5.0, "e": 2.0}
    owner = distributed.assign(costs, 2)
    loads = [sum(c for n, c in costs.items() if owner[n] == r) for r in range(2)]
    assert sorted(loads) == [15.0, 15.0]  # LPT: a+d, b+c+e
    assert distributed.assign(dict(reversed(costs.items())), 2) == owner  # no dependence on order
    assert set(distributed.assign(costs, 5).values()) == set(range(5))
    with pytest.raises(ValueError, match="at most one rank per DNN"):
        distributed.assign(costs, 6)


def _fail_on(rank: int, how: str):
    if distributed.current().rank == rank:
        if how == "error":
            raise ValueError("DNN 'c': something is wrong with it")
        os.kill(os.getpid(), signal.SIGKILL)
    distributed.sum_(torch.ones(3))  # the survivor waits on the dead one
    return "never"


@pytest.mark.parametrize("how", ["error", "killed"])
def test_a_failing_rank_ends_the_run_naming_it(how):
    with pytest.raises(distributed.RankError) as caught:
        distributed.launch(2, _fail_on, 1, how)
    message = str(caught.value)
    expected = "DNN 'c': something is wrong" if how == "error" else "died: killed by signal 9 (SIGKILL)"
    assert message.startswith(f"rank 1: {expected}")
    assert "rank 0 then stopped: rank 0 lost contact" in message
    assert "store keeps its last good state" in message


SAVE_POINTS = ("before the save", "in the save, before the commit", "in the save, after the commit", "after the save")


def _kill_in_save(root: str, victim: int, point: str):
    """Rank 0 saves a new generation of the store at `root`; rank `victim` is SIGKILLed at `point`,
    the commit being the replace of manifest.json (hooked in rank 0's process only)."""
    pids, writer = distributed.all_gather(os.getpid()), distributed.current().writer

    def kill(at: str) -> None:
        if at == point:
            os.kill(pids[victim], signal.SIGKILL)

    if writer:
        kill("before the save")
    distributed.any_(False)  # as the gather before a real save: a peer dead by now is seen here
    if not writer:
        return  # waits in the final barrier
    replace = os.replace

    def hooked(src, dst):
        if Path(dst).name == "manifest.json":
            kill("in the save, before the commit")
            replace(src, dst)
            kill("in the save, after the commit")
        else:
            replace(src, dst)

    os.replace = hooked
    store = Store(root)
    distributed.save(store, store.load())
    kill("after the save")


@pytest.mark.parametrize("victim", [1, 0])
@pytest.mark.parametrize("point", SAVE_POINTS)
def test_a_rank_killed_around_rank_0s_save_gets_a_message_true_to_the_store(tmp_path, monkeypatch, victim, point):
    root = tmp_path / "state"
    Store(root).save(packed(["a", "b"])[0])  # generation 1
    monkeypatch.setattr(distributed, "GRACE_SECONDS", 2.0)  # a survivor that hangs is stopped sooner
    with pytest.raises(distributed.RankError) as caught:
        distributed.launch(2, _kill_in_save, str(root), victim, point)
    message, generation = str(caught.value), Store(root).read_manifest()["generation"]
    assert message.startswith(f"rank {victim}: died: killed by signal 9 (SIGKILL)"), message
    # rank 0 commits unless it dies before the manifest's replace or sees rank 1 dead before its save
    assert generation == (1 if point == "before the save" or (victim, point) == (0, SAVE_POINTS[1]) else 2)
    if generation == 2:
        assert message.endswith(f"rank 0 had committed generation 2 of {root} before the failure: the store holds "
                                "the new result (do not rerun)"), message
        assert "nothing was written" not in message
    else:
        said = (f"nothing was written to {root}: the store keeps its last good state (generation 1)"  # its save begun
                if "in the save" in point else "nothing was written: the store keeps its last good state")
        assert message.endswith(said), message
        assert "committed" not in message
    assert Store(root).load().vnns.keys() == {"a", "b"}  # whichever generation, it loads


def _fail_under_torchrun(root: str):
    """Rank 0 commits a new generation, then fails with a user error; rank 1 waits for it."""
    if distributed.current().writer:
        store = Store(root)
        distributed.save(store, store.load())
        raise ValueError("something went wrong after the save")


TORCHRUN_SCRIPT = """import sys
from weightsep import distributed
from test_distributed import _fail_under_torchrun
try:
    distributed.launch(1, _fail_under_torchrun, sys.argv[1], backend="gloo")
except distributed.USER_ERRORS as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.e2e
def test_under_torchrun_rank_0s_own_message_says_it_had_committed(tmp_path):
    root, script = tmp_path / "state", tmp_path / "script.py"
    Store(root).save(packed(["a", "b"])[0])
    script.write_text(TORCHRUN_SCRIPT)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(root)], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])})
    assert done.returncode != 0
    assert Store(root).read_manifest()["generation"] == 2
    assert (f"error: something went wrong after the save; rank 0 had committed generation 2 of {root} before the "
            "failure: the store holds the new result (do not rerun)") in done.stderr, done.stderr[-3000:]


def _die_while_rank_0_works(seconds: float):
    """Rank 1 dies at once; rank 0 computes on, in no collective, so only the launcher can stop it."""
    if distributed.current().rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(seconds)


def test_the_rank_that_died_is_named_before_the_one_the_launcher_terminated(monkeypatch):
    monkeypatch.setattr(distributed, "GRACE_SECONDS", 1.0)
    with pytest.raises(distributed.RankError) as caught:
        distributed.launch(2, _die_while_rank_0_works, 120.0)
    message = str(caught.value)
    assert message.startswith("rank 1: died: killed by signal 9 (SIGKILL); rank 0 then stopped: terminated by the "
                              "launcher: still running 1 s after the first failure"), message


def _ended(rank: int, ended: int, exitcode: int, outcome=None, terminated: bool = False):
    return distributed._Rank(rank, SimpleNamespace(exitcode=exitcode), None, outcome, ended=ended, terminated=terminated)


@pytest.mark.parametrize("ranks, first", [
    # failed on its own beats terminated by the launcher, even when seen to end later
    ([_ended(0, 1, -15, terminated=True), _ended(1, 2, -9)], 1),
    # ... and beats a rank that lost contact, seen to end earlier
    ([_ended(0, 0, 2, ("lost", "rank 0 lost contact")), _ended(1, 1, 2, ("error", "DNN 'c': bad"))], 1),
    # among ranks that failed on their own: the one seen to end first, whatever its rank or how it failed
    ([_ended(0, 3, 2, ("lost", "rank 0 lost contact")), _ended(1, 2, 2, ("error", "DNN 'c': bad")), _ended(2, 1, -9),
      _ended(3, 0, 1, ("crash", "ZeroDivisionError"))], 3),
    # SIGTERM from anyone but the launcher is a death of its own
    ([_ended(0, 1, -15, terminated=True), _ended(1, 0, -15)], 1),
])
def test_the_first_rank_named_is_the_first_to_fail_on_its_own(ranks, first):
    message = distributed._failure(ranks)
    assert message.startswith(f"rank {first}: ")
    assert message.count("then stopped") == len(ranks) - 1


def test_round_robin_refuses_several_ranks():
    names = ["a", "b"]
    with pytest.raises(distributed.RankError, match="round-robin optimiser trains one DNN at a time"):
        distributed.launch(2, optimise_here, names, {"a": 0, "b": 1}, OptimizeConfig(optimizer="round-robin", rounds=1))


# ---- the command line, end to end, on real offline data ---------------------------------------------

REPO = Path(__file__).resolve().parent.parent
RUN = ["--dnns", "satellite", "letters", "dna", "--train-steps", "200", "--fisher-samples", "64", "--eval-every", "20"]


def cli_env() -> dict:
    """The torch ops backend, fixed. Under "auto" every new process (each rank too) takes the lock file of
    the extension's build folder, which every job on this machine shares, to run ninja: it waits there
    for another job's build (minutes under load), and forever for a lock left by a process killed while
    holding it (torch's FileBaton has no timeout), as a rank killed below could leave it. These tests
    are about the ranks; tests/test_ops.py tests the extension."""
    return {**os.environ, "WEIGHTSEP_OPS_BACKEND": "torch"}


def cli(*args, launcher=("-m", "weightsep"), **kwargs):
    return subprocess.run([sys.executable, *launcher, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=cli_env(), **kwargs)


def pages(store):
    from weightsep.store import Store
    state = Store(store).load()
    return state, {"shared": state.shared_pages, **{n: v.exclusive_pages for n, v in state.vnns.items()}}


def assert_same_pages(a, b):
    """The same tables and the same pages up to float summation order: the ranks add the shared gradient
    in another order, and Adam, which divides by the gradient's own scale, turns a last-bit difference
    on a near-zero gradient into up to one step (the learning rate, 2e-3); over 90 steps a few
    weights differ by that much (measured: 1.1e-3 at most, 4e-6 on average). Ranks that do not sum
    the gradient at all train other pages (test_pages_differ_when_the_ranks_do_not_sum_the_shared_gradient)."""
    (state_a, pages_a), (state_b, pages_b) = pages(a), pages(b)
    assert list(state_a.vnns) == list(state_b.vnns)
    assert all(torch.equal(state_a.vnns[n].page_table, state_b.vnns[n].page_table) for n in state_a.vnns)
    for key in pages_a:
        if not pages_a[key].numel():
            continue
        difference = (pages_b[key] - pages_a[key]).abs()
        assert float(difference.max()) <= 2 * OptimizeConfig().learning_rate, key
        assert float(difference.mean()) <= 1e-4 * float(pages_a[key].abs().mean()), key


@pytest.mark.slow
@pytest.mark.e2e
def test_run_and_joint_on_two_ranks_give_the_one_process_result_and_the_same_table(cache_with_data, tmp_path):
    one = cli("run", *RUN, "--steps", "60", "--store", tmp_path / "one", "--results", tmp_path / "r1")
    two = cli("run", *RUN, "--steps", "60", "--store", tmp_path / "two", "--results", tmp_path / "r2", "--procs", "2")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert "started 2 ranks (gloo" in two.stderr and "rank 1 of 2 holds" in two.stderr
    assert "2 ranks, all-reduce" in two.stdout
    assert_same_pages(tmp_path / "one", tmp_path / "two")
    table = lambda out: [line for line in out.splitlines() if line.startswith(("satellite", "letters", "dna", "ratio"))]  # noqa: E731
    assert table(one.stdout) == table(two.stdout)  # accuracies (packed and control) to the printed digit
    # joint on the stored state: 2 spawned ranks, torchrun's 2 ranks and one process agree
    for store in ("one", "two"):
        args = ["joint", "--store", tmp_path / store, "--steps", "30", "--eval-every", "10"]
        done = cli(*args, *(["--procs", "2"] if store == "two" else []))
        assert done.returncode == 0, done.stderr
    assert_same_pages(tmp_path / "one", tmp_path / "two")
    shutil.copytree(tmp_path / "one", tmp_path / "torchrun", ignore=shutil.ignore_patterns(".lock"))
    for store in ("one", "torchrun"):
        args = ["joint", "--store", tmp_path / store, "--steps", "20", "--eval-every", "10"]
        done = cli(*args, launcher=("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                                    "weightsep") if store == "torchrun" else ("-m", "weightsep"))
        assert done.returncode == 0, done.stderr
    assert_same_pages(tmp_path / "one", tmp_path / "torchrun")


@pytest.mark.slow
@pytest.mark.e2e
def test_a_rank_killed_during_joint_fails_cleanly_and_the_store_is_intact(cache_with_data, tmp_path):
    store = tmp_path / "state"
    assert cli("run", *RUN, "--no-control", "--steps", "20", "--store", store, "--results", tmp_path / "r").returncode == 0
    before = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file() and p.name != ".lock"}
    process = subprocess.Popen([sys.executable, "-m", "weightsep", "joint", "--store", str(store), "--steps", "100000",
                                "--procs", "2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
    err = b""
    deadline = time.monotonic() + 300
    while b"joint optimisation:" not in err and time.monotonic() < deadline:  # rank 0's progress bar: steps run
        err += os.read(process.stderr.fileno(), 4096)
    pid = int(err.split(b"rank 1 pid ")[1].split()[0])
    os.kill(pid, signal.SIGKILL)
    out, rest = process.communicate(timeout=120)
    err = (err + rest).decode()
    assert process.returncode == 2
    assert "Traceback" not in err
    assert "error: rank 1 (" in err and "died: killed by signal 9 (SIGKILL)" in err, err[-2000:]
    assert "nothing was written: the store keeps its last good state" in err  # rank 0 never reached its save
    after = {p.name: p.read_bytes() for p in store.iterdir() if p.is_file() and p.name != ".lock"}
    assert after == before
    assert cli("list", "--store", store).returncode == 0


def test_procs_refuses_what_it_cannot_do(cache_with_data, tmp_path, capsys):
    """In process (cli.main, its exit status and stderr; an exception escaping it fails the test)."""
    for args, message in ((["--procs", "4"], "at most one rank per DNN"),
                          (["--procs", "2", "--optimizer", "round-robin"], "only the joint optimiser runs on several")):
        status = cli_mod.main(["run", "--dnns", "satellite", "letters", *args, "--store", str(tmp_path / "s"),
                               "--results", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert status == 2 and message in err and "Traceback" not in err


def test_joint_refuses_more_ranks_than_packed_dnns_before_starting_any(tmp_path, monkeypatch, capsys):
    Store(tmp_path / "state").save(packed(["a", "b"])[0])
    started = []
    monkeypatch.setattr(distributed, "_spawn", lambda *args: started.append(args))
    assert cli_mod.main(["joint", "--store", str(tmp_path / "state"), "--procs", "1000"]) == 2
    assert capsys.readouterr().err == "error: --procs 1000 but only 2 DNN(s) to train: at most one rank per DNN\n"
    assert not started


def test_procs_auto_takes_a_rank_per_free_core_for_long_joint_runs(monkeypatch):
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    steps = distributed.AUTO_MIN_STEPS
    joint, round_robin = OPTIMIZERS["joint"].multi_rank, OPTIMIZERS["round-robin"].multi_rank
    assert distributed.auto_procs(10, steps, joint) == 4
    assert distributed.auto_procs(10, steps, joint, beside=1) == 3  # a core left to the no-sharing control
    assert distributed.auto_procs(3, steps, joint) == 3  # at most one rank per DNN
    assert distributed.auto_procs(10, steps - 1, joint) == 1  # a short run: starting ranks costs more
    assert distributed.auto_procs(10, steps, round_robin) == 1  # one DNN at a time
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: {0})
    assert distributed.auto_procs(10, steps, joint, beside=1) == 1


def test_a_group_of_one_runs_every_step_itself_without_a_collective():
    """One process is a group of one: the writer, every DNN local, each collective the identity."""
    from weightsep.group import Group

    group = Group.current()
    state = packed(["a", "b"])[0]
    assert group == Group() and group.all_local
    assert group.part_of(state, ["a"]) is state  # the writer holds the whole state
    assert group.combined({"a": 1}, lambda parts: 1 / 0) == {"a": 1}  # nothing to combine
    assert group.all_merged({"a": 1}) == {"a": 1} and group.gather(5) == [5] and group.broadcast(7) == 7
    assert group.from_writer(lambda: 3) == 3 and group.writes(lambda: 4) == 4
    assert group.any(True) and not group.any(False) and group.all(True) and not group.all(False)
    assert group.sum_gradient(None, torch.zeros(2), 0) == (None, 0.0)
    group.check_held_once(["a", "b"], ["a", "b"])
    with pytest.raises(ValueError, match="no model/data given for packed DNN"):
        group.check_held_once(["a", "b"], ["a"])
    assert not Group(rank=1, size=2).holds_pages("c", [], ["a"]) and Group().holds_pages("c", [], ["a"])
    assert Group(rank=1, size=2).writes(lambda: 4) is None
