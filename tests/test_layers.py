"""The import layering of the package: core <- codegen <- runtime <- passes <- compiler, and no cycles.

Every import statement of every module counts, also those inside functions (a lazy import is still a
dependency).  ``fp4.core`` (and ``fp4.target``, its name for the target) imports nothing of the project;
``fp4.codegen`` only the core; ``fp4.runtime`` the core and ``fp4.codegen``; ``fp4.passes`` those and the
runtime; the compiler modules of ``fp4`` anything.  The package root ``fp4/__init__.py`` is not a layer:
importing any ``fp4.*`` module runs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"compiler": "fp4", "passes": "fp4.passes", "codegen": "fp4.codegen", "runtime": "fp4.runtime"}
LEAF = {"fp4.core", "fp4.target"}
RANK = {"core": 0, "fp4.codegen": 1, "fp4.runtime": 2, "fp4.passes": 3, "fp4": 4}
UPWARD = {("fp4.runtime.oracle", "fp4.options")}
"""The one import that goes up, lazily: ``fp4.quartetize(model, options)`` reads the backend's options (and so
chooses exactly the layers the backend rewrites); ``fp4.options`` imports nothing of the runtime, so no cycle."""


def _modules() -> dict[str, Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            modules[package if path.name == "__init__.py" else f"{package}.{path.stem}"] = path
    return modules


def _layer(module: str) -> str:
    if module in LEAF:
        return "core"
    for package in ("fp4.passes", "fp4.codegen", "fp4.runtime"):
        if module == package or module.startswith(package + "."):
            return package
    return "fp4"


def _imports(module: str, path: Path, modules: dict) -> set[str]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package
                for _ in range(node.level - 1):
                    parent = parent.rsplit(".", 1)[0]
                base = f"{parent}.{base}" if base else parent
            names = [f"{base}.{alias.name}" for alias in node.names]
            hits = [name for name in names if name in modules]
            found.update(hits or ([base] if base in modules else []))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
    found.discard(module)
    found.discard("fp4")  # the package root runs on any import of fp4.*
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {module: _imports(module, path, modules) for module, path in modules.items() if module != "fp4"}


def test_every_import_goes_down_the_layers():
    wrong = [
        f"{module} ({_layer(module)}) imports {target} ({_layer(target)})"
        for module, targets in _graph().items()
        for target in sorted(targets)
        if RANK[_layer(target)] > RANK[_layer(module)] and (module, target) not in UPWARD
    ]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_the_core_imports_nothing_of_the_project():
    graph = _graph()
    assert graph["fp4.core"] == set()
    assert graph["fp4.target"] <= {"fp4.core"}


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(module, stack):
        state[module] = 1
        for target in graph.get(module, ()):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target) :] + [target]))
            elif target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_lazy_and_relative_imports():
    # the test would pass vacuously if it missed imports: check it finds known ones of each kind
    graph = _graph()
    assert "fp4.core" in graph["fp4.codegen.lanes"]  # from fp4 import core
    assert "fp4.codegen.spec" in graph["fp4.runtime.kernels"]  # absolute, top level
    assert "fp4.runtime.ops" in graph["fp4.runtime.launch"]  # relative: from . import ops
    assert "fp4.core" in graph["fp4.runtime.oracle"]  # inside a function
