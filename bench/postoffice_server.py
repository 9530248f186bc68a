"""``postoffice serve`` on a loopback port with a private configuration, for the benchmark.

It reads the corpus' passwd-file and Maildirs (``mail.maildir = "{home}/Maildir"``, the home
field of the passwd-file, as Dovecot's ``maildir:~/Maildir``), has no TLS listener and no
STLS (Dovecot runs with ``ssl = no``), and limits raised so the idle-session test can hold
its sessions, all from 127.0.0.1. Everything else is postoffice's default. ``extra`` is laid
over the configuration table by table (``--postoffice-set workers=2`` in ``bench.run``), for
whoever tunes the server.

The server runs in a session of its own, as root like Dovecot's master (no ``process.user``);
it is stopped by PID, and anything left of its session is killed by PID.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import procs
from bench.corpus import Corpus

POSTOFFICE = Path(sys.executable).with_name("postoffice")


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` laid over it, table by table."""
    result = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(result[key], value)
        else:
            result[key] = value
    return result


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(table: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for nested tables of strings, numbers, booleans and lists."""
    lines = [
        f"{key} = {_toml_value(value)}"
        for key, value in table.items()
        if not isinstance(value, dict)
    ]
    text = "\n".join(lines) + ("\n" if lines else "")
    for key, value in table.items():
        if isinstance(value, dict):
            name = f"{prefix}.{key}" if prefix else key
            text += f"\n[{name}]\n" + to_toml(value, name)
    return text


def parse_setting(text: str) -> dict[str, Any]:
    """``a.b=value`` (value in TOML syntax, bare words taken as strings) as a nested table."""
    import tomllib

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    table: dict[str, Any] = {}
    node = table
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return table


def _accepted(table: dict[str, Any], root: Path) -> bool:
    """Whether the installed postoffice accepts this configuration."""
    from postoffice.config import load_config
    from postoffice.errors import ConfigError

    try:
        load_config(data=table, base=root)
    except ConfigError:
        return False
    return True


class PostofficeServer(procs.ManagedServer):
    """``postoffice serve --config`` serving ``corpus`` on ``127.0.0.1:port``."""

    name = "postoffice"
    log_name = "postoffice.log"

    def __init__(
        self, corpus: Corpus, *, max_sessions: int = 5000, extra: dict[str, Any] | None = None
    ) -> None:
        self.corpus = corpus
        self.max_sessions = max_sessions
        self.extra = extra or {}
        super().__init__()

    def config(self, root: Path) -> dict[str, Any]:
        connections = self.max_sessions + 1000
        base: dict[str, Any] = {
            "data_dir": str(root / "var"),
            "log_file": str(root / "postoffice.log"),
            "pop3": {"listen": [f"127.0.0.1:{self.port}"], "stls": False},
            "pop3s": {"listen": []},
            "auth": {"passwd_file": str(self.corpus.passwd)},
            "mail": {"maildir": "{home}/Maildir"},
            "limits": {
                "max_connections": connections,
                "max_connections_per_ip": connections,
                "shutdown_timeout": 2,
            },
        }
        # Settings only newer servers know (an older one refuses unknown keys): no LMTP
        # listener, so no fixed port is taken.
        optionals: list[dict[str, Any]] = [{"lmtp": {"listen": []}}]
        for optional in optionals:
            if _accepted(merged(base, optional), root):
                base = merged(base, optional)
        return merged(base, self.extra)

    def start(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="bench-postoffice-"))
        self.root = root
        self.port = procs.free_port()
        config = root / "postoffice.toml"
        config.write_text(to_toml(self.config(root)))
        self.launch([str(POSTOFFICE), "serve", "--config", str(config)], "postoffice")

    def warnings(self) -> list[str]:
        text = self.log_text()
        return [
            line
            for line in text.splitlines()
            if (" WARNING " in line or " ERROR " in line) and "PLAIN" not in line
        ]
