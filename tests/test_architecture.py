"""The layer picture of docs/architecture.md, checked on the code's own imports."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")  # import-linter, in the test extra
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert "0 broken" in result.stdout, result.stdout[-3000:]
    assert result.returncode == 0


def test_no_module_import_cycles():
    import grimp  # import-linter's graph builder
    import networkx as nx

    graph = grimp.build_graph("compiler", "passes", "targets", "models")
    edges = nx.DiGraph()
    for module in graph.modules:
        edges.add_edges_from((module, d) for d in graph.find_modules_directly_imported_by(module))
    cycles = [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1]
    assert cycles == []


def test_foundation_imports_nothing_above_it():
    code = ("import sys, pkgutil, importlib, compiler.core as core\n"
            "for m in pkgutil.iter_modules(core.__path__):\n"
            "    importlib.import_module(f'compiler.core.{m.name}')\n"
            "above = sorted(m for m in sys.modules if m.split('.')[0] in ('passes', 'targets',"
            " 'models') or m.startswith(('compiler.driver', 'compiler.cli')))\n"
            "print(above)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.strip() == "[]"
