"""The shape of the code base, checked from its source: who imports whom, and where a status changes.

- The import graph of ``deployments`` has no circle, counting imports inside functions too, and no
  module imports a sibling inside a function to dodge one (``apps.py`` waits for the app registry).
- ``deployments.inference`` never imports Django.
- A task's status is written in one place: ``deployments/services/transitions.py``.
- The checkout holds no store a run writes (MLflow's default ``mlflow.db`` and ``mlruns/``), and ignores one.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "deployments"
STATUS_DOOR = PACKAGE_ROOT / "services" / "transitions.py"
# Django needs the app registry before models are imported: AppConfig hooks import inside functions.
FUNCTION_LEVEL_IMPORT_ALLOWED = {"deployments.apps"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, ast.Module]:
    return {
        module_name(path): ast.parse(path.read_text(), str(path))
        for path in PACKAGE_ROOT.rglob("*.py")
        if "migrations" not in path.parts
    }


def imported_modules(node: ast.AST, known: set[str]) -> set[str]:
    """The project modules an import statement names (``from a import b`` counts b when it is a module)."""
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        names = {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name in known}


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(every import, imports made inside a function) per module."""
    modules = sources()
    known = set(modules)
    edges: dict[str, set[str]] = {name: set() for name in modules}
    nested: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for node in ast.walk(tree):
            edges[name] |= imported_modules(node, known) - {name}
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                nested[name] |= imported_modules(node, known)
    return edges, nested


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> list[str] | None:
        if module in visiting:
            return [*visiting[visiting.index(module) :], module]
        if module in done:
            return None
        visiting.append(module)
        for target in sorted(edges[module]):
            if cycle := visit(target):
                return cycle
        visiting.pop()
        done.add(module)
        return None

    for module in sorted(edges):
        if cycle := visit(module):
            return cycle
    return None


def test_the_import_graph_has_no_circle():
    edges, _ = import_graph()
    # A package imports its own submodules to re-export them; that is not a circle in the code.
    edges = {m: {t for t in targets if not m.startswith(f"{t}.")} for m, targets in edges.items()}
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])


def test_no_function_level_import_of_project_modules():
    _, nested = import_graph()
    offenders = {module: sorted(targets) for module, targets in nested.items() if targets}
    assert set(offenders) <= FUNCTION_LEVEL_IMPORT_ALLOWED, offenders


def test_the_serving_layer_never_imports_django():
    for path in (PACKAGE_ROOT / "inference").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(name.split(".")[0] in {"django", "rest_framework", "django_q"} for name in names), path


def _has_status_key(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Dict) and any(
        isinstance(key, ast.Constant) and key.value == "status" for key in node.keys
    )


def _dicts_holding_status(scope: ast.AST) -> set[str]:
    """Names in ``scope`` bound to a dict with a "status" key (``d = {"status": ...}`` or ``d["status"] = ...``)."""
    names = set()
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and _has_status_key(node.value):
                    names.add(target.id)
                if (
                    isinstance(target, ast.Subscript)
                    and isinstance(target.value, ast.Name)
                    and isinstance(target.slice, ast.Constant)
                    and target.slice.value == "status"
                ):
                    names.add(target.value.id)
    return names


def status_writes(tree: ast.Module) -> list[int]:
    """Lines that write a status: ``x.status = ...``, ``setattr(x, "status", ...)``, and ``.update`` /
    ``.create`` given ``status=``, or ``**d`` where ``d`` is a dict that holds a "status" key."""
    lines = []
    holding_status = _dicts_holding_status(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Attribute) and t.attr == "status" for t in targets):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in {"update", "create", "update_or_create", "bulk_update"} and any(
                keyword.arg == "status"
                or (
                    keyword.arg is None
                    and (
                        _has_status_key(keyword.value)
                        or (isinstance(keyword.value, ast.Name) and keyword.value.id in holding_status)
                    )
                )
                for keyword in node.keywords
            ):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and node.args[1].value == "status":
                lines.append(node.lineno)
    return lines


def test_the_status_of_a_task_changes_in_one_place():
    writers = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        if "migrations" in path.parts or path == STATUS_DOOR:
            continue
        if lines := status_writes(ast.parse(path.read_text())):
            writers[str(path.relative_to(PACKAGE_ROOT))] = lines
    assert writers == {}
    assert status_writes(ast.parse(STATUS_DOOR.read_text())), "the door itself writes the status"


@pytest.mark.parametrize(
    "snippet",
    [
        "task.status = 'done'",
        "Task.objects.filter(pk=1).update(status='failed')",
        "Task.objects.create(status='x')",
        "changes = {'status': 'failed'}; Task.objects.filter(pk=1).update(**changes)",
        "changes = {}; changes['status'] = 'done'; Task.objects.filter(pk=1).update(**changes)",
        "Task.objects.filter(pk=1).update(**{'status': 'done'})",
        "setattr(task, 'status', 'done')",
    ],
)
def test_the_status_write_finder_sees_each_way_of_writing(snippet):
    assert status_writes(ast.parse(snippet)) == [1]


def test_the_status_write_finder_leaves_other_writes_alone():
    assert status_writes(ast.parse("def f(**fields): Model.objects.update(state='x', **fields)")) == []


# What MLflow's client writes in the working directory when it is given no tracking URI.
LOCAL_STORES = ("mlflow.db", "mlruns/0/meta.yaml")


@pytest.mark.skipif(
    shutil.which("git") is None or not (PACKAGE_ROOT.parent / ".git").exists(), reason="not a git checkout"
)
def test_the_checkout_tracks_no_local_mlflow_store_and_ignores_one():
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=PACKAGE_ROOT.parent, capture_output=True, text=True)

    assert git("ls-files", "--", *LOCAL_STORES).stdout == ""
    assert git("check-ignore", "--no-index", *LOCAL_STORES).stdout.split() == list(LOCAL_STORES)
