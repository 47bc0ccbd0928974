"""Layering: no import cycles inside `dcp/`, and every module imports on its own."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dcp"


def _modules():
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path):
    """dcp modules imported at module level (imports inside functions are lazy by design)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            if t in MODULES and t != name and not name.startswith(t + "."):
                yield t          # a parent package is imported first anyway: not an edge


def _cycles():
    graph = {m: set(_imports(m, p)) for m, p in MODULES.items()}
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):                       # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found, graph


def test_no_import_cycles():
    cycles, graph = _cycles()
    assert len(graph) > 30 and graph["dcp.experiment"]     # the graph is really read
    assert not cycles, f"import cycles: {cycles}"


def test_core_does_not_import_its_clients():
    """The model side and the data side never import the run machinery or the demo."""
    _, graph = _cycles()
    clients = {"dcp.experiment", "dcp.engine", "dcp.rundir", "dcp.protocols", "dcp.miniworld.demo"}
    for m in graph:
        if m.startswith(("dcp.clip", "dcp.data", "dcp.fusion", "dcp.methods", "dcp.config")):
            assert not graph[m] & clients, (m, graph[m] & clients)


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    from concurrent.futures import ThreadPoolExecutor

    def alone(name):
        return name, subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True,
                                    text=True)
    names = [n for n in MODULES if not n.endswith("__main__")]
    with ThreadPoolExecutor(max_workers=2) as pool:
        for name, r in pool.map(alone, names):
            assert r.returncode == 0, f"import {name} alone fails:\n{r.stderr[-2000:]}"


def test_the_run_machinery_reads_in_short_functions():
    """No function over 50 lines in the three files a reader follows a run through."""
    for rel in ("engine.py", "experiment.py", "protocols.py"):
        tree = ast.parse((PACKAGE / rel).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 50, f"{rel}: {node.name} is too long"


SIZE_BUDGET = 6400      # lines of dcp/**/*.py; docs/design.md, "Size" says what they pay for


def test_the_package_stays_within_its_size_budget():
    """`wc -l` over dcp/**/*.py: growing past the budget is a decision (docs/design.md, "Size")."""
    files = sorted(PACKAGE.rglob("*.py"))
    total = sum(len(p.read_text(encoding="utf-8").splitlines()) for p in files)
    assert len(files) > 30 and total > 3000          # the package is really read
    assert total <= SIZE_BUDGET, (f"dcp/ has {total} lines, over its budget of {SIZE_BUDGET}: "
                                  "simplify, or raise the budget in docs/design.md and here")


def test_the_run_folder_files_are_named_in_rundir_only():
    """dcp.rundir owns the run folder: no other module (nor run.py) spells its file names."""
    from dcp.rundir import RunFolder
    names = {RunFolder.CONFIG, RunFolder.LOG, RunFolder.FEWSHOT, RunFolder.LAST, RunFolder.FINAL,
             RunFolder.METRICS, RunFolder.LOCK}
    assert len(names) == 7
    spelled = set()
    for path in sorted(PACKAGE.rglob("*.py")) + [PACKAGE.parent / "run.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                spelled.add((path.relative_to(PACKAGE.parent).as_posix(), node.value))
    assert {p for p, _ in spelled} == {"dcp/rundir.py"}, sorted(spelled)
