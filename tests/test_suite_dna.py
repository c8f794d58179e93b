"""suite/dna: the one-hot decoding of mlbench's DNA frame and Statlog's official split."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from weightsep import dnn

DNA = dnn.load_folder(dnn.SUITE_DIR / "dna")


def frame(sequences: list[str], classes: list[str]) -> pd.DataFrame:
    """A frame shaped like mlbench's: V1..V180 factors "0"/"1", position-major, A=100 C=010 G=001 T=000."""
    codes = {"A": (1, 0, 0), "C": (0, 1, 0), "G": (0, 0, 1), "T": (0, 0, 0)}
    rows = [[v for base in seq for v in codes[base]] for seq in sequences]
    columns = {f"V{i + 1}": pd.Categorical([str(r[i]) for r in rows], categories=["0", "1"]) for i in range(180)}
    columns["Class"] = pd.Categorical(classes, categories=["ei", "ie", "n"])
    return pd.DataFrame(columns)


def test_decode_is_position_major_and_keeps_indicators():
    seqs = ["ACGT" * 15, "G" * 30 + "T" * 30]
    x, y = DNA.module.decode(frame(seqs, ["ie", "n"]))
    assert x.shape == (2, 3, 1, 60) and x.dtype == np.float32 and y.tolist() == [1, 2]
    assert x[0, :, 0, :4].T.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 0]]  # A C G T
    assert x[1, 2, 0, :30].sum() == 30 and x[1, :, 0, 30:].sum() == 0


def test_decode_rejects_two_codes_at_one_position():
    bad = frame(["A" * 60], ["n"])
    bad["V2"] = pd.Categorical(["1"], categories=["0", "1"])  # position 1 now reads A and C at once
    with pytest.raises(ValueError, match="more than one"):
        DNA.module.decode(bad)


def test_prepared_split_is_statlogs():
    path = dnn.data_dir() / "dna.npz"
    if not path.is_file():
        pytest.skip(f"{path} not prepared (run ./prepare_data.sh)")
    data = DNA.load_data(dnn.data_dir())
    train_y = np.concatenate([data.train.y, data.val.y])
    assert np.bincount(train_y).tolist() == [464, 485, 1051]  # Statlog's training part: ei, ie, n
    assert np.bincount(data.test.y).tolist() == [303, 280, 603]
    for split in (data.train, data.val, data.test):
        assert set(np.unique(split.x).tolist()) <= {0.0, 1.0}
        assert split.x.sum(axis=1).max() <= 1  # at most one indicator per position (T is none)
    with np.load(path) as npz:
        assert npz["groups_test"].tolist() == list(range(2000, 3186))
        assert sorted([*npz["groups_train"], *npz["groups_val"]]) == list(range(2000))
