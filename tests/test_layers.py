"""The package's layers (every import points down), and one source for user errors, atomic writes and hashes.

Read from the source (ast), nothing run: a new module must be given its layer in docs/architecture.md's
module table (LAYERS is read from it), an import
that points up or sideways fails here, and so does a second copy of a user-error tuple, an atomic
writer or a file hash.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from weightsep import distributed, dnn, errors, files, store, train

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "weightsep"

ARCHITECTURE = REPO / "docs" / "architecture.md"
ROW = re.compile(r"^\| (\d+) \| ([\w\\]+) \| .+ \|$", re.M)


def layers() -> tuple[tuple[str, ...], ...]:
    """docs/architecture.md's module table, lowest layer first: the one list of the modules and their layers."""
    by_layer: dict[int, list[str]] = {}
    for layer, module in ROW.findall(ARCHITECTURE.read_text()):
        by_layer.setdefault(int(layer), []).append(module.replace("\\", ""))
    return tuple(tuple(by_layer[k]) for k in sorted(by_layer))


LAYERS = layers()
# the trees whose code must use the one source (store_safety.py injects faults into os.replace itself)
SOURCES = ("weightsep", "dnnkit", "bench", "experiments", "examples")


def layer_of() -> dict[str, int]:
    return {module: i for i, layer in enumerate(LAYERS) for module in layer}


def package_modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


def imports(path: Path) -> set[str]:
    """The weightsep modules `path` imports, at the top or inside a function (not those under
    `if TYPE_CHECKING:`, which type hints name and nothing runs)."""
    found, modules = set(), set(package_modules())
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and ast.unparse(block.test) == "TYPE_CHECKING"
                   for stmt in block.body for n in ast.walk(stmt)}  # annotations only: nothing imported at run time
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names = [node.module.split(".")[0]] if node.module else [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "weightsep":
            parts = node.module.split(".")
            names = parts[1:2] if len(parts) > 1 else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1] for a in node.names if a.name.startswith("weightsep.")]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def source_files() -> list[Path]:
    out = [p for top in SOURCES for p in sorted((REPO / top).rglob("*.py")) if p.name != "store_safety.py"]
    return out + sorted(REPO.glob("*.py")) + sorted(REPO.glob("*/dnn.py")) + sorted(REPO.glob("suite/*/dnn.py"))


def test_every_module_has_a_layer():
    placed = [m for layer in LAYERS for m in layer]
    assert len(placed) == len(set(placed)), "a module in two layers"
    assert sorted(placed) == package_modules(), "give each module of weightsep/ its row in docs/architecture.md"


@pytest.mark.parametrize("module", package_modules())
def test_imports_point_down(module):
    layer = layer_of()
    bad = sorted(m for m in imports(PACKAGE / f"{module}.py")
                 if layer[m] >= layer[module])
    assert not bad, f"weightsep/{module}.py (layer {layer[module]}) imports {bad}, not below it"


def test_the_package_never_imports_the_repositorys_dnn_kit():
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.split(".")[0] == "dnnkit" for n in names), f"{path.name} imports dnnkit"


def test_bottom_modules_import_nothing_of_weightsep():
    for module in LAYERS[0]:
        assert not imports(PACKAGE / f"{module}.py"), module


# ---------------------------------------------------------------- one source per fact


def test_one_user_error_tuple():
    assert distributed.USER_ERRORS is errors.USER_ERRORS
    assert dnn.DNNError is errors.DNNError and store.StoreError is errors.StoreError
    copies = []
    for path in source_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "USER_ERRORS" for t in node.targets):
                copies.append(f"{path.relative_to(REPO)} assigns USER_ERRORS")
            if isinstance(node, ast.ExceptHandler) and isinstance(node.type, ast.Tuple):
                names = {ast.unparse(e).split(".")[-1] for e in node.type.elts}
                if names & {"DNNError", "StoreError", "RankError"} and names & {"ValueError", "FileNotFoundError"}:
                    copies.append(f"{path.relative_to(REPO)}:{node.lineno} catches a hand-made user-error tuple")
    assert copies == ["weightsep/errors.py assigns USER_ERRORS"], copies


def test_one_atomic_writer():
    """Only weightsep/files.py replaces files (os.replace) or makes temp files beside them (mkstemp)."""
    found = []
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("os.replace", "os.rename", "tempfile.mkstemp"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
            if isinstance(node, ast.FunctionDef) and node.name.startswith(("atomic_write", "_fsync_dir")):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} def {node.name}")
    assert all(f.startswith("weightsep/files.py") for f in found), found


def test_one_code_and_file_hash():
    """A function that hashes what it reads from a file lives in weightsep/files.py (code_hash, file_hash);
    bench/ is left out: bad_input.py's snapshot digests a fixture tree to see that nothing wrote to it."""
    assert dnn.code_hash is files.code_hash and train.file_hash is files.file_hash
    found = []
    for path in source_files():
        if path.is_relative_to(REPO / "bench"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                body = ast.unparse(node)
                if "hashlib." in body and (".read_bytes()" in body or "open(" in body):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert found == [f for f in found if f.startswith("weightsep/files.py")], found


def test_the_hashes_keep_their_values(tmp_path):
    """The values stores and caches recorded before the move: a dnn.py's 16 digits, a file's sha256."""
    import hashlib

    source = b"META = {}\n"
    (tmp_path / "f").write_bytes(source)
    assert files.code_hash(source) == hashlib.sha256(source).hexdigest()[:16] == files.code_hash(tmp_path / "f")
    assert files.file_hash(tmp_path / "f") == hashlib.sha256(source).hexdigest()
    assert files.code_hash(b"a", b"b", digits=12) == hashlib.sha256(b"ab").hexdigest()[:12]
