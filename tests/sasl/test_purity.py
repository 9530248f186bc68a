"""The SASL core stays pure: no I/O, clock or logging modules, no server or storage code."""

from __future__ import annotations

import ast
from pathlib import Path

import postoffice.sasl

FORBIDDEN = {"asyncio", "socket", "ssl", "os", "time", "logging", "selectors", "threading"}
FORBIDDEN_PACKAGES = (
    "postoffice.server",
    "postoffice.storage",
    "postoffice.fetch",
    "postoffice.auth",
)
# stored.py reads the passwd-file's verifier format through the pure scheme parser.
ALLOWED = {("stored.py", "postoffice.auth.schemes")}


def imported_names(source: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{source.name}: relative import"
            assert node.module is not None
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_sasl_imports_nothing_impure() -> None:
    sources = sorted(Path(postoffice.sasl.__file__).parent.glob("*.py"))
    assert len(sources) > 5
    for source in sources:
        allowed = tuple(module for file, module in ALLOWED if file == source.name)
        for name in imported_names(source):
            assert name.split(".")[0] not in FORBIDDEN, f"{source.name} imports {name}"
            if allowed and name.startswith(allowed):
                continue
            assert not name.startswith(FORBIDDEN_PACKAGES), f"{source.name} imports {name}"


def test_the_walk_catches_an_impure_import(tmp_path: Path) -> None:
    source = tmp_path / "bad.py"
    source.write_text("def f():\n    from os import path\n    import ssl\n")
    assert imported_names(source) == ["os", "os.path", "ssl"]
