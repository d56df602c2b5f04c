"""Atomic result files: write to a temporary file beside the target, then rename over it, so
a crashed or interrupted run never leaves a half-written result behind. A write that fails
(a full disk, a read-only directory) raises :class:`adamgap.errors.OutputError` naming the
file; the target is then as it was before."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adamgap.errors import OutputError


def atomic_write(path: str | Path, write: Callable[[Any], None], binary: bool = False,
                 keep: str | Path | None = None) -> None:
    """Call ``write(file)`` on a temporary file and rename it to ``path`` when it succeeded.
    ``keep``: the file ``path`` held until now stays under this name (a hard link, so it
    costs no space; e.g. the previous checkpoint beside the last one)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as err:
        raise OutputError(path, err) from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results are for everyone
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if keep is not None and path.is_file():
            _link_over(path, Path(keep))
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise OutputError(path, err) from None
        raise


def _link_over(src: Path, dst: Path) -> None:
    """Make ``dst`` another name of ``src``'s file, atomically (a copy where the file system
    has no hard links)."""
    tmp = dst.with_name(f".{dst.name}.link")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:  # no hard links here (e.g. some network file systems)
        with open(src, "rb") as f, open(tmp, "wb") as g:
            while chunk := f.read(1 << 20):
                g.write(chunk)
            g.flush()
            os.fsync(g.fileno())
    os.replace(tmp, dst)


def write_json(path: str | Path, data: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=2, sort_keys=False) + "\n"))


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Rows of dicts as CSV; the columns are the union of keys in first-seen order."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())
