"""A private Dovecot (Debian's 2.3 packages) on a loopback port, for side-by-side figures.

Each instance has its own folder (``base_dir``, ``state_dir``, log file, ``dovecot.conf``);
nothing under ``/etc/dovecot`` is read. It serves POP3 only, without TLS, with the
compiled-in defaults except what the benchmark needs:

- ``passdb``/``userdb`` ``passwd-file`` on the corpus' passwd-file (``{PLAIN}`` passwords,
  uid/gid/home in the file), ``mail_location = maildir:~/Maildir``: the same users and
  Maildirs postoffice serves;
- ``pop3_uidl_format = %08Xu%08Xv``;
- enough processes for the idle-session test: ``service pop3 { process_limit }`` (default
  1024, one pop3 process per session) and ``default_client_limit`` (the log, anvil, stats
  and auth services have one client per process) are raised to hold ``max_sessions``.

Two modes: ``default``, and ``high-performance`` (``service pop3-login { service_count = 0;
process_min_avail = <cores>; vsz_limit = 1G }``, Dovecot's documented high-performance login
mode: a few long-lived login processes instead of one per connection).

Dovecot needs root (it switches to ``dovenull`` for logins, ``dovecot`` for its internal
services and the passwd-file's uid for mail). The master runs in the foreground (``-F``)
in a session of its own; it is stopped by PID and any process of its session still alive
afterwards is killed by PID (``procs.stop_session``).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from pathlib import Path

from bench import procs
from bench.corpus import Corpus

DOVECOT = Path("/usr/sbin/dovecot")
MODES = ("default", "high-performance")


def ensure_installed() -> None:
    """Install Debian's Dovecot (core and POP3) when it is missing."""
    if DOVECOT.exists():
        return
    if os.geteuid() != 0:
        raise RuntimeError("dovecot is missing: apt-get install -y dovecot-core dovecot-pop3d")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("installing dovecot-core and dovecot-pop3d...", flush=True)
    subprocess.run(["apt-get", "update"], check=False, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "dovecot-core", "dovecot-pop3d"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    if not DOVECOT.exists():
        raise RuntimeError("apt-get installed Dovecot, yet /usr/sbin/dovecot is missing")


def version() -> str:
    result = subprocess.run([str(DOVECOT), "--version"], capture_output=True, text=True)
    return result.stdout.strip()


def _user_or(name: str, fallback: str) -> str:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return fallback
    return name


class DovecotServer(procs.ManagedServer):
    log_name = "dovecot.log"
    """One private Dovecot instance serving ``corpus`` on ``127.0.0.1:port``."""

    def __init__(self, corpus: Corpus, *, mode: str = "default", max_sessions: int = 5000) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.corpus = corpus
        self.mode = mode
        self.max_sessions = max_sessions
        super().__init__()

    @property
    def name(self) -> str:
        return "dovecot" if self.mode == "default" else "dovecot-hp"

    def config_text(self, root: Path) -> str:
        cores = os.cpu_count() or 1
        sessions = self.max_sessions + 200
        login = (
            f"""
  service_count = 0
  process_min_avail = {cores}
  vsz_limit = 1G"""
            if self.mode == "high-performance"
            else ""
        )
        return f"""# Written by bench/dovecot.py ({self.mode} mode); see that file.
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = {_user_or("dovecot", "nobody")}
default_internal_group = {_user_or("dovecot", "nogroup")}
default_login_user = {_user_or("dovenull", "nobody")}
default_client_limit = {sessions + 1000}
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {self.corpus.passwd}
}}
userdb {{
  driver = passwd-file
  args = {self.corpus.passwd}
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener pop3s {{
    port = 0
  }}{login}
}}
service pop3 {{
  process_limit = {sessions}
}}
"""

    def start(self) -> None:
        ensure_installed()
        if os.geteuid() != 0:
            raise RuntimeError("the private Dovecot needs root (it switches users)")
        root = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        root.chmod(0o755)  # its unprivileged processes enter it
        self.root = root
        self.port = procs.free_port()
        config = root / "dovecot.conf"
        config.write_text(self.config_text(root))
        self.launch([str(DOVECOT), "-F", "-c", str(config)], "dovecot")

    def warnings(self) -> list[str]:
        """Warnings and errors Dovecot logged (a refused or insufficient setting shows here)."""
        text = self.log_text()
        return [line for line in text.splitlines() if "Warning:" in line or "Error:" in line]


if __name__ == "__main__":
    import argparse
    import signal
    import sys

    from bench.corpus import FULL, QUICK, default_root, ensure_corpus

    parser = argparse.ArgumentParser(description="Run a private Dovecot on the corpus.")
    parser.add_argument("--mode", choices=MODES, default="default")
    parser.add_argument("--quick", action="store_true", help="the quick corpus")
    args = parser.parse_args()
    spec = QUICK if args.quick else FULL
    server = DovecotServer(ensure_corpus(default_root(args.quick), spec), mode=args.mode)
    server.start()
    print(f"{server.name} (pid {server.pids()}) on 127.0.0.1:{server.port}; Ctrl-C stops it")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
