"""Imports point one way: every import under vila_edge/ and export/ (those inside functions included)
goes to the same layer or one below it (vila_edge.LAYERS), closes no cycle, and never joins the cpu
and trt paths."""

import ast
import re
from pathlib import Path

import pytest

from vila_edge import INDEPENDENT, LAYERS

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = {"vila_edge": ROOT / "vila_edge", "vila_edge.export": ROOT / "export"}
EXTENSIONS = ("vila_edge._runtime",)  # compiled modules: no source to parse


def module_files() -> dict[str, Path]:
    """Dotted module name (packages by their own name) -> source file."""
    files = {}
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join([package, *parts])] = path
    return files


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported vila_edge module, line) for every import in the file, wherever it sits."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "vila_edge"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "vila_edge":
                continue
            for alias in node.names:  # `from pkg import module` imports the module
                sub = f"{target}.{alias.name}"
                found.append((sub if sub in known else target, node.lineno))
    return [(t, line) for t, line in found if t != name]


def import_graph() -> dict[str, list[tuple[str, int]]]:
    files = module_files()
    known = set(files) | set(EXTENSIONS)
    return {name: imports_of(name, path, known) for name, path in files.items()}


def layer_of(module: str) -> int:
    """Index into LAYERS: a module's own entry, else its package's (`quant.awq` is in `quant`)."""
    short = module.removeprefix("vila_edge.") if module != "vila_edge" else module
    for candidate in (short, short.split(".")[0]):
        for i, (_, members) in enumerate(LAYERS):
            if candidate in members:
                return i
    raise LookupError(f"{module} is in no layer of vila_edge.LAYERS; add it to the layer it belongs to")


def upward_imports(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    problems = []
    for module, imports in graph.items():
        for target, line in imports:
            if layer_of(target) > layer_of(module):
                problems.append(
                    f"{module} (line {line}) imports {target}: layer '{LAYERS[layer_of(module)][0]}' may not import "
                    f"up into layer '{LAYERS[layer_of(target)][0]}'"
                )
    return problems


def crossed_paths(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    problems = []
    for module, imports in graph.items():
        short = module.removeprefix("vila_edge.")
        for target, line in imports:
            other = target.removeprefix("vila_edge.")
            for a, b in INDEPENDENT:
                if (short.startswith(a) and other.startswith(b)) or (short.startswith(b) and other.startswith(a)):
                    problems.append(f"{module} (line {line}) imports {target}: {a} and {b} stay independent")
    return problems


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as a closed path."""
    edges = {m: sorted({t for t, _ in imports if t in graph}) for m, imports in graph.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_every_module_has_a_layer():
    for module in module_files():
        layer_of(module)


def test_no_import_points_up_a_layer():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_cpu_and_trt_paths_do_not_import_each_other():
    assert crossed_paths(import_graph()) == []


def test_the_check_catches_an_upward_import_and_a_cycle():
    graph = {
        "vila_edge.model.vlm": [("vila_edge.quant.awq", 12)],
        "vila_edge.quant.awq": [("vila_edge.model.vlm", 40)],
        "vila_edge.runtime.trt": [("vila_edge.runtime.cpu", 20)],
        "vila_edge.runtime.cpu": [],
    }
    assert upward_imports(graph) == [
        "vila_edge.model.vlm (line 12) imports vila_edge.quant.awq: layer 'front, model' may not import up into layer 'quant'"
    ]
    assert cycles(graph) == [["vila_edge.model.vlm", "vila_edge.quant.awq"]]
    assert crossed_paths(graph) == [
        "vila_edge.runtime.trt (line 20) imports vila_edge.runtime.cpu: runtime.cpu and runtime.trt stay independent"
    ]
    with pytest.raises(LookupError, match="vila_edge.newthing is in no layer"):
        layer_of("vila_edge.newthing")


def test_relative_imports_inside_functions_are_seen(tmp_path):
    source = tmp_path / "vlm.py"
    source.write_text("def f():\n    from ..quant.awq import run_awq\n    from .. import _runtime\n")
    known = {"vila_edge.quant.awq", "vila_edge._runtime"}
    assert imports_of("vila_edge.model.vlm", source, known) == [("vila_edge.quant.awq", 2), ("vila_edge._runtime", 3)]



def test_the_readme_layout_lists_every_module():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    named = set(re.findall(r"`([a-z_0-9]+\.py)`", layout))
    modules = {path.name for path in module_files().values() if path.name != "__init__.py"}
    modules -= {"__main__.py"}
    assert modules - named == set(), "modules missing from the README's Layout table"
    benchmarks = {path.name for path in (ROOT / "benchmarks").glob("*.py")}
    assert named - modules - benchmarks - {"__init__.py", "rtsp_server.py", "test_layers.py", "test_rtsp.py"} == set()


MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 50


def test_modules_and_functions_stay_short():
    long_modules, long_functions = {}, {}
    for name, path in module_files().items():
        text = path.read_text()
        if (n := len(text.splitlines())) > MAX_MODULE_LINES:
            long_modules[name] = n
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    long_functions[f"{name}.{node.name}"] = n
    assert (long_modules, long_functions) == ({}, {})
