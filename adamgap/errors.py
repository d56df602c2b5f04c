"""The exceptions a user sees as one ``error: ...`` line, never as a traceback."""

from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """A bad configuration, or a run that must not start as configured: the message is one
    line naming the key (or the file) and what is allowed. Scripts print it as ``error: ...``
    and exit with status 2, before anything is written."""


class RunError(Exception):
    """A run that started and cannot go on (a result file cannot be written, no checkpoint to
    resume from can be read): one line naming the file, the step and what to do. Scripts
    print it as ``error: ...`` and exit with status 1; what was complete before (the last
    checkpoint, earlier results) stays as it was."""


class OutputError(RunError):
    """A file could not be written (a full disk, a read-only directory): ``path`` and the
    operating system's reason. Raised by ``adamgap.outputs`` and the metrics logger; the run
    adds its step (``adamgap.train.run``)."""

    def __init__(self, path: str | Path, err: OSError, note: str = "") -> None:
        self.path, self.err, self.note = Path(path), err, note
        reason = err.strerror or str(err) or type(err).__name__
        super().__init__(f"cannot write {path}: {reason}{note}")

    def noted(self, note: str) -> OutputError:
        """The same error with ``note`` (the step, what was kept, what to do) appended."""
        return OutputError(self.path, self.err, self.note + note)
