"""Scale-out (weightsep/distributed.py): the joint optimiser over ranks equals the one-process one.

The ranks are real processes in a gloo group over loopback, started by `distributed.launch`."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from weightsep import distributed
from weightsep.model import TemplateNet
from weightsep.optimize import OptimizeConfig, Task, optimize
from weightsep.pack import PackConfig, add_vnn, new_state

P = 64
HIDDEN = {"a": [48], "b": [40], "c": [24], "d": [8], "e": [56]}


def blobs(seed: int, n: int = 400, features: int = 8, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=g) * 2.0
    y = torch.randint(0, classes, (n,), generator=g)
    return centres[y] + torch.randn(n, features, generator=g), y


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


def optimise_here(names: list[str], owner: dict[str, int], config: OptimizeConfig):
    """One rank's part: its DNNs' tasks only; returns the packed pages (whole on rank 0)."""
    state, tasks = packed(names)
    rank = distributed.current().rank
    result, history = optimize(state, {n: t for n, t in tasks.items() if owner[n] == rank}, config, progress=False)
    return ({"shared": result.shared_pages, **{n: v.exclusive_pages for n, v in result.vnns.items()}},
            {n: v.page_table for n, v in result.vnns.items()}, history.val_accuracy, history.promoted)


CONFIGS = {
    "all DNNs each step": OptimizeConfig(steps=30, eval_every=10, batch_size=50),
    "sampled DNNs, promotion, plain sum": OptimizeConfig(steps=30, eval_every=5, batch_size=50, dnns_per_step=2,
                                                         promote_pages=3, promote_start=0.0, balance="sum"),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_two_ranks_give_the_pages_of_one_process_with_uneven_dnns_per_rank(config):
    names = ["a", "b", "c"]  # 2 DNNs on one rank, 1 on the other
    alone = optimise_here(names, {n: 0 for n in names}, config)
    owner = {"a": 0, "b": 1, "c": 1}
    split = distributed.launch(2, optimise_here, names, owner, config)
    for key in alone[0]:
        torch.testing.assert_close(split[0][key], alone[0][key], rtol=1e-5, atol=1e-6)
    assert all(torch.equal(split[1][n], alone[1][n]) for n in names)  # the same promotions, the same tables
    assert split[3] == alone[3]
    assert len(split[2]) == len(alone[2])
    for mine, theirs in zip(split[2], alone[2]):
        assert list(mine) == names and mine == pytest.approx(theirs, abs=1e-9)


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


def test_round_robin_refuses_several_ranks():
    names = ["a", "b"]
    with pytest.raises(distributed.RankError, match="round-robin optimiser trains one DNN at a time"):
        distributed.launch(2, optimise_here, names, {"a": 0, "b": 1}, OptimizeConfig(optimizer="round-robin", rounds=1))
