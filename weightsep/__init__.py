"""weightsep: pack many small DNNs into one memory budget with weight pages (NWV / Weight Separation).

Pipeline, one module per stage: pages (formation) -> fisher -> separation -> matching -> optimize
-> evaluate; store keeps the state on disk; dnn discovers DNN folders; cli is the command line.

This file imports nothing heavy (only modules loaded before any code runs): `import weightsep`
stays cheap, and `interruptible` below is in place within a millisecond of a command's start.
"""
import _signal  # the C module under `signal`, whose import (enum) would delay the guard (docs/results.md#code-notes)
import os
import sys

__version__ = "0.1.0"


def _exit_interrupted(signum, frame) -> None:
    print("\ninterrupted", file=sys.stderr, flush=True)
    os._exit(130)  # nothing to clean up: a command's imports write nothing


class interruptible:
    """`with interruptible():` around a command's start-up imports: Ctrl-C there ends the command at
    once with the line `interrupted` and exit status 130, never a traceback.

    The imports take a second or more (torch). A KeyboardInterrupt raised inside them can surface as
    another exception (a C extension left half-initialised: numpy's AttributeError, ImportError) or
    make Python end by the signal although it was caught, so inside the block Ctrl-C raises nothing:
    it exits. After the block the command's own handler (`guarded`, `cli.main`) takes Ctrl-C, and
    after that `exit_with`. A SIGINT that is ignored (a background job) or handled by someone else is
    left as it is."""

    def __enter__(self) -> None:
        self.previous = _signal.getsignal(_signal.SIGINT)
        if self.previous is _signal.default_int_handler:
            try:
                _signal.signal(_signal.SIGINT, _exit_interrupted)
            except ValueError:  # not the main thread, where only the main thread's handler applies
                self.previous = None

    def __exit__(self, kind, value, traceback) -> None:
        if self.previous is _signal.default_int_handler:
            _signal.signal(_signal.SIGINT, self.previous)


def exit_with(status: int):
    """End a command with `status`; never returns (unannotated: `typing` would cost the start-up ms).

    From here on Ctrl-C ends the process at once with `status`: the command's work is done and its
    output flushed, so the shell learns how it ended (in the interpreter's shutdown, a few hundred ms
    after torch, a KeyboardInterrupt would print `Exception ignored ... Traceback`, and dying by the
    signal would hide a success)."""
    sys.stdout.flush()
    sys.stderr.flush()
    if _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
        _signal.signal(_signal.SIGINT, lambda signum, frame: os._exit(status))
    sys.exit(status)


def guarded(main, *args) -> int:
    """A root script's `main(*args)` as an exit status: a user error (a DNN folder, a store, a value or
    a path that is wrong) is one line `error: ...` and 2, Ctrl-C is `interrupted` and 130."""
    with interruptible():  # imported here, so that `import weightsep` stays light
        from .errors import USER_ERRORS  # the CLI's user errors

    try:
        return main(*args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that is missing, a file, not writable; a full disk
        print(f"error: {(e.filename or '') and f'{e.filename}: '}{e.strerror or e}", file=sys.stderr)
        return 2
