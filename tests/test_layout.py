"""The test suite's own layout: helpers live in tests/support/, so no test module imports another
(a test module is collected by pytest; importing one from another runs its module-level code and
ties two files that should change independently)."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import ROOT

TESTS = ROOT / "tests"


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (imports inside functions count too)."""
    found: set[str] = set()
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add("." * node.level + node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def parsed(path: Path) -> ast.Module:
    """`path`'s syntax tree. CPython 3.11 keeps the AST converter's recursion count per interpreter,
    not per thread: when another thread of the suite (a stack stopping in the background) runs
    Python code mid-conversion, the count comes back wrong and `ast.parse` raises SystemError
    ("AST constructor recursion depth mismatch"); the source is fine, so it is parsed again."""
    source = path.read_text()
    for _ in range(PARSE_ATTEMPTS - 1):
        try:
            return ast.parse(source, str(path))
        except SystemError:
            continue
    return ast.parse(source, str(path))


PARSE_ATTEMPTS = 5


def is_test_module(name: str) -> bool:
    """A module of this suite (absolute or relative) named test_*; aiohttp.test_utils is not one."""
    ours = name.startswith(("tests.", "."))
    return ours and any(part.startswith("test_") for part in name.lstrip(".").split("."))


def test_no_module_imports_a_test_module() -> None:
    paths = sorted(path for folder in ("tests", "bench", "eval", "scripts") for path in (ROOT / folder).rglob("*.py"))
    offenders = {str(path.relative_to(ROOT)): sorted(filter(is_test_module, imported_modules(path))) for path in paths}
    assert not {path: names for path, names in offenders.items() if names}, "import helpers from tests/support/"
