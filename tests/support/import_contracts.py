"""The import-linter contracts in .importlinter, checked over the whole project.

import-linter's own command builds its graph with grimp, which takes packages only, and four of
our floors are single modules at the top (app.py, auth.py, config.py, models.py: the layout the
spec fixes). So the graph is built here, by reading every project file's imports (those inside
functions too), and handed to import-linter, which checks the contracts as it always does.

    .venv/bin/python -m tests.support.import_contracts     # the report; exit 1 if one is broken
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import grimp
from importlinter.application import use_cases
from importlinter.application.app_config import settings
from importlinter.application.ports.building import GraphBuilder
from importlinter.configuration import configure

ROOT = Path(__file__).resolve().parents[2]
TOP_MODULES = ("app", "auth", "config", "models")
PACKAGES = ("routes", "services", "utils")
CONFIG = ROOT / ".importlinter"


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of ours, by dotted name."""
    modules = {name: root / f"{name}.py" for name in TOP_MODULES}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imports(tree: ast.AST, modules: dict[str, Path]):
    """(line, name) of each project module a file imports."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    yield node.lineno, submodule
                elif node.module in modules:
                    yield node.lineno, node.module


def build_graph(extra_imports: tuple[tuple[str, str], ...] = ()) -> grimp.ImportGraph:
    """The project's import graph; `extra_imports` (importer, imported) are added to it, for
    the test that shows a broken contract is reported."""
    modules = project_modules()
    graph = grimp.ImportGraph()
    for name in modules:
        graph.add_module(name)
    for name, path in modules.items():
        source = path.read_text()
        lines = source.splitlines()
        for line, imported in _imports(ast.parse(source, str(path)), modules):
            if imported != name:
                graph.add_import(importer=name, imported=imported, line_number=line,
                                 line_contents=lines[line - 1].strip())
    for importer, imported in extra_imports:
        graph.add_import(importer=importer, imported=imported, line_number=1,
                         line_contents=f"import {imported}")
    return graph


class ProjectGraphBuilder(GraphBuilder):
    def __init__(self, extra_imports: tuple[tuple[str, str], ...] = ()):
        self.extra_imports = extra_imports

    def build(self, root_package_names, cache_dir, include_external_packages=False,
              exclude_type_checking_imports=False) -> grimp.ImportGraph:
        return build_graph(self.extra_imports)


def check(extra_imports: tuple[tuple[str, str], ...] = (), verbose: bool = False) -> bool:
    """Check the contracts (import-linter prints its report); True when all are kept."""
    configure()
    settings.configure(GRAPH_BUILDER=ProjectGraphBuilder(extra_imports))
    return use_cases.lint_imports(config_filename=str(CONFIG), cache_dir=None, no_logo=True,
                                  verbose=verbose)


if __name__ == "__main__":
    sys.exit(0 if check() else 1)
