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
no-ops on one rank, so the single-process code path is the same code.
"""
from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .dnn import DNNError
from .store import StoreError

BACKENDS = ("auto", "gloo", "nccl")
TIMEOUT = timedelta(hours=2)  # the longest a rank waits in a collective for a slow (not a dead) peer
GRACE_SECONDS = 10.0  # after one rank fails, how long the others get to stop on their own


_LAUNCHER = None  # a spawned rank's pipe to the launcher


class RankError(RuntimeError):
    """A rank failed or died; the message names it (and its DNNs when known)."""


# what the command line reports as one `error:` line (no traceback); a spawned rank reports the same
USER_ERRORS = (DNNError, StoreError, ValueError, FileNotFoundError, FloatingPointError, RankError)


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
    if size > len(costs):
        raise ValueError(f"--procs {size} but only {len(costs)} DNN(s) to train: at most one rank per DNN")
    load, owner = [0.0] * size, {}
    for name in sorted(costs, key=lambda n: (-costs[n], n)):
        rank = min(range(size), key=lambda r: (load[r], r))
        owner[name] = rank
        load[rank] += costs[name]
    return {name: owner[name] for name in costs}


# ---- collectives (no-ops on one rank) ------------------------------------------------------------

@contextlib.contextmanager
def _collective(what: str):
    """A peer that failed or died breaks the collective (gloo: "Connection reset by peer"): say so."""
    try:
        yield
    except RuntimeError as e:
        first = str(e).split("] ", 1)[-1].split(". ")[0]
        raise RankError(f"rank {dist.get_rank()} lost contact with the other ranks in {what} (another rank failed "
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


def merged(parts: list[dict]) -> dict:
    """Dicts from every rank as one (each key comes from one rank)."""
    return {k: v for part in parts for k, v in part.items()}


def announce(names: list[str]) -> None:
    """Say which DNNs this rank holds: on stderr, and to the launcher, which names them if the rank fails."""
    world = current()
    if world.distributed:
        print(f"rank {world.rank} of {world.size} holds {', '.join(names)}", file=sys.stderr, flush=True)
        if _LAUNCHER is not None:
            _report(_LAUNCHER, "dnns", names)


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


def _quiet_progress_bars() -> None:
    """Ranks other than 0 draw no progress bars (one set per run, as on one process)."""
    import tqdm
    tqdm.tqdm.__init__ = functools.partialmethod(tqdm.tqdm.__init__, disable=True)


def launch(procs: int, fn, *args, backend: str = "auto"):
    """Run `fn(*args)` on every rank and return rank 0's result (None on the other ranks).

    Under torchrun this process is one rank: it joins torchrun's group (`--procs` must be 1 or
    torchrun's world size). Otherwise `procs` ranks are spawned on this machine, each with one
    torch thread, over loopback; this process only waits for them. A rank that fails or dies
    ends the run with a RankError naming it; rank 0 writes nothing after that, so the store keeps
    its last good state."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if under_torchrun():
        size = int(os.environ["WORLD_SIZE"])
        if procs not in (1, size):
            raise ValueError(f"--procs {procs} under torchrun, which started {size} ranks: leave --procs out")
        return _as_rank(fn, args, backend)
    if procs == 1:
        return fn(*args)
    return _spawn(procs, fn, args, backend)


def _as_rank(fn, args, backend: str):
    """Run `fn` as one rank of the group in the environment (torchrun's or ours)."""
    _join(backend)
    rank = dist.get_rank()
    if rank:
        _quiet_progress_bars()
    try:
        result = fn(*args)
        with _collective("the final barrier"):
            dist.barrier()  # nobody leaves while another still needs it
        return result if rank == 0 else None
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _report(conn, kind: str, content) -> None:
    """To the launcher, by plain pickle: multiprocessing's own would hand tensors over in shared
    memory that dies with this process."""
    conn.send_bytes(pickle.dumps((kind, content)))


