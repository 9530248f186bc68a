"""The protocol core stays pure: no I/O, clock or logging modules."""

from __future__ import annotations

import ast
from pathlib import Path

import postoffice.proto

FORBIDDEN = {"asyncio", "socket", "ssl", "os", "time", "logging", "selectors", "threading"}
FORBIDDEN_PACKAGES = {"postoffice.storage", "postoffice.server", "postoffice.auth"}


def test_protocol_core_imports_nothing_impure() -> None:
    package = Path(postoffice.proto.__file__).parent
    sources = sorted(package.glob("*.py"))
    assert sources
    for source in sources:
        tree = ast.parse(source.read_text(), str(source))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{source.name} imports {name}"
                assert not any(name.startswith(p) for p in FORBIDDEN_PACKAGES), (
                    f"{source.name} imports {name}"
                )
