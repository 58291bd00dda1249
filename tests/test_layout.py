"""The shape of the code: no import cycles between featcache's modules, no overlong functions, and every
docstring example runs (as embetter's test_docs does)."""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest
from helpers import ROOT, blobs, synthetic_store

PACKAGE = ROOT / "featcache"
MAX_FUNCTION_LINES = 60  # lines of a function body (signature and docstring not counted)
LONG_OK = "# long:"  # a comment on the line before the def, saying why this function stays long


def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), filename=str(p)) for p in sorted(PACKAGE.glob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """featcache module -> the featcache modules it imports anywhere (top level or inside functions)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, tree in mods.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("featcache")):
                target = (node.module or "").removeprefix("featcache").lstrip(".").split(".")[0]
                targets = [target] if target else [a.name for a in node.names]
                graph[name] |= {t for t in targets if t in mods and t != name}
            elif isinstance(node, ast.Import):
                graph[name] |= {a.name.split(".")[1] for a in node.names
                                if a.name.startswith("featcache.") and a.name.split(".")[1] in mods}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycles_inside_featcache():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_function_is_overlong_without_a_reason():
    too_long = []
    for name, tree in _modules().items():
        lines = (PACKAGE / f"{name}.py").read_text().splitlines()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                body = node.body[1:] if ast.get_docstring(node) and len(node.body) > 1 else node.body
                length = node.end_lineno - body[0].lineno + 1  # the body: not the signature, not the docstring
                reason = lines[first - 2].strip().startswith(LONG_OK) if first >= 2 else False
                if length > MAX_FUNCTION_LINES and not reason:
                    too_long.append(f"{name}.py:{node.lineno} {node.name} ({length} lines)")
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines without a '{LONG_OK}' comment: {too_long}"


@pytest.fixture(scope="module")
def doc_store(tmp_path_factory) -> str:
    X, y = blobs(30, n_classes=3, dim=8, sep=2.0)
    return str(synthetic_store(tmp_path_factory.mktemp("doctest") / "main.h5", X, y))


def _with_examples() -> list[str]:
    """The featcache modules whose docstrings hold ``>>>`` examples (found by reading, not importing)."""
    return sorted(p.stem for p in PACKAGE.glob("*.py") if ">>> " in p.read_text())


def test_there_are_docstring_examples():
    assert _with_examples(), "no docstring example found in featcache/"


@pytest.mark.parametrize("module", _with_examples())
def test_docstring_examples_run(module, doc_store, tmp_path, monkeypatch):
    """Every ``>>>`` example in featcache/ runs as written, with ``store`` a small store of separable features."""
    monkeypatch.chdir(tmp_path)
    mod = importlib.import_module(f"featcache.{module}" if module != "__init__" else "featcache")
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(mod, globs={**vars(mod), "store": doc_store, "Path": Path}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{module} has a '>>> ' that doctest does not find"
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples in {module} failed"


def test_the_command_line_starts_without_torch():
    """``--help`` and the parser of every command import neither torch nor the training code: the
    choices and defaults come from registries and dataclasses that stay light."""
    import subprocess
    import sys

    code = ("import sys; from featcache.cli import build_parser; build_parser(); "
            "heavy = [m for m in ('torch', 'torchvision', 'timm', 'featcache.training', 'featcache.nets') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_every_cli_example_parses():
    """The examples in each command's --help are real command lines (the parser accepts them)."""
    import shlex

    from featcache.cli import build_parser, commands

    parser = build_parser()
    for name, _, examples, _, _ in commands():
        lines = [ln.strip() for ln in examples.splitlines() if ln.strip().startswith("python -m featcache")]
        assert lines, f"{name} has no example"
        for line in lines:
            args = shlex.split(line.split("#")[0])[3:]
            parser.parse_args(args)
