"""The store: the only module that reads and writes packed state on disk.

It reads and writes `state.PackedState` (the data model, in state.py) and nothing else.

A `Store` is a directory (the CLI picks it, `./state` by default):

    manifest.json                     the current generation (the commit point): format name and
                                      version, page size P, shared pages S, the DNNs in registration
                                      order (n_weights, n_pages, n_exclusive, meta), the config, code
                                      and torch versions, timestamps, and for every tensor file its
                                      name, size, sha256 and tensor names/dtypes/shapes
    manifest.prev.json                the generation before it, restorable
    shared-<sha12>.safetensors        shared_pages f32 [S, P], shared_fisher f32 [S, P]
    vnn-<name>-<sha12>.safetensors    page_table i64 [n_pages], exclusive_pages f32 [E, P],
                                      fisher f32 [n_weights], and the DNN's buffers (batch-norm
                                      statistics...) as `buffer.<name>`, any dtype (format 2)

A quantised store (format 3, the manifest's "precision": int4 group and policy) holds each page
block in its formats instead of float32: `shared_codes` / `exclusive_codes` u8 (a quant.FORMATS
index per page) and, per format present, `shared.<format>` rows (f32, f16, bf16, i8, or u8 two int4
a byte) and `shared_scales.<format>` f32 (int8 [rows, 1], int4 [rows, G]); the same for
`exclusive`. Loading dequantises them: the state's pages are exactly the values the device runs.
    manifest.damaged-<time>.json      a current manifest that `restore` replaced while unreadable
    .lock                             one writer at a time (flock), holding who writes

Guarantees: tensor files are content-addressed (`<sha12>` of the file) and never rewritten in
place; every file goes temp file -> fsync -> os.replace -> fsync(dir); the manifest replace commits
a save, so a crash at any point leaves the old generation loadable. A command that changes a store
holds `Store.writing()` around its whole load -> work -> save, so a second writer waits for it;
and `save` refuses a state loaded from an older generation than the current one (a stale write). `save` refuses an invalid state
(ValueError, nothing written) and never overwrites a manifest it cannot read. `load` verifies the
format name and version, every file's size and sha256, and tensor names, dtypes and shapes, and
writes nothing; any problem is a `StoreError` naming the file and the recovery
(`python -m weightsep restore`, i.e. `Store.restore_previous()`). After a successful save only the
files of the current and previous generations are kept. No pickle anywhere. See docs/store.md.

    store = Store("state")
    with store.writing("re-home"):
        state = store.load()
        mnist = state.vnns["mnist"]
        store.save(state.with_vnn(mnist.replace(provenance=dataclasses.replace(mnist.provenance, folder="suite/mnist"))))

`save_tensors`/`load_tensors` give other modules (the trained-model cache) checksummed safetensors
files, written as every file here is, by weightsep.files' atomic writers.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from . import formats
from .checks import MAX_PAGE_SIZE, MAX_SHARED_WEIGHTS, writable_dir
from .errors import StoreError
from .files import atomic_write_bytes, atomic_write_json, code_hash
from .state import VNN, PackedState, Provenance, StateConfig

FORMAT = "weightsep-store"
FORMAT_VERSION = 3  # 2: a DNN's file may hold its buffers; 3: pages may be quantised
READABLE_VERSIONS = (1, 2, 3)  # each version reads as the next one without what that one added
MANIFEST = "manifest.json"
PREVIOUS = "manifest.prev.json"
RECOVERY = "restore the previous generation with `python -m weightsep restore` (Store.restore_previous())"
NO_OLDER = "no older generation is kept: rebuild the packed state"
NO_PREVIOUS = "no previous generation is kept to restore: rebuild the packed state"
_TENSOR_FILE = re.compile(r"(shared|vnn-[A-Za-z0-9_.-]*)-[0-9a-f]{12}\.safetensors")
# a temp file of an interrupted `atomic_write_bytes` of one of the store's own files (nothing else is collected)
_TEMP_FILE = re.compile(rf"\.(manifest(\.prev|\.damaged-[0-9T]+)?\.json|{_TENSOR_FILE.pattern})\.[0-9]+\.[0-9a-f]{{8}}\.tmp")
LOCK = ".lock"
MAX_MANIFEST_BYTES = 64 << 20  # a manifest is a few KiB to a few MiB; more is not ours (never read whole)
CHECKSUM_SINCE = 2  # every manifest of this format version or later carries its checksum
SHARED_TENSORS = ("shared_pages", "shared_fisher")
VNN_TENSORS = ("page_table", "exclusive_pages", "fisher")
BUFFER = "buffer."  # prefix of a buffer's tensor name in a DNN's file
# the page blocks (shared_pages, exclusive_pages) are written as the state's page format encodes them
# (formats.py: a quantised store's codes, rows and scales per format)
_COUNTS = ("name", "n_weights", "n_pages", "n_exclusive")


_HELD: set[Path] = set()  # store roots whose writer lock this process holds
COMMITS: list[tuple[Path, int]] = []  # (store, generation) this process committed, in order: what an interrupt left


# ---------------------------------------------------------------- atomic files, tensor files


class NotRegularFile(OSError):
    """A store path that is a symbolic link, a directory, a FIFO or a device: a received store
    could point its files at /dev/zero or at a file of the user's, so it is never followed."""


