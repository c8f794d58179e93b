"""The stand-alone training cache: keyed on everything that changes the trained weights, nothing else."""
import dataclasses
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from weightsep import dnn as dnn_mod
from weightsep import train

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """A DNN folder, its data file and a copy of the training code, all in tmp_path."""
    monkeypatch.setenv("WEIGHTSEP_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "toy"
    folder.mkdir()
    shutil.copy(REPO / "suite" / "letters" / "dnn.py", folder / "dnn.py")
    data = dnn_mod.data_dir()
    data.mkdir(parents=True)
    (data / "toy.npz").write_bytes(b"data v1")
    code = tmp_path / "code"
    code.mkdir()
    copies = []
    for source in train.TRAINING_CODE:
        copies.append(code / source.name)
        shutil.copy(source, copies[-1])
    monkeypatch.setattr(train, "TRAINING_CODE", tuple(copies))
    return folder, data / "toy.npz", copies


def key(folder: Path, **config) -> Path:
    dnn = dnn_mod.load_folder(folder)
    return train.cache_path(dnn, replace(train.config_for(dnn), **config))


def edit(path: Path, text: str = "\n# edited\n") -> None:
    path.write_text(path.read_text() + text)


@pytest.mark.parametrize("change", ["dnn.py", "model.py", "train.py", "evaluate.py", "settings", "data"])
def test_each_change_to_what_trains_the_weights_misses_the_cache(toy, change):
    folder, data, code = toy
    before = key(folder)
    if change == "dnn.py":
        edit(folder / "dnn.py")
    elif change == "data":
        data.write_bytes(b"data v2")
    elif change != "settings":
        edit(next(p for p in code if p.name == change))
    after = key(folder, steps=7) if change == "settings" else key(folder)
    assert after != before


def test_a_dnn_that_borrows_another_folders_data_is_keyed_on_that_data(toy, tmp_path):
    """An example's `data_from` names the suite folder whose file it loads: rebuilding that file retrains it."""
    folder, _, _ = toy
    borrower = tmp_path / "borrower"
    borrower.mkdir()
    source = (folder / "dnn.py").read_text()
    (borrower / "dnn.py").write_text(source.replace("META = {", 'META = {"data_from": "suite/lender", ', 1))
    lent = dnn_mod.data_dir() / "lender.v2.npz"
    lent.write_bytes(b"lent v1")
    before = key(borrower)
    lent.write_bytes(b"lent v2")
    assert key(borrower) != before


def test_nothing_else_misses_the_cache(toy):
    folder, data, code = toy
    before = key(folder)
    data.write_bytes(data.read_bytes())  # rebuilt with the same contents: a new mtime only
    (folder / "README.md").write_text("notes")  # another file in the folder
    assert key(folder) == before
    assert key(folder) == key(folder)  # and a fresh load of the same folder


def test_a_folders_own_weights_come_back_imported_not_as_a_faked_training_run(cache_with_data, monkeypatch):
    dnn = dnn_mod.get("letters")
    theta = torch.randn(dnn.build_model().n_weights, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(dnn, "load_weights", lambda model: theta)
    got = train.standalone_models([dnn], workers=1)["letters"]
    assert got.imported and not got.cached
    assert got.best_step is None and got.seconds is None and got.history == []
    assert torch.equal(got.theta, theta) and 0 <= got.test_accuracy <= 1
    assert not (cache_with_data / "models").exists()  # nothing trained, nothing cached


def test_a_plateau_drops_the_learning_rate_then_ends_training(monkeypatch):
    """Scripted validation accuracies 0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7 with patience 2 and one drop: the
    third and fourth checks are the plateau that divides the learning rate by 10; the sixth and seventh
    end training at the seventh check, before the step cap, with the best (0.7) from the fifth."""
    from weightsep.model import TemplateNet

    scripted = iter([0.5, 0.6, 0.6, 0.6, 0.7, 0.7, 0.7])
    monkeypatch.setattr(train, "accuracy", lambda *args: next(scripted, 0.25))  # 0.25: the test score at the end
    lrs = []
    step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (lrs.append(self.param_groups[0]["lr"]),
                                                                         step(self, *a, **k))[1])
    rng = np.random.default_rng(0)
    split = lambda n: dnn_mod.Split(rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n))  # noqa: E731
    data = dnn_mod.Dataset(split(50), split(20), split(20))
    config = train.TrainConfig(steps=1000, batch_size=10, lr=1e-2, eval_every=3, patience=2, lr_drops=1)
    got = train.train_theta(TemplateNet((4,), [], dense=[8], classes=3), data, config)
    assert [s for s, _ in got.history] == [3, 6, 9, 12, 15, 18, 21] and got.best_step == 15
    assert got.val_accuracy == 0.7 and got.test_accuracy == 0.25
    assert lrs == [1e-2] * 12 + [1e-3] * 9  # the drop at the plateau's end (step 12), then the stop (step 21)
    # the store's provenance records how: the rule, the kept step and the steps run, and reads it back
    from weightsep.state import Provenance, Standalone

    assert got.training == {**dataclasses.asdict(config), "best_step": 15, "steps_run": 21}
    provenance = Provenance(standalone=Standalone(got.val_accuracy, got.test_accuracy, got.training))
    assert Provenance.from_json(json.loads(json.dumps(provenance.to_json()))).standalone.training["patience"] == 2
    assert "training" not in Provenance(standalone=Standalone(0.5, 0.5)).to_json()["standalone"]  # as older stores
    with pytest.raises(ValueError, match="patience"):
        train.TrainConfig(patience=0)


@pytest.mark.parametrize("restore_best", [True, False])
def test_restore_best_fine_tunes_the_best_checkpoint_after_a_plateau(monkeypatch, restore_best):
    """Scripted validation 0.5, 0.9, 0.6, 0.6 with patience 2 and one drop: the plateau after the best
    check (step 6) ends at step 12. With `restore_best` the first step at the lower rate starts from
    the weights of step 6, with a fresh Adam; without it, from where the plateau ended (step 12)."""
    from weightsep.model import TemplateNet

    scripted = iter([0.5, 0.9, 0.6, 0.6])
    monkeypatch.setattr(train, "accuracy", lambda *args: next(scripted, 0.25))
    seen = []  # (learning rate, weights, Adam's step count) as each step begins
    step = torch.optim.Adam.step

    def recording(self, *a, **k):
        p = self.param_groups[0]["params"][0]
        seen.append((self.param_groups[0]["lr"], p.detach().clone(), float(self.state[p].get("step", 0))))
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    rng = np.random.default_rng(0)
    split = lambda n: dnn_mod.Split(rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 3, n))  # noqa: E731
    data = dnn_mod.Dataset(split(50), split(20), split(20))
    config = train.TrainConfig(steps=18, batch_size=10, lr=1e-2, eval_every=3, patience=2, lr_drops=1,
                               restore_best=restore_best)
    got = train.train_theta(TemplateNet((4,), [], dense=[8], classes=3), data, config)
    after_step = lambda k: seen[k][1]  # noqa: E731  (the weights after step k are those step k+1 starts from)
    first_low = seen[12]
    assert first_low[0] == pytest.approx(1e-3) and got.best_step == 6
    if restore_best:
        assert torch.equal(first_low[1], after_step(6)) and first_low[2] == 0  # the best weights, a fresh Adam
    else:
        assert torch.equal(first_low[1], after_step(12)) and first_low[2] == 12
    assert not torch.equal(after_step(6), after_step(11))  # the weights moved on after the best check
