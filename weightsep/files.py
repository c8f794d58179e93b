"""Files written whole or not at all, and the hashes that name code and file contents.

The bottom layer (with paths.py and errors.py): imports nothing of weightsep. Every file weightsep
writes for others to read (a store's files, the trained-model cache, prepared .npz data, results)
goes through `atomic_file`: temp file in the same folder -> fsync -> os.replace -> fsync(folder),
so a reader sees the old file or the new one, even across a crash, and a process that has the old
file memory-mapped goes on reading the old inode. Code is known by `code_hash` (a DNN folder's
dnn.py), what a program does by `behaviour_hash` (the syntax of the package modules it imports), a
file's contents by `file_hash`, and a result by the git commit it was produced from, `source_commit`
(recorded as `"commit"` in every result JSON).

    atomic_write_json(folder / "summary.json", summary)
    with atomic_file(folder / "data.npz") as f:    # an open binary file: written, read back, replaced
        write_archive(f)
"""
from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import os
import secrets
import subprocess
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[typing.BinaryIO]:
    """A new binary file (readable and seekable too; `f.name` its temporary path) that replaces
    `path` when the block ends, or is removed when the block raises. Folders are made as needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "x+b") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` by `data` so readers see the old file or the new one, even across a crash."""
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON (no NaN/inf: they are not JSON)."""
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def code_hash(*sources: bytes | Path, digits: int = 16) -> str:
    """The hash code is known by: the first `digits` hex digits of the sha256 of `sources` in order
    (bytes as given, a path as its file's bytes). A DNN's dnn.py: `code_hash(source)`."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source if isinstance(source, bytes) else Path(source).read_bytes())
    return digest.hexdigest()[:digits]


def imported_sources(entry: Path, package: Path) -> list[Path]:
    """`entry` and every module of `package` (a folder of .py files) it imports, and they import, at any
    depth and from anywhere in a file (a lazy import inside a function counts), sorted by path."""
    def imports(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = package.name if node.level and path.parent == package else node.module or ""
                if node.level and node.module:
                    base += "." + node.module
                names |= {base} | {f"{base}.{a.name}" for a in node.names}
        return names

    found, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path in found:
            continue
        found.add(path)
        for name in imports(path):
            parts = name.split(".")
            if parts[0] == package.name and len(parts) == 2 and (package / f"{parts[1]}.py").exists():
                todo.append(package / f"{parts[1]}.py")
    return sorted(found)


def behaviour_hash(entry: Path, package: Path, digits: int = 16, skip: tuple[str, ...] = ()) -> str:
    """The hash of what `entry` does: the syntax trees of `imported_sources(entry, package)` without
    docstrings. An edit to a comment, a docstring, the layout, or a module that `entry` never imports
    keeps it; any other edit to those files changes it. `skip`: file names left out, modules the caller
    knows cannot change its numbers (a `--ratio` run never calls the --max-loss search in bound.py)."""
    def syntax(path: Path) -> bytes:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                    and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        return f"{path.name}\n{ast.dump(tree)}\n".encode()
    return code_hash(*(syntax(p) for p in imported_sources(entry, package) if p.name not in skip), digits=digits)


@functools.lru_cache(maxsize=64)
def _file_hash(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def file_hash(path: str | Path) -> str:
    """sha256 (hex) of a file's contents, read in chunks (memoised while its size and mtime stay the same)."""
    stat = Path(path).stat()
    return _file_hash(Path(path), stat.st_size, stat.st_mtime_ns)


def source_commit(repo: str | Path | None = None) -> dict | None:
    """The git commit the code runs from (or `repo`'s), `{"sha": ..., "dirty": ...}` (dirty: tracked
    files changed since it, results/ aside: what runs write there is not code, so one experiment's
    outputs do not mark the next as uncommitted), so a result names the code that produced it; None
    outside a git checkout (an installed wheel) or without git: a result is still written, only its
    provenance is unknown."""
    def git(*args: str) -> str:
        where = str(repo or Path(__file__).parent)
        return subprocess.run(["git", "-C", where, *args], capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    try:
        return {"sha": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--",
                                                                       ":(top)", ":(top,exclude)results"))}
    except (OSError, subprocess.SubprocessError):
        return None
