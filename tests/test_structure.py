"""The house rules a maintainer relies on: one import direction, short functions, stages
that declare what they read and produce, settings as torch-free leaves."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("imacs", "imacs_app")

#: imports inside a function that run back up the layers on purpose: entry points reached
#: lazily so that importing imacs stays torch-free (each documented where it is made)
LAZY_ENTRY_POINTS = {
    ("imacs.api", "imacs.pipeline"),  # imacs.analyze -> the analysis
    ("imacs.cli", "imacs.api"),
    ("imacs.cli", "imacs.demo"),
    ("imacs.cli", "imacs.run"),
    ("imacs.demo", "imacs.api"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, node: ast.ImportFrom | ast.Import, is_pkg: bool) -> list[list[str]]:
    """Per imported name, the modules it may be, most specific first (``from . import x``
    imports the submodule ``x`` when there is one, else a name of the package)."""
    if isinstance(node, ast.Import):
        return [[a.name] for a in node.names]
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        target = ".".join([*base, node.module] if node.module else base)
    else:
        target = node.module or ""
    return [[f"{target}.{a.name}", target] for a in node.names]


def _imports(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    """(module-level imports incl. TYPE_CHECKING ones, imports inside functions)."""
    module = _module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: list[list[str]] = []
    lazy: list[list[str]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import | ast.ImportFrom):
                names = _resolve(module, child, path.name == "__init__.py")
                (lazy if in_function else top).extend(names)
            visit(child, inner)

    visit(tree, False)
    return top, lazy


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    top_graph, lazy_graph = {}, {}
    for name, path in modules.items():
        top, lazy = _imports(path)
        for graph, found in ((top_graph, top), (lazy_graph, lazy)):
            known = (next((m for m in c if m in modules), None) for c in found)
            graph[name] = {m for m in known if m is not None and m != name}
    return top_graph, lazy_graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (found := dfs(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := dfs(n)):
            return found
    return None


def test_str001_the_import_graph_has_no_circle() -> None:
    top, lazy = _graph()
    assert _cycle(top) is None, " -> ".join(_cycle(top) or [])
    # a lazy import may only run back up along a documented entry point
    combined = {n: top[n] | lazy[n] for n in top}
    back_up = set()
    for n, targets in lazy.items():
        for m in targets:
            if n in _reachable(top, m):  # m (eagerly) imports n: an arrow back up
                back_up.add((n, m))
    assert back_up <= LAZY_ENTRY_POINTS, sorted(back_up - LAZY_ENTRY_POINTS)
    cyc = _cycle({n: combined[n] - {m for (a, m) in LAZY_ENTRY_POINTS if a == n} for n in top})
    assert cyc is None, " -> ".join(cyc or [])


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(graph.get(n, ()))
    return seen


def test_str002_leaves_import_no_stage_and_no_torch() -> None:
    top, _ = _graph()
    leaves = ("imacs.options", "imacs.errors", "imacs.settings", "imacs.runformat", "imacs.stage")
    for leaf in leaves:
        below = _reachable(top, leaf) - {leaf}
        assert below <= {"imacs.options", "imacs.errors"}, (leaf, sorted(below))
    # and the web app, the reader and the settings load without torch
    code = (
        "import sys, imacs, imacs.settings, imacs.runformat, imacs.run, imacs_app.main\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "import inspect; assert 'steps' in inspect.signature(imacs.analyze).parameters"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    # imacs never imports its dashboard
    assert not any(m.startswith("imacs_app") for n in top if n.startswith("imacs.") for m in top[n])


def _own_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines, without the nested functions it defines (measured themselves)."""
    lines = set(range(fn.lineno, fn.end_lineno + 1))
    for node in ast.walk(fn):
        if node is not fn and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines -= set(range(node.lineno, node.end_lineno + 1))
    return len(lines)


def test_str003_no_function_above_80_lines() -> None:
    long = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                is_fn = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                if is_fn and (n := _own_lines(node)) > 80:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {n}")
    assert not long, long


def test_str004_stages_read_only_what_earlier_stages_made() -> None:
    from imacs.pipeline import STAGES, START
    from imacs.runformat import TABLES
    from imacs.settings import AnalysisSettings
    from imacs.stage import SECTIONS, Stage, check_order

    check_order(STAGES, START)  # raises on a stage that reads what nothing made yet
    names = [s.name for s in STAGES]
    assert len(set(names)) == len(names)
    fields = {f for f in AnalysisSettings.__dataclass_fields__}
    made = {p for s in STAGES for p in s.produces}
    for s in STAGES:
        assert isinstance(s, Stage) and set(s.settings) <= fields, s.name
    # every table of the run format and every manifest section is made by some stage
    assert set(TABLES) <= made, sorted(set(TABLES) - made)
    assert set(SECTIONS) <= made, sorted(set(SECTIONS) - made)
    with pytest.raises(RuntimeError, match="reads"):
        check_order((STAGES[-1], *STAGES[:-1]), START)


def test_str005_a_new_stage_is_one_function_and_one_line(
    shortcut, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage added to the list runs in order, gets only its own settings, is timed under
    its name, and what it produces reaches the run directory."""
    import imacs
    from imacs import pipeline
    from imacs.settings import WhatIfSettings
    from imacs.stage import stage

    seen = {}

    @stage(
        "count",
        reads=("patches", "images", "warnings"),
        produces=("warnings",),
        settings=("whatif",),
    )
    def count(patches, images, warnings, **settings):
        seen.update(settings, n=len(patches))
        return {"warnings": [*warnings, f"{len(patches)} patches in {len(images)} images"]}

    at = [s.name for s in pipeline.STAGES].index("comparison") + 1
    monkeypatch.setattr(pipeline, "STAGES", (*pipeline.STAGES[:at], count, *pipeline.STAGES[at:]))
    run = imacs.analyze(
        shortcut["a"], shortcut["b"], shortcut["data"], tmp_path / "run",
        image_size=32, steps=8, projection="pca", trust_sample=0, whatif=False,
        progress=False, cache_dir=None,
    )  # fmt: skip
    assert isinstance(seen["whatif"], WhatIfSettings) and set(seen) == {"whatif", "n"}
    assert "count" in run.info.timings
    assert f"{seen['n']} patches in {len(run.images)} images" in run.warnings
