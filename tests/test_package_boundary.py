"""The agent's package stands on its own: no module under nftproxy/ imports the test bed (e2e/: the
namespace cluster, the API stand-in, the demo, the benchmarks), which neither the wheel nor the
DaemonSet's image holds. The one exception, by name, is cli.cmd_from_checkout: `nftproxy demo` and
`nftproxy bench` run from a source checkout, and say so where the test bed is not installed."""

from __future__ import annotations

import ast
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nftproxy"
TEST_BED = "e2e"
#: (module, enclosing function) allowed to import the test bed: the lazy dispatch of demo and bench
ALLOWED = {("nftproxy.cli", "cmd_from_checkout")}


def _test_bed(name: object) -> bool:
    return isinstance(name, str) and (name == TEST_BED or name.startswith(TEST_BED + "."))


class _TestBedImports(ast.NodeVisitor):
    """Every import of the test bed in a module, with the function (innermost) it stands in: `import`
    and `from ... import` at any depth, and importlib.import_module / __import__ of a literal name."""

    def __init__(self) -> None:
        self.functions: list[str] = []
        self.found: list[tuple[int, str | None, str]] = []

    def _note(self, node: ast.AST, name: str) -> None:
        self.found.append((getattr(node, "lineno", 0), self.functions[-1] if self.functions else None, name))

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if _test_bed(alias.name):
                self._note(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level == 0 and _test_bed(node.module):
            self._note(node, str(node.module))

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            if _test_bed(node.args[0].value):
                self._note(node, str(node.args[0].value))
        self.generic_visit(node)


def find_test_bed_imports(source: str) -> list[tuple[int, str | None, str]]:
    visitor = _TestBedImports()
    visitor.visit(ast.parse(source))
    return visitor.found


def package_modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def test_no_module_of_the_package_imports_the_test_bed() -> None:
    places = {}
    for module, path in package_modules().items():
        for line, function, name in find_test_bed_imports(path.read_text()):
            places.setdefault((module, function), []).append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    stray = [where for place, lines in places.items() if place not in ALLOWED for where in lines]
    assert not stray, "the agent's package imports the test bed (e2e/), which its wheel and image do not hold:\n" + \
        "\n".join(stray)
    # the allowance names a place that still exists: when the dispatch goes, so must the exception
    assert set(places) == ALLOWED, f"allowed but no longer importing the test bed: {sorted(ALLOWED - set(places))}"


def test_the_check_sees_lazy_and_dynamic_imports() -> None:
    source = '''
import json
import e2e
from nftproxy import cli
from . import e2e_like

def top():
    import e2e.netns as harness

class Runner:
    def run(self):
        def inner():
            from e2e.bench.driver import run_bench
        import importlib
        importlib.import_module("e2e.demo")
        __import__("e2e2")
'''
    assert find_test_bed_imports(source) == [(3, None, "e2e"), (8, "top", "e2e.netns"),
                                             (13, "inner", "e2e.bench.driver"), (15, "run", "e2e.demo")]


def test_the_wheel_holds_the_package_alone() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["packages"] == ["nftproxy"]
    assert all(target.startswith("nftproxy/") for target in wheel.get("force-include", {}).values())


@pytest.mark.parametrize("command", ["demo", "bench"])
def test_demo_and_bench_without_the_test_bed_say_they_need_a_checkout(tmp_path: Path, command: str) -> None:
    """As in the image: the package and its dependencies importable, e2e not (isolated, no site and its .pth
    files, no PYTHONPATH, no checkout on the path). Were e2e importable after all, it stops before running."""
    (tmp_path / "nftproxy").symlink_to(PACKAGE)
    code = ("import sys, importlib.util; sys.path[:0] = sys.argv[1:3]\n"
            "if importlib.util.find_spec('e2e'): sys.exit('e2e is importable: not the situation this checks')\n"
            "from nftproxy.cli import main; sys.exit(main(sys.argv[3:]))")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(tmp_path), sysconfig.get_paths()["purelib"],
                           command],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"nftproxy {command} needs a source checkout" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
