"""The package's architecture, checked: imports flow one way between its layers, no
cycles (function-level and ``if TYPE_CHECKING:`` imports included: a cycle hidden in a
function or in an annotation is still one in the design), serving loads without
DeepSpeed, and no function grows past a screenful."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(REPO, "dhrd")
MAX_FUNCTION_LINES = 80

# layer -> layers it must never import (directly, at any level of the file)
FORBIDDEN = {
    "data": {"model", "engine", "export", "serve", "experiment", "teacher", "loss"},
    "loss": {"data", "model", "engine", "export", "serve", "experiment", "teacher"},
    "model": {"engine", "export", "serve", "experiment", "teacher", "loss"},
    "engine": {"export", "serve", "experiment", "teacher"},
    "serve": {"engine", "export", "experiment", "teacher"},
    "export": {"experiment", "teacher"},
    "fileio": {"*"},
    "errors": {"*"},
}
# the leaves every layer may import -> the only layers each of them may import itself
LEAVES = {"fileio": set(), "errors": set(), "jsonl": {"errors", "fileio"}}


def modules() -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                out[name.removesuffix(".__init__")] = path
    return out


def imports_of(name: str, path: str) -> set[str]:
    """Every dhrd module ``name`` imports, anywhere in the file (annotation-only imports
included), resolved to a module."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dhrd"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "dhrd":
                continue
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}  # "from . import checkpoint"
    return found


def layer(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "dhrd"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imports_of(name, path) if m in mods and m != name} for name, path in mods.items()}


def test_imports_flow_one_way(graph):
    bad = [f"{src} imports {dst}" for src, dsts in graph.items() for dst in dsts
           if layer(dst) != layer(src) and ({layer(dst), "*"} & FORBIDDEN.get(layer(src), set()))]
    assert not bad, "\n".join(sorted(bad))


def test_leaves_import_only_leaves(graph):
    bad = [f"{src} imports {dst}" for src, dsts in graph.items() if layer(src) in LEAVES
           for dst in dsts if layer(dst) not in LEAVES[layer(src)]]
    assert not bad, "\n".join(sorted(bad))


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_cycles_between_modules_or_layers(graph):
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    layers: dict[str, set[str]] = {}
    for src, dsts in graph.items():
        if layer(src) == "dhrd":
            continue  # the entry points (cli, train, demo) may use every layer
        layers.setdefault(layer(src), set()).update(layer(d) for d in dsts if layer(d) not in (layer(src), "dhrd"))
    assert _cycle(layers) is None, " -> ".join(_cycle(layers))


def test_the_checker_sees_function_level_imports_and_cycles(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from ..engine import trainer\n")
    assert "dhrd.engine.trainer" in imports_of("dhrd.serve.m", str(src))
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_serving_loads_without_deepspeed_or_the_engine():
    code = ("import sys, dhrd.serve.http, dhrd.serve.predict, dhrd.serve.classifier; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('deepspeed', 'peft') "
            "or m.startswith(('dhrd.engine', 'dhrd.export'))); print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def test_no_function_over_a_screenful():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, "\n".join(long)
