"""Where things are: the repository and its DNN folders, the cache, the originals' fixtures.

The bottom layer (with errors.py and files.py): imports nothing of weightsep, so every module may
ask it. Environment: WEIGHTSEP_CACHE (default ~/.cache/weightsep), WEIGHTSEP_FIXTURES.

    cache_dir() / "models"      # trained stand-alone models; data_dir() holds the prepared .npz files
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITE_DIR = REPO_ROOT / "suite"
# run from the repository (or installed editable from it); a wheel installed elsewhere has no DNN folders
IN_REPOSITORY = (REPO_ROOT / "pyproject.toml").is_file() and SUITE_DIR.is_dir()


def cache_dir() -> Path:
    """Where data, trained models and other generated files live (never in the repository)."""
    return Path(os.environ.get("WEIGHTSEP_CACHE", Path.home() / ".cache" / "weightsep"))


def data_dir() -> Path:
    return cache_dir() / "data"


def fixtures_dir() -> Path:
    """The originals' fixtures: $WEIGHTSEP_FIXTURES, else `<repo>/../shared/fixtures/originals`."""
    return Path(os.environ.get("WEIGHTSEP_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures" / "originals"))
