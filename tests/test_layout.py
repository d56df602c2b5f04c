"""The package's architecture, read from its source (``ast``): folders by role, lower layers
never import higher ones, no import cycles, imports inside functions only for optional
dependencies; and every module imports."""

from __future__ import annotations

import ast
import importlib
import inspect

import pytest
from helpers import ROOT

from adamgap.config import TASKS
from adamgap.train import DATAMODULES

PACKAGE = ROOT / "adamgap"
# a module's layer (lower numbers lower); the paper's core is the top-level package
LAYERS = {"core": 0, "tasks": 1, "runtime": 1, "run": 2, "experiments": 3, "analysis": 4,
          "theory": 4}
RUN = ("adamgap.train", "adamgap.cli")  # the entry layer: one run, built from everything below
# who may import whom within a layer: peers stay apart
PEERS_APART = {("tasks", "runtime"), ("runtime", "tasks"), ("analysis", "theory"),
               ("theory", "analysis")}
# optional dependencies: the only imports allowed inside a function
OPTIONAL = ("matplotlib", "wandb", "wandb_workspaces")


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), filename=str(path))
    return out


def role(name: str) -> str:
    """``core``, ``run`` or the folder a module is in."""
    if name in RUN:
        return "run"
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "core"


def imported(tree: ast.Module, known: set[str]) -> set[str]:
    """The adamgap modules a module imports (``from adamgap.x import y``: y when y is a
    module, else adamgap.x)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            out |= subs or {node.module}
    return out & known


SOURCES = modules()
GRAPH = {name: imported(tree, set(SOURCES)) - {name} for name, tree in SOURCES.items()}


def test_every_role_has_its_folder_and_every_module_imports():
    for package in ("adamgap", "adamgap.tasks", "adamgap.runtime", "adamgap.experiments",
                    "adamgap.analysis", "adamgap.theory"):
        importlib.import_module(package)
    for name in SOURCES:
        importlib.import_module(name)
    assert {role(n) for n in SOURCES} == set(LAYERS)


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_module_imports_a_higher_layer_or_a_peer_it_must_not(name):
    for other in GRAPH[name]:
        mine, theirs = role(name), role(other)
        assert LAYERS[theirs] <= LAYERS[mine], f"{name} ({mine}) imports {other} ({theirs})"
        assert (mine, theirs) not in PEERS_APART, f"{name} ({mine}) imports {other} ({theirs})"


def test_there_are_no_import_cycles():
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            assert state.get(nxt) != "open", "import cycle: " + " -> ".join(
                path[path.index(nxt):] + [nxt] if nxt in path else path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_imports_inside_functions_are_optional_dependencies_only():
    for name, tree in SOURCES.items():
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    targets = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    targets = [node.module or ""]
                else:
                    continue
                assert all(t.split(".")[0] in OPTIONAL for t in targets), \
                    f"{name}.{func.name} imports {targets} inside a function"


def test_the_layer_rule_catches_a_violation():
    """The checks above can fail: a core module importing the run layer is caught."""
    GRAPH["adamgap.data"].add("adamgap.train")
    try:
        with pytest.raises(AssertionError, match="adamgap.data .core. imports adamgap.train"):
            test_no_module_imports_a_higher_layer_or_a_peer_it_must_not("adamgap.data")
        with pytest.raises(AssertionError, match="import cycle"):
            test_there_are_no_import_cycles()
    finally:
        GRAPH["adamgap.data"].discard("adamgap.train")


def test_each_task_takes_exactly_the_keys_the_tasks_table_lists():
    """``config.TASKS`` is the one list of what each datamodule takes: its constructor's
    keyword arguments are those keys (no defaults: the schema holds them) plus the trainer's
    step counts."""
    assert set(DATAMODULES) == set(TASKS)
    for task, cls in DATAMODULES.items():
        params = inspect.signature(cls).parameters
        keyword = {k for k, p in params.items() if p.kind is p.KEYWORD_ONLY}
        extra = {"max_steps"} | ({"steps_per_batch"} if task != "images" else set())
        assert keyword == set(TASKS[task].keys) | extra, task
        assert all(p.default is p.empty for p in params.values()), task
