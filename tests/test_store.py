"""The store: bit-exact round trips, crash safety, damage detection, recovery, validation, GC."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from weightsep.files import atomic_write_text
from weightsep.state import VNN, PackedState, Provenance, StateConfig
from weightsep.store import (
    FORMAT_VERSION,
    Store,
    StoreError,
    load_tensors,
    save_tensors,
    sealed,
)

P, S = 8, 6


def make_state(seed: int = 0) -> PackedState:
    """Three DNNs: 'a' all shared, 'b' with two exclusive pages, 'c' (odd name) with one."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(S, P, generator=g)
    shared[0, :3] = torch.tensor([-0.0, 1e-45, 3.4e38])  # signed zero, subnormal, near max: bits must survive
    vnns = {}
    for name, n, table, n_excl in [("a", 40, [0, 1, 2, 3, 4], 0), ("b", 35, [6, 2, 7, 5, 0], 2),
                                   ("c d-é", 17, [3, 6, 1], 1)]:
        vnns[name] = VNN(name, n, torch.tensor(table), torch.randn(n_excl, P, generator=g),
                         torch.rand(n, generator=g),
                         Provenance(folder=f"suite/{name}", pack={"acc": [0.1 * seed, None], "k": "é"}))
    return PackedState(P, shared, torch.rand(S, P, generator=g), vnns,
                       StateConfig(pack={"mode": "ws", "margin": 0.1, "seed": seed}))


def assert_same(a: PackedState, b: PackedState) -> None:
    def bits(t: torch.Tensor) -> torch.Tensor:
        return t.view(torch.int32) if t.dtype == torch.float32 else t

    assert (a.page_size, a.config, list(a.vnns)) == (b.page_size, b.config, list(b.vnns))
    assert torch.equal(bits(a.shared_pages), bits(b.shared_pages))
    assert torch.equal(bits(a.shared_fisher), bits(b.shared_fisher))
    for x, y in zip(a.vnns.values(), b.vnns.values()):
        assert (x.name, x.n_weights, x.provenance) == (y.name, y.n_weights, y.provenance)
        for t in ("page_table", "exclusive_pages", "fisher"):
            u, v = getattr(x, t), getattr(y, t)
            assert u.dtype == v.dtype and torch.equal(bits(u), bits(v))


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.name != ".lock"}


def two_generations(root: Path) -> tuple[Store, PackedState, PackedState]:
    """Generation 1, then generation 2 with new shared pages and a changed DNN 'b' ('a', 'c' unchanged)."""
    store, old = Store(root), make_state(0)
    store.save(old)
    new = make_state(0)
    new.shared_pages += 1
    new.vnns["b"].fisher *= 2
    new.config.pack["seed"] = 1
    store.save(new)
    return store, old, new


def file_of(store: Store, vnn: str | None = None) -> Path:
    m = store.read_manifest()
    entry = m["shared"] if vnn is None else next(v["file"] for v in m["vnns"] if v["name"] == vnn)
    return store.root / entry["file"]


def test_round_trip_is_bit_exact_and_load_writes_nothing(tmp_path):
    store, state = Store(tmp_path), make_state(3)
    assert not store.exists()
    manifest = store.save(state)
    before = snapshot(tmp_path)
    assert_same(store.load(), state)
    assert_same(store.load(), state)
    assert snapshot(tmp_path) == before
    assert store.exists() and manifest == store.read_manifest()
    assert (manifest["format"], manifest["format_version"], manifest["generation"]) == ("weightsep-store", FORMAT_VERSION, 1)
    assert [v["name"] for v in manifest["vnns"]] == ["a", "b", "c d-é"]
    assert [(v["n_pages"], v["n_exclusive"]) for v in manifest["vnns"]] == [(5, 0), (5, 2), (3, 1)]
    assert manifest["code_version"].startswith("weightsep-") and manifest["created"]
    assert not list(tmp_path.glob("*.pkl")) and not list(tmp_path.glob(".*.tmp"))


