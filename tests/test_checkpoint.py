"""The TF 1.x checkpoint reader and importers, on the authors' own files (../shared/fixtures/originals)."""
import shutil

import numpy as np
import pytest
import torch

from dnnkit.checkpoint import (
    CheckpointError,
    _entry,
    _read_index,
    crc32c,
    import_checkpoint,
    import_nwv,
    mask_crc,
    read_checkpoint,
)
from dnnkit.originals import load_nwv_arrays
from weightsep.model import Conv, TemplateNet
from weightsep.paths import fixtures_dir

WS_PARAMS = {"cifar10": 64_670, "mnist": 65_402, "fmnist": 69_966, "gtsrb": 68_639, "svhn": 64_670,
             "obs": 72_012, "gsc": 65_101, "esc10": 65_154, "us8k": 66_854, "hhar": 65_114}
DATA = ".data-00000-of-00001"


def ws_mnist_net():
    return TemplateNet((1, 28, 28), [Conv(3, 3, 16), Conv(3, 3, 32), Conv(3, 3, 48)], dense=[256, 128], classes=10)


def ws_fmnist_net():
    return TemplateNet((1, 28, 28), [Conv(3, 3, 24), Conv(3, 3, 32), Conv(3, 3, 52)], dense=[256, 128], classes=10)


@pytest.fixture(scope="module")
def ws():
    folder = fixtures_dir() / "ws"
    if not (folder / "mnist.index").is_file():
        pytest.skip(f"WS checkpoints not found in {folder} (the originals' fixtures; set WEIGHTSEP_FIXTURES)")
    return folder


@pytest.fixture(scope="module")
def checkpoints(ws):
    return {name: read_checkpoint(ws / name) for name in WS_PARAMS}


def test_crc32c_known_values():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0
    rng = np.random.default_rng(0)
    for n in (4096, 9_001):  # the vectorised path (>= 4096 bytes) against a bit-by-bit reference
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == _slow_crc32c(data)


def _slow_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def test_all_ten_read_with_published_counts_and_float32(checkpoints):
    for name, tensors in checkpoints.items():
        trainable = {k: v for k, v in tensors.items() if k.startswith(("weight_", "bias_")) and "/" not in k}
        assert sum(v.size for v in trainable.values()) == WS_PARAMS[name], name
        assert all(v.dtype == np.float32 for v in tensors.values()), name
        assert {"beta1_power", "beta2_power", "weight_0/optimizer", "weight_0/optimizer_1"} <= set(tensors), name
        assert len(tensors) == 3 * len(trainable) + 2, name  # weights + two Adam slots each + beta powers
    assert sum(WS_PARAMS.values()) == 667_582
    mnist = checkpoints["mnist"]
    assert mnist["weight_0"].shape == (3, 3, 1, 16) and mnist["weight_3"].shape == (48, 256)
    assert mnist["bias_5"].shape == (10,) and mnist["beta2_power"].shape == ()
    assert checkpoints["gsc"]["weight_0"].shape == (12, 6, 1, 14) and checkpoints["gsc"]["weight_2"].shape == (280, 128)
    assert checkpoints["obs"]["weight_0"].shape == (12, 24, 1, 8) and checkpoints["hhar"]["weight_2"].shape == (2, 3, 32, 64)
    assert checkpoints["us8k"]["weight_3"].shape == (480, 124) and checkpoints["cifar10"]["weight_0"].shape == (3, 3, 3, 16)
    # beta2_power = 0.999^t: WS mnist trained ~8.7k Adam steps (docs/originals.md §2)
    assert 8_600 < np.log(float(mnist["beta2_power"])) / np.log(0.999) < 8_800


def test_every_tensor_crc_is_the_masked_crc32c(ws):
    """Checked independently of read_checkpoint: TF stores masked crc32c, never the plain one."""
    for name in WS_PARAMS:
        data = (ws / f"{name}{DATA}").read_bytes()
        for key, value in _read_index(ws / f"{name}.index")[1:]:
            e = _entry(value, key)
            crc = crc32c(data[e["offset"]: e["offset"] + e["size"]])
            assert mask_crc(crc) == e["crc32c"] != crc, (name, key)


def test_a_flipped_byte_in_the_data_file_is_detected_naming_the_tensor(ws, tmp_path):
    shutil.copy(ws / "mnist.index", tmp_path / "mnist.index")
    data = bytearray((ws / f"mnist{DATA}").read_bytes())
    e = dict((k, _entry(v, k)) for k, v in _read_index(ws / "mnist.index")[1:])["weight_3"]
    data[e["offset"] + 1234] ^= 0x10
    (tmp_path / f"mnist{DATA}").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"mnist\.data-00000-of-00001: tensor 'weight_3' .*crc32c"):
        read_checkpoint(tmp_path / "mnist")
    shutil.copy(ws / f"mnist{DATA}", tmp_path / f"mnist{DATA}")
    read_checkpoint(tmp_path / "mnist")  # the intact copy reads
    (tmp_path / f"mnist{DATA}").write_bytes((ws / f"mnist{DATA}").read_bytes()[:500_000])
    with pytest.raises(CheckpointError, match=r"mnist\.data-00000-of-00001: tensor '.*' lies at .* truncated"):
        read_checkpoint(tmp_path / "mnist")


