"""Provenance: what produced a number. Every ``config.yaml`` and ``summary.json`` records it,
and every report prints it in its header.

``collect()`` gives the git commit of the checkout the package runs from (with ``-dirty`` when
tracked files have uncommitted changes, or untracked files are not ignored), the versions of
Python, torch, lightning and torchmetrics, and the host: its name, CPU model, core count and
GPUs (those torch sees, when torch is loaded; reading them never initialises CUDA otherwise).
"""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "lightning", "torchmetrics")


def git_commit(root: Path = ROOT) -> str | None:
    """``<sha>`` or ``<sha>-dirty`` of the checkout at ``root``; None outside a git checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, text=True,
                                capture_output=True, check=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if status.strip() else sha


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    """Names of the GPUs torch sees; empty when torch is not loaded or sees none."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def _static() -> dict:
    return {"git": git_commit(), "python": platform.python_version(),
            **{p: version(p) for p in PACKAGES},
            "host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count()}


def collect() -> dict:
    """This process's provenance (the git state is read once per process)."""
    return {**_static(), "gpus": gpus()}


def line(p: dict | None) -> str:
    """One line for a report header: commit, versions, host."""
    if not p:
        return "provenance not recorded"
    gpu = ", ".join(p.get("gpus") or []) or "no GPU"
    versions = ", ".join(f"{k} {p.get(k)}" for k in ("python", *PACKAGES))
    return (f"git {p.get('git') or 'unknown'}; {versions}; host {p.get('host')} "
            f"({p.get('cpu')}, {p.get('cores')} cores; {gpu})")


def yaml_header(p: dict) -> str:
    """The comment lines that open a run's ``config.yaml``."""
    return f"# provenance: {line(p)}\n"


def lines_of(summaries: list[dict | None]) -> list[str]:
    """The distinct provenance lines of some run summaries, in first-seen order."""
    return list(dict.fromkeys(line((s or {}).get("provenance")) for s in summaries))