def test_occupancy_and_counts():
    state = make_state()
    assert state.n_shared == S and state.n_pages("c d-é") == 3
    assert state.occupancy().tolist() == [2, 2, 2, 2, 1, 1]


def test_second_save_keeps_created_and_rotates_previous(tmp_path):
    store, old, new = two_generations(tmp_path)
    current, previous = store.read_manifest(), store.read_manifest(previous=True)
    assert (current["generation"], previous["generation"]) == (2, 1)
    assert current["created"] == previous["created"]
    assert current["vnns"][0]["file"] == previous["vnns"][0]["file"]  # unchanged DNN: same file, reused
    assert current["shared"]["file"] != previous["shared"]["file"]
    assert_same(store.load(), new)


@pytest.mark.parametrize("crash_at", ["shared-", "manifest.json"])
def test_crash_during_save_leaves_old_state(tmp_path, monkeypatch, crash_at):
    store, old = Store(tmp_path), make_state(0)
    store.save(old)
    real_replace = os.replace

    def crashing_replace(src, dst):
        if Path(dst).name.startswith(crash_at):
            raise OSError("simulated power loss")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    new = make_state(0)
    new.shared_pages += 1
    with pytest.raises(OSError, match="simulated"):
        store.save(new)
    monkeypatch.setattr(os, "replace", real_replace)
    assert_same(store.load(), old)
    assert not list(tmp_path.glob(".*.tmp"))
    store.save(new)  # the next save succeeds and collects the orphans of the crashed one
    assert_same(store.load(), new)
    assert_same(store.restore_previous().state, old)


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-20])


def delete(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize("damage, says", [(flip, "corrupt"), (truncate, "truncated"), (delete, "missing")])
@pytest.mark.parametrize("vnn", [None, "b"])
def test_damaged_file_is_named_and_previous_restorable(tmp_path, damage, says, vnn):
    store, old, _ = two_generations(tmp_path)
    victim = file_of(store, vnn)
    damage(victim)
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match="restore") as err:
        store.load()
    assert victim.name in str(err.value) and says in str(err.value)
    assert snapshot(tmp_path) == before  # a failed load changes nothing
    assert_same(store.restore_previous().state, old)
    assert_same(store.load(), old)


def test_damage_shared_by_both_generations_is_reported_by_restore(tmp_path):
    store, _, _ = two_generations(tmp_path)
    victim = file_of(store, "a")  # unchanged between generations: one file serves both
    flip(victim)
    with pytest.raises(StoreError, match=victim.name):
        store.restore_previous()
    with pytest.raises(StoreError, match="no older generation"):
        store.restore_previous()


def edit_manifest(store: Store, edit, seal: bool = True) -> None:
    """Edit the current manifest; `seal` recomputes its checksum so the edit reaches the checks below it."""
    path = store.root / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(sealed(m) if seal else m))


def test_an_edit_that_keeps_the_manifest_well_formed_is_caught_by_its_checksum(tmp_path):
    store, old, _ = two_generations(tmp_path)
    edit_manifest(store, lambda m: m["vnns"].pop(), seal=False)  # drop a DNN: still a valid manifest
    with pytest.raises(StoreError, match="checksum does not match its content"):
        store.load()
    assert_same(store.restore_previous().state, old)


@pytest.mark.parametrize("version, says", [(FORMAT_VERSION + 1, "upgrade weightsep"), (0, "restore"), ("1", "restore")])
def test_unknown_format_version(tmp_path, version, says):
    store, old, _ = two_generations(tmp_path)
    edit_manifest(store, lambda m: m.update(format_version=version))
    with pytest.raises(StoreError, match="format_version") as err:
        store.load()
    assert "manifest.json" in str(err.value) and says in str(err.value)
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match="format_version"):  # never overwrite what cannot be read
        store.save(make_state(5))
    assert snapshot(tmp_path) == before
    if version == FORMAT_VERSION + 1:  # a newer weightsep's generation is not ours to replace
        with pytest.raises(StoreError, match="restore refused"):
            store.restore_previous()
        assert snapshot(tmp_path) == before
    else:
        assert_same(store.restore_previous().state, old)


