"""Scale-out: the joint optimisation over processes and machines with torch.distributed.

Each rank holds a group of DNNs: their models, data, exclusive pages and Adam moments. The shared
pages are replicated. Every step each rank sums its DNNs' (balanced) gradients on the shared pages
and ONE all-reduce with SUM gives every replica the total, so each takes the same Adam step as the
single-process joint optimiser (the sum, not an average: docs/distributed.md). Rank 0 packs
(separation and matching need every DNN's Fisher), chooses the best validation check from the
gathered accuracies and alone writes the store.

    python -m weightsep run --procs 2                 # this machine: launches 2 ranks (gloo)
    torchrun --nnodes 2 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m weightsep run                              # several machines: torchrun starts the ranks

`current` says which rank this process is (rank 0 of 1 outside a group); `launch` starts the ranks
or joins torchrun's group; `assign` gives DNNs to ranks balanced by cost; the collectives below are
no-ops on one rank. The stages do not call these: they hold a `group.Group`, whose methods say
which DNNs are local, sum the shared gradient, gather and broadcast, and let the writer write.
"""
from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import multiprocessing.connection
import multiprocessing.util
import os
import pickle
import signal
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import USER_ERRORS, LostContact, RankError, StoreError
from .state import PackedState
from .store import COMMITS, Store

BACKENDS = ("auto", "gloo", "nccl")
TIMEOUT = timedelta(hours=2)  # the longest a rank waits in a collective for a slow (not a dead) peer
GRACE_SECONDS = 10.0  # after one rank fails, how long the others get to stop on their own


_LAUNCHER = None  # a spawned rank's pipe to the launcher
_SAVES: dict[str, list] = {}  # this rank's saves: store -> [generation before, generation committed or None]


@dataclass(frozen=True)
class World:
    """This process's place in the group: rank `rank` of `size` (0 of 1 outside a group)."""

    rank: int = 0
    size: int = 1
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def writer(self) -> bool:
        """Rank 0 alone writes the store and the results."""
        return self.rank == 0


def current() -> World:
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), dist.get_backend())


def assign(costs: dict[str, float], size: int) -> dict[str, int]:
    """DNN -> rank. Longest processing time first: each DNN, costliest first, goes to the rank with
    the least cost so far (ties: the lower rank), so the slowest rank, which every step waits for,
    carries at most 4/3 of the best split's. The same on every rank (no randomness, no timing)."""
    check_procs(size, len(costs))
    load, owner = [0.0] * size, {}
    for name in sorted(costs, key=lambda n: (-costs[n], n)):
        rank = min(range(size), key=lambda r: (load[r], r))
        owner[name] = rank
        load[rank] += costs[name]
    return {name: owner[name] for name in costs}


AUTO_MIN_STEPS = 500  # joint steps below which `--procs auto` stays on one process: a rank's start costs seconds


def auto_procs(dnns: int, steps: int, multi_rank: bool, beside: int = 0) -> int:
    """The ranks `--procs auto` (the default) runs the joint optimisation on: one per core this
    process may use, less `beside` processes that work next to it (the no-sharing control), at most
    one per DNN. One process for an optimiser that is not `multi_rank` (the published ones train one
    DNN at a time), for runs shorter than AUTO_MIN_STEPS steps, and under torchrun (which starts the ranks itself)."""
    if not multi_rank or steps < AUTO_MIN_STEPS or under_torchrun():
        return 1
    return max(1, min(dnns, len(os.sched_getaffinity(0)) - beside))


def check_procs(procs: int, dnns: int) -> None:
    """At most one rank per DNN (a rank without one would only wait); a command checks it before
    starting any rank, as each imports torch and builds every model (150-250 MB)."""
    if procs > dnns:
        raise ValueError(f"--procs {procs} but only {dnns} DNN(s) to train: at most one rank per DNN")


# ---- collectives (no-ops on one rank) ------------------------------------------------------------

@contextlib.contextmanager
def _collective(what: str):
    """A peer that failed or died breaks the collective (gloo: "Connection reset by peer"): say so."""
    try:
        yield
    except RuntimeError as e:
        first = str(e).split("] ", 1)[-1].split(". ")[0]
        raise LostContact(f"rank {dist.get_rank()} lost contact with the other ranks in {what} (another rank failed "
                        f"or died: its own message says why): {first}") from None


