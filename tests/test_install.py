"""`pip install .` and `pip install -e .`, then weightsep used from outside the repository.

Each test makes a fresh virtual environment whose only extra path is this environment's
site-packages (a .pth file: torch and the other dependencies are found there, nothing is
downloaded: `--no-index`), installs a copy of the package's sources into it and runs Python from a
directory outside the repository."""
import ast
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e  # pip installs the package into a fresh venv and runs it from outside
PACKAGE_SOURCES = ("pyproject.toml", "README.md", "weightsep", "custom_op", "c_runtime")

# packs two small modules (batch norm, a GRU) from memory, runs them packed, saves and reloads the store
API_SCRIPT = textwrap.dedent("""
    import sys, torch
    from torch import nn
    from weightsep.api import OptimizeConfig, PackConfig, PackedModel, Store, pack
    import weightsep, weightsep.ops, weightsep.dnn
    print("module", weightsep.__file__)
    print("sources", (weightsep.ops.SOURCE_DIR / "gather.cpp").is_file())
    import weightsep.export
    print("runtime", (weightsep.export.RUNTIME_DIR / "ws_runtime.c").is_file())
    print("suite", weightsep.dnn.suite())
    torch.manual_seed(0)

    class BN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.out = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Linear(8 * 6 * 6, 4)
        def forward(self, x):
            return self.out(torch.relu(self.bn(self.conv(x))).flatten(1))

    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru, self.out = nn.GRU(5, 16, batch_first=True), nn.Linear(16, 3)
        def forward(self, x):
            return self.out(self.gru(x, x.new_zeros(1, len(x), 16))[0].mean(1))

    def data(shape, classes, n=600):
        x = torch.randn(n, *shape)
        y = (x.flatten(1) @ torch.randn(x[0].numel(), classes)).argmax(1)
        return (x[:500], y[:500]), (x[500:], y[500:])

    dnns = {}
    for name, model, shape, classes in (("bn", BN(), (3, 8, 8), 4), ("gru", Recurrent(), (7, 5), 3)):
        train, val = data(shape, classes)
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(100):
            loss = nn.functional.cross_entropy(model(train[0]), train[1])
            opt.zero_grad(); loss.backward(); opt.step()
        dnns[name] = (model, train, val)
    before = {n: m.eval()(v[0]).detach() for n, (m, _, v) in dnns.items()}
    state = pack(dnns, PackConfig(page_size=64, n_shared=24, ratio=1.5),
                 optimize_config=OptimizeConfig(steps=60, eval_every=20))
    assert all(torch.equal(m.eval()(v[0]), before[n]) for n, (m, _, v) in dnns.items()), "pack changed a module"
    Store(sys.argv[1]).save(state)
    back = Store(sys.argv[1]).load()
    packed = PackedModel(back, {n: m for n, (m, _, _) in dnns.items()})
    for name, (model, _, (x, y)) in dnns.items():
        packed.switch(name)
        print(name, "buffers", len(back.vnns[name].buffers), "accuracy", packed.correct(x, y) / len(y))
""")


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def make_env(tmp_path: Path, extra: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A fresh venv seeing this environment's packages, and a copy of the package's sources (and `extra`)."""
    venv, src = tmp_path / "venv", tmp_path / "src"
    # no pip of its own: this environment's pip and setuptools (>= 70.1, requirements.txt) build and install
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    (site_packages(venv) / "host-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    src.mkdir()
    for name in PACKAGE_SOURCES + extra:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, src / name)
    return venv, src


def pip_install(venv: Path, *args: str) -> None:
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index",
                             "--no-build-isolation", "--disable-pip-version-check", *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def run_outside(venv: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    work = tmp_path / "elsewhere"
    work.mkdir(exist_ok=True)
    env = {**os.environ, "WEIGHTSEP_OPS_BACKEND": "torch"}  # the extension's build is tested elsewhere (test_ops)
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], cwd=work, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.parametrize("editable", [False, pytest.param(True, marks=pytest.mark.slow)],  # -e: 27 s loaded
                         ids=["pip install .", "pip install -e ."])
def test_installed_package_packs_modules_from_memory_outside_the_repository(tmp_path, editable):
    venv, src = make_env(tmp_path)
    pip_install(venv, *(["-e"] if editable else []), str(src))

    result = run_outside(venv, tmp_path, "python", "-c", API_SCRIPT, str(tmp_path / "store"))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    installed_in = src if editable else site_packages(venv)
    assert Path(lines["module"]).is_relative_to(installed_in), lines["module"]
    assert lines["sources"] == "True"  # custom_op/ travels with the package: the extension can build
    assert lines["runtime"] == "True"  # c_runtime/ too: `export --format c` can copy it
    assert lines["suite"] == "[]"  # DNN folders stay in the repository (an editable install of a bare copy has none)
    for name, n_buffers in (("bn", "3"), ("gru", "0")):
        said = lines[name].split()
        assert said[1] == n_buffers and 0.0 <= float(said[3]) <= 1.0

    command = run_outside(venv, tmp_path, "weightsep", "--help")
    assert command.returncode == 0 and "usage: weightsep" in command.stdout, command.stdout + command.stderr
    missing = run_outside(venv, tmp_path, "weightsep", "run", "--dnns", "nosuchdnn")
    assert missing.returncode == 2 and "unknown DNN 'nosuchdnn'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_the_package_declares_its_dependencies_and_command(tmp_path):
    venv, src = make_env(tmp_path)
    pip_install(venv, str(src))
    code = ("import importlib.metadata as m; print(m.requires('weightsep')); "
            "print([e.value for e in m.entry_points(group='console_scripts') if e.name == 'weightsep'])")
    result = run_outside(venv, tmp_path, "python", "-c", code)
    assert result.returncode == 0, result.stderr
    requires, scripts = result.stdout.splitlines()
    for dependency in ("torch==2.13.0", "numpy", "scipy", "tqdm", "safetensors"):
        assert dependency in requires
    assert scripts == "['weightsep.cli:main']"


def test_the_wheel_ships_the_library_alone(tmp_path):
    """pyproject's packages decide: the wheel holds weightsep (with its op's sources), not the
    repository's DNN kit (dnnkit/, copied beside it here), and its code imports nothing but the
    standard library, weightsep and the packages the wheel declares."""
    _, src = make_env(tmp_path, extra=("dnnkit",))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-index",
                            "--no-build-isolation", "--disable-pip-version-check", "-w", str(tmp_path / "wheel"), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    with zipfile.ZipFile(next((tmp_path / "wheel").glob("weightsep-*.whl"))) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        sources = {n: wheel.read(n).decode() for n in names if n.endswith(".py")}
    assert {n.split("/")[0] for n in names} == {"weightsep", "weightsep-0.1.0.dist-info"}, sorted(names)
    data_code = ("glyphs", "audio", "paper", "checkpoint", "originals", "datasets")
    assert not [n for n in names if Path(n).stem in data_code], "the DNN folders' data code is in the wheel"
    assert "weightsep/custom_op/gather.cpp" in names and "weightsep/prepared.py" in names
    assert "weightsep/c_runtime/ws_runtime.c" in names and "weightsep/c_runtime/ws_runtime.h" in names
    declared = {re.match(r"[A-Za-z0-9_.-]+", line.split(":", 1)[1].strip())[0].lower().replace("-", "_")
                for line in metadata.splitlines() if line.startswith("Requires-Dist:")}
    allowed = set(sys.stdlib_module_names) | declared | {"weightsep"}
    undeclared = set()
    for name, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                continue
            undeclared |= {f"{name}: {m}" for m in modules if m.split(".")[0] not in allowed}
    assert not undeclared, f"the wheel imports packages it does not declare ({sorted(declared)}): {sorted(undeclared)}"


def test_an_editable_install_runs_the_repositorys_folders_from_elsewhere(tmp_path):
    """Installed editable from a checkout, weightsep finds the checkout's DNN folders from any
    directory, and they find the repository's kit (dnnkit/), which the package does not ship."""
    venv, src = make_env(tmp_path, extra=("dnnkit", "suite"))
    pip_install(venv, "-e", str(src))
    code = "from weightsep import dnn; d = dnn.get('letters'); print(d.path.parent.name, d.module.datasets.__name__)"
    result = run_outside(venv, tmp_path, "python", "-c", code)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["suite", "dnnkit.datasets"]