def test_shape_mismatch_in_manifest(tmp_path):
    store, old, _ = two_generations(tmp_path)
    edit_manifest(store, lambda m: m["vnns"][1]["file"]["tensors"]["fisher"].update(shape=[36]))
    with pytest.raises(StoreError, match="'fisher'") as err:
        store.load()
    assert file_of(store, "b").name in str(err.value) and "manifest.json" in str(err.value)
    assert_same(store.restore_previous().state, old)


def test_count_mismatch_in_manifest(tmp_path):
    store, _, _ = two_generations(tmp_path)
    edit_manifest(store, lambda m: m["vnns"][0].update(n_exclusive=1))
    with pytest.raises(StoreError, match="manifest.json.*disagree"):
        store.load()


def test_empty_store(tmp_path):
    store = Store(tmp_path / "nothing")
    with pytest.raises(StoreError, match="nothing has been saved"):
        store.load()
    with pytest.raises(StoreError, match="no such store directory"):  # a typo creates nothing
        store.restore_previous()
    assert not store.root.exists()
    store.root.mkdir()
    with pytest.raises(StoreError, match="no previous generation"):
        store.restore_previous()


@pytest.mark.parametrize("poison", ["nan_shared", "inf_fisher", "bad_table"])
def test_save_refuses_invalid_state_and_leaves_disk(tmp_path, poison):
    store, old, _ = two_generations(tmp_path)
    before = snapshot(tmp_path)
    bad = make_state(7)
    if poison == "nan_shared":
        bad.shared_pages[2, 3] = float("nan")
    elif poison == "inf_fisher":
        bad.vnns["b"].fisher[0] = float("inf")
    else:
        bad.vnns["a"].page_table[1] = 99
    with pytest.raises(ValueError, match="NaN/inf|outside"):
        store.save(bad)
    assert snapshot(tmp_path) == before


def vnn_b(table: list[int], n_excl: int = 2, n: int = 35) -> VNN:
    return VNN("b", n, torch.tensor(table), torch.zeros(n_excl, P), torch.zeros(n))


@pytest.mark.parametrize("vnn, says", [
    (vnn_b([6, 2, 8, 5, 0]), "entry 8 at logical page 2 is outside"),
    (vnn_b([6, 2, 6, 5, 0]), "exclusive slot 0 is used by logical pages \\[0, 2\\]"),
    (vnn_b([6, 2, 1, 2, 0]), "shared page 2 is used"),
    (vnn_b([6, 2, 1, 5, 0]), "exclusive slots \\[1\\] are not in the page table"),
    (vnn_b([6, 2, 7, 5]), "page table has 4 entries"),
    (VNN("b", 3, torch.tensor([0]), torch.zeros(0, P + 1), torch.zeros(3)), "pages hold 8"),
])
def test_validate_catches_bad_page_tables(vnn, says):
    state = make_state()
    state.vnns["b"] = vnn
    with pytest.raises(ValueError, match="VNN 'b': .*" + says):
        state.validate()