def _open_regular(path: Path, flags: int, one_name: bool = False) -> tuple[int, os.stat_result]:
    """An fd of `path` opened with `flags` (plus O_NOFOLLOW | O_NONBLOCK: a link is not followed, a
    FIFO not waited on) and its stat, if it is a regular file (with `one_name`: not a hard link);
    else `NotRegularFile`, or the OSError that opening raised."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFile(errno.ELOOP, "a symbolic link, which a store never follows", str(path)) from None
        raise
    mode = os.fstat(fd)
    if not stat.S_ISREG(mode.st_mode) or (one_name and mode.st_nlink != 1):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(mode.st_mode) else "not a regular file" if not stat.S_ISREG(mode.st_mode)
                else f"a hard link ({mode.st_nlink} names)")
        raise NotRegularFile(errno.EINVAL, f"{kind}, where the store keeps a file of its own", str(path))
    return fd, mode


def read_regular(path: Path, max_bytes: int | None = None) -> bytes:
    """The bytes of `path` if it is a regular file (`_open_regular`) of at most `max_bytes`."""
    fd, mode = _open_regular(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        if max_bytes is not None and mode.st_size > max_bytes:
            raise NotRegularFile(errno.EFBIG, f"{mode.st_size:,} bytes, more than the {max_bytes:,} such a file "
                                 "may have", str(path))
        return f.read()


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and raw bytes: independent of the file layout."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _encode(tensors: dict[str, torch.Tensor], metadata: dict) -> bytes:
    """safetensors bytes whose one metadata key ("weightsep") holds `metadata` and a data checksum."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    ours = json.dumps({"metadata": metadata, "sha256": _digest(tensors)}, allow_nan=False)
    return safetensors.torch.save(tensors, {"weightsep": ours})  # one key: byte-stable across runs