def _device() -> torch.device:
    """Where collective tensors must live: the rank's GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_(tensor: torch.Tensor) -> torch.Tensor:
    """All-reduce `tensor` in place with SUM over the ranks."""
    if current().distributed:
        device = _device()
        with _collective("all_reduce"):
            if device.type == "cpu":
                dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            else:  # NCCL reduces on the GPU: there and back (the pages are trained on the CPU)
                on_device = tensor.to(device)
                dist.all_reduce(on_device, op=dist.ReduceOp.SUM)
                tensor.copy_(on_device)
    return tensor


def any_(flag: bool) -> bool:
    """True on every rank if `flag` is true on any."""
    return bool(sum_(torch.tensor([float(flag)]))) if current().distributed else flag


def all_gather(obj) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    world = current()
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    with _collective("all_gather"):
        dist.all_gather_object(out, obj)
    return out


def gather(obj) -> list | None:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
    world = current()
    if not world.distributed:
        return [obj]
    out = [None] * world.size if world.writer else None
    with _collective("gather"):
        dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj):
    """Rank 0's `obj` on every rank."""
    if not current().distributed:
        return obj
    box = [obj]
    with _collective("broadcast"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def announce(names: list[str]) -> None:
    """Say which DNNs this rank holds: on stderr, and to the launcher, which names them if the rank fails."""
    world = current()
    if world.distributed:
        print(f"rank {world.rank} of {world.size} holds {', '.join(names)}", file=sys.stderr, flush=True)
        _tell("dnns", names)


def save(store: Store, state: PackedState) -> dict:
    """`store.save(state)`, recorded and told to the launcher before and after, so that a failed run's
    message says truly whether it committed a new generation (the launcher reads the store's manifest
    when this rank ended inside the save). Returns the new manifest."""
    root = str(store.root)
    try:
        before = _generation(root)
    except StoreError:  # an unreadable manifest: store.save refuses it below, writing nothing
        return store.save(state)
    _SAVES[root] = [before, None]
    _tell("saving", (root, before))
    manifest = store.save(state)
    _SAVES[root][1] = manifest["generation"]
    _tell("saved", (root, manifest["generation"]))
    return manifest


def _generation(root: str) -> int:
    """The store's current generation (0 before its first save), from its manifest, the commit point."""
    store = Store(root)
    return store.read_manifest()["generation"] if store.exists() else 0


def _committed(root: str, before: int, committed: int | None) -> int | None:
    """The generation a save committed: as the rank reported it, else (the rank ended inside the save)
    as the store's manifest says, None if it is still `before` (StoreError if it cannot be read)."""
    if committed is not None:
        return committed
    now = _generation(root)
    return now if now > before else None


def _written(saves: dict[str, list]) -> str:
    """What a failed run left in the stores, for its message: each save's committed generation, or the
    generation the store kept; a save the rank did not live to report is judged by the manifest."""
    if not saves:
        return "nothing was written: the store keeps its last good state"
    said = []
    for root, (before, committed) in saves.items():
        try:
            committed = _committed(root, before, committed)
        except StoreError as e:
            said.append(f"rank 0 ended while saving {root}, whose manifest cannot be read now: {e}")
            continue
        if committed is not None:
            said.append(f"rank 0 had committed generation {committed} of {root} before the failure: the store "
                        "holds the new result (do not rerun)")
        elif before:
            said.append(f"nothing was written to {root}: the store keeps its last good state (generation {before})")
        else:
            said.append(f"nothing was written to {root}: no generation was ever saved there")
    return "; ".join(said)


# ---- starting the ranks ----------------------------------------------------------------------------

def backend_for(choice: str) -> str:
    """`auto`: NCCL when every rank on this machine has a GPU of its own, else gloo."""
    if choice != "auto":
        return choice
    return "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= ranks_here() else "gloo"


def ranks_here() -> int:
    """Ranks on this machine (they share its cores and GPUs): 1 outside a group."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))


def under_torchrun() -> bool:
    """torchrun (torch.distributed.run) started this process as one rank of a group."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"))


def _join(backend: str) -> None:
    backend = backend_for(backend)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise ValueError("--backend nccl needs a GPU for every rank; this machine has none (use gloo)")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend, init_method="env://", timeout=TIMEOUT)


