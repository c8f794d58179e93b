"""The embedded offline suite (suite/*) and the data helpers its folders share (weightsep.datasets).

Every folder under suite/ is checked, found through weightsep.dnn (no list of names here). Data
checks run on the prepared .npz files in $WEIGHTSEP_CACHE/data and skip when they are absent.
"""
from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from weightsep import datasets, dnn

NAMES = dnn.suite()
META_KEYS = {"task", "source", "licence", "real", "origin", "input", "classes", "stands_in_for", "split"}


def folder(name: str) -> dnn.DNN:
    return dnn.load_folder(dnn.SUITE_DIR / name)


def test_suite_is_not_empty():
    assert NAMES, f"no DNN folders under {dnn.SUITE_DIR}"


@pytest.mark.parametrize("name", NAMES)
def test_model_size_meta_and_forward(name):
    d = folder(name)
    model = d.build_model()
    assert 40_000 <= model.n_weights <= 75_000, model.describe()
    assert META_KEYS <= set(d.meta), f"META lacks {META_KEYS - set(d.meta)}"
    assert d.meta["origin"] in dnn.ORIGINS and d.meta["real"] is (d.meta["origin"] == "real")
    assert tuple(d.meta["input"]) == model.input_shape and d.meta["classes"] == model.classes
    assert {"steps", "batch_size", "lr"} <= set(d.train_overrides)
    assert all(d.train_overrides[k] > 0 for k in ("steps", "batch_size", "lr"))
    with torch.no_grad():
        out = model(torch.randn(3, *model.input_shape))
    assert out.shape == (3, model.classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", NAMES)
def test_prepared_data(name):
    path = dnn.data_dir() / f"{name}.npz"
    if not path.is_file():
        pytest.skip(f"{path} not prepared (run ./prepare_data.sh)")
    d = folder(name)
    data = d.load_data(dnn.data_dir())  # also checks input shapes and label range against the model
    classes = d.meta["classes"]
    for split in datasets.SPLITS:
        s = getattr(data, split)
        assert len(s.y) > 0, split
        assert s.x.dtype == np.float16 and s.y.dtype == np.int64  # stored at half precision
        assert np.isfinite(s.x).all(), f"{split} inputs not finite"
        assert 0 <= s.y.min() and s.y.max() < classes
    assert len(np.unique(data.train.y)) == classes, "some class never occurs in training"
    with np.load(path) as npz:
        groups = {s: set(npz[f"groups_{s}"].tolist()) for s in datasets.SPLITS if f"groups_{s}" in npz.files}
    for a, b in [("train", "val"), ("train", "test"), ("val", "test")]:
        if a in groups and b in groups:
            assert not groups[a] & groups[b], f"{a} and {b} share {sorted(groups[a] & groups[b])[:5]}"


@pytest.mark.parametrize("name", NAMES)
def test_prepare_names_a_missing_source_and_writes_nothing(name, tmp_path, monkeypatch):
    def missing(path, install):
        raise FileNotFoundError(2, f"data source missing; install it with {install}", str(path))

    monkeypatch.setattr(datasets, "require", missing)
    with pytest.raises(FileNotFoundError) as e:
        folder(name).module.prepare(tmp_path)
    assert e.value.filename and "install" in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_require_names_path_and_command(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        datasets.require(tmp_path / "nope.json", "npm pack thing")
    assert e.value.filename == str(tmp_path / "nope.json")
    assert "npm pack thing" in str(e.value) and "prepare_data.sh" in str(e.value)
    assert datasets.require(tmp_path, "unused") == tmp_path


def write_idx(path: Path, array: np.ndarray, code: int, compress: bool) -> None:
    header = bytes([0, 0, code, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "images", images, 0x08, compress)
    np.testing.assert_array_equal(datasets.read_idx(tmp_path / "images"), images)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)
    write_idx(tmp_path / "floats", floats, 0x0D, compress)
    got = datasets.read_idx(tmp_path / "floats")
    assert got.dtype == np.float32 and np.array_equal(got, floats)


def test_read_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(ValueError, match="not an IDX"):
        datasets.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(ValueError, match="header says"):
        datasets.read_idx(tmp_path / "short")


def test_seeded_split_is_deterministic_disjoint_and_complete():
    parts = datasets.seeded_split(100, [70, 10], seed=0)
    assert [len(p) for p in parts] == [70, 10, 20]
    assert all(np.array_equal(a, b) for a, b in zip(parts, datasets.seeded_split(100, [70, 10], seed=0)))
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(100))
    assert all(np.all(np.diff(p) > 0) for p in parts)
    assert not np.array_equal(parts[0], datasets.seeded_split(100, [70, 10], seed=1)[0])
    with pytest.raises(ValueError):
        datasets.seeded_split(10, [8, 3])


def test_standardise_uses_train_statistics():
    rng = np.random.default_rng(0)
    train = rng.normal(5, 3, (200, 4))
    train[:, 3] = 7.0  # a constant feature must not divide by zero
    test = train[:50] + 1
    a, b = datasets.standardise(train, test)
    assert a.dtype == np.float32 and np.isfinite(a).all() and np.isfinite(b).all()
    np.testing.assert_allclose(a.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(a[:, :3].std(0), 1, atol=1e-5)
    np.testing.assert_allclose(b[:, :3], a[:50, :3] + 1 / train[:, :3].std(0), atol=1e-5)


def tiny_dataset(n: int = 6) -> dnn.Dataset:
    def split(k):
        return dnn.Split(np.full((k, 2), k, np.float32), np.arange(k) % 3)

    return dnn.Dataset(split(n), split(2), split(3))


def test_save_and_load_npz_round_trip(tmp_path):
    path = tmp_path / "sub" / "tiny.npz"
    datasets.save_npz(path, tiny_dataset(), groups={"train": np.arange(6)})
    assert datasets.is_valid_npz(path)
    got = datasets.load_npz(path)
    assert got.train.x.shape == (6, 2) and got.test.y.tolist() == [0, 1, 2]
    with np.load(path) as npz:
        assert npz["groups_train"].tolist() == list(range(6))
    assert [p.name for p in path.parent.iterdir()] == ["tiny.npz"], "temporary file left behind"
    with pytest.raises(ValueError, match="groups_val"):
        datasets.save_npz(path, tiny_dataset(), groups={"val": np.arange(5)})


def test_write_npz_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    datasets.write_npz(path, x=np.ones(3))

    def crash(f, **arrays):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "savez_compressed", crash)
    with pytest.raises(RuntimeError):
        datasets.write_npz(path, x=np.zeros(3))
    with np.load(path) as npz:
        assert npz["x"].tolist() == [1, 1, 1], "the old file must survive a failed write"
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]


def test_load_npz_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        datasets.load_npz(tmp_path / "absent.npz")
    assert e.value.filename == str(tmp_path / "absent.npz")


def test_prepare_npz_skips_a_valid_file_and_rebuilds_a_broken_one(tmp_path):
    path, calls = tmp_path / "t.npz", []

    def build():
        calls.append(1)
        return tiny_dataset(), {}

    datasets.prepare_npz(path, build)
    datasets.prepare_npz(path, build)
    assert len(calls) == 1
    path.write_bytes(path.read_bytes()[:40])  # truncated, e.g. by a crash outside write_npz
    assert not datasets.is_valid_npz(path)
    datasets.prepare_npz(path, build)
    assert len(calls) == 2 and datasets.is_valid_npz(path)
    with zipfile.ZipFile(path) as z:
        assert {n.removesuffix(".npy") for n in z.namelist()} == set(datasets.NPZ_KEYS)
