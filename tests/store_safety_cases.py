"""The store-safety cases that tests/test_store_safety.py runs (issue 11; from bench/store_safety.py,
which checked and counted them, to tests/ in issue 26): the environment, the damage catalogue, the
kill -9 and concurrent-writer trials.

The environment: tiny DNN folders written for the purpose (letters data, one dense layer of 16-40
units: 700-1,800 weights, pages of 64, 32 shared pages), their stand-alone models trained once into a
private WEIGHTSEP_CACHE (data symlinked from the real cache; ops backend `torch`, so no extension
build). The template store has three generations: add tiny_a, add tiny_b, joint (so no tensor file
is shared between the current generation and the previous one); its int8 copy (`quantize`) a fourth.
`Env.cli` runs a command as a real subprocess (where the process is under test: kill -9, two writers
at once, the messages a user sees), `Env.main` runs the same command line through `cli.main` in this
process (the same code path, no interpreter start-up).

* corruptions: each of the distinct damages (tensor files truncated, bit-flipped, deleted, swapped,
  duplicated, replaced by a directory; "consistent" damages whose manifest entry is updated to match,
  so the parser and the validation are reached: huge header length, NaN pages, page-table entries out
  of range, ...; the manifest: invalid JSON, wrong format/version, missing or mistyped fields, nested
  JSON where a dict/list belongs, wrong counts/shapes, negative sizes, deep nesting, path traversal;
  hostile ones: links, pipes, names that become paths, absurd values; the int8 store's; the previous
  generation) is applied to a copy of the template. Detected: `Store.load()` raises StoreError, `list`
  and `eval` exit 2 with `error: ...` and no Traceback, and write nothing (previous-generation
  damage: the current loads unchanged and `restore` exits 2 cleanly). Recoverable: after `restore`
  the store loads and equals the previous generation exactly (previous-generation damage: the current
  generation is untouched).
* kill -9: SIGKILL at a random time during `add tiny_c`, `joint --steps N` or `remove tiny_a` (half
  the delays uniform over the whole command as timed unkilled, half in its last 20%, where the save
  is); then the store must load and equal exactly the old state or the new one (tensors, meta,
  config, manifest generation).
* concurrent writers: two commands at once on one store (add & add, joint & remove, remove & remove,
  add & remove, add & joint); an update is lost when its command exited 0 but its effect is missing
  from the final state (added DNN absent, removed DNN present, joint's weights not there). A refusal
  (exit != 0, no Traceback, a message about a concurrent change) is fine.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from weightsep.dnn import cache_dir
from weightsep.store import FORMAT_VERSION, Store, StoreError, load_tensors, save_tensors, sealed

REPO = Path(__file__).resolve().parent.parent
MANIFEST, PREVIOUS = "manifest.json", "manifest.prev.json"
LAYOUT = ["--page-size", "64", "--shared-pages", "32"]
SMALL = ["--train-steps", "100", "--fisher-samples", "16", "--workers", "1"]
JOINT = ["--eval-every", "1000"]  # one validation check, at the last step: joint's result always differs
TINY = {"tiny_a": 32, "tiny_b": 24, "tiny_c": 40, "tiny_d": 16}  # hidden units
CONCURRENT_WORDS = re.compile(r"(?i)concurren|changed (since|while|under)|modified (since|while)|"
                              r"another (process|writer|command)|lock|retry|stale|conflict")

DNN_PY = '''"""A tiny DNN for the store safety checks: letters, one dense layer of {hidden} units."""
import numpy as np

from weightsep.dnn import Dataset, Split
from weightsep.model import TemplateNet

META = dict(task="letters, tiny model", source="suite/letters data", real=True, input=(16,), classes=26)
TRAIN = dict(steps=100)


def build_model():
    return TemplateNet((16,), [], dense=[{hidden}], classes=26)


def load_data(data_dir):
    d = np.load(data_dir / "letters.npz")
    return Dataset(*(Split(d[f"x_{{s}}"], d[f"y_{{s}}"]) for s in ("train", "val", "test")))
'''


# ---------------------------------------------------------------- the environment and the CLI


@dataclass
class Env:
    """A private cache, the tiny DNN folders and a template store (three generations)."""

    root: Path  # work directory: cache/, plugins/, template/, template-int8/
    cache: Path
    plugins: Path
    template: Path
    quantised: Path  # the template's current generation quantised to int8 (`quantize`): a fourth generation

    def vars(self) -> dict[str, str]:
        return {**os.environ, "WEIGHTSEP_CACHE": str(self.cache), "WEIGHTSEP_OPS_BACKEND": "torch",
                "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def argv(self, *args, plugins: bool = True) -> list[str]:
        """`python -m weightsep COMMAND ...`; commands other than restore also see the DNN folders
        (unless `plugins` is False), after the folders `args` name (a later folder of a name wins)."""
        args = [str(a) for a in args]
        folders = ["--dnn-folder", str(self.plugins)] if plugins and args[0] != "restore" else []
        return [sys.executable, "-m", "weightsep", args[0], *folders, *args[1:]]

    def cli(self, *args, check: bool = False, timeout: float = 300, plugins: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(self.argv(*args, plugins=plugins), cwd=REPO, env=self.vars(), capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode:
            raise RuntimeError(f"{' '.join(map(str, args))} exited {r.returncode}:\n{r.stderr[-3000:]}")
        return r

    def main(self, *args, check: bool = False, plugins: bool = True, **_) -> subprocess.CompletedProcess:
        """The command line `cli` runs, through `cli.main` in this process (the private cache, the torch
        ops backend): its exit status and output; an exception escaping it is a Traceback in stderr."""
        from weightsep import cli, ops

        argv = self.argv(*args, plugins=plugins)[3:]
        out, err = io.StringIO(), io.StringIO()
        saved = {k: os.environ.get(k) for k in ("WEIGHTSEP_CACHE", "WEIGHTSEP_OPS_BACKEND")}
        backend = ops._setting, ops._backend
        os.environ.update(WEIGHTSEP_CACHE=str(self.cache), WEIGHTSEP_OPS_BACKEND="torch")
        ops.set_backend("torch")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    status = cli.main(argv)
                except SystemExit as e:  # argparse
                    status = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
                except Exception:  # noqa: BLE001 - escaping the entry point: a traceback on the command line
                    status = 1
                    traceback.print_exc()
        finally:
            ops._setting, ops._backend = backend
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        r = subprocess.CompletedProcess(argv, status, out.getvalue(), err.getvalue())
        if check and r.returncode:
            raise RuntimeError(f"{' '.join(map(str, args))} exited {r.returncode}:\n{r.stderr[-3000:]}")
        return r

    def popen(self, *args) -> subprocess.Popen:
        """Its own process group, so a kill reaches any child it spawned."""
        return subprocess.Popen(self.argv(*args), cwd=REPO, env=self.vars(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)

    def copy(self, name: str, template: Path | None = None) -> Path:
        """A fresh copy of the template store (or of `template`) under root/trials/name."""
        dst = self.root / "trials" / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(template or self.template, dst, symlinks=True)
        return dst


def write_plugins(folder: Path) -> None:
    for name, hidden in TINY.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "dnn.py").write_text(DNN_PY.format(hidden=hidden))


def prepare(root: Path) -> Env:
    """Cache with data, tiny DNN folders, their stand-alone models, and the template store (built
    through `cli.main` in this process)."""
    data = cache_dir() / "data"
    if not (data / "letters.npz").exists():
        raise FileNotFoundError(f"{data / 'letters.npz'} is missing: run ./setup.sh first")
    root.mkdir(parents=True, exist_ok=True)
    env = Env(root, root / "cache", root / "plugins", root / "template", root / "template-int8")
    env.cache.mkdir(exist_ok=True)
    if not (env.cache / "data").exists():
        (env.cache / "data").symlink_to(data)
    write_plugins(env.plugins)
    if not (env.template / MANIFEST).exists():
        scratch = root / "scratch"
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.rmtree(env.template, ignore_errors=True)
        env.main("add", "tiny_a", "--store", env.template, *LAYOUT, *SMALL, check=True)
        env.main("add", "tiny_b", "--store", env.template, *SMALL, check=True)
        env.main("joint", "--steps", "2", *JOINT, "--store", env.template, check=True)
        env.main("add", "tiny_c", "--store", scratch, *LAYOUT, *SMALL, check=True)  # train c and d once (cached)
        env.main("add", "tiny_d", "--store", scratch, *SMALL, check=True)
        shutil.rmtree(scratch)
    if not (env.quantised / MANIFEST).exists():
        shutil.rmtree(env.quantised, ignore_errors=True)
        shutil.copytree(env.template, env.quantised)
        env.main("quantize", "--precision", "int8", "--store", env.quantised, check=True)
    return env


# ---------------------------------------------------------------- comparing states


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32) if t.dtype == torch.float32 else t


def untimed(obj):
    """JSON with every timing ("...seconds") left out: the one part of meta that differs run to run."""
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if "seconds" not in str(k)}
    return [untimed(v) for v in obj] if isinstance(obj, list) else obj


def same_state(a, b) -> bool:
    """Bit-exact equality of two PackedStates (tensors, names in order, meta and config but timings)."""
    if (a.page_size, untimed(a.config.to_json()), list(a.vnns)) != (b.page_size, untimed(b.config.to_json()), list(b.vnns)):
        return False
    if not all(torch.equal(_bits(x), _bits(y)) for x, y in
               [(a.shared_pages, b.shared_pages), (a.shared_fisher, b.shared_fisher)]):
        return False
    for x, y in zip(a.vnns.values(), b.vnns.values()):
        if (x.name, x.n_weights, untimed(x.provenance.to_json())) != (y.name, y.n_weights, untimed(y.provenance.to_json())):
            return False
        for t in ("page_table", "exclusive_pages", "fisher"):
            u, v = getattr(x, t), getattr(y, t)
            if u.dtype != v.dtype or u.shape != v.shape or not torch.equal(_bits(u), _bits(v)):
                return False
    return True


def theta(state, name: str) -> torch.Tensor:
    """A packed DNN's flat weights, read through its page table."""
    vnn = state.vnns[name]
    return torch.cat([state.shared_pages, vnn.exclusive_pages])[vnn.page_table].reshape(-1)[: vnn.n_weights]


