"""The structure holds: the import contracts of .importlinter (floors that point down, nothing
imports app, routes never import routes, no cycles, independent domains and gateways), no import
ring anywhere in the project, and function-local imports only for optional heavy libraries."""
from __future__ import annotations

import ast
import re

import pytest

from tests.support.import_contracts import build_graph, check, project_modules

# Loaded inside the function that needs them, each for its import cost (a comment says why).
HEAVY_OPTIONAL = ("reportlab", "qrcode", "google", "rq", "sendgrid", "sentry_sdk")


def test_the_import_contracts_hold(capsys):
    kept = check()
    report = capsys.readouterr().out
    assert kept, report
    assert "0 broken" in report


@pytest.mark.parametrize("importer, imported, contract", [
    ("models", "services.jobs", "Floors point down"),
    ("utils.helpers", "models", "Floors point down"),
    ("services.course_service", "auth", "Floors point down"),
    ("services.jobs", "app", "Nothing imports app"),
    ("routes.public_routes", "routes.course_routes", "Routes never import routes"),
    ("services.jobs", "services.email_service", "No import cycles"),
    ("services.course_service", "services.catalog_service", "Domain services that stand alone"),
])
def test_a_wrong_import_breaks_its_contract(capsys, importer, imported, contract):
    assert not check(extra_imports=((importer, imported),))
    report = " ".join(capsys.readouterr().out.split())  # names wrap at 80 columns
    verdict = re.search(re.escape(contract) + r".*? (KEPT|BROKEN)\b", report)
    assert verdict and verdict.group(1) == "BROKEN", report


def _rings(graph, ignored=frozenset()):
    """Strongly connected components of more than one module (Tarjan)."""
    edges = {m: {d for d in graph.find_modules_directly_imported_by(m) if (m, d) not in ignored}
             for m in graph.modules}
    index, low, stack, on_stack, rings, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            ring = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                ring.append(item)
                if item == node:
                    break
            if len(ring) > 1:
                rings.append(sorted(ring))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return rings


def test_no_import_ring_anywhere():
    """Across the whole project, top-level modules included, imports inside functions too."""
    assert _rings(build_graph()) == []
    # ... and the check finds one where there is one.
    assert _rings(build_graph(extra_imports=(("models", "utils.pagination"),))) != []


def test_function_local_imports_only_load_optional_heavy_libraries():
    found = []
    for name, path in project_modules().items():
        source = path.read_text()
        lines = source.splitlines()
        for function in ast.walk(ast.parse(source)):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                heavy = (module or "").split(".")[0] in HEAVY_OPTIONAL
                line = lines[node.lineno - 1]
                above = lines[node.lineno - 2].strip()
                reason = "#" in line or above.startswith("#") or _in_group_with_reason(
                    lines, node.lineno)
                if not (heavy and reason):
                    found.append(f"{path.name}:{node.lineno}: {line.strip()}")
    assert not found, "function-local imports that are not an optional heavy library with " \
                      "its reason:\n" + "\n".join(found)


def _in_group_with_reason(lines: list[str], lineno: int) -> bool:
    """An import in a run of imports whose first line has the reason above it."""
    number = lineno - 1
    while number > 0 and lines[number - 1].strip().startswith(("from ", "import ", ")")) \
            or number > 0 and lines[number - 1].startswith("        "):
        if lines[number - 1].strip().startswith("#"):
            return True
        number -= 1
    return number > 0 and lines[number - 1].strip().startswith("#")
