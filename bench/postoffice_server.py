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

import shutil
import subprocess
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


class PostofficeServer:
    """``postoffice serve --config`` serving ``corpus`` on ``127.0.0.1:port``."""

    name = "postoffice"

    def __init__(
        self, corpus: Corpus, *, max_sessions: int = 5000, extra: dict[str, Any] | None = None
    ) -> None:
        self.corpus = corpus
        self.max_sessions = max_sessions
        self.extra = extra or {}
        self.port = 0
        self.root: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

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
        stderr = root / "stderr.log"
        with open(stderr, "wb") as err:
            self.process = subprocess.Popen(
                [str(POSTOFFICE), "serve", "--config", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                preexec_fn=procs.raise_nofile,  # no threads here: safe
            )
        try:
            procs.wait_for_greeting(self.port, self.process, stderr, "postoffice")
        except BaseException:
            self.stop()
            raise

    def pids(self) -> list[int]:
        return procs.session_pids(self.process.pid) if self.process else []

    def cpu_seconds(self) -> float:
        if self.process is None:
            return 0.0
        return procs.cpu_seconds(self.process.pid, self.pids())

    def log_tail(self, lines: int = 20) -> str:
        if self.root is None:
            return ""
        text = ""
        for name in ("postoffice.log", "stderr.log"):
            path = self.root / name
            if path.exists():
                text += "".join(path.read_text(errors="replace").splitlines(True)[-lines:])
        return text

    def warnings(self) -> list[str]:
        if self.root is None or not (self.root / "postoffice.log").exists():
            return []
        text = (self.root / "postoffice.log").read_text(errors="replace")
        return [
            line
            for line in text.splitlines()
            if (" WARNING " in line or " ERROR " in line) and "PLAIN" not in line
        ]

    def stop(self, *, keep: bool = False) -> None:
        if self.process is not None:
            procs.stop_session(self.process)
            self.process = None
        if self.root is not None and not keep:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> PostofficeServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
