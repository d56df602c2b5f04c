"""Process start-up for the scripts: no garbage collection while torch and Lightning load.

Importing torch and Lightning creates millions of long-lived objects, and the cyclic garbage
collector traverses them again and again while they load (about 1 s of a 3 s start-up here).
Standard library only, so that a script can pause the collector before its first heavy import.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

SIGINT_STATUS = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


@contextmanager
def collector_paused() -> Iterator[None]:
    """For a script's heavy imports: pause the collector, then ``gc.freeze`` what was created
    (out of its reach for the rest of the process) and let it run on. Only for scripts: a
    frozen object is never collected, so a long-lived caller (a test session) should not.
    Ctrl-C while the imports run ends the script with one line, not an import traceback."""
    gc.disable()
    try:
        yield
    except KeyboardInterrupt:
        print("error: stopped by SIGINT while starting; nothing was written", file=sys.stderr)
        raise SystemExit(SIGINT_STATUS) from None
    finally:
        gc.freeze()
        gc.enable()


def exit_status(status: int) -> int:
    """Freeze the heap before a script exits: the interpreter's final collection would
    otherwise traverse every object once more (about 1 s here) just before the process ends."""
    gc.freeze()
    return status
