"""kill -9 of a rank around rank 0's save in `joint --procs 2`: is the failed command's message true? (issue 24)

Each trial runs `python -m weightsep joint --procs 2` on a fresh copy of a small store (tests/store_safety_cases.py's
template: two tiny letters DNNs, pages of 64, a private WEIGHTSEP_CACHE, ops backend torch) and SIGKILLs one
rank, rank 0 and rank 1 in turn, at a point chosen from outside by watching the store directory (~1 ms polls):

* steps:  a uniform time over the joint steps before the save (their length from the reference runs);
* save:   a uniform delay over the save's length (the shortest of the reference runs) after its first file appeared;
* commit: a uniform delay of 0-100 ms after manifest.json was replaced (the commit; rank 0 still running).

Where a kill landed is read from the store just before and just after it: before the save (no file of the save
yet), in the save window (a file of the save there, the manifest not yet replaced), across the commit (replaced
between the two looks), after the commit. The message is true when the command exits 2 with one `error:` line,
no traceback, naming the killed rank first, and says "rank 0 had committed generation N" where the store's
generation is now N, one above the one before, or "nothing was written" where it is the one before. A command
that exits 0 (the kill came after its ranks had ended) must have committed. Target: 10 of 10 kills in the save
window with a true message.

    python -m bench.rank_kill                         # 32 trials, ~8 min on 2 cores -> results/rank_kill.json
    python -m bench.rank_kill --trials 8 --seed 1
"""
from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from bench.timing import write_result
from tests.store_safety_cases import JOINT, MANIFEST, REPO, Env, prepare
from weightsep.store import Store

STEPS = 300  # joint steps of each run: about a second before the save here
PLANS = ("steps", "save", "save", "commit")  # half the kills aimed at the save window
TARGET_IN_WINDOW = 10  # kills inside the save window, every one with a true message
COMMITTED = re.compile(r"rank 0 had committed generation (\d+) of ")
POLL_S = 0.0005


def _look(store: Path, files: set[str], manifest: int) -> tuple[bool, bool]:
    """(the save has begun: a file not in `files`, or a new manifest; the manifest has been replaced)."""
    committed = os.stat(store / MANIFEST).st_ino != manifest  # the replace gives the name a new inode
    return committed or bool(set(os.listdir(store)) - files), committed


def _wait_for(condition, process: subprocess.Popen, timeout: float = 300) -> bool:
    """Poll `condition` until it holds (True) or the command ends (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def _start(env: Env, store: Path, err: Path) -> tuple[subprocess.Popen, float, list[int]]:
    """`joint --procs 2` on `store`, its stderr into `err`; returns it, its start time and the ranks' pids."""
    with open(err, "w") as f:
        process = subprocess.Popen(env.argv("joint", "--procs", "2", "--steps", STEPS, *JOINT, "--store", store),
                                   cwd=REPO, env=env.vars(), stdout=subprocess.DEVNULL, stderr=f, start_new_session=True)
    start = time.monotonic()
    if not _wait_for(lambda: "started 2 ranks" in err.read_text(), process):
        raise RuntimeError(f"joint --procs 2 did not start its ranks:\n{err.read_text()[-2000:]}")
    line = next(x for x in err.read_text().splitlines() if x.startswith("started 2 ranks"))
    return process, start, [int(p) for p in re.findall(r"pid (\d+)", line)]


def reference(env: Env, key: str) -> dict:
    """One unkilled run: seconds from its start to its steps, to the save's first file, to the commit."""
    store = env.copy(key)
    files, manifest = set(os.listdir(store)), os.stat(store / MANIFEST).st_ino
    err = store.parent / f"{key}.err"
    process, start, _ = _start(env, store, err)
    times = {}
    for name, condition in (("steps", lambda: "joint optimisation" in err.read_text()),
                            ("save", lambda: _look(store, files, manifest)[0]),
                            ("commit", lambda: _look(store, files, manifest)[1])):
        _wait_for(condition, process)
        times[name] = time.monotonic() - start
    if process.wait(timeout=300) != 0:
        raise RuntimeError(f"the reference run failed:\n{err.read_text()[-2000:]}")
    shutil.rmtree(store)
    return times


def _errors(stderr: str) -> list[str]:
    """The `error:` lines (one where a killed rank 0 left its progress bar's line unfinished starts there)."""
    return [line[line.index("error: "):] for line in stderr.splitlines() if "error: " in line]


def verdict(rc: int, stderr: str, victim: int, before: int, after: int) -> tuple[bool, str]:
    """Whether the command's end says truly what the store holds, and if not, why."""
    if rc == 0:
        return after == before + 1, "exited 0" + ("" if after == before + 1 else f" but the store is at {after}")
    errors = _errors(stderr)
    if rc != 2 or len(errors) != 1 or "Traceback" in stderr:
        return False, f"exit {rc}, {len(errors)} error lines" + (", a traceback" if "Traceback" in stderr else "")
    message = errors[0]
    if not message.startswith(f"error: rank {victim}"):
        return False, f"names another rank first: {message[:120]}"
    claimed = [int(n) for n in COMMITTED.findall(message)]
    if after == before + 1 and (claimed != [after] or "nothing was written" in message):
        return False, f"generation {after} was committed; the message says otherwise"
    if after == before and (claimed or "nothing was written" not in message):
        return False, "nothing was committed; the message says otherwise"
    if after not in (before, before + 1):
        return False, f"the store went from generation {before} to {after}"
    return True, "committed" if after > before else "nothing written"