def _content_generation(manifest: dict) -> int:
    return manifest.get("restored_from", manifest["generation"])


@dataclass
class Snapshot:
    """A loaded state with the generation its content was first saved as (a restored generation
    counts as the one it brought back: `restored_from`)."""

    state: object
    generation: int

    @classmethod
    def of(cls, store: Path, previous: bool = False) -> Snapshot:
        s = Store(store)
        if previous:
            tmp = Path(tempfile.mkdtemp(dir=store.parent))
            try:  # load the previous generation without touching the store: a copy, restored there
                for p in store.iterdir():
                    if p.is_file():
                        shutil.copy2(p, tmp / p.name)
                state = Store(tmp).restore_previous().state
                return cls(state, _content_generation(Store(tmp).read_manifest()))
            finally:
                shutil.rmtree(tmp)
        return cls(s.load(), _content_generation(s.read_manifest()))

    def equals(self, store: Path) -> bool:
        try:
            return Snapshot.of(store).matches(self)
        except StoreError:
            return False

    def matches(self, other: Snapshot) -> bool:
        return self.generation == other.generation and same_state(self.state, other.state)


def snapshot_files(root: Path) -> dict[str, bytes | None]:
    """Every entry's bytes (None for a directory or dangling link), .lock aside: 'wrote nothing' checks."""
    out = {}
    for p in sorted(root.iterdir()):
        if p.name != ".lock":
            out[p.name] = p.read_bytes() if p.is_file() else None
    return out