def test_a_damaged_index_is_refused(ws, tmp_path):
    index = (ws / "mnist.index").read_bytes()
    shutil.copy(ws / f"mnist{DATA}", tmp_path / f"mnist{DATA}")
    (tmp_path / "mnist.index").write_bytes(index[:-100])
    with pytest.raises(CheckpointError, match=r"mnist\.index: .*(truncated|magic)"):
        read_checkpoint(tmp_path / "mnist")
    (tmp_path / "mnist.index").write_bytes(index[:20])
    with pytest.raises(CheckpointError, match=r"mnist\.index: .*truncated"):
        read_checkpoint(tmp_path / "mnist")
    flipped = bytearray(index)
    flipped[0x300] ^= 0x01  # inside the data block: its block crc catches it
    (tmp_path / "mnist.index").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"mnist\.index: data .*crc32c"):
        read_checkpoint(tmp_path / "mnist")
    with pytest.raises(CheckpointError, match="missing"):
        read_checkpoint(tmp_path / "nothing")


def test_import_refuses_the_wrong_architecture_naming_the_variable(ws):
    theta = import_checkpoint(ws / "mnist", ws_mnist_net())
    assert theta.dtype == torch.float32 and theta.numel() == 65_402
    with pytest.raises(ValueError, match=r"weight_0 has shape \[3, 3, 1, 16\] but the architecture's is \[3, 3, 1, 24\]"):
        import_checkpoint(ws / "mnist", ws_fmnist_net())
    fewer = TemplateNet((1, 28, 28), [Conv(3, 3, 16), Conv(3, 3, 32), Conv(3, 3, 48)], dense=[256], classes=10)
    with pytest.raises(ValueError, match=r"weight_4 has shape \[256, 128\] but the architecture's is \[256, 10\]"):
        import_checkpoint(ws / "mnist", fewer)


def test_import_nwv_mnist_round_trips_bit_exactly():
    path = fixtures_dir() / "nwv" / "mnist_network_weight.npy"
    if not path.is_file():
        pytest.skip(f"NWV fixtures not found in {path.parent} (set WEIGHTSEP_FIXTURES)")
    net = TemplateNet((1, 28, 28), [Conv(3, 3, 8), Conv(3, 3, 16), Conv(3, 3, 32)], dense=[128, 256], classes=10)
    theta = import_nwv(path, net)
    arrays = load_nwv_arrays(path)
    assert theta.numel() == net.n_weights == 45_706
    assert np.array_equal(theta.numpy(), np.concatenate([a.reshape(-1) for a in arrays]))
    assert all(np.array_equal(t.numpy(), a) for t, a in zip(net.tensors(theta).values(), arrays))
    with pytest.raises(ValueError, match=r"weight_0 has shape \[3, 3, 1, 8\] but the architecture's is \[3, 3, 1, 16\]"):
        import_nwv(path, ws_mnist_net())