def test_validate_catches_bad_fields():
    with pytest.raises(ValueError, match="VNN 'x': page_table must be a 1-D torch.int64"):
        VNN("x", 4, torch.tensor([0], dtype=torch.int32), torch.zeros(0, 4), torch.zeros(4))
    with pytest.raises(ValueError, match="VNN 'x': fisher has 1 NaN/inf or negative"):
        VNN("x", 4, torch.tensor([0]), torch.zeros(0, 4), torch.tensor([0.0, -1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="VNN 'x': provenance is not JSON-able"):
        VNN("x", 4, torch.tensor([0]), torch.zeros(0, 4), torch.zeros(4), Provenance(pack={"path": Path("/")}))
    state = make_state()
    state.vnns["z"] = state.vnns["a"]
    with pytest.raises(ValueError, match="vnns\\['z'\\] holds VNN 'a'"):
        state.validate()


def test_garbage_collection_keeps_current_and_previous(tmp_path):
    store = Store(tmp_path)
    for seed in range(4):
        store.save(make_state(seed))
    (tmp_path / ".shared-0123456789ab.safetensors.1234.deadbeef.tmp").write_bytes(b"left by a crash")
    (tmp_path / ".manifest.json.77.0badf00d.tmp").write_bytes(b"left by a crash")
    (tmp_path / "notes.txt").write_text("not ours")
    (tmp_path / ".editor-swap.tmp").write_text("not ours either, though a dotfile ending .tmp")
    store.save(make_state(4))
    listed = {e["file"] for prev in (False, True) for m in [store.read_manifest(prev)]
              for e in [m["shared"], *(v["file"] for v in m["vnns"])]}
    on_disk = {p.name for p in tmp_path.glob("*.safetensors")}
    assert on_disk == listed and len(listed) == 8
    assert [p.name for p in tmp_path.glob(".*.tmp")] == [".editor-swap.tmp"] and (tmp_path / "notes.txt").exists()
    assert_same(store.load(), make_state(4))


def test_tensor_file_helpers(tmp_path):
    path = tmp_path / "cache" / "model.safetensors"
    tensors = {"theta": torch.randn(100), "steps": torch.tensor(7), "mask": torch.tensor([True, False])}
    save_tensors(path, tensors, {"code_hash": "abc", "acc": 0.98})
    loaded, meta = load_tensors(path)
    assert meta == {"code_hash": "abc", "acc": 0.98}
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    data = path.read_bytes()
    for broken, says in [(data[:-4], "truncated"), (data[:-4] + bytes([data[-4] ^ 1]) + data[-3:], "corrupt"),
                         (data[:5], "truncated")]:
        path.write_bytes(broken)
        with pytest.raises(StoreError, match=f"model.safetensors.*{says}"):
            load_tensors(path)
    with pytest.raises(FileNotFoundError):
        load_tensors(tmp_path / "absent.safetensors")


def test_atomic_write_text_survives_a_failed_replace(tmp_path, monkeypatch):
    path = tmp_path / "table.json"
    atomic_write_text(path, "old")

    def failing_replace(src, dst):
        raise OSError("simulated")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["table.json"]


# ---------------------------------------------------------------- one writer, undoable restore, no stale writes


def test_stale_write_is_refused(tmp_path):
    store = Store(tmp_path)
    store.save(make_state(0))
    first, second = store.load(), store.load()  # two commands loaded generation 1
    first.vnns.pop("c d-é")
    store.save(first)
    assert first.generation == 2
    before = snapshot(tmp_path)
    second.shared_pages += 1
    with pytest.raises(StoreError, match="changed since this state was loaded .*generation 1.* at generation 2"):
        store.save(second)
    assert snapshot(tmp_path) == before


def test_restore_is_undoable(tmp_path):
    store, old, new = two_generations(tmp_path)
    assert_same(store.restore_previous().state, old)
    assert_same(store.load(), old)
    assert_same(store.restore_previous().state, new)  # the second restore undoes the first
    assert_same(store.load(), new)
    m = store.read_manifest()
    assert m["generation"] == 4 and m["restored_from"] == 2  # generation 2, as it was first saved


def test_restore_keeps_an_unreadable_current_manifest(tmp_path):
    store, old, _ = two_generations(tmp_path)
    (tmp_path / "manifest.json").write_text("{ not json")
    assert_same(store.restore_previous().state, old)
    kept = list(tmp_path.glob("manifest.damaged-*.json"))
    assert len(kept) == 1 and kept[0].read_text() == "{ not json"


def test_save_refuses_a_damaged_store_directory(tmp_path):
    store, old, _ = two_generations(tmp_path)
    (tmp_path / "manifest.json").unlink()
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match="manifest.json: missing, but .* holds store files .*: a damaged store"):
        store.save(make_state(3))
    assert snapshot(tmp_path) == before  # the old DNNs' files are still there
    assert_same(store.restore_previous().state, old)


@pytest.mark.parametrize("setup, says", [
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("mine")), "other files .*notes.txt.*: not a store"),
    (lambda p: p.write_text("a file"), "is a file, not a directory"),
])
def test_save_refuses_what_is_not_a_store(tmp_path, setup, says):
    root = tmp_path / "x"
    setup(root)
    with pytest.raises(StoreError, match=says):
        Store(root).save(make_state(0))