def launch(procs: int, fn, *args, backend: str = "auto"):
    """Run `fn(*args)` on every rank and return rank 0's result (None on the other ranks).

    Under torchrun this process is one rank: it joins torchrun's group (`--procs` must be 1 or
    torchrun's world size). Otherwise `procs` ranks are spawned on this machine, each with one
    torch thread, over loopback; this process only waits for them. A rank that fails or dies
    ends the run with a RankError naming it and saying whether rank 0 had committed a new
    generation of the store (`save`) or nothing was written."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if under_torchrun():
        size = int(os.environ["WORLD_SIZE"])
        if procs not in (1, size):
            raise ValueError(f"--procs {procs} under torchrun, which started {size} ranks: leave --procs out")
        try:
            return _as_rank(fn, args, backend)
        except USER_ERRORS as e:  # no launcher to say it: rank 0's own message says what its saves left
            if int(os.environ["RANK"]):
                raise
            raise RankError(f"{e}; {_written(_SAVES)}") from None
    if procs == 1:
        return fn(*args)
    return _spawn(procs, fn, args, backend)


def _as_rank(fn, args, backend: str):
    """Run `fn` as one rank of the group in the environment (torchrun's or ours)."""
    _SAVES.clear()
    _join(backend)
    rank = dist.get_rank()  # ranks other than 0 draw no progress bars (progress.tqdm)
    try:
        result = fn(*args)
        with _collective("the final barrier"):
            dist.barrier()  # nobody leaves while another still needs it
        return result if rank == 0 else None
    finally:
        dist.destroy_process_group()


def _report(conn, kind: str, content) -> None:
    """To the launcher, by plain pickle: multiprocessing's own would hand tensors over in shared
    memory that dies with this process."""
    conn.send_bytes(pickle.dumps((kind, content)))


def _tell(kind: str, content) -> None:
    """`_report` to the launcher, if one started this rank."""
    if _LAUNCHER is not None:
        _report(_LAUNCHER, kind, content)


def _spawned_rank(rank: int, size: int, port: int, backend: str, fn, args, parent: int, conn) -> None:
    """One spawned rank: reports ('ok', result) from rank 0, or ('lost' | 'error' | 'crash', message),
    to the launcher, which hosts the group's store at `port` (as torchrun's agent does)."""
    from .train import _worker_init, set_single_thread  # ends this rank with the launcher, however it ends
    _worker_init(parent)
    set_single_thread()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size), TORCHELASTIC_USE_AGENT_STORE="True")
    global _LAUNCHER
    _LAUNCHER = conn
    status = 0
    try:
        _report(conn, "ok", _as_rank(fn, args, backend))
    except (*USER_ERRORS, OSError) as e:
        _report(conn, "lost" if isinstance(e, LostContact) else "error", str(e))
        status = 2
    except KeyboardInterrupt:  # Ctrl-C reaches every rank of the terminal's process group: the launcher says it
        status = 130
    except BaseException as e:  # a bug: its traceback is the report
        _report(conn, "crash", "".join(traceback.format_exception_only(type(e), e)).strip())
        traceback.print_exc()
        status = 1
    # the rank's work is reported: end it without the interpreter's teardown, in which torch's C++
    # static destructors abort now and then ("terminate called without an active exception", SIGABRT
    # in 1 of 10-30 runs of a finished two-rank group), which the launcher would report as a death
    mp.util._run_finalizers()  # Python's part of the teardown: the rank's worker pools' semaphores
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@dataclass
class _Rank:
    """What the launcher knows of one spawned rank, from its reports and its end."""

    rank: int
    process: mp.process.BaseProcess
    pipe: mp.connection.Connection
    outcome: tuple[str, object] | None = None  # ('ok', result) or ('lost' | 'error' | 'crash', message)
    dnns: list[str] | None = None
    saves: dict[str, list] = field(default_factory=dict)  # as its _SAVES
    ended: int | None = None  # the order in which the launcher saw the ranks end or report a failure
    terminated: bool = False  # the launcher stopped it (SIGTERM): still running GRACE_SECONDS after a failure

    def receive(self, kind: str, content) -> None:
        if kind == "dnns":
            self.dnns = content
        elif kind == "saving":
            self.saves[content[0]] = [content[1], None]
        elif kind == "saved":
            self.saves[content[0]][1] = content[1]
        else:
            self.outcome = (kind, content)

    @property
    def saving(self) -> bool:
        """Inside a save: it needs no peer to finish it, so the launcher lets it."""
        return any(committed is None for _, committed in self.saves.values())

    @property
    def reported_failure(self) -> bool:
        return self.outcome is not None and self.outcome[0] != "ok"

    @property
    def killed_by_launcher(self) -> bool:
        return self.terminated and self.process.exitcode == -signal.SIGTERM

    @property
    def stopped_by_another(self) -> bool:
        """It ended because another rank failed: it lost contact with it, or the launcher stopped it."""
        return self.killed_by_launcher or (self.outcome is not None and self.outcome[0] == "lost")

    @property
    def who(self) -> str:
        return f"rank {self.rank}" + (f" ({', '.join(self.dnns)})" if self.dnns else "")

    @property
    def why(self) -> str:
        code = self.process.exitcode
        if self.reported_failure:
            return str(self.outcome[1])
        if self.killed_by_launcher:
            return f"terminated by the launcher: still running {GRACE_SECONDS:g} s after the first failure"
        if code < 0:
            return f"died: killed by signal {-code} ({signal.Signals(-code).name})"
        return f"died: exit status {code}, no report"


