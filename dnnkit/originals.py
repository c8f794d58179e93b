"""Reading the NWV authors' weight and Fisher arrays (test and benchmark fixtures).

The NWV repository ships, per DNN, `NAME_network_weight.npy` (the stand-alone trained weights,
bit-identical to its checkpoint) and `NAME_network_fisher.npy` (their diagonal Fisher): each a 1-D
object array of float32 arrays in TF trainable-variable order (conv HWIO, dense [in, out]), saved as
Python-2 pickles. This module is the ONE place in the repository that unpickles: reading those files needs
`allow_pickle=True`, and unpickling can run code from the file, so point it only at the authors'
fixture files.

    weights, fisher = load_nwv_dnn("mnist")          # flat float32 vectors, 45,706 each
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from weightsep.paths import fixtures_dir

NWV_ORDER = ("mnist", "gsc", "gtsrb", "cifar10", "svhn")  # the five NWV DNNs, in the paper's order


def load_nwv_arrays(path: str | Path) -> list[np.ndarray]:
    """One NWV `.npy` file -> its float32 arrays, in the file's (TF trainable-variable) order."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"{path}: not a .npy file; only the NWV authors' pickled .npy arrays are read here")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: NWV array file missing (fixtures are looked up in $WEIGHTSEP_FIXTURES, "
                                f"default {fixtures_dir()})")
    try:
        stored = np.load(path, allow_pickle=True, encoding="latin1")
    except (OSError, ValueError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: not an NWV array file (a pickled 1-D object array of float32 arrays): {e}") from e
    if not (isinstance(stored, np.ndarray) and stored.dtype == object and stored.ndim == 1
            and all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in stored)):
        raise ValueError(f"{path}: not an NWV array file: want a 1-D object array of float32 arrays, "
                         f"got {type(stored).__name__} {getattr(stored, 'dtype', '')} {getattr(stored, 'shape', '')}")
    return list(stored)


def flat(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate arrays, each row-major, into one float32 vector (the canonical flat order)."""
    return np.concatenate([np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays])


def load_nwv_dnn(name: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flat weights and Fisher of NWV DNN `name` from `root/nwv` (default: `fixtures_dir()`)."""
    folder = (fixtures_dir() if root is None else Path(root)) / "nwv"
    weights = load_nwv_arrays(folder / f"{name}_network_weight.npy")
    fisher = load_nwv_arrays(folder / f"{name}_network_fisher.npy")
    if [a.shape for a in weights] != [a.shape for a in fisher]:
        raise ValueError(f"NWV DNN {name!r}: weight and Fisher arrays have different shapes")
    return flat(weights), flat(fisher)
