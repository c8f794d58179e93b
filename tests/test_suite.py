"""The embedded offline suite (suite/*) and the data helpers its folders share (dnnkit.datasets,
weightsep.prepared).

Every folder under suite/ is checked, found through weightsep.dnn (no list of names here). Data
checks run on the prepared .npz files in $WEIGHTSEP_CACHE/data and skip when they are absent.
"""
from __future__ import annotations

import gzip
import mmap
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dnnkit import datasets
from weightsep import dnn, prepared

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
    path = dnn.data_dir() / folder(name).module.FILE  # a folder's file name carries its data's version
    if not path.is_file():
        pytest.skip(f"{path} not prepared (run ./prepare_data.sh)")
    assert prepared.is_valid_npz(path), f"{path}: not in the current layout; run: python -m weightsep prepare"
    d = folder(name)
    data = d.load_data(dnn.data_dir())  # also checks input shapes and label range against the model
    assert mapped_file(data.train.x) is not None, "prepared data must be memory-mapped, not read"
    classes = d.meta["classes"]
    for split in prepared.SPLITS:
        s = getattr(data, split)
        assert len(s.y) > 0, split
        assert s.x.dtype == np.float16 and s.y.dtype == np.int64  # stored at half precision
        assert np.isfinite(s.x).all(), f"{split} inputs not finite"
        assert 0 <= s.y.min() and s.y.max() < classes
    assert len(np.unique(data.train.y)) == classes, "some class never occurs in training"
    with np.load(path) as npz:
        groups = {s: set(npz[f"groups_{s}"].tolist()) for s in prepared.SPLITS if f"groups_{s}" in npz.files}
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


def mapped_file(a: np.ndarray) -> mmap.mmap | None:
    """The memory mapping under array `a`, if its data lives in one (not in memory of its own)."""
    while a is not None and not isinstance(a, mmap.mmap):
        a = getattr(a, "base", None)
    return a


def test_save_and_load_npz_round_trip(tmp_path):
    path = tmp_path / "sub" / "tiny.npz"
    data = tiny_dataset()
    prepared.save_npz(path, data, groups={"train": np.arange(6)})
    assert prepared.is_valid_npz(path)
    got = prepared.load_npz(path)
    assert got.train.x.shape == (6, 2) and got.test.y.tolist() == [0, 1, 2]
    for split in prepared.SPLITS:
        want, s = getattr(data, split), getattr(got, split)
        assert s.x.dtype == np.float16 and s.y.dtype == np.int64
        np.testing.assert_array_equal(s.x, want.x.astype(np.float16))
        np.testing.assert_array_equal(s.y, want.y)
        for a in (s.x, s.y):
            assert mapped_file(a) is not None, "not memory-mapped"
            assert a.flags.aligned and a.flags.c_contiguous and a.flags.writeable
            assert a.ctypes.data % prepared.ALIGN == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "The given NumPy array is not writable"
        x, y = torch.from_numpy(got.train.x), torch.from_numpy(got.train.y)
    assert x.float().sum().item() == 6 * 2 * 6 and (y * 2).tolist() == [0, 2, 4, 0, 2, 4]
    got.train.x[0, 0] = 99  # copy-on-write: private to this process, the file keeps its bytes
    assert prepared.load_npz(path).train.x[0, 0] == 6
    with np.load(path) as npz:  # still a plain .npz for any other reader
        assert npz["groups_train"].tolist() == list(range(6))
    with zipfile.ZipFile(path) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
    assert [p.name for p in path.parent.iterdir()] == ["tiny.npz"], "temporary file left behind"
    with pytest.raises(ValueError, match="groups_val"):
        prepared.save_npz(path, tiny_dataset(), groups={"val": np.arange(5)})


def test_write_npz_aligns_every_member_and_stores_a_digest_of_the_arrays(tmp_path):
    arrays = {"b": np.arange(3, dtype=np.int8), "a_long_name": np.ones((5, 3), np.float16),
              "c": np.arange(7, dtype=np.int64), "d": np.zeros((0, 4), np.float64),
              "f": np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)), "s": np.float32(2.5)}
    prepared.write_npz(tmp_path / "a.npz", **arrays)
    got = prepared.read_arrays(tmp_path / "a.npz")
    assert set(got) == set(arrays)
    for name, a in arrays.items():
        assert got[name].dtype == a.dtype and got[name].shape == np.shape(a)
        np.testing.assert_array_equal(got[name], a)
        assert got[name].ctypes.data % prepared.ALIGN == 0, name
    digest = prepared.stored_digest(tmp_path / "a.npz")
    assert digest == "arrays-sha256:" + prepared.array_digest(arrays)
    prepared.write_npz(tmp_path / "same.npz", **arrays)
    assert (tmp_path / "same.npz").read_bytes() == (tmp_path / "a.npz").read_bytes(), "not deterministic"
    changed = {**arrays, "c": arrays["c"] + np.eye(1, 7, 6, dtype=np.int64)[0]}
    prepared.write_npz(tmp_path / "b.npz", **changed)
    assert prepared.stored_digest(tmp_path / "b.npz") not in (None, digest)
    np.savez(tmp_path / "plain.npz", **arrays)  # not written by write_npz: no digest, hash the file
    assert prepared.stored_digest(tmp_path / "plain.npz") is None
    assert prepared.stored_digest(tmp_path / "absent.npz") is None