# ---------------------------------------------------------------- corruptions


def _manifest(store: Path, previous: bool = False) -> dict:
    return json.loads((store / (PREVIOUS if previous else MANIFEST)).read_text())


def _write_manifest(store: Path, m, previous: bool = False, seal: bool = True) -> None:
    """Write an edited manifest; `seal` recomputes its checksum (a consistent edit, so the damage
    reaches the structural checks below the checksum), else the checksum stays stale."""
    if seal and isinstance(m, dict) and "checksum" in m:
        m = sealed(m)
    (store / (PREVIOUS if previous else MANIFEST)).write_text(json.dumps(m, indent=2))


def edit(fn: Callable[[dict], None], seal: bool = True) -> Callable[[Path], None]:
    """A corruption that edits the parsed current manifest (checksum resealed unless `seal` is False)."""
    def apply(store: Path) -> None:
        m = _manifest(store)
        fn(m)
        _write_manifest(store, m, seal=seal)
    return apply


def _entry(m: dict, which: str) -> dict:
    """The file entry of 'shared' or of a DNN's name."""
    return m["shared"] if which == "shared" else next(v["file"] for v in m["vnns"] if v["name"] == which)


def _path(store: Path, which: str, previous: bool = False) -> Path:
    return store / _entry(_manifest(store, previous), which)["file"]


def _header_length(data: bytes) -> int:
    return int.from_bytes(data[:8], "little")


def raw(which: str, fn: Callable[[bytes], bytes], consistent: bool = False) -> Callable[[Path], None]:
    """Rewrite a tensor file's bytes; `consistent` also updates its manifest entry (size, sha256), so
    the damage reaches the parser and the validation instead of the checksum."""
    def apply(store: Path) -> None:
        path = _path(store, which)
        data = fn(path.read_bytes())
        path.write_bytes(data)
        if consistent:
            m = _manifest(store)
            _entry(m, which).update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
            _write_manifest(store, m)
    return apply


def retensor(which: str, fn: Callable[[dict[str, torch.Tensor]], None], meta_update: dict | None = None
             ) -> Callable[[Path], None]:
    """Rewrite a tensor file's tensors (and its metadata) with every checksum valid (file, manifest
    entry, inner checksum): the damage is in the values, for validation to catch."""
    def apply(store: Path) -> None:
        old = _path(store, which)
        tensors, meta = load_tensors(old)
        fn(tensors)
        meta.update(meta_update or {})
        tmp = store / "retensor.tmp"
        save_tensors(tmp, tensors, meta)
        data = tmp.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        new = store / re.sub(r"-[0-9a-f]{12}\.safetensors$", f"-{sha[:12]}.safetensors", old.name)
        tmp.replace(new)
        if new != old:
            old.unlink()
        m = _manifest(store)
        _entry(m, which).update(file=new.name, bytes=len(data), sha256=sha, tensors={
            k: {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)} for k, v in tensors.items()})
        _write_manifest(store, m)
    return apply


def truncate_at(where: Callable[[bytes], int]) -> Callable[[bytes], bytes]:
    return lambda d: d[: where(d)]


def flip_at(where: Callable[[bytes], int], mask: int = 0x10) -> Callable[[bytes], bytes]:
    def fn(d: bytes) -> bytes:
        b = bytearray(d)
        b[where(d)] ^= mask
        return bytes(b)
    return fn


def _mid_header(d: bytes) -> int:
    return 8 + _header_length(d) // 2


def _mid_data(d: bytes) -> int:
    return (8 + _header_length(d) + len(d)) // 2


def _set_header_length(n: int) -> Callable[[bytes], bytes]:
    return lambda d: n.to_bytes(8, "little") + d[8:]


def _header_json_list(d: bytes) -> bytes:
    n = _header_length(d)
    body = b"[" + b" " * (n - 2) + b"]"
    return d[:8] + body + d[8 + n :]


def _foreign_safetensors(d: bytes) -> bytes:
    import safetensors.torch
    return safetensors.torch.save({"page_table": torch.zeros(3, dtype=torch.int64)})


def delete(which: str) -> Callable[[Path], None]:
    return lambda store: _path(store, which).unlink()


def swap(x: str, y: str) -> Callable[[Path], None]:
    def apply(store: Path) -> None:
        a, b = _path(store, x), _path(store, y)
        tmp = store / "swap.tmp"
        a.rename(tmp)
        b.rename(a)
        tmp.rename(b)
    return apply


def duplicate(src: str, dst: str) -> Callable[[Path], None]:
    return lambda store: shutil.copyfile(_path(store, src), _path(store, dst))


def rename_away(which: str) -> Callable[[Path], None]:
    def apply(store: Path) -> None:
        p = _path(store, which)
        p.rename(p.with_name(p.name.replace("-", "-0", 1)[:-len(".safetensors")] + ".safetensors"))
    return apply


def stale_from_previous(which: str) -> Callable[[Path], None]:
    """The current file's bytes replaced by the previous generation's file of the same DNN."""
    return lambda store: shutil.copyfile(_path(store, which, previous=True), _path(store, which))


def into_directory(which: str | None) -> Callable[[Path], None]:
    def apply(store: Path) -> None:
        p = store / MANIFEST if which is None else _path(store, which)
        p.unlink()
        p.mkdir()
        (p / "x").write_text("x")
    return apply


