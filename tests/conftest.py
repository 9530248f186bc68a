"""Shared fixtures: a real postoffice server on a loopback port with real Maildirs."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from postoffice.auth import authenticator as authenticator_module
from postoffice.auth import passwd_file, schemes
from postoffice.config import load_config
from postoffice.delivery.maildir import deliver_to_maildir
from postoffice.secret import Secret
from postoffice.server.app import Pop3Server

BASE_CONFIG: dict[str, Any] = {
    "data_dir": "var",
    "log_level": "debug",
    "pop3": {"listen": ["127.0.0.1:0"]},
    "pop3s": {"listen": ["127.0.0.1:0"]},
    "lmtp": {"listen": ["127.0.0.1:0"]},
    "auth": {"failure_delay": 0},
    "limits": {"shutdown_timeout": 1},
}


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, table by table."""
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def require_tool(name: str) -> str:
    """The path of an interop client; skip (or fail in CI) when it is missing."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("POSTOFFICE_REQUIRE_INTEROP"):
            pytest.fail(f"{name} is required in CI but is not installed")
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return path


@dataclass
class ServerHarness:
    """A running server and the folders behind it."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 0
    tls_port: int = 0
    lmtp_port: int = 0
    server: Pop3Server | None = None
    loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None
    users: dict[str, str] = field(default_factory=dict)

    @property
    def passwd(self) -> Path:
        return self.root / "var" / "passwd"

    def maildir(self, user: str) -> Path:
        return self.root / "var" / "mail" / user / "Maildir"

    def add_user(self, name: str, password: str) -> None:
        self.passwd.parent.mkdir(parents=True, exist_ok=True)
        passwd_file.add_user(self.passwd, name, "{PLAIN}" + password)
        self.users[name] = password

    def deliver(self, user: str, message: bytes) -> str:
        return deliver_to_maildir(self.maildir(user), message)

    def start(self, extra_config: str = "", **tables: dict[str, Any]) -> None:
        """Start serving; ``extra_config`` (TOML) and ``tables`` override the test defaults."""
        data = merged(merged(BASE_CONFIG, tomllib.loads(extra_config)), tables)
        config = load_config(data=data, base=self.root)
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self.loop = loop
            server = Pop3Server(config)
            self.server = server
            try:
                loop.run_until_complete(server.start())
            except BaseException as error:
                failure.append(error)
                ready.set()
                return
            ready.set()
            loop.run_until_complete(server.serve_until_stopped())
            loop.close()

        self.thread = threading.Thread(target=run, name="pop3-server", daemon=True)
        self.thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        assert self.server is not None
        self.host, self.port = self.server.addresses[0]
        if self.server.tls_addresses:
            self.tls_port = self.server.tls_addresses[0][1]
        for address in self.server.lmtp_addresses:
            if isinstance(address, tuple):
                self.lmtp_port = address[1]
                break

    def stop(self) -> None:
        if self.server is not None and self.loop is not None and self.thread is not None:
            if self.thread.is_alive():
                self.loop.call_soon_threadsafe(self.server.request_stop)
                self.thread.join(30)
            self.server = None


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[ServerHarness]:
    """A server not yet started: add users and mail, then call ``start()``."""
    server = ServerHarness(root=tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pop3_server(harness: ServerHarness) -> ServerHarness:
    """A started server with users alice (password 'secret') and bob ('hunter2')."""
    harness.add_user("alice", "secret")
    harness.add_user("bob", "hunter2")
    harness.start()
    return harness


@pytest.fixture
def checked_hashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every stored hash the authenticator verifies against."""
    seen: list[str] = []
    real = schemes.verify_password

    def recording(stored: str, candidate: Secret) -> bool:
        seen.append(stored)
        return real(stored, candidate)

    monkeypatch.setattr(authenticator_module, "verify_password", recording)
    return seen
