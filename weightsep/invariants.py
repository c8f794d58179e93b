"""The value checks a packed state and its page format share: a failed check is a ValueError that
names the culprit (`what`). A bottom module: it imports torch only."""
from __future__ import annotations

import json
from typing import Any

import torch


def check_tensor(t: Any, what: str, dtype: torch.dtype, dim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != dtype or t.dim() != dim:
        raise ValueError(f"{what} must be a {dim}-D {dtype} tensor, got {t.dim()}-D {t.dtype} {list(t.shape)}")


def check_values(t: torch.Tensor, what: str, nonnegative: bool = False) -> None:
    bad = ~torch.isfinite(t)
    if nonnegative:
        bad |= t < 0
    if bad.any():
        first = int(bad.flatten().nonzero()[0])
        kind = "NaN/inf or negative" if nonnegative else "NaN/inf"
        raise ValueError(f"{what} has {int(bad.sum())} {kind} values (first at flat index {first})")


def check_json(obj: Any, what: str) -> None:
    if not isinstance(obj, dict):
        raise ValueError(f"{what} must be a dict, got {type(obj).__name__}")
    try:
        json.dumps(obj, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-able: {e}") from None


def check_count(value: Any, what: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an int >= {minimum}, got {value!r}")