def dangling_link(which: str) -> Callable[[Path], None]:
    def apply(store: Path) -> None:
        p = _path(store, which)
        p.unlink()
        p.symlink_to(store / "no-such-file")
    return apply


def _file(store: Path, which: str | None) -> Path:
    """A tensor file of 'shared' or a DNN's name, or (None) the manifest."""
    return store / MANIFEST if which is None else _path(store, which)


def link_to_copy(which: str | None) -> Callable[[Path], None]:
    """The file moved elsewhere and a symbolic link left in its place: the bytes are intact, but a
    store never follows a link (a received one could point anywhere)."""
    def apply(store: Path) -> None:
        p = _file(store, which)
        (store / "elsewhere").mkdir(exist_ok=True)
        p.rename(store / "elsewhere" / p.name)
        p.symlink_to(store / "elsewhere" / p.name)
    return apply


def link_to(which: str | None, target: str) -> Callable[[Path], None]:
    def apply(store: Path) -> None:
        p = _file(store, which)
        p.unlink()
        p.symlink_to(target)
    return apply


def fifo(which: str | None) -> Callable[[Path], None]:
    """A named pipe in the file's place: reading it would wait for a writer forever."""
    def apply(store: Path) -> None:
        p = _file(store, which)
        p.unlink()
        os.mkfifo(p)
    return apply


def rename_dnn(old: str, new: str) -> Callable[[Path], None]:
    """A DNN renamed consistently (its file's metadata and the resealed manifest agree), so only the
    name's own check stands between it and the paths it becomes."""
    def apply(store: Path) -> None:
        retensor(old, lambda t: None, {"name": new})(store)
        edit(lambda m: _vnn(m, old).update(name=new))(store)
    return apply


def _standalone(name: str, **values) -> Callable[[dict], None]:
    return lambda m: _vnn(m, name)["meta"]["standalone"].update(values)


