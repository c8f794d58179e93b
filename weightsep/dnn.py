"""DNN plug-ins: a DNN is a folder with a `dnn.py`; folders are discovered, never listed.

Contract (docs/dnn_folders.md): `dnn.py` defines
    META: dict                         task, source, real (bool), input, classes; optional origin
                                       (one of ORIGINS) and free-form extras
    build_model() -> nn.Module         the architecture (fresh): a TemplateNet or any module (weightsep.flat)
    load_data(data_dir: Path) -> Dataset   train / val / test arrays, labels int64
and optionally
    prepare(data_dir: Path) -> None    builds its data files from installed packages (idempotent)
    TRAIN: dict                        stand-alone training budget overrides (see train.TrainConfig)
    load_weights(model) -> Tensor | None   trained weights from elsewhere (e.g. the authors'
                                       checkpoints); when it returns a vector, nothing is trained

The folder's name is the DNN's name. Searched, in order: the repository's top-level folders (the
paper DNNs), `suite/*` (the offline default), then any folder given on the command line (a DNN
folder itself, or a folder of DNN folders).
"""
from __future__ import annotations

import importlib.util
import math
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType

import numpy as np

from . import flat
from .errors import DNNError
from .files import code_hash
from .model import TemplateNet
from .paths import IN_REPOSITORY, REPO_ROOT, SUITE_DIR, data_dir
from .paths import cache_dir as cache_dir  # callers still ask dnn for it (train.py, experiments/)
from .store import MANIFEST, PREVIOUS

REQUIRED = ("META", "build_model", "load_data")
ORIGINS = ("real", "rendered", "synthetic")  # META["origin"]: recorded/measured, rendered from real samples, generated


class ChangedCode(DNNError):
    """A DNN folder whose dnn.py is not the one a store recorded (its code was not run)."""

    def __init__(self, path: Path, recorded: str, now: str):
        super().__init__(f"{path / 'dnn.py'} is not the code this DNN was packed with (code hash {recorded} then, "
                         f"{now} now; its code was not run)")
        self.path, self.recorded, self.now = path, recorded, now


@dataclass
class Split:
    x: np.ndarray  # float16 or float32 inputs: [N, C, H, W] for conv nets, [N, F] for dense-only nets
    y: np.ndarray  # int64 class labels [N]

    def __post_init__(self):
        if len(self.x) != len(self.y):
            raise ValueError(f"{len(self.x)} inputs but {len(self.y)} labels")
        # float16 is kept as stored (half the memory; models compute in float32 a batch at a time)
        self.x = np.ascontiguousarray(self.x, dtype=np.float16 if self.x.dtype == np.float16 else np.float32)
        self.y = np.ascontiguousarray(self.y, dtype=np.int64)


@dataclass
class Dataset:
    train: Split
    val: Split
    test: Split


@dataclass(frozen=True)
class Meta:
    """The META fields the package itself reads, typed (the folder contract: docs/dnn_folders.md); the
    rest of META (task, source, free-form extras) is the folder's, shown in reports."""

    input: tuple | None = None  # the input shape: a model other than TemplateNet needs it
    classes: int | None = None
    paper: str | None = None  # the paper a DNN of the papers' comes from
    published_accuracy: dict[str, float] | None = None  # that paper's figures (%): stand_alone, separated
    data_from: str | None = None  # the folder whose data files it loads ("suite/watch"): trained models key on them

    @classmethod
    def of(cls, meta: dict) -> Meta:
        return cls(**{f.name: meta.get(f.name) for f in fields(cls)})