def test_ws_mnist_scores_its_published_98_61_on_the_mnist_test_set(ws):
    from dnnkit.datasets import read_idx

    folder = fixtures_dir() / "mnist_test"
    if not folder.is_dir():
        pytest.skip(f"MNIST test set not found in {folder}")
    x = torch.from_numpy(read_idx(folder / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255).reshape(-1, 1, 28, 28)
    y = torch.from_numpy(read_idx(folder / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    net = ws_mnist_net()
    with torch.no_grad():
        net.theta.copy_(import_checkpoint(ws / "mnist", net))
        correct = sum(int((net(x[i: i + 500]).argmax(1) == y[i: i + 500]).sum()) for i in range(0, len(y), 500))
    assert correct == 9_861  # 98.61 %, WS's published figure


def _numpy_forward(tensors, x_nhwc, n_convs, n_dense, hidden="leaky_relu"):
    """TF semantics in float64 NumPy: NHWC VALID conv, LeakyReLU 0.2, 2x2 VALID max-pool, (h,w,c) flatten,
    dense layers with LeakyReLU 0.2 or Sigmoid hidden activations."""
    x = x_nhwc.astype(np.float64)
    for i in range(n_convs):
        w, b = tensors[f"weight_{i}"].astype(np.float64), tensors[f"bias_{i}"].astype(np.float64)
        kh, kw = w.shape[:2]
        win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))  # N,H',W',C,kh,kw
        x = np.einsum("nhwcij,ijco->nhwo", win, w) + b
        x = np.where(x > 0, x, 0.2 * x)
        n, h, wd, c = x.shape
        x = x[:, : h // 2 * 2, : wd // 2 * 2].reshape(n, h // 2, 2, wd // 2, 2, c).max(axis=(2, 4))
    x = x.reshape(x.shape[0], -1)
    for j in range(n_convs, n_convs + n_dense + 1):
        x = x @ tensors[f"weight_{j}"].astype(np.float64) + tensors[f"bias_{j}"].astype(np.float64)
        if j < n_convs + n_dense:
            x = np.where(x > 0, x, 0.2 * x) if hidden == "leaky_relu" else 1 / (1 + np.exp(-x))
    return x


@pytest.mark.parametrize("name", ["cifar10", "mnist", "fmnist", "gtsrb", "svhn", "obs", "gsc", "esc10", "us8k", "hhar"])
def test_every_imported_dnn_matches_a_numpy_tf_layout_forward(ws, checkpoints, name):
    from weightsep import dnn

    net = dnn.get(name).build_model()
    c, h, w = net.input_shape
    x = np.random.default_rng(1).random((8, h, w, c), dtype=np.float32)
    reference = _numpy_forward(checkpoints[name], x, len(net.convs), len(net.dense), net.hidden_act)
    with torch.no_grad():
        logits = net(torch.from_numpy(x).permute(0, 3, 1, 2), theta=import_checkpoint(ws / name, net)).double().numpy()
    assert np.abs(logits - reference).max() <= 1e-4 * np.abs(reference).max()


# ---- synthetic bundles, for the refusals the authors' files cannot exercise


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, bytes):
        return _varint(number << 3 | 2) + _varint(len(value)) + value
    return _varint(number << 3) + _varint(value)


def _write_bundle(prefix, tensors: dict, dtype: int = 1, shards: int = 1) -> None:
    """A minimal TF-style bundle: one uncompressed data block, an index block, an empty metaindex."""
    data, entries = b"", [(b"", _field(1, shards) + _field(3, _field(1, 1)))]
    for name, array in sorted(tensors.items()):
        raw = np.ascontiguousarray(array).tobytes()
        shape = b"".join(_field(2, _field(1, d)) for d in array.shape)
        entry = (_field(1, dtype) + _field(2, shape) + _field(4, len(data)) + _field(5, len(raw))
                 + bytes([6 << 3 | 5]) + mask_crc(crc32c(raw)).to_bytes(4, "little"))
        entries.append((name.encode(), entry))
        data += raw

    def block(pairs):
        body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in pairs)
        body += (0).to_bytes(4, "little") + (1).to_bytes(4, "little")  # one restart point at 0
        return body + b"\0" + mask_crc(crc32c(body + b"\0")).to_bytes(4, "little")

    data_block = block(entries)
    meta_block = block([])
    index_block = block([(entries[-1][0] + b"\xff", _varint(0) + _varint(len(data_block) - 5))])
    meta_at, index_at = len(data_block), len(data_block) + len(meta_block)
    handles = _varint(meta_at) + _varint(len(meta_block) - 5) + _varint(index_at) + _varint(len(index_block) - 5)
    footer = handles.ljust(40, b"\0") + (0xDB4775248B80FB57).to_bytes(8, "little")
    prefix.with_name(prefix.name + ".index").write_bytes(data_block + meta_block + index_block + footer)
    prefix.with_name(prefix.name + DATA).write_bytes(data)


def test_synthetic_bundle_round_trips_and_refusals(tmp_path):
    arrays = {"weight_0": np.arange(12, dtype=np.float32).reshape(3, 4), "bias_0": np.ones(4, np.float32)}
    _write_bundle(tmp_path / "ok", arrays)
    got = read_checkpoint(tmp_path / "ok.index")  # either file's path works as the prefix
    assert set(got) == set(arrays) and all(np.array_equal(got[k], v) for k, v in arrays.items())
    net = TemplateNet((3,), [], dense=[], classes=4)
    assert torch.equal(import_checkpoint(tmp_path / "ok", net), net.flatten(arrays))
    _write_bundle(tmp_path / "i64", {"global_step": np.array(7, np.int64)}, dtype=9)
    assert read_checkpoint(tmp_path / "i64")["global_step"] == 7
    _write_bundle(tmp_path / "str", {"names": np.zeros(2, np.uint8)}, dtype=7)
    with pytest.raises(CheckpointError, match=r"str\.index: tensor 'names' has TF dtype 7"):
        read_checkpoint(tmp_path / "str")
    _write_bundle(tmp_path / "two", arrays, shards=2)
    with pytest.raises(CheckpointError, match=r"two\.index: checkpoint has 2 data shards"):
        read_checkpoint(tmp_path / "two")

