"""The import graph of harness/ stays clean: no cycle among the imports
that run when a module loads, and no import from a lower stage to a higher
one (README, Layout): config -> kernel -> image -> machine -> session ->
scenario -> report, the drivers (pipeline, series, matrix, plugins, cli)
and the exporters (export) on top. The results contract and the verdict
policy (harness.report.results, harness.report.verdicts) are the
vocabulary every stage speaks, right above config; the base modules
(errors, ui, paths, timeouts, cache, debs, logwatch) sit below everything.
Read from the source with ast: nothing is imported."""

from __future__ import annotations

import ast
from collections.abc import Sequence
from pathlib import Path

import harness

HARNESS = Path(harness.__file__).resolve().parent

# Stage by module-name prefix, the longest prefix wins.
STAGES: dict[str, int] = {
    "harness": 0,
    "harness.errors": 0,
    "harness.ui": 0,
    "harness.paths": 0,
    "harness.timeouts": 0,
    "harness.cache": 0,
    "harness.debs": 0,
    "harness.logwatch": 0,
    "harness.config": 1,
    "harness.report.verdicts": 2,
    "harness.report.results": 2,
    "harness.kernel": 3,
    "harness.image": 4,
    "harness.machine": 5,
    "harness.session": 6,
    "harness.watchdog": 6,  # the cell watchdog: used by the engine (scenario)
    "harness.scenario": 7,
    "harness.report": 8,
    "harness.pipeline": 9,
    "harness.series": 9,
    "harness.matrix": 9,
    "harness.plugins": 9,
    "harness.options": 9,
    "harness.cli": 9,
    "harness.export": 9,
}


def stage(module: str) -> int:
    best = max((p for p in STAGES if module == p or module.startswith(p + ".")), key=len)
    return STAGES[best]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(HARNESS.rglob("*.py")):
        parts = path.relative_to(HARNESS.parent).with_suffix("").parts
        name = ".".join(parts).removesuffix(".__init__")
        out[name] = path
    return out


MODULES = _modules()


def _targets(node: ast.Import | ast.ImportFrom, package: str) -> set[str]:
    """The harness modules an import statement names: `from pkg import sub`
    names the submodule, `from mod import name` the module."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == "harness"}
    base = node.module or ""
    if node.level:  # relative: resolved against the importing package
        base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
    if base.split(".")[0] != "harness":
        return set()
    return {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(module: str, at_load_only: bool) -> set[str]:
    """What `module` imports; `at_load_only`: only what runs when it loads
    (not in a function, not under TYPE_CHECKING), the imports that can
    make a cycle."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: Sequence[ast.AST]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.update(_targets(node, package))
            elif at_load_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            elif at_load_only and isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    children = getattr(node, field, [])
                    visit(
                        [n for n in children if isinstance(n, ast.AST)] if isinstance(children, list) else []
                    )

    visit(ast.parse(path.read_text()).body)
    return {m for m in found if m != module}


def test_no_import_points_from_a_lower_stage_to_a_higher_one() -> None:
    upward = [
        f"{m} (stage {stage(m)}) imports {d} (stage {stage(d)})"
        for m in MODULES
        for d in sorted(imports(m, at_load_only=False))
        if stage(d) > stage(m)
    ]
    assert upward == []


def test_the_imports_at_load_make_no_cycle() -> None:
    graph = {m: imports(m, at_load_only=True) & MODULES.keys() for m in MODULES}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def walk(m: str) -> None:
        state[m] = 1
        path.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append([*path[path.index(d) :], d])
            elif d not in state:
                walk(d)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)
    assert cycles == []


def test_the_checker_sees_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    """The two rules can fail: a session module importing the scenario
    layer is upward, and two modules importing each other are a cycle."""
    assert stage("harness.session.guest") < stage("harness.scenario.runner")
    assert stage("harness.scenario.cells") < stage("harness.pipeline")
    assert "harness.scenario.runner" in imports("harness.scenario.cells", at_load_only=True)
    node = ast.parse("from harness.scenario import runner").body[0]
    assert isinstance(node, ast.ImportFrom)
    assert _targets(node, "harness.session") == {"harness.scenario.runner"}
    lazy = ast.parse("def f():\n    from harness import pipeline\n")
    assert isinstance(lazy.body[0], ast.FunctionDef)
    # The engine (scenario layer) names the pipeline nowhere, not even lazily.
    assert not any(
        stage(d) > stage("harness.scenario.cells") for d in imports("harness.scenario.cells", False)
    )