def trial(env: Env, key: str, victim: int, plan: str, delay: float) -> dict:
    store = env.copy(key)
    before = Store(store).read_manifest()["generation"]
    files, manifest = set(os.listdir(store)), os.stat(store / MANIFEST).st_ino
    err = store.parent / f"{key}.err"
    process, _, pids = _start(env, store, err)
    aim = {"steps": lambda: "joint optimisation" in err.read_text(),
           "save": lambda: _look(store, files, manifest)[0],
           "commit": lambda: _look(store, files, manifest)[1]}[plan]
    landed = "after the command ended"
    if _wait_for(aim, process):
        time.sleep(delay)
        began, committed = _look(store, files, manifest)
        try:
            os.kill(pids[victim], signal.SIGKILL)
            now_committed = _look(store, files, manifest)[1]
            landed = ("after the commit" if committed else "across the commit" if now_committed else
                      "in the save window" if began else "before the save")
        except ProcessLookupError:
            pass
    try:
        process.wait(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    after = Store(store).read_manifest()["generation"]
    stderr = err.read_text()
    true, why = verdict(process.returncode, stderr, victim, before, after)
    shutil.rmtree(store)
    return {"victim": victim, "plan": plan, "delay_ms": round(1e3 * delay, 2), "landed": landed,
            "rc": process.returncode, "generation_before": before, "generation_after": after, "true": true,
            "verdict": why, "message": next(iter(_errors(stderr)), None)}


LANDINGS = ("before the save", "in the save window", "across the commit", "after the commit", "after the command ended")


def table(rows: list[dict]) -> str:
    lines = [f"{'kill landed':<26}{'rank 0 killed':>15}{'rank 1 killed':>15}{'new generation':>16}{'true message':>14}"]
    for landing in LANDINGS:
        here = [r for r in rows if r["landed"] == landing]
        if here:
            lines.append(f"{landing:<26}" + "".join(f"{sum(r['victim'] == v for r in here):>15}" for v in (0, 1))
                         + f"{sum(r['generation_after'] > r['generation_before'] for r in here):>16}"
                         + f"{sum(r['true'] for r in here):>9}/{len(here):<4}")
    lines.append(f"{'all':<26}{sum(r['victim'] == 0 for r in rows):>15}{sum(r['victim'] == 1 for r in rows):>15}"
                 f"{sum(r['generation_after'] > r['generation_before'] for r in rows):>16}"
                 f"{sum(r['true'] for r in rows):>9}/{len(rows):<4}")
    wrong = [f"  {r['landed']}, rank {r['victim']} killed: {r['verdict']}: {r['message']}" for r in rows if not r["true"]]
    return "\n".join(lines + (["untrue:", *wrong] if wrong else []))


def main(*, trials: int, references: int, seed: int, workdir: Path | None) -> dict:
    root = Path(tempfile.mkdtemp(prefix="rank_kill-")) if workdir is None else workdir
    start = time.perf_counter()
    try:
        print(f"preparing tiny DNNs, their cache and the template store in {root} ...", flush=True)
        env = prepare(root)
        refs = [reference(env, f"ref{i}") for i in tqdm(range(references), desc="reference runs", unit="run")]
        steps_s = min(r["save"] - r["steps"] for r in refs)
        save_s = min(r["commit"] - r["save"] for r in refs)
        rng = random.Random(seed)
        rows = []
        for i in tqdm(range(trials), desc="kill -9", unit="trial"):
            plan, victim = PLANS[i % len(PLANS)], (i // len(PLANS)) % 2
            delay = {"steps": rng.uniform(0, steps_s), "save": rng.uniform(0, save_s),
                     "commit": rng.uniform(0, 0.1)}[plan]
            rows.append(trial(env, f"t{i}", victim, plan, delay))
        window = [r for r in rows if r["landed"] == "in the save window"]
        payload = {"seed": seed, "steps": STEPS, "reference_s": refs, "save_window_s": save_s,
                   "trials": trials, "true": sum(r["true"] for r in rows),
                   "in_save_window": len(window), "in_save_window_true": sum(r["true"] for r in window),
                   "target": f"at least {TARGET_IN_WINDOW} kills in the save window, all with a true message",
                   "target_met": len(window) >= TARGET_IN_WINDOW and all(r["true"] for r in window),
                   "seconds": round(time.perf_counter() - start, 1), "rows": rows}
        print("\n" + table(rows))
        print(f"\nsave window (shortest reference run, first file to commit): {1e3 * save_s:.1f} ms; kills in it with a true "
              f"message: {payload['in_save_window_true']}/{payload['in_save_window']} (target {TARGET_IN_WINDOW} of "
              f"{TARGET_IN_WINDOW}: {'met' if payload['target_met'] else 'NOT met'})")
        path = write_result("rank_kill", payload)
        print(f"{payload['seconds']:.0f} s; wrote {path}")
        return payload
    finally:
        if workdir is None:
            shutil.rmtree(root, ignore_errors=True)


def cli_main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rank_kill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=32, help="kills (default 32: half aimed at the save window)")
    parser.add_argument("--references", type=int, default=2, help="unkilled runs that time the steps and the save")
    parser.add_argument("--seed", type=int, default=0, help="for the kill delays")
    parser.add_argument("--workdir", type=Path, help="keep the cache, DNN folders and template here (reused)")
    main(**vars(parser.parse_args()))


if __name__ == "__main__":
    cli_main()