def _decode(data: bytes, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Inverse of `_encode`; a truncated, corrupt or foreign file raises StoreError naming `path`."""
    if len(data) < 8 or 8 + int.from_bytes(data[:8], "little") > len(data):
        raise StoreError(f"{path}: file ends inside its safetensors header ({len(data)} bytes): truncated")
    try:
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        ours = json.loads(header["__metadata__"]["weightsep"])
        tensors = safetensors.torch.load(data)
        metadata, checksum = ours["metadata"], ours["sha256"]
    except (KeyError, TypeError):
        raise StoreError(f"{path}: not written by weightsep (no 'weightsep' metadata with a checksum)") from None
    except Exception as e:  # the safetensors parser's own errors, JSON errors: untrusted bytes
        raise StoreError(f"{path}: unreadable safetensors data ({e}): truncated or corrupt") from None
    if _digest(tensors) != checksum:
        raise StoreError(f"{path}: tensor data does not match its checksum: corrupt")
    return tensors, metadata


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    """Atomically write a flat dict of tensors (any dtype; moved to CPU) and JSON-able metadata."""
    atomic_write_bytes(path, _encode(tensors, metadata or {}))


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a `save_tensors` file: (CPU tensors, metadata), checksum verified.

    A missing file raises FileNotFoundError (a cache miss); a truncated, corrupt or foreign one
    raises StoreError naming it."""
    path = Path(path)
    return _decode(path.read_bytes(), path)


@lru_cache(maxsize=1)
def code_version() -> str:
    """`weightsep-<sha12>` of the package's Python sources, recorded with every saved generation."""
    package = Path(__file__).resolve().parent
    return "weightsep-" + code_hash(*(p.relative_to(package).as_posix().encode() + b"\0" + p.read_bytes()
                                      for p in sorted(package.rglob("*.py"))), digits=12)


# ---------------------------------------------------------------- the store


def file_slug(name: str) -> str:
    """A DNN name as part of a file name: characters outside [A-Za-z0-9_.-] as `_`, at most 48 (the
    name itself is in the manifest); whatever the name, no path separator reaches the file system."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:48]


def _specs(tensors: dict[str, torch.Tensor]) -> dict:
    return {k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)} for k, v in tensors.items()}


def _blob(prefix: str, tensors: dict[str, torch.Tensor], metadata: dict) -> tuple[dict, bytes]:
    """A content-addressed tensor file: its manifest entry and its bytes."""
    data = _encode(tensors, metadata)
    sha = hashlib.sha256(data).hexdigest()
    entry = {"file": f"{prefix}-{sha[:12]}.safetensors", "sha256": sha, "bytes": len(data), "tensors": _specs(tensors)}
    return entry, data


def _counts(state: PackedState) -> dict:
    """The manifest's numbers, derived from the tensors (written on save, cross-checked on load)."""
    return {"page_size": state.page_size, "n_shared": state.n_shared,
            "vnns": [{"name": v.name, "n_weights": v.n_weights, "n_pages": v.n_pages, "n_exclusive": v.n_exclusive}
                     for v in state.vnns.values()]}


def manifest_checksum(manifest: dict) -> str:
    """sha256 of a manifest's content without its own "checksum" field (canonical JSON)."""
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()  # NaN hashes too: a mismatch, not a crash


def sealed(manifest: dict) -> dict:
    """The manifest with its checksum, so an edit that keeps it well-formed is still caught on load."""
    return {**manifest, "checksum": manifest_checksum(manifest)}


def _file_entries(manifest: dict) -> list[dict]:
    return [manifest["shared"], *(v["file"] for v in manifest["vnns"])]


def _missing_field(obj: Any, fields: dict[str, type]) -> str | None:
    for key, kind in fields.items():
        value = obj.get(key) if isinstance(obj, dict) else None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            return key
    return None


def _manifest_problem(m: dict) -> str | None:
    """The first structural problem of a parsed manifest (a missing or mistyped field), or None."""
    key = _missing_field(m, {"generation": int, "created": str, "updated": str, "page_size": int,
                             "n_shared": int, "config": dict, "shared": dict, "vnns": list})
    if key:
        return f"field {key!r} missing or mistyped"
    problem = formats.manifest_problem(m, MAX_PAGE_SIZE)
    if problem:
        return problem
    if m["generation"] < 1:
        return f"generation {m['generation']} (generations count from 1)"
    if not 1 <= m["page_size"] <= MAX_PAGE_SIZE:
        return f"page_size {m['page_size']} is not in [1, {MAX_PAGE_SIZE}]"
    if not 0 <= m["n_shared"] * m["page_size"] <= MAX_SHARED_WEIGHTS:
        return f"n_shared {m['n_shared']} pages of {m['page_size']} is not in [0, {MAX_SHARED_WEIGHTS:,}] weights"
    for i, vnn in enumerate(m["vnns"]):
        key = _missing_field(vnn, {"name": str, "n_weights": int, "n_pages": int, "n_exclusive": int,
                                   "meta": dict, "file": dict})
        if key:
            return f"vnns[{i}]: field {key!r} missing or mistyped"
        if m["format_version"] < 2 and isinstance(vnn["file"].get("tensors"), dict) and any(
                k.startswith(BUFFER) for k in vnn["file"]["tensors"]):
            return f"vnns[{i}]: buffers in a format_version {m['format_version']} manifest (since 2)"
    for entry in _file_entries(m):
        key = _missing_field(entry, {"file": str, "sha256": str, "bytes": int, "tensors": dict})
        if key:
            return f"a file entry's field {key!r} missing or mistyped"
        if not _TENSOR_FILE.fullmatch(entry["file"]):
            return f"bad tensor file name {entry['file']!r}"
        if entry["bytes"] < 0:
            return f"{entry['file']}: negative size {entry['bytes']}"
    return None


@dataclass
class Restored:
    """What `Store.restore_previous` did: generation `restored_from` (its DNNs `dnns`) is current
    again as generation `generation`; it replaced generation `replaced` (DNNs `replaced_dnns`; both
    None when the current manifest was missing or unreadable), kept as `kept_as` (manifest.prev.json:
    restore again to undo; manifest.damaged-<time>.json: unreadable; None: nothing to keep)."""

    state: PackedState
    generation: int
    restored_from: int
    dnns: list[str]
    replaced: int | None
    replaced_dnns: list[str] | None
    kept_as: Path | None


class Store:
    """A directory of packed state: versioned, checksummed generations, replaced atomically."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def exists(self) -> bool:
        """Whether a current generation is present (it may still fail to load)."""
        return (self.root / MANIFEST).is_file()

    def read_manifest(self, previous: bool = False) -> dict:
        """The current (or previous) manifest, format and structure checked; tensor files are not read."""
        path = self.root / (PREVIOUS if previous else MANIFEST)
        return self._read_manifest(path, NO_OLDER if previous else RECOVERY)

    def load(self, without: str | None = None) -> PackedState:
        """The current generation, fully verified (CPU tensors); reads only, raises StoreError.

        `without`: the state less that DNN, whose tensor file is not read (salvage: a store whose one
        DNN file is damaged keeps the others by removing it); the shared pages' accumulated Fisher is
        then summed afresh from the DNNs kept, since the one removed cannot be subtracted."""
        return self._load(self.root / MANIFEST, self._recovery(), without)

    @contextlib.contextmanager
    def writing(self, command: str) -> Iterator[None]:
        """Be the store's only writer for a whole load -> work -> save (`command` names it to waiters).

        Checks up front that the store can be written (a directory, writable), so a command fails
        before its work, not after. A second writer waits here, told who holds the store."""
        self._check_writable()
        created = not self.root.exists()
        try:
            with self._lock(command):
                yield
        finally:  # a command that failed before saving leaves no empty store directory behind
            if created and self.root.is_dir() and {p.name for p in self.root.iterdir()} <= {LOCK}:
                (self.root / LOCK).unlink(missing_ok=True)
                self.root.rmdir()

    def save(self, state: PackedState) -> dict:
        """Validate `state`, write it as the new current generation and return its manifest.

        The current generation becomes the previous one if its files verify; files of older
        generations are deleted. An invalid state raises ValueError with nothing written; a state
        loaded from an older generation than the current one (another command saved in between)
        raises StoreError with nothing written. `state.generation` is the new generation after."""
        if not isinstance(state, PackedState):  # bad input is a ValueError here too (docs/library.md)
            raise ValueError(f"Store.save takes a PackedState, got {type(state).__name__}; nothing written")
        state.validate()
        if state.is_shard:
            raise ValueError(f"a rank's shard (holding the exclusive pages of {list(state.held)} only) is not a "
                             "whole state; save the whole state (rank 0's); nothing written")
        fmt = state.format
        shared, data = _blob("shared", {**fmt.encode("shared_pages", state.shared_pages),
                                        "shared_fisher": state.shared_fisher}, self._file_meta("shared"))
        blobs = {shared["file"]: data}
        vnns = []
        for vnn, counts in zip(state.vnns.values(), _counts(state)["vnns"]):
            tensors = {"page_table": vnn.page_table, "fisher": vnn.fisher,
                       **fmt.encode("exclusive_pages", vnn.exclusive_pages, vnn.name),
                       **{BUFFER + k: b for k, b in vnn.buffers.items()}}
            entry, data = _blob(f"vnn-{file_slug(vnn.name)}", tensors, self._file_meta("vnn", vnn.name))
            blobs[entry["file"]] = data
            vnns.append({**counts, "meta": vnn.provenance.to_json(), "file": entry})
        self._check_writable()
        with self._lock("save"):
            current_bytes, current = self._current_for_save()
            if state.generation is not None and (current is None or current["generation"] != state.generation):
                now_at = f"generation {current['generation']}" if current else "no current generation"
                raise StoreError(f"{self.root}: changed since this state was loaded (it was generation "
                                 f"{state.generation}, the store is at {now_at}): another command saved in "
                                 "between; nothing was written: run the command again on the current store")
            for name, data in blobs.items():
                if not self._holds(self.root / name, data):
                    atomic_write_bytes(self.root / name, data)
            now = datetime.now(UTC).isoformat(timespec="seconds")
            manifest = {
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "generation": current["generation"] + 1 if current else 1,
                "created": current["created"] if current else now, "updated": now,
                "code_version": code_version(), "torch_version": torch.__version__,
                "page_size": state.page_size, "n_shared": state.n_shared,
                "config": state.config.to_json(), "shared": shared, "vnns": vnns,
                **fmt.manifest(),
            }
            if current and self._files_intact(current):
                atomic_write_bytes(self.root / PREVIOUS, current_bytes)
            manifest = sealed(manifest)
            atomic_write_json(self.root / MANIFEST, manifest)  # the commit point
            COMMITS.append((self.root, manifest["generation"]))
            self._collect_garbage()
        state.generation = manifest["generation"]
        return manifest

    def restore_previous(self) -> Restored:
        """Make the previous generation current again after verifying it fully; says what it did.

        Undoable: the generation it replaces becomes the previous one, so a second restore swaps
        back. A current manifest that cannot be read is kept as manifest.damaged-<time>.json; one
        written by a newer weightsep is refused (this one cannot tell what it would lose)."""
        if not self.root.is_dir():
            raise StoreError(f"{self.root}: no such store directory")
        self._check_writable(damaged_ok=True)
        with self._lock("restore"):
            previous = self.root / PREVIOUS
            if not previous.is_file():
                raise StoreError(f"{previous}: missing: there is no previous generation to restore; {NO_OLDER}")
            state = self._load(previous, NO_OLDER)
            restored = self._read_manifest(previous, NO_OLDER)
            current_bytes, current = self._current_for_restore()
            now = datetime.now(UTC).isoformat(timespec="seconds")
            generation = max(restored["generation"], current["generation"] if current else 0) + 1
            manifest = sealed({**restored, "generation": generation, "updated": now,
                               "restored_from": restored["generation"]})
            kept_as = None
            if current is not None and self._files_intact(current):
                atomic_write_bytes(previous, current_bytes)  # the generation replaced: restore again to undo
                kept_as = previous
            elif current_bytes:
                kept_as = self.root / f"manifest.damaged-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
                atomic_write_bytes(kept_as, current_bytes)
            atomic_write_json(self.root / MANIFEST, manifest)
            COMMITS.append((self.root, generation))
        state.generation = generation
        return Restored(state, generation, restored["generation"], [v["name"] for v in restored["vnns"]],
                        current and current["generation"], current and [v["name"] for v in current["vnns"]],
                        kept_as)

    # -- internals

    @staticmethod
    def _file_meta(kind: str, name: str | None = None) -> dict:
        meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "code_version": code_version()}
        return meta if name is None else {**meta, "name": name}

    def _check_writable(self, damaged_ok: bool = False) -> None:
        """A StoreError now, before any work, if this store cannot be written (or, unless
        `damaged_ok`, is a directory of store files without its manifest: saving there would start
        afresh and delete them)."""
        root = self.root
        try:
            writable_dir(root, "store")
        except ValueError as e:
            raise StoreError(f"{e}; choose another --store") from None
        if not damaged_ok and root.is_dir() and not (root / MANIFEST).is_file():
            foreign = sorted(p.name for p in root.iterdir() if p.name != LOCK and not _TEMP_FILE.fullmatch(p.name))
            if foreign:
                store_files = [n for n in foreign if n == PREVIOUS or _TENSOR_FILE.fullmatch(n)]
                raise StoreError(
                    f"{root / MANIFEST}: missing, but {root} holds "
                    + (f"store files ({', '.join(store_files[:3])}...): a damaged store; {RECOVERY}, "
                       "or move the directory away to start afresh" if store_files else
                       f"other files ({', '.join(foreign[:3])}): not a store; choose a new or empty directory"))

    @contextlib.contextmanager
    def _lock(self, command: str) -> Iterator[None]:
        """The store's writer lock (flock on .lock); re-entrant within a process (save inside writing)."""
        key = self.root.resolve()
        if key in _HELD:
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with self._open_lock() as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                print(f"{self.root}: waiting for the writer that holds it ({holder}) to finish", file=sys.stderr,
                      flush=True)
                fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()}, {command}, since {datetime.now(UTC).isoformat(timespec='seconds')}\n")
            f.flush()
            _HELD.add(key)
            try:
                yield
            finally:
                _HELD.discard(key)

    def _open_lock(self):
        """The lock file, opened for writing only if it is the store's own regular file: a link (to
        ~/.bashrc, say, in a received store) is never followed, a FIFO never waited on."""
        path = self.root / LOCK
        try:
            fd, _ = _open_regular(path, os.O_RDWR | os.O_CREAT, one_name=True)
        except NotRegularFile as e:
            raise StoreError(f"{path}: {e.strerror}; the lock file is written, so it must be the store's own "
                             "regular file: delete it (nothing was written)") from None
        return os.fdopen(fd, "r+")

    def _current_for_save(self) -> tuple[bytes, dict | None]:
        """The current manifest (bytes, parsed); never overwrite one that cannot be read (StoreError)."""
        path = self.root / MANIFEST
        if not path.is_file():
            return b"", None
        hint = self._recovery() + ", or move the directory away to start afresh"
        data = self._manifest_bytes(path, hint)
        return data, self._parse_manifest(data, path, hint)

    def _current_for_restore(self) -> tuple[bytes, dict | None]:
        """The current manifest (bytes, parsed or None if unreadable); one of a newer format is refused.
        Anything else in its place (a directory, say) is moved aside as manifest.damaged-<time>."""
        path = self.root / MANIFEST
        if path.is_symlink() or (path.exists() and not path.is_file()):
            path.rename(self.root / f"manifest.damaged-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}")
        if not path.is_file():
            return b"", None
        try:
            data = read_regular(path, MAX_MANIFEST_BYTES)
        except OSError:  # too large, or made unreadable meanwhile: replaced like any damaged manifest
            return b"", None
        try:
            return data, self._parse_manifest(data, path, RECOVERY)
        except StoreError as e:
            if "upgrade weightsep" in str(e):
                raise StoreError(f"{e}; restore refused: this weightsep cannot read what it would replace") from None
            return data, None

    def _read_manifest(self, path: Path, hint: str) -> dict:
        try:
            data = self._manifest_bytes(path, hint)
        except FileNotFoundError:
            if path.name == MANIFEST and not (self.root / PREVIOUS).is_file():
                raise StoreError(f"{path}: missing: nothing has been saved in {self.root} yet") from None
            raise StoreError(f"{path}: missing; {hint}") from None
        return self._parse_manifest(data, path, hint)

    @staticmethod
    def _manifest_bytes(path: Path, hint: str) -> bytes:
        """A manifest's bytes; FileNotFoundError if missing, any other problem a StoreError."""
        try:
            return read_regular(path, MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise
        except OSError as e:  # a link, a directory where the file should be, no permission, ...
            raise StoreError(f"{path}: unreadable ({e.strerror}); {hint}") from None

    @staticmethod
    def _parse_manifest(data: bytes, path: Path, hint: str) -> dict:
        try:
            m = json.loads(data)
        except (ValueError, RecursionError) as e:  # RecursionError: absurdly nested JSON
            raise StoreError(f"{path}: not valid JSON ({str(e)[:200]}); {hint}") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            found = m.get("format") if isinstance(m, dict) else type(m).__name__
            raise StoreError(f"{path}: not a weightsep store manifest (format {found!r}, expected {FORMAT!r})")
        version = m.get("format_version")
        if type(version) is not int or version not in READABLE_VERSIONS:
            newer = type(version) is int and version > FORMAT_VERSION
            raise StoreError(f"{path}: format_version {version!r} is unknown to this weightsep, which reads "
                             f"versions {', '.join(map(str, READABLE_VERSIONS))}; " + ("upgrade weightsep" if newer else hint))
        if "checksum" not in m and version >= CHECKSUM_SINCE:  # only stores from before the checksum have none
            raise StoreError(f"{path}: no checksum, which every format_version {version} manifest carries: edited "
                             f"(an entry dropped from it would lose that DNN's files at the next save); {hint}")
        if "checksum" in m and m["checksum"] != manifest_checksum(m):
            raise StoreError(f"{path}: its checksum does not match its content: edited or corrupt; {hint}")
        problem = _manifest_problem(m)
        if problem:
            raise StoreError(f"{path}: malformed manifest ({problem}); {hint}")
        return m

    def _read_file(self, entry: dict, names: tuple[str, ...], expected_meta: dict, manifest: Path,
                   hint: str) -> dict[str, torch.Tensor]:
        """One tensor file, checked against its manifest entry (size, sha256, names, dtypes, shapes)."""
        path = self.root / entry["file"]
        try:
            data = read_regular(path, entry["bytes"])
        except FileNotFoundError:
            raise StoreError(f"{path}: missing (listed in {manifest.name}); {hint}") from None
        except OSError as e:
            if e.errno == errno.EFBIG:  # larger than listed: not read
                raise StoreError(f"{path}: {e.strerror.split(',')[0]} but {manifest.name} says {entry['bytes']}: "
                                 f"replaced; {hint}") from None
            raise StoreError(f"{path}: unreadable ({e.strerror}; listed in {manifest.name}); {hint}") from None
        if len(data) != entry["bytes"]:
            raise StoreError(f"{path}: {len(data)} bytes but {manifest.name} says {entry['bytes']}: "
                             f"truncated or replaced; {hint}")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise StoreError(f"{path}: sha256 does not match {manifest.name}: corrupt; {hint}")
        try:
            tensors, meta = _decode(data, path)
        except StoreError as e:
            raise StoreError(f"{e}; {hint}") from None
        found = _specs(tensors)
        if set(found) != set(names) or set(entry["tensors"]) != set(names):
            raise StoreError(f"{path}: holds tensors {sorted(found)}, {manifest.name} lists "
                             f"{sorted(entry['tensors'])}, expected {sorted(names)}; {hint}")
        for name in names:
            if found[name] != entry["tensors"][name]:
                said = entry["tensors"][name]
                said = f"{said.get('dtype')} {said.get('shape')}" if isinstance(said, dict) else repr(said)
                raise StoreError(f"{path}: tensor {name!r} is {found[name]['dtype']} {found[name]['shape']} "
                                 f"but {manifest.name} says {said}; {hint}")
        if any(meta.get(k) != v for k, v in expected_meta.items()):
            raise StoreError(f"{path}: its metadata {meta} does not match {manifest.name} "
                             f"(expected {expected_meta}); {hint}")
        return tensors

    def _load(self, manifest_path: Path, hint: str, without: str | None = None) -> PackedState:
        m = self._read_manifest(manifest_path, hint)
        entries = [v for v in m["vnns"] if v["name"] != without]
        if without is not None and len(entries) == len(m["vnns"]):
            raise ValueError(f"DNN {without!r} is not packed; packed: {', '.join(v['name'] for v in m['vnns']) or 'none'}")
        fmt = formats.from_manifest(m)
        names = fmt.file_tensors(SHARED_TENSORS, m["shared"])
        shared = self._read_file(m["shared"], names, {"kind": "shared"}, manifest_path, hint)
        try:
            P = m["page_size"]
            shared_pages = fmt.decode("shared_pages", shared, P, "the shared pages")
            vnns = {}
            for entry in entries:
                name = entry["name"]
                salvage = (f"; or keep the other DNNs by removing this one: python -m weightsep remove {name!r} "
                           f"--store {self.root}" if manifest_path.name == MANIFEST and len(m["vnns"]) > 1 else "")
                buffers = tuple(k for k in entry["file"]["tensors"] if k.startswith(BUFFER))  # the sealed manifest's list
                t = self._read_file(entry["file"], fmt.file_tensors(VNN_TENSORS, entry["file"]) + buffers,
                                    {"kind": "vnn", "name": name}, manifest_path, hint + salvage)
                try:
                    pages = fmt.decode("exclusive_pages", t, P, f"DNN {name!r}: exclusive pages", name)
                    provenance = Provenance.from_json(entry["meta"], f"DNN {name!r}: meta")
                    vnns[name] = VNN(name, entry["n_weights"], t["page_table"], pages, t["fisher"], provenance,
                                     {k.removeprefix(BUFFER): t[k] for k in buffers})
                except ValueError as e:
                    raise ValueError(f"{e}{salvage}") from None
            state = PackedState(P, shared_pages, shared["shared_fisher"], vnns, StateConfig.from_json(m["config"]),
                                m["generation"], fmt)
        except ValueError as e:
            raise StoreError(f"{manifest_path}: the stored state is invalid: {e}; {hint}") from None
        recorded = {"page_size": m["page_size"], "n_shared": m["n_shared"],
                    "vnns": [{k: v[k] for k in _COUNTS} for v in entries]}
        if recorded != _counts(state):
            raise StoreError(f"{manifest_path}: its counts {recorded} disagree with the tensor files "
                             f"{_counts(state)}; {hint}")
        if without is not None:
            state = state.replace(shared_fisher=state.summed_fisher())
        return state

    def _recovery(self) -> str:
        """What to do about a damaged current generation: restore the previous one, if there is one."""
        return RECOVERY if (self.root / PREVIOUS).is_file() else NO_PREVIOUS

    @staticmethod
    def _holds(path: Path, data: bytes) -> bool:
        """Whether `path` already has exactly `data` (content-addressed files are reused, not rewritten)."""
        try:
            return read_regular(path, len(data)) == data
        except OSError:
            return False

    def _files_intact(self, manifest: dict) -> bool:
        for entry in _file_entries(manifest):
            try:
                data = read_regular(self.root / entry["file"], entry["bytes"])
            except OSError:
                return False
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                return False
        return True

    def _collect_garbage(self) -> None:
        """Delete tensor files neither manifest lists, and temp files of the store's own interrupted
        writes: nothing else in the directory (a user's file, a link's target) is touched."""
        keep = set()
        for name in (MANIFEST, PREVIOUS):
            try:
                keep |= {e["file"] for e in _file_entries(self._read_manifest(self.root / name, NO_OLDER))}
            except StoreError:  # an unreadable previous manifest protects nothing
                continue
        for path in self.root.iterdir():
            stale_tmp = _TEMP_FILE.fullmatch(path.name)
            if (stale_tmp or (_TENSOR_FILE.fullmatch(path.name) and path.name not in keep)) and (
                    path.is_symlink() or path.is_file()):  # a link is removed, never what it points to
                path.unlink(missing_ok=True)