def test_a_second_writer_waits_for_the_first(tmp_path):
    """A writer holding the lock for a whole load -> work -> save makes another process wait."""
    import subprocess
    import sys
    import time

    store = Store(tmp_path)
    store.save(make_state(0))
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from weightsep.store import Store\n"
        f"s = Store({str(tmp_path)!r})\n"
        "with s.writing('test holder'):\n"
        "    print('holding', flush=True); time.sleep(2.0)\n")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    start = time.perf_counter()
    with store.writing("second"):
        waited = time.perf_counter() - start
        state = store.load()
        store.save(state)
    assert holder.wait(timeout=30) == 0
    assert waited > 1.0  # it waited for the holder instead of writing beside it


def test_provenance_and_config_are_typed(tmp_path):
    store, _, _ = two_generations(tmp_path)
    edit_manifest(store, lambda m: m["vnns"][0]["meta"].update(standalone={"test_accuracy": "high"}))
    with pytest.raises(StoreError, match="DNN 'a': meta: unknown field|DNN 'a': meta: standalone"):
        store.load()
    assert StateConfig.from_json({"pack": {"mode": "ws"}}).pack == {"mode": "ws"}
    with pytest.raises(ValueError, match="unknown field\\(s\\) seed"):
        StateConfig.from_json({"seed": 1})


def test_a_new_packing_saved_over_a_store_keeps_the_previous_generation(tmp_path):
    """`run` packs a new state (never loaded: generation None) and saves it over ./state: the
    store's generation before it stays restorable, like every other write."""
    store = Store(tmp_path)
    store.save(make_state(0))
    assert store.load().generation == 1
    fresh = make_state(1)
    assert fresh.generation is None
    store.save(fresh)
    assert_same(store.load(), make_state(1))
    assert_same(store.restore_previous().state, make_state(0))


def test_stored_configs_and_pack_info_carry_a_version_and_older_ones_read_as_version_1(tmp_path):
    from test_optimize import packed_pair

    from weightsep.pack import PackConfig, pack_config
    from weightsep.precision import PrecisionConfig, assign
    from weightsep.state import PackInfo

    state, _ = packed_pair()
    q = assign(state, PrecisionConfig(precision="int8"))
    assert state.config.pack["version"] == 1 and q.format.policy["version"] == 1
    info = state.vnns["b"].provenance.pack_info
    assert isinstance(info, PackInfo) and info.version == 1 and info.matching == "optimal"
    assert state.vnns["a"].provenance.pack_info.matching == "identity"
    store = Store(tmp_path / "s")
    store.save(q)

    def older(m):  # as written before configs and records had versions
        del m["config"]["pack"]["version"], m["precision"]["policy"]["version"]
        for v in m["vnns"]:
            del v["meta"]["pack"]["version"]

    edit_manifest(store, older)
    back = store.load()
    assert pack_config(back) == PackConfig(**{**back.config.pack, "version": 1}) and pack_config(back).version == 1
    assert PrecisionConfig(**back.format.policy).version == 1
    assert all(v.provenance.pack_info.version == 1 for v in back.vnns.values())
    with pytest.raises(ValueError, match="PackConfig version 2"):
        PackConfig(version=2)
    with pytest.raises(ValueError, match="pack info version 2"):
        PackInfo.from_json({**back.vnns["a"].provenance.pack, "version": 2})