def _scale(block: str, value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    """An int8 page's scale set to `value` in a quantised file (its values follow: q * scale)."""
    return lambda t: t[f"{block}_scales.int8"].__setitem__((0, 0), value)


def manifest_bytes(fn: Callable[[bytes], bytes], previous: bool = False) -> Callable[[Path], None]:
    def apply(store: Path) -> None:
        p = store / (PREVIOUS if previous else MANIFEST)
        p.write_bytes(fn(p.read_bytes()))
    return apply


def _set_text(m_fn: Callable[[str], str]) -> Callable[[Path], None]:
    """Edit the manifest as text (for JSON that json.dumps would not write, e.g. NaN)."""
    return manifest_bytes(lambda d: m_fn(d.decode()).encode())


def _deep(m: dict) -> None:
    m["config"]["deep"] = "@@DEEP@@"


def _deep_text(store: Path) -> None:
    p = store / MANIFEST
    p.write_text(p.read_text().replace('"@@DEEP@@"', "[" * 200_000 + "]" * 200_000))


def _vnn(m: dict, name: str) -> dict:
    return next(v for v in m["vnns"] if v["name"] == name)


def _first_exclusive(tensors: dict) -> None:
    tensors["exclusive_pages"][0, 0] = float("inf")


def _dup_table(tensors: dict) -> None:
    tensors["page_table"][1] = tensors["page_table"][0]


def _shrink_shared(tensors: dict) -> None:
    tensors["shared_pages"] = tensors["shared_pages"][:-1].clone()
    tensors["shared_fisher"] = tensors["shared_fisher"][:-1].clone()


def _swap_vnn_entries(m: dict) -> None:
    a, b = m["vnns"][0], m["vnns"][1]
    a["file"], b["file"] = b["file"], a["file"]


def corruptions() -> dict[str, tuple[str, Callable[[Path], None]]]:
    """name -> (target, apply): 'current' damage must make load refuse and restore bring back the
    previous generation; 'previous' damage must make restore refuse and leave the current as it was;
    'newer' (a newer weightsep's manifest) must make load and restore refuse and change nothing."""
    A, B = "tiny_a", "tiny_b"
    cur = {
        # raw tensor-file damage (the manifest still describes the good file)
        "shared: truncated to 0 bytes": raw("shared", truncate_at(lambda d: 0)),
        "shared: truncated to 4 bytes (inside the header length)": raw("shared", truncate_at(lambda d: 4)),
        "shared: truncated mid-header": raw("shared", truncate_at(_mid_header)),
        "shared: truncated mid-data": raw("shared", truncate_at(_mid_data)),
        "shared: last byte cut": raw("shared", truncate_at(lambda d: len(d) - 1)),
        "vnn: truncated after the header": raw(A, truncate_at(lambda d: 8 + _header_length(d))),
        "vnn: truncated mid-data": raw(B, truncate_at(_mid_data)),
        "shared: bit flip in the header length": raw("shared", flip_at(lambda d: 1, 0x01)),
        "shared: bit flip in the header JSON": raw("shared", flip_at(_mid_header)),
        "shared: bit flip in the data": raw("shared", flip_at(_mid_data)),
        "vnn: bit flip in the last byte": raw(A, flip_at(lambda d: len(d) - 1, 0x80)),
        "vnn: bit flip in the header JSON": raw(B, flip_at(_mid_header, 0x02)),
        "shared: a 64-byte block zeroed": raw("shared", lambda d: d[:_mid_data(d)] + bytes(64) + d[_mid_data(d) + 64:]),
        "vnn: garbage appended": raw(A, lambda d: d + b"garbage"),
        "shared: file deleted": delete("shared"),
        "vnn: file deleted": delete(A),
        "vnn: file renamed": rename_away(B),
        "shared and vnn files swapped": swap("shared", A),
        "two vnn files swapped": swap(A, B),
        "vnn file duplicated over another": duplicate(A, B),
        "shared file replaced by the previous generation's": stale_from_previous("shared"),
        "vnn file replaced by the previous generation's": stale_from_previous(A),
        "vnn file replaced by a directory": into_directory(A),
        "shared file a dangling symlink": dangling_link("shared"),
        # consistent damage: manifest size and sha256 updated to match, so parsing is reached
        "consistent: huge header length": raw("shared", _set_header_length(2**63 - 1), consistent=True),
        "consistent: header length 0": raw(A, _set_header_length(0), consistent=True),
        "consistent: header length past the end": raw(B, lambda d: _set_header_length(len(d))(d), consistent=True),
        "consistent: bit flip in the header JSON": raw("shared", flip_at(_mid_header, 0x40), consistent=True),
        "consistent: header JSON is a list": raw(A, _header_json_list, consistent=True),
        "consistent: truncated mid-data": raw(B, truncate_at(_mid_data), consistent=True),
        "consistent: bit flip in the data (inner checksum)": raw("shared", flip_at(_mid_data), consistent=True),
        "consistent: a foreign safetensors file": raw(A, _foreign_safetensors, consistent=True),
        "consistent: NaN in shared pages": retensor("shared", lambda t: t["shared_pages"].view(-1).__setitem__(5, float("nan"))),
        "consistent: inf in exclusive pages": retensor(A, _first_exclusive),
        "consistent: negative Fisher": retensor(B, lambda t: t["fisher"].__setitem__(0, -1.0)),
        "consistent: negative shared Fisher": retensor("shared", lambda t: t["shared_fisher"].view(-1).__setitem__(0, -1.0)),
        "consistent: page table entry out of range": retensor(A, lambda t: t["page_table"].__setitem__(0, 10**6)),
        "consistent: negative page table entry": retensor(B, lambda t: t["page_table"].__setitem__(0, -1)),
        "consistent: page table int32": retensor(A, lambda t: t.__setitem__("page_table", t["page_table"].int())),
        "consistent: a page used twice": retensor(B, _dup_table),
        "consistent: one shared page fewer": retensor("shared", _shrink_shared),
        "consistent: an extra tensor": retensor(A, lambda t: t.__setitem__("extra", torch.zeros(2))),
        "consistent: a tensor missing": retensor(B, lambda t: t.pop("fisher")),
        # the manifest
        "manifest: empty": manifest_bytes(lambda d: b""),
        "manifest: truncated to half": manifest_bytes(lambda d: d[: len(d) // 2]),
        "manifest: invalid JSON (trailing garbage)": manifest_bytes(lambda d: d + b"}{"),
        "manifest: not UTF-8": manifest_bytes(lambda d: b"\xff\xfe" + d),
        "manifest: a JSON list": manifest_bytes(lambda d: b"[" + d + b"]"),
        "manifest: JSON null": manifest_bytes(lambda d: b"null"),
        "manifest: wrong format name": edit(lambda m: m.update(format="something-else")),
        "manifest: format_version a string": edit(lambda m: m.update(format_version=str(m["format_version"]))),
        "manifest: 'shared' missing": edit(lambda m: m.pop("shared")),
        "manifest: 'vnns' missing": edit(lambda m: m.pop("vnns")),
        "manifest: 'page_size' missing": edit(lambda m: m.pop("page_size")),
        "manifest: 'vnns' a dict": edit(lambda m: m.update(vnns={v["name"]: v for v in m["vnns"]})),
        "manifest: a vnn entry a list": edit(lambda m: m["vnns"].__setitem__(0, list(m["vnns"][0].items()))),
        "manifest: 'shared' a list": edit(lambda m: m.update(shared=[m["shared"]])),
        "manifest: 'config' a string": edit(lambda m: m.update(config="ws")),
        "manifest: 'config.pack' a list": edit(lambda m: m["config"].update(pack=[m["config"]["pack"]])),
        "manifest: 'meta' a list": edit(lambda m: _vnn(m, A).update(meta=[_vnn(m, A)["meta"]])),
        "manifest: 'meta' null": edit(lambda m: _vnn(m, B).update(meta=None)),
        "manifest: page_size a string": edit(lambda m: m.update(page_size="64")),
        "manifest: page_size 0": edit(lambda m: m.update(page_size=0)),
        "manifest: page_size negative": edit(lambda m: m.update(page_size=-64)),
        "manifest: page_size NaN": _set_text(lambda t: re.sub(r'"page_size": \d+', '"page_size": NaN', t)),
        "manifest: page_size 1e400 (inf)": _set_text(lambda t: re.sub(r'"page_size": \d+', '"page_size": 1e400', t)),
        "manifest: n_shared wrong": edit(lambda m: m.update(n_shared=m["n_shared"] + 1)),
        "manifest: n_shared huge": edit(lambda m: m.update(n_shared=10**40)),
        "manifest: n_weights wrong": edit(lambda m: _vnn(m, A).update(n_weights=_vnn(m, A)["n_weights"] - 1)),
        "manifest: n_pages wrong": edit(lambda m: _vnn(m, B).update(n_pages=_vnn(m, B)["n_pages"] + 1)),
        "manifest: n_exclusive negative": edit(lambda m: _vnn(m, A).update(n_exclusive=-1)),
        "manifest: file size negative": edit(lambda m: _entry(m, "shared").update(bytes=-1)),
        "manifest: file size huge": edit(lambda m: _entry(m, A).update(bytes=10**30)),
        "manifest: sha256 wrong": edit(lambda m: _entry(m, B).update(sha256="0" * 64)),
        "manifest: tensor shape wrong": edit(lambda m: _entry(m, A)["tensors"]["fisher"].update(shape=[3])),
        "manifest: tensor dtype wrong": edit(lambda m: _entry(m, "shared")["tensors"]["shared_pages"].update(dtype="float64")),
        "manifest: tensor spec nested lists": edit(lambda m: _entry(m, B)["tensors"].update(page_table=[[["x"]]])),
        "manifest: tensors a list": edit(lambda m: _entry(m, A).update(tensors=list(_entry(m, A)["tensors"]))),
        "manifest: file name with ../": edit(lambda m: _entry(m, A).update(file="../" + _entry(m, A)["file"])),
        "manifest: file name absolute": edit(lambda m: _entry(m, "shared").update(file="/etc/hostname")),
        "manifest: file name not a string": edit(lambda m: _entry(m, B).update(file=["x"])),
        "manifest: a DNN listed twice": edit(lambda m: m["vnns"].append(m["vnns"][0])),
        "manifest: DNN file entries swapped": edit(_swap_vnn_entries),
        "manifest: a DNN's entry names the shared file": edit(lambda m: _vnn(m, A).update(file=dict(m["shared"]))),
        "manifest: DNN name empty": edit(lambda m: _vnn(m, A).update(name="")),
        "manifest: DNN name a number": edit(lambda m: _vnn(m, B).update(name=7)),
        "manifest: generation a bool": edit(lambda m: m.update(generation=True)),
        "manifest: a DNN entry missing, checksum stale": edit(lambda m: m["vnns"].pop(), seal=False),
        "manifest: a timestamp changed, checksum stale": edit(lambda m: m.update(updated="2000-01-01"), seal=False),
        "manifest: 200,000 nested lists": lambda s: (edit(_deep)(s), _deep_text(s)),
        "manifest: deleted": lambda s: (s / MANIFEST).unlink(),
        "manifest: replaced by a directory": into_directory(None),
        # a store received from someone else: links, pipes, names that become paths, absurd values
        "hostile: shared file a link to an intact copy elsewhere": link_to_copy("shared"),
        "hostile: vnn file a link to an intact copy elsewhere": link_to_copy(B),
        "hostile: manifest a link to an intact copy elsewhere": link_to_copy(None),
        "hostile: vnn file a link to /dev/zero": link_to(A, "/dev/zero"),
        "hostile: shared file a link to /etc/passwd": link_to("shared", "/etc/passwd"),
        "hostile: manifest a link to /dev/zero": link_to(None, "/dev/zero"),
        "hostile: vnn file a named pipe": fifo(A),
        "hostile: manifest a named pipe": fifo(None),
        "hostile: checksum removed (format 3)": edit(lambda m: m.pop("checksum"), seal=False),
        "hostile: a DNN entry dropped and the checksum removed": edit(lambda m: (m["vnns"].pop(), m.pop("checksum")),
                                                                       seal=False),
        "hostile: DNN renamed with path parts": rename_dnn(A, "x/../../../pwned"),
        "hostile: DNN renamed to '..'": rename_dnn(B, ".."),
        "hostile: DNN renamed to a hidden name": rename_dnn(A, ".bashrc"),
        "hostile: DNN renamed with a newline": rename_dnn(B, "tiny\nb"),
        "hostile: DNN renamed with a backslash": rename_dnn(A, "..\\..\\x"),
        "hostile: stand-alone accuracy 7.5": edit(_standalone(A, test_accuracy=7.5)),
        "hostile: stand-alone accuracy negative": edit(_standalone(B, val_accuracy=-0.25)),
        "hostile: stand-alone accuracy NaN": edit(_standalone(A, test_accuracy=float("nan"))),
        "hostile: stand-alone accuracy a bool": edit(_standalone(B, val_accuracy=True)),
        "hostile: quantised pages declared on a float32 store": edit(lambda m: m.update(precision={"group": 64,
                                                                                                  "policy": {}})),
        "hostile: page_size above the limit": edit(lambda m: m.update(page_size=2**21)),
        "hostile: n_shared negative": edit(lambda m: m.update(n_shared=-3)),
        "hostile: generation 0": edit(lambda m: m.update(generation=0)),
        "hostile: format_version 1 with a checksum that does not match": edit(
            lambda m: m.update(format_version=1), seal=False),
    }
    int8 = {  # the quantised template (int8 pages, scales in the files)
        "int8: int4 group 0": edit(lambda m: m["precision"].update(group=0)),
        "int8: int4 group negative": edit(lambda m: m["precision"].update(group=-64)),
        "int8: format_version 2 on a quantised store": edit(lambda m: m.update(format_version=2)),
        "int8: format_version 1 on a quantised store": edit(lambda m: m.update(format_version=1)),
        "int8: precision removed from the manifest": edit(lambda m: m.pop("precision")),
        "int8: a shared page's scale 1e30": retensor("shared", _scale("shared", 1e30)),
        "int8: a shared page's scale NaN": retensor("shared", _scale("shared", float("nan"))),
        "int8: a shared page's scale negative": retensor("shared", _scale("shared", -0.01)),
        "int8: a shared page's scale 0": retensor("shared", _scale("shared", 0.0)),
        "int8: a shared page's scale subnormal": retensor("shared", _scale("shared", 1e-45)),
        "int8: a format code out of range": retensor("shared", lambda t: t["shared_codes"].__setitem__(0, 9)),
        "int8: a page's code says int4": retensor("shared", lambda t: t["shared_codes"].__setitem__(0, 4)),
        "int8: rows of the wrong dtype": retensor("shared", lambda t: t.__setitem__("shared.int8", t["shared.int8"].short())),
        "int8: a row missing": retensor("shared", lambda t: t.__setitem__("shared.int8", t["shared.int8"][1:].clone())),
    }
    prev = {
        "previous manifest: invalid JSON": manifest_bytes(lambda d: d[:-10], previous=True),
        "previous manifest: newer format_version": manifest_bytes(
            lambda d: d.replace(f'"format_version": {FORMAT_VERSION}'.encode(), b'"format_version": 99'), previous=True),
        "previous generation's shared file: bit flip": lambda s: raw_prev(s, "shared"),
        "previous generation's vnn file: deleted": lambda s: _path(s, A, previous=True).unlink(),
        "previous manifest: checksum removed": lambda s: _write_manifest(
            s, {k: v for k, v in _manifest(s, True).items() if k != "checksum"}, previous=True, seal=False),
        "previous manifest: a link to an intact copy elsewhere": lambda s: _link_previous(s),
    }
    # a newer weightsep's generation: load says to upgrade, restore refuses to replace what it cannot
    # read, and the store stays as it is (its last good state, for the newer version)
    newer = {"manifest: newer format_version": edit(lambda m: m.update(format_version=m["format_version"] + 1))}
    return {**{k: ("current", v) for k, v in cur.items()}, **{k: ("previous", v) for k, v in prev.items()},
            **{k: ("newer", v) for k, v in newer.items()}, **{k: ("current", v) for k, v in int8.items()}}


def template_of(name: str, env: Env) -> Path:
    """The template a damage case applies to: the quantised one for the "int8:" cases."""
    return env.quantised if name.startswith("int8:") else env.template


def _link_previous(store: Path) -> None:
    p = store / PREVIOUS
    (store / "elsewhere").mkdir(exist_ok=True)
    p.rename(store / "elsewhere" / p.name)
    p.symlink_to(store / "elsewhere" / p.name)


def raw_prev(store: Path, which: str) -> None:
    p = _path(store, which, previous=True)
    p.write_bytes(flip_at(_mid_data)(p.read_bytes()))


def clean_refusal(r: subprocess.CompletedProcess) -> bool:
    """Exit 2, an `error:` line, no Traceback."""
    return r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.lstrip().startswith("error:")


def check_corruption(env: Env, name: str, target: str, apply: Callable[[Path], None], ref_cur: Snapshot,
                     ref_prev: Snapshot, cli: tuple[str, ...], key: str, cli_restore: bool = True,
                     in_process: bool = False) -> dict:
    """Apply one corruption to a copy of the template and check detection and recovery: `cli` are
    the commands run on it, recovery is the `restore` command if `cli_restore`, else the function it
    calls, `Store.restore_previous()`; the commands run as subprocesses (`Env.cli`), or through
    `cli.main` in this process if `in_process` (`Env.main`); the refs are those of `template_of(name)`."""
    run = env.main if in_process else env.cli
    store = env.copy(key, template_of(name, env))
    row = {"name": name, "target": target, "detected": False, "recoverable": False, "problems": []}
    try:
        apply(store)
    except Exception as e:  # noqa: BLE001 - a corruption that cannot be applied is reported, not hidden
        row["problems"].append(f"could not apply: {type(e).__name__}: {e}")
        return row
    before = snapshot_files(store)
    problems = row["problems"]
    # in-process load
    try:
        Store(store).load()
        loaded = None
    except StoreError as e:
        loaded = f"StoreError: {str(e)[:200]}"
    except BaseException as e:  # noqa: BLE001
        loaded = f"CRASH {type(e).__name__}: {str(e)[:200]}"
    row["load"] = loaded
    if target in ("current", "newer"):
        if loaded is None:
            problems.append("Store.load() accepted it")
        elif loaded.startswith("CRASH"):
            problems.append(f"Store.load() raised {loaded} instead of StoreError")
    elif loaded is not None:
        problems.append(f"the current generation no longer loads: {loaded}")
    # the CLI
    row["cli"] = {}
    for command in cli:
        args = {"list": ("list",), "eval": ("eval", "tiny_a")}[command]
        r = run(*args, "--store", store)
        row["cli"][command] = {"rc": r.returncode, "stderr": r.stderr.strip()[-300:]}
        if target in ("current", "newer") and not clean_refusal(r):
            problems.append(f"{command}: exit {r.returncode}" + (" with a Traceback" if "Traceback" in r.stderr else ""))
        if target == "previous" and r.returncode:
            problems.append(f"{command} fails on an intact current generation (exit {r.returncode})")
    try:
        if snapshot_files(store) != before:
            problems.append("load/list/eval changed files in the store")
    except OSError as e:
        problems.append(f"store unreadable after load: {e}")
    row["detected"] = not problems
    # recovery
    r = run("restore", "--store", store) if cli_restore else _restore_in_process(store)
    row["restore"] = {"rc": r.returncode, "stderr": r.stderr.strip()[-300:], "via": "cli" if cli_restore else "Store"}
    if target == "newer":
        row["recoverable"] = clean_refusal(r) and "restore refused" in r.stderr and snapshot_files(store) == before
        if not row["recoverable"]:
            problems.append(f"restore over a newer generation: exit {r.returncode}, or it changed the store")
    elif target == "current":
        row["recoverable"] = r.returncode == 0 and ref_prev.equals(store)
        if not row["recoverable"]:
            problems.append(f"restore: exit {r.returncode}" + (" with a Traceback" if "Traceback" in r.stderr else "")
                            + ("" if r.returncode else ", but the store is not the previous generation"))
    else:
        if not clean_refusal(r):
            row["detected"] = False
            problems.append(f"restore of the damaged previous generation: exit {r.returncode}"
                            + (" with a Traceback" if "Traceback" in r.stderr else ""))
        row["recoverable"] = ref_cur.equals(store)
        if not row["recoverable"]:
            problems.append("the current generation changed")
    shutil.rmtree(store, ignore_errors=True)
    return row


def _restore_in_process(store: Path) -> subprocess.CompletedProcess:
    """`Store.restore_previous()` as if it were the command: exit 0, 2 (StoreError) or 1 (a crash)."""
    try:
        Store(store).restore_previous()
        return subprocess.CompletedProcess([], 0, "", "")
    except StoreError as e:
        return subprocess.CompletedProcess([], 2, "", f"error: {e}")
    except Exception as e:  # noqa: BLE001
        return subprocess.CompletedProcess([], 1, "", f"Traceback (in process)\n{type(e).__name__}: {e}")


def _file_names(m: dict) -> list[str]:
    return [m["shared"]["file"], *(v["file"]["file"] for v in m["vnns"])]


# ---------------------------------------------------------------- kill -9

KILL_COMMANDS = {"add": ("add", "tiny_c", *SMALL), "joint": ("joint", "--steps", "40", *JOINT),
                 "remove": ("remove", "tiny_a")}


def kill_references(env: Env, commands: list[str]) -> dict[str, tuple[float, Snapshot]]:
    """Each command run unkilled on a template copy: its duration and the state it leaves."""
    refs = {}
    for cmd in commands:
        store = env.copy(f"ref-{cmd}")
        start = time.perf_counter()
        env.cli(*KILL_COMMANDS[cmd], "--store", store, check=True)
        refs[cmd] = (time.perf_counter() - start, Snapshot.of(store))
        shutil.rmtree(store)
    return refs


def kill_trial(env: Env, cmd: str, delay: float, old: Snapshot, new: Snapshot, key: str) -> dict:
    store = env.copy(key)
    p = env.popen(*KILL_COMMANDS[cmd], "--store", store)
    try:
        p.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        killed = True
    p.communicate()
    row = {"command": cmd, "delay_s": round(delay, 3), "killed": killed, "rc": p.returncode}
    try:
        now = Snapshot.of(store)
        row["outcome"] = "old" if now.matches(old) else "new" if now.matches(new) else \
            f"neither (generation {now.generation})"
    except StoreError as e:
        row["outcome"] = f"unloadable: {str(e)[:200]}"
    except Exception as e:  # noqa: BLE001
        row["outcome"] = f"crash {type(e).__name__}: {str(e)[:200]}"
    row["ok"] = row["outcome"] in ("old", "new")
    shutil.rmtree(store, ignore_errors=True)
    return row


def kill_delays(rng: random.Random, duration: float) -> float:
    """Half uniform over the whole command, half in its last 20% (where the save is)."""
    return rng.uniform(0, 1.05 * duration) if rng.random() < 0.5 else rng.uniform(0.8 * duration, 1.05 * duration)


def run_kills(env: Env, trials: int, seed: int, commands: list[str] | None = None) -> dict:
    commands = commands or list(KILL_COMMANDS)
    refs = kill_references(env, commands)
    old = Snapshot.of(env.template)
    rng = random.Random(seed)
    rows = []
    for i in range(trials):
        cmd = commands[i % len(commands)]
        duration, new = refs[cmd]
        rows.append(kill_trial(env, cmd, kill_delays(rng, duration), old, new, f"k{i}"))
    ok = sum(r["ok"] for r in rows)
    return {"trials": trials, "ok": ok, "ok_pct": 100 * ok / max(trials, 1),
            "killed": sum(r["killed"] for r in rows),
            "outcomes": {o: sum(r["outcome"] == o for r in rows) for o in ("old", "new")},
            "durations_s": {c: round(d, 2) for c, (d, _) in refs.items()}, "rows": rows}


# ---------------------------------------------------------------- concurrent writers

PAIRS = [(("add", "tiny_c"), ("add", "tiny_d")), (("joint", "tiny_b"), ("remove", "tiny_a")),
         (("remove", "tiny_a"), ("remove", "tiny_b")), (("add", "tiny_c"), ("remove", "tiny_b")),
         (("add", "tiny_c"), ("joint", "tiny_a"))]  # joint's second word: a DNN whose weights show its effect


def _argv(op: tuple[str, str]) -> tuple:
    kind, name = op
    return {"add": ("add", name, *SMALL), "remove": ("remove", name),
            "joint": ("joint", "--steps", "20", *JOINT)}[kind]


def effect_present(op: tuple[str, str], final, template) -> bool:
    kind, name = op
    if kind == "add":
        return name in final.vnns
    if kind == "remove":
        return name not in final.vnns
    return name in final.vnns and not torch.equal(theta(final, name), theta(template, name))


def concurrent_trial(env: Env, pair, offset: float, template, key: str) -> dict:
    store = env.copy(key)
    first = env.popen(*_argv(pair[0]), "--store", store)
    time.sleep(offset)
    second = env.popen(*_argv(pair[1]), "--store", store)
    results = []
    for p in (first, second):
        _, err = p.communicate(timeout=600)
        results.append((p.returncode, err))
    row = {"commands": [" ".join(op) for op in pair], "offset_s": round(offset, 3),
           "rc": [rc for rc, _ in results], "lost": [], "errors": []}
    try:
        final = Store(store).load()
    except Exception as e:  # noqa: BLE001
        row["errors"].append(f"the store no longer loads: {type(e).__name__}: {str(e)[:200]}")
        final = None
    for op, (rc, err) in zip(pair, results):
        what = " ".join(op)
        if rc == 0:
            if final is not None and not effect_present(op, final, template):
                row["lost"].append(what)
        elif not (rc != 0 and "Traceback" not in err and CONCURRENT_WORDS.search(err)):
            row["errors"].append(f"{what}: exit {rc} without a clear concurrent-change message: {err.strip()[-200:]}")
        else:
            row.setdefault("refused", []).append(what)
    row["ok"] = not row["lost"] and not row["errors"]
    shutil.rmtree(store, ignore_errors=True)
    return row