def _spawned_rank(rank: int, size: int, port: int, backend: str, fn, args, parent: int, conn) -> None:
    """One spawned rank: reports ('ok', result) from rank 0 or ('error', message) to the launcher."""
    from .train import _worker_init, set_single_thread  # ends this rank with the launcher, however it ends
    _worker_init(parent)
    set_single_thread()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size))
    global _LAUNCHER
    _LAUNCHER = conn
    try:
        _report(conn, "ok", _as_rank(fn, args, backend))
    except (*USER_ERRORS, OSError) as e:
        _report(conn, "error", str(e))
        sys.exit(2)
    except BaseException as e:  # a bug: its traceback is the report
        _report(conn, "crash", "".join(traceback.format_exception_only(type(e), e)).strip())
        traceback.print_exc()
        sys.exit(1)


def _spawn(procs: int, fn, args, backend: str):
    ctx = mp.get_context("spawn")
    port, pipes, ranks = _free_port(), [], []
    for rank in range(procs):
        receive, send = ctx.Pipe(duplex=False)
        process = ctx.Process(target=_spawned_rank, name=f"weightsep-rank{rank}",
                              args=(rank, procs, port, backend, fn, args, os.getpid(), send))
        process.start()
        send.close()
        pipes.append(receive)
        ranks.append(process)
    print(f"started {procs} ranks ({backend_for(backend)} over loopback): "
          + ", ".join(f"rank {r} pid {p.pid}" for r, p in enumerate(ranks)), file=sys.stderr, flush=True)
    reports: dict[int, tuple[str, object]] = {}
    try:
        _wait(ranks, pipes, reports)
    except BaseException:  # Ctrl-C or anything else here: no rank outlives the launcher
        for process in ranks:
            if process.is_alive():
                process.terminate()
        raise
    for process in ranks:
        process.join()
    failed = {r: p.exitcode for r, p in enumerate(ranks) if p.exitcode != 0}
    if failed:
        raise RankError(_failure(failed, reports))
    return reports[0][1]


def _wait(ranks: list, pipes: list, reports: dict) -> None:
    """Collect each rank's report until all have ended; once one fails, stop the others after GRACE_SECONDS."""
    open_pipes = {pipe: r for r, pipe in enumerate(pipes)}
    deadline = None
    while any(p.is_alive() for p in ranks) or open_pipes:
        waiting = list(open_pipes) + [p.sentinel for p in ranks if p.is_alive()]
        for ready in mp.connection.wait(waiting, timeout=1.0):
            if ready in open_pipes:
                rank = open_pipes[ready]
                try:
                    kind, content = pickle.loads(ready.recv_bytes())
                    reports[(rank, "dnns") if kind == "dnns" else rank] = (kind, content)
                except (EOFError, OSError):  # ended without a report: killed, or exited hard
                    del open_pipes[ready]
        if deadline is None and any(p.exitcode not in (None, 0) for p in ranks):
            deadline = time.monotonic() + GRACE_SECONDS
        if deadline is not None and time.monotonic() > deadline:
            for process in ranks:
                if process.is_alive():
                    process.terminate()


def _failure(failed: dict[int, int], reports: dict) -> str:
    """One message naming the rank that failed first in cause: a user error, then a death, then the rest."""
    def how(rank: int) -> str:
        code = failed[rank]
        kind, message = reports.get(rank, (None, None))
        if kind in ("error", "crash"):
            return str(message)
        if code < 0:
            return f"died: killed by signal {-code} ({signal.Signals(-code).name})"
        return f"died: exit status {code}, no report"

    def order(rank: int) -> tuple[int, int]:
        kind = reports.get(rank, (None,))[0]
        lost = kind == "error" and "lost contact" in str(reports[rank][1])
        return (0 if kind == "error" and not lost else 1 if kind is None else 2 if kind == "crash" else 3, rank)

    def who(rank: int) -> str:
        held = reports.get((rank, "dnns"))
        return f"rank {rank}" + (f" ({', '.join(held[1])})" if held else "")

    first, *others = sorted(failed, key=order)
    lines = [f"{who(first)}: {how(first)}"]
    lines += [f"{who(r)} then stopped: {how(r)}" for r in others]
    return "; ".join(lines) + "; nothing was written: the store keeps its last good state"