def _spawn(procs: int, fn, args, backend: str):
    ctx = mp.get_context("spawn")
    # the launcher hosts the group's store, as torchrun's agent does: its port is taken here, before any
    # rank starts, so no other process can take it in between (a port found free, then let go, can be)
    store = dist.TCPStore("127.0.0.1", 0, procs, is_master=True, timeout=TIMEOUT, wait_for_workers=False)
    ranks = []
    for rank in range(procs):
        receive, send = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_spawned_rank, name=f"weightsep-rank{rank}",
                              args=(rank, procs, store.port, backend, fn, args, os.getpid(), send))
        process.start()
        send.close()
        ranks.append(_Rank(rank, process, receive))
    print(f"started {procs} ranks ({backend_for(backend)} over loopback): "
          + ", ".join(f"rank {r.rank} pid {r.process.pid}" for r in ranks), file=sys.stderr, flush=True)
    try:
        _wait(ranks)
    except BaseException:  # Ctrl-C or anything else here: no rank outlives the launcher
        for r in ranks:
            if r.process.is_alive():
                r.process.terminate()
        for r in ranks:
            r.process.join()
            for root, (before, committed) in r.saves.items():  # the command's message says what was written
                with contextlib.suppress(StoreError):
                    if (generation := _committed(root, before, committed)) is not None:
                        COMMITS.append((Path(root), generation))
        raise
    for r in ranks:
        r.process.join()
    if any(r.process.exitcode != 0 for r in ranks):
        raise RankError(_failure(ranks))
    return ranks[0].outcome[1]


def _wait(ranks: list[_Rank]) -> None:
    """Collect each rank's reports until all have ended, noting the order in which they end or report
    a failure; once one has failed, stop the others (but one inside a save) after GRACE_SECONDS."""
    open_pipes = {r.pipe: r for r in ranks}
    order = itertools.count()
    deadline = None
    while True:
        running = [r for r in ranks if r.process.exitcode is None]  # one look per round: ends are noted once
        for r in ranks:
            if r.ended is None and (r not in running or r.reported_failure):
                r.ended = next(order)
        if not running and not open_pipes:
            return
        if deadline is None and any(r.process.exitcode not in (None, 0) for r in ranks):
            deadline = time.monotonic() + GRACE_SECONDS
        if deadline is not None and time.monotonic() > deadline:
            for r in running:
                if not r.saving:
                    r.process.terminate()
                    r.terminated = True
        for ready in mp.connection.wait(list(open_pipes) + [r.process.sentinel for r in running], timeout=1.0):
            if ready in open_pipes:
                try:
                    open_pipes[ready].receive(*pickle.loads(ready.recv_bytes()))
                except (EOFError, OSError):  # ended, with or without a report
                    del open_pipes[ready]


def _failure(ranks: list[_Rank]) -> str:
    """One message: first the rank that failed first in cause (one that failed or died on its own comes
    before those that only lost contact or were stopped by the launcher; among equals, the one seen to
    end first), then the others, then what rank 0's saves left in the store."""
    failed = sorted((r for r in ranks if r.process.exitcode != 0), key=lambda r: (r.stopped_by_another, r.ended, r.rank))
    lines = [f"{failed[0].who}: {failed[0].why}"] + [f"{r.who} then stopped: {r.why}" for r in failed[1:]]
    return "; ".join(lines + [_written(ranks[0].saves)])
