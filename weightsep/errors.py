"""The errors a user can cause, and the one tuple of them that every entry point reports as one line.

The bottom layer (with paths.py and files.py): imports nothing of weightsep. A command (cli.main,
`guarded` root scripts, a spawned rank, experiments/, bench/) that catches `USER_ERRORS` prints
`error: <message>` and exits 2, no traceback; anything else is a bug and keeps its traceback.

    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
"""
from __future__ import annotations


class DNNError(Exception):
    """A DNN folder that cannot be found, imported or loaded; the message names it."""


class StoreError(Exception):
    """Packed state or a tensor file on disk that is missing, damaged or of an unknown format.

    The message names the file, says what is wrong and how to recover."""


class RankError(RuntimeError):
    """A rank failed or died; the message names it (and its DNNs when known)."""


class LostContact(RankError):
    """A collective broke because another rank failed or died: the cause is that rank's."""


# what the command line reports as one `error:` line (no traceback); a spawned rank reports the same
USER_ERRORS = (DNNError, StoreError, ValueError, FileNotFoundError, FloatingPointError, RankError)
