"""Progress bars drawn by the process that reports: one set per run however many ranks run it.

    from .progress import tqdm    # tqdm itself, except that ranks other than 0 draw no bars

A process outside a torch.distributed group is its own rank 0 and draws its bars as usual; tqdm's
class is left as it is for everyone else in the process (bench/, tests, an API user's own bars).
"""
from __future__ import annotations

import torch.distributed as dist
import tqdm as _tqdm


def reports() -> bool:
    """This process draws progress: rank 0 of the torch.distributed group, or no group at all."""
    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)


class tqdm(_tqdm.tqdm):  # a drop-in for tqdm.tqdm, named as tqdm.auto's is
    def __init__(self, *args, **kwargs):
        if not reports():
            kwargs["disable"] = True  # elsewhere tqdm's own default stands (TQDM_DISABLE=1 included)
        super().__init__(*args, **kwargs)
