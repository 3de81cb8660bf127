"""Code habits, checked with the tests: `ruff check` (nftproxy/, e2e/, tests/) and `mypy` (nftproxy/,
strict on objects/, desired/, diff/ and transaction/) find nothing. Both read their settings from
pyproject.toml.

In nftproxy/, every `# type: ignore[code]` also says why, in a comment after it.

The tool runs are skipped, with the reason, where the tool is not installed (`pip install -e '.[test]'`
brings both); .ci/run sets NFTPROXY_LINT_REQUIRED=1, which turns those skips into failures.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = os.environ.get("NFTPROXY_LINT_REQUIRED") == "1"
#: an ignore with its error code, then its reason: `# type: ignore[code]  # why`
IGNORE_WITH_REASON = re.compile(r"# type: ignore\[[a-z-]+(, *[a-z-]+)*\]  # \S")


def run_tool(module: str, *argv: str) -> None:
    """`python -m module argv...` from the top of the checkout; fails with the tool's output."""
    if importlib.util.find_spec(module) is None:
        reason = f"{module} is not installed (pip install -e '.[test]' installs it)"
        if REQUIRED:
            pytest.fail(f"NFTPROXY_LINT_REQUIRED=1 but {reason}")
        pytest.skip(reason)
    proc = subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        command = " ".join((module, *argv))
        pytest.fail(f"{command} (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}", pytrace=False)


def test_ruff_finds_nothing() -> None:
    run_tool("ruff", "check", "--no-cache", "nftproxy", "e2e", "tests")


def test_mypy_finds_nothing() -> None:
    run_tool("mypy")  # files and per-module strictness: [tool.mypy] in pyproject.toml


def test_type_ignores_in_the_package_say_why() -> None:
    bare = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for path in sorted((ROOT / "nftproxy").rglob("*.py"))
            for n, line in enumerate(path.read_text().splitlines(), 1)
            if "type: ignore" in line and not IGNORE_WITH_REASON.search(line)]
    assert not bare, "a # type: ignore needs its [code] and a reason after it:\n" + "\n".join(bare)
