"""Progress bars: ranks other than 0 draw none, and tqdm itself is left as it is (no process-wide patch)."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp
import tqdm as tqdm_module

from weightsep import progress


def _drawn(bar_class) -> bool:
    out = io.StringIO()
    for _ in bar_class(range(3), file=out, desc="steps", mininterval=0):
        pass
    return bool(out.getvalue())


def _rank(rank: int, world: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        result = {"ours": _drawn(progress.tqdm), "plain": _drawn(tqdm_module.tqdm), "reports": progress.reports()}
        with open(f"{folder}/rank{rank}.json", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_one_process_draws_its_bars():
    assert progress.reports() and _drawn(progress.tqdm)


def test_only_rank_0_draws_and_tqdm_is_untouched(tmp_path):
    mp.spawn(_rank, args=(2, str(tmp_path)), nprocs=2)
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert got == [{"ours": True, "plain": True, "reports": True}, {"ours": False, "plain": True, "reports": False}]


def _drawn_in_a_process(**env) -> bool:
    code = ("import io; from weightsep.progress import tqdm; out = io.StringIO(); "
            "list(tqdm(range(3), file=out, mininterval=0)); print(bool(out.getvalue()))")
    environ = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"} | env
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    return out.stdout.strip() == "True"


def test_tqdms_own_environment_default_still_applies():
    assert _drawn_in_a_process() and not _drawn_in_a_process(TQDM_DISABLE="1")
