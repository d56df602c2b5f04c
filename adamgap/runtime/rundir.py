"""The run directory's lifecycle: one run per directory, never two processes at once.

A directory is in one of these states (:func:`inspect`):

``new``          missing or empty
``running``      a live process holds its lock: ``run.lock``, an ``flock`` that the kernel drops
                 when the holder exits or is killed (even by SIGKILL), so a lock is never stale;
                 the file also names the holder (pid, host, start time) for the message
``completed``, ``diverged``, ``interrupted``, ``failed``   what its ``summary.json`` says
``unfinished``   a ``config.yaml`` but no summary (killed, e.g. by SIGKILL)
``foreign``      files, but not an adamgap run

:func:`claim` refuses ``running`` always (two processes must never share a directory), and
every other non-``new`` state unless ``run.resume=true``: then a ``completed`` or ``diverged``
run is returned as it is (its ``summary.json``), and an ``interrupted``, ``failed`` or
``unfinished`` one is continued, if its ``config.yaml`` matches the given settings.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import IO

from omegaconf import DictConfig, OmegaConf

from adamgap.errors import ConfigError
from adamgap.summary import read as read_summary

try:
    import fcntl
except ImportError:  # not POSIX: no lock, the other checks still hold
    fcntl = None

LOCK = "run.lock"
FINISHED = ("completed", "diverged")  # a result (a divergence is one): never run again
# settings that may change when a run is resumed: how it is watched, not what it computes
RESUMABLE_CHANGES = ("run.resume", "run.dir", "trainer.progress_bar", "logger.")

_held: dict[Path, IO] = {}  # the locks this process holds, by resolved run directory


def inspect(run_dir: Path) -> str:
    """The state of ``run_dir`` (see the module docstring)."""
    if not run_dir.is_dir() or not any(p.name != LOCK for p in run_dir.iterdir()):
        return "new"
    if holder(run_dir) is not None:
        return "running"
    summary = read_summary(run_dir)
    if summary is not None and "status" in summary:
        return str(summary["status"])
    return "unfinished" if (run_dir / "config.yaml").is_file() else "foreign"


def holder(run_dir: Path) -> dict | None:
    """Who holds the lock of ``run_dir`` (pid, host, started), or None when nobody does."""
    path = run_dir / LOCK
    if fcntl is None or not path.is_file() or run_dir.resolve() in _held:
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return json.loads(f.read() or "{}")
            except ValueError:
                return {}
        except OSError:  # a filesystem without locks
            return None
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def refusal(run_dir: Path, state: str) -> str:
    """The one-line reason for not starting a run in ``run_dir`` (no run.resume)."""
    if state == "running":
        h = holder(run_dir) or {}
        return (f"run.dir={run_dir} is in use by a running run (pid {h.get('pid', '?')} on "
                f"{h.get('host', '?')} since {h.get('started', '?')}); wait for it to end or "
                "choose another run.dir")
    if state == "foreign":
        return f"run.dir={run_dir} already holds files that are not an adamgap run; choose " \
               "another run.dir"
    if state in FINISHED:
        return (f"run.dir={run_dir} holds a {state} run (summary.json); choose another run.dir, "
                "or set run.resume=true to return its summary")
    return (f"run.dir={run_dir} holds a run that did not finish ({state}); set run.resume=true "
            "to continue it from its last checkpoint, or choose another run.dir")


def claim(cfg: DictConfig, run_dir: Path) -> dict | None:
    """Check and lock ``run_dir`` for this run (creating it). Returns the summary of a finished
    run when ``run.resume=true`` asks for one (nothing is locked then), otherwise None; raises
    :class:`ConfigError` with a one-line reason when the run must not start here."""
    for attempt in ("check", "check again under the lock"):
        state = inspect(run_dir)
        if state == "running" or (state != "new" and not cfg.run.resume):
            release(run_dir)
            raise ConfigError(refusal(run_dir, state))
        if state in FINISHED:
            release(run_dir)
            return read_summary(run_dir)
        if state == "foreign":
            raise ConfigError(refusal(run_dir, state))
        if state != "new":
            check_same_config(cfg, run_dir)
        if attempt == "check":
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:  # a file of that name, a read-only or full file system
                raise ConfigError(f"run.dir={run_dir} cannot be created: "
                                  f"{err.strerror or err}; choose another run.dir") from None
            lock(run_dir)
    return None


def lock(run_dir: Path) -> None:
    """Take ``run_dir``'s lock for this process, or raise :class:`ConfigError` (running). The
    descriptor that holds the lock is read-only, so that an open lock never keeps a file
    system from being remounted read-only (or counts as a writer)."""
    key = run_dir.resolve()
    release(run_dir)  # a run of this process that ended by an exception left it held
    path = run_dir / LOCK
    try:
        open(path, "a").close()  # create it
        f = open(path)
    except OSError as err:  # a read-only directory
        raise ConfigError(f"run.dir={run_dir} is not writable: {err.strerror or err}; choose "
                          "another run.dir") from None
    if fcntl is not None:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise ConfigError(refusal(run_dir, "running")) from None
        except OSError:
            pass  # a filesystem without locks: concurrent runs here cannot be detected
    try:  # the holder's name, for the message another process prints; the lock is the flock
        with open(path, "w") as out:
            out.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
    except OSError:  # a full disk: the lock holds all the same
        pass
    _held[key] = f


def release(run_dir: Path) -> None:
    """Drop this process's lock on ``run_dir`` (the file stays: deleting it would race)."""
    f = _held.pop(run_dir.resolve(), None)
    if f is not None:
        f.close()  # closing the descriptor releases the flock


def check_same_config(cfg: DictConfig, run_dir: Path) -> None:
    """A resumed run must compute what the original computed: same settings, except how it
    is run and watched (``RESUMABLE_CHANGES``)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        old = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except Exception as err:  # the YAML parser's errors: a truncated or overwritten file
        raise ConfigError(f"run.resume=true: {path} is damaged ({str(err).splitlines()[0]}), "
                          "so what the run computed is unknown; start it again in another "
                          "run.dir") from None
    diff = first_difference(computing_settings(old if isinstance(old, dict) else {}),
                            computing_settings(cfg))
    if diff is not None:
        raise ConfigError(f"run.resume=true: {diff} in {path}; resume with the run's settings")


def computing_settings(cfg: DictConfig | dict) -> dict:
    """The settings that decide what a run computes, flat (``data.n``: 200): all but
    ``RESUMABLE_CHANGES``. Checkpoints carry them (``checkpointing.CONFIG_KEY``)."""
    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return {k: v for k, v in _flat(node).items() if not k.startswith(RESUMABLE_CHANGES)}


def first_difference(old: dict, new: dict) -> str | None:
    """``KEY=NEW differs from KEY=OLD`` for the first key where two ``computing_settings``
    differ, or None."""
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key}={new.get(key)!r} differs from {key}={old.get(key)!r}"
    return None


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}