def test_write_npz_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "a.npz"
    prepared.write_npz(path, x=np.ones(3))

    def crash(f, arrays):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(prepared, "_write_archive", crash)
    with pytest.raises(RuntimeError):
        prepared.write_npz(path, x=np.zeros(3))
    with np.load(path) as npz:
        assert npz["x"].tolist() == [1, 1, 1], "the old file must survive a failed write"
    assert [p.name for p in tmp_path.iterdir()] == ["a.npz"]


def test_load_npz_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        prepared.load_npz(tmp_path / "absent.npz")
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
    assert not prepared.is_valid_npz(path)
    datasets.prepare_npz(path, build)
    assert len(calls) == 2 and prepared.is_valid_npz(path)
    with zipfile.ZipFile(path) as z:
        assert {n.removesuffix(".npy") for n in z.namelist()} == set(prepared.NPZ_KEYS)


def old_compressed_npz(path: Path) -> dict[str, np.ndarray]:
    """A .npz as weightsep wrote it before the uncompressed layout (np.savez_compressed), and its arrays."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(prepared.SPLITS, (50, 7, 9)):
        x = rng.standard_normal((n, 3, 5)).astype(np.float16)
        x.flat[::7] = [np.nan, -0.0, np.inf][split == "val"]  # odd bit patterns survive too
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, rng.integers(0, 4, n)
        arrays[f"groups_{split}"] = rng.integers(0, 1000, n)
    np.savez_compressed(path, **arrays)
    return arrays


def test_prepare_npz_converts_an_old_compressed_file_without_rebuilding(tmp_path):
    path = tmp_path / "old.npz"
    arrays = old_compressed_npz(path)
    assert not prepared.is_valid_npz(path), "a compressed file must not count as current"
    old = prepared.load_npz(path)  # still readable before conversion (read into memory)
    assert mapped_file(old.train.x) is None

    def build():
        raise AssertionError("a sound old file must be converted, not rebuilt")

    datasets.prepare_npz(path, build)
    assert prepared.is_valid_npz(path)
    with zipfile.ZipFile(path) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
    got = prepared.read_arrays(path)
    assert set(got) == set(arrays)
    for name, a in arrays.items():  # bit for bit, NaNs and signed zeros included
        assert got[name].dtype == a.dtype and got[name].tobytes() == a.tobytes(), name
    assert mapped_file(prepared.load_npz(path).train.x) is not None
    assert prepared.stored_digest(path) == "arrays-sha256:" + prepared.array_digest(arrays)
    assert [p.name for p in tmp_path.iterdir()] == ["old.npz"]


def test_prepare_npz_rebuilds_an_old_file_with_a_damaged_member(tmp_path):
    path = tmp_path / "old.npz"
    old_compressed_npz(path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("x_train.npy")
    raw[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF  # CRC or inflate fails
    path.write_bytes(bytes(raw))
    calls = []

    def build():
        calls.append(1)
        return tiny_dataset(), {}

    datasets.prepare_npz(path, build)
    assert calls == [1] and prepared.load_npz(path).train.x.shape == (6, 2)


def test_load_npz_names_a_truncated_or_damaged_file(tmp_path):
    path = tmp_path / "t.npz"
    prepared.save_npz(path, tiny_dataset(200), groups={"train": np.arange(200)})
    good = path.read_bytes()
    with open(path, "rb") as f:
        members = prepared._members(f, str(path))
    cuts = [0, 10, 100, members["y_train"].offset + 8, members["x_test"].offset, len(good) // 2, len(good) - 30, len(good) - 1]
    for n in cuts:
        path.write_bytes(good[:n])
        with pytest.raises(ValueError, match=re.escape(str(path))):
            prepared.load_npz(path)
        assert not prepared.is_valid_npz(path)
    # a member whose header claims more data than the file holds: refused, never mapped past the end
    start = members["x_train"].offset - 128
    header = good[start:members["x_train"].offset]
    assert b"(200, 2)" in header
    path.write_bytes(good[:start] + header.replace(b"(200, 2)", b"(900, 2)") + good[members["x_train"].offset:])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        prepared.load_npz(path)
    path.write_bytes(good[:start] + b"garbage!" + good[start + 8:])  # not an .npy header
    with pytest.raises(ValueError, match=re.escape(str(path))):
        prepared.load_npz(path)
    prepared.write_npz(path, x_train=np.zeros(3))  # a readable archive lacking the splits
    with pytest.raises(ValueError, match=f"{re.escape(str(path))}.*lacks"):
        prepared.load_npz(path)