@dataclass
class DNN:
    name: str
    path: Path
    module: ModuleType

    @property
    def meta(self) -> dict:
        return self.module.META

    @property
    def facts(self) -> Meta:
        """`meta` as the package reads it."""
        return Meta.of(self.meta)

    @property
    def train_overrides(self) -> dict:
        return getattr(self.module, "TRAIN", {})

    def build_model(self):
        """A fresh model in the form every stage runs (`flat.as_flat`: `TemplateNet` as it is, any
        other `nn.Module` as a `FlatModule`). The first build in a process builds twice: a model
        whose parameters change between builds cannot be packed (its pages would not line up)."""
        model = self._build()
        known = getattr(self.module, "_weightsep_signature", None)
        if known is None:
            known = self.module._weightsep_signature = flat.signature(self._build())
        now = flat.signature(model)
        if now != known:
            raise DNNError(f"DNN {self.name!r}: build_model() gave a different model on another build "
                           f"({sum(math.prod(s) for _, s in known):,} vs {sum(math.prod(s) for _, s in now):,} weights; "
                           f"first difference: {flat.first_difference(known, now)}); it must build the same "
                           "architecture every time")
        return model

    def call(self, function: str, *args):
        """The folder's own `function(*args)`; anything it raises (its code, not weightsep's) is a
        DNNError naming the DNN and the function, so a broken folder is one line, not a traceback."""
        try:
            return getattr(self.module, function)(*args)
        except (DNNError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise DNNError(f"DNN {self.name!r}: its {function}() failed: {type(e).__name__}: {e} "
                           f"({self.path / 'dnn.py'})") from e

    def _build(self):
        module = self.call("build_model")
        if isinstance(module, TemplateNet):  # knows its input shape and classes
            return module
        facts = self.facts
        missing = [k for k in ("input", "classes") if getattr(facts, k) is None]
        if missing:
            raise DNNError(f"DNN {self.name!r}: META lacks {' and '.join(map(repr, missing))}, which a model other "
                           "than TemplateNet needs (its input shape and number of classes)")
        try:
            return flat.as_flat(module, facts.input, facts.classes)
        except flat.FlatError as e:
            raise DNNError(f"DNN {self.name!r}: build_model(): {e}") from None

    def load_weights(self, model):
        """The folder's own trained weights (flat, TF order), or None: then weightsep trains them."""
        return self.call("load_weights", model) if hasattr(self.module, "load_weights") else None

    def load_data(self, root: Path | None = None) -> Dataset:
        root = data_dir() if root is None else root
        try:
            data = self.call("load_data", root)
        except DNNError as e:
            if not isinstance(e.__cause__, FileNotFoundError):
                raise
            hint = f"run: {self.prepare_command()}" if hasattr(self.module, "prepare") else (
                "see the folder's README for the command that fetches it")
            raise DNNError(f"DNN {self.name!r}: data file missing: {e.__cause__.filename or e.__cause__}; "
                           f"{hint}") from e.__cause__
        model = self.build_model()
        if not isinstance(data, Dataset):
            raise DNNError(f"DNN {self.name!r}: load_data returned {type(data).__name__}, not a weightsep.dnn.Dataset")
        for split in ("train", "val", "test"):
            s = getattr(data, split)
            if not len(s.y):  # training draws no batch, selection and the table would score nothing
                raise DNNError(f"DNN {self.name!r}: its {split} split is empty; load_data must give every split "
                               "at least one example")
            if tuple(s.x.shape[1:]) != tuple(model.input_shape):
                raise DNNError(f"DNN {self.name!r}: {split} inputs have shape {s.x.shape[1:]}, "
                               f"the model wants {model.input_shape}")
            if len(s.y) and (s.y.min() < 0 or s.y.max() >= model.classes):
                raise DNNError(f"DNN {self.name!r}: {split} labels outside 0..{model.classes - 1}")
            bad = int(s.x.size - np.isfinite(s.x).sum())  # else a non-finite loss at some step, far from the cause
            if bad:
                raise DNNError(f"DNN {self.name!r}: its {split} data has {bad:,} non-finite input values (NaN or inf) "
                               f"of {s.x.size:,}; fix its load_data (or the data files it reads)")
        return data

    def prepare_command(self) -> str:
        """The command that prepares this DNN's data (naming its folder when discovery would not find it)."""
        inside = self.path.resolve().parent in (REPO_ROOT, SUITE_DIR)
        return f"python -m weightsep prepare {self.name}" + ("" if inside else f" --dnn-folder {self.path}")

    def code_hash(self) -> str:
        """Hash of the folder's dnn.py: cached trained models are keyed by it, stores record it."""
        return code_hash((self.path / "dnn.py").read_bytes())


def load_folder(path: Path, expected_hash: str | None = None) -> DNN:
    """Import a DNN folder's dnn.py. With `expected_hash` (a store's record), the file's bytes are
    checked BEFORE any of its code runs, and exactly the bytes checked are executed."""
    path = Path(path).resolve()
    file = path / "dnn.py"
    if not file.is_file():
        raise DNNError(f"{path} is not a DNN folder: it has no dnn.py")
    try:
        source = file.read_bytes()
    except OSError as e:
        raise DNNError(f"DNN folder {path}: cannot read dnn.py ({e.strerror})") from None
    if expected_hash is not None and code_hash(source) != expected_hash:
        raise ChangedCode(path, expected_hash, code_hash(source))
    if IN_REPOSITORY and path.is_relative_to(REPO_ROOT) and str(REPO_ROOT) not in sys.path:
        sys.path.append(str(REPO_ROOT))  # the repository's folders import its kit (dnnkit/), wherever weightsep runs from
    spec = importlib.util.spec_from_file_location(f"weightsep_dnn_{path.name}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        exec(compile(source, str(file), "exec"), module.__dict__)  # noqa: S102 - the DNN folder's own code
    except Exception as e:
        raise DNNError(f"DNN folder {path}: importing dnn.py failed: {type(e).__name__}: {e}") from e
    missing = [name for name in REQUIRED if not hasattr(module, name)]
    if missing:
        raise DNNError(f"DNN folder {path}: dnn.py lacks {', '.join(missing)} (see docs/dnn_folders.md)")
    return DNN(path.name, path, module)


def is_dnn_folder(path: Path) -> bool:
    """A folder with a dnn.py that is not a Python package (so weightsep/ itself never counts) and
    is not a store directory or inside one (a store is data: code in it never runs)."""
    return ((path / "dnn.py").is_file() and not (path / "__init__.py").exists()
            and not in_store(path))


def in_store(path: Path) -> bool:
    """Whether `path` is a store directory (it holds a store manifest) or a folder right inside one."""
    return any(os.path.lexists(folder / name) for folder in (path, Path(path).resolve().parent)
               for name in (MANIFEST, PREVIOUS))


def _dnn_folders_in(path: Path) -> list[Path]:
    return [p for p in sorted(path.iterdir()) if is_dnn_folder(p)] if path.is_dir() else []


def _candidate_folders(extra: list[Path]) -> list[Path]:
    folders = _dnn_folders_in(REPO_ROOT) + _dnn_folders_in(SUITE_DIR) if IN_REPOSITORY else []
    for path in map(Path, extra):
        if path.is_dir() and in_store(path):
            raise DNNError(f"--dnn-folder {path}: a store directory or a folder inside one, which never holds "
                           "DNN code (a store is data); name the DNN folder itself")
        if is_dnn_folder(path):
            folders.append(path)
        elif path.is_dir():
            folders += _dnn_folders_in(path)
        elif path.exists():
            raise DNNError(f"--dnn-folder {path}: a file, not a DNN folder (with dnn.py) or a folder of them")
        else:
            raise DNNError(f"--dnn-folder {path}: no such folder")
    return folders


def folders(extra: list[Path] | tuple = ()) -> dict[str, Path]:
    """Every DNN folder by name, nothing imported; a later folder of the same name (e.g. on the
    command line) wins. Only the DNNs a command uses are imported (`get`), so one broken folder
    does not block the others."""
    return {path.name: path for path in _candidate_folders(list(extra))}


def discover(extra: list[Path] | tuple = ()) -> dict[str, DNN]:
    """All DNN folders by name, imported."""
    return {name: load_folder(path) for name, path in folders(extra).items()}


def suite() -> list[str]:
    """Names of the embedded offline default's DNNs (the folders under suite/)."""
    return [p.name for p in _dnn_folders_in(SUITE_DIR)] if IN_REPOSITORY else []


def get(name_or_path: str, extra: list[Path] | tuple = ()) -> DNN:
    """One DNN by name (among discovered folders) or by folder path; unknown names list the known."""
    text = str(name_or_path)
    if os.sep not in text and not text.startswith("."):  # a name, unless only a folder here has it
        try:
            return get_by_name(text, extra)
        except DNNError:
            if not Path(text).exists():
                raise
    path = Path(text)
    if is_dnn_folder(path):
        return load_folder(path)
    if not path.exists():
        raise DNNError(f"{path}: no such DNN folder")
    if not path.is_dir():
        raise DNNError(f"{path}: a file, not a DNN folder")
    if (path / "__init__.py").exists():
        raise DNNError(f"{path}: a Python package, not a DNN folder")
    if in_store(path):
        raise DNNError(f"{path}: a store directory or a folder inside one, never a DNN folder (a store is data)")
    raise DNNError(f"{path}: not a DNN folder: it has no dnn.py (docs/dnn_folders.md says what it needs)")


def get_by_name(name: str, extra: list[Path] | tuple = ()) -> DNN:
    """One DNN by name among the discovered folders and those named on the command line, never by a
    path from elsewhere (a store names DNNs; their code comes from here)."""
    known = folders(extra)
    if name not in known:
        raise DNNError(f"unknown DNN {name!r}; known: {', '.join(sorted(known)) or 'none'}")
    return load_folder(known[name])


def relative_folder(path: Path) -> str:
    """A DNN folder as the store records it: relative to the repository when inside it."""
    path = Path(path).resolve()
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)
