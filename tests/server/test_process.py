"""The server as a separate process: signals, kill -9, and the CLI around it."""

from __future__ import annotations

import os
import poplib
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from postoffice.auth import passwd_file
from postoffice.auth.schemes import hash_password
from postoffice.delivery.maildir import deliver_to_maildir
from postoffice.secret import Secret

POSTOFFICE = [sys.executable, "-m", "postoffice"]


class ServerProcess:
    def __init__(self, root: Path, extra: str = "") -> None:
        self.root = root
        self.config = root / "postoffice.toml"
        self.config.write_text(
            'data_dir = "var"\n[pop3]\nlisten = ["127.0.0.1:0"]\n'
            "[auth]\nfailure_delay = 0\n[limits]\nshutdown_timeout = 1\n"
            + (extra if "[pop3s]" in extra else "[pop3s]\nlisten = []\n" + extra)
            + "[lmtp]\nlisten = []\n"
        )
        (root / "var").mkdir(exist_ok=True)
        self.log = root / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*POSTOFFICE, "serve", "--config", str(self.config)],
            stderr=open(self.log, "wb"),  # noqa: SIM115 - owned by the process
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            match = re.search(r" POP3 listening on 127\.0\.0\.1:(\d+)", self.log.read_text())
            if match:
                self.port = int(match.group(1))
                return
            if self.process.poll() is not None:
                raise AssertionError("server exited: " + self.log.read_text())
            time.sleep(0.02)
        raise AssertionError("server did not start: " + self.log.read_text())

    def wait_for_workers(self, count: int) -> None:
        deadline = time.monotonic() + 20
        while f"started {count} worker processes" not in self.log.read_text():
            assert time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.02)  # polling the log of another process

    def tls_port(self) -> int:
        match = re.search(r"POP3S listening on 127\.0\.0\.1:(\d+)", self.log.read_text())
        assert match, self.log.read_text()
        return int(match.group(1))

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path)
    passwd_file.add_user(tmp_path / "var" / "passwd", "alice", "{PLAIN}secret")
    try:
        yield server
    finally:
        server.stop()


def maildir(root: Path) -> Path:
    return root / "var" / "mail" / "alice" / "Maildir"


def login(port: int, user: str = "alice", password: str | None = None) -> poplib.POP3:
    """A logged-in session; alice's password is the fixture's."""
    pop = poplib.POP3("127.0.0.1", port, timeout=30)
    pop.user(user)
    assert pop.pass_("secret" if password is None else password).startswith(b"+OK")
    return pop


def test_sigterm_closes_sessions_without_deleting(server_process: ServerProcess) -> None:
    deliver_to_maildir(maildir(server_process.root), b"Subject: a\n\nbody\n")
    server_process.start()
    pop = login(server_process.port)
    pop.dele(1)
    assert server_process.process is not None
    server_process.process.send_signal(signal.SIGTERM)
    assert server_process.process.wait(15) == 0
    log = server_process.log.read_text()
    assert "stopped" in log
    assert "reason=server shutdown" in log
    files = list((maildir(server_process.root) / "new").iterdir())
    assert len(files) == 1


def test_kill_9_during_update_leaves_every_message_whole_or_gone(
    server_process: ServerProcess,
) -> None:
    box = maildir(server_process.root)
    originals: set[bytes] = set()
    for index in range(1500):
        body = b"Subject: %d\n\n" % index + b"line %d\n" % index * 20
        originals.add(body)
        deliver_to_maildir(box, body)
    trials = 4
    partial = 0
    rng = random.Random(1939)
    for _ in range(trials):
        server_process.start()
        pop = login(server_process.port)
        count = pop.stat()[0]
        for number in range(1, count + 1):
            pop.dele(number)
        pop.sock.sendall(b"QUIT\r\n")
        time.sleep(rng.uniform(0.0, 0.03))
        assert server_process.process is not None
        os.kill(server_process.process.pid, signal.SIGKILL)
        server_process.process.wait()
        remaining = [p for sub in ("new", "cur") for p in (box / sub).iterdir()]
        assert not list((box / "tmp").iterdir())
        for path in remaining:
            assert path.read_bytes() in originals
        if 0 < len(remaining) < count:
            partial += 1
        # The maildrop is consistent: a fresh server lists exactly what is on disk.
        server_process.start()
        pop = login(server_process.port)
        assert pop.stat()[0] == len(remaining)
        pop.quit()
        server_process.stop()
        if not remaining:
            for index in range(300):
                deliver_to_maildir(box, b"Subject: again %d\n\nx\n" % index)
                originals.add(b"Subject: again %d\n\nx\n" % index)
    print(f"kill -9 during UPDATE: {trials} trials, {partial} interrupted mid-way")


def test_check_config_validates(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[pop3]\nlisten = ["127.0.0.1:1110"]\n')
    result = subprocess.run(
        [*POSTOFFICE, "check-config", "--config", str(good)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "POP3 listener: 127.0.0.1:1110" in result.stdout
    assert "remembered for 3600s (auth.cache_ttl)" in result.stdout
    good.write_text('[pop3]\nlisten = ["127.0.0.1:1110"]\n[auth]\ncache_ttl = 0\n')
    result = subprocess.run(
        [*POSTOFFICE, "check-config", "--config", str(good)], capture_output=True, text=True
    )
    assert "every login checks its password in full" in result.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text("[pop3]\nlisten = [1110]\n")
    result = subprocess.run(
        [*POSTOFFICE, "check-config", "--config", str(bad)], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "pop3.listen: expected a list of strings" in result.stderr
    assert "Traceback" not in result.stderr


def test_user_commands_and_deliver(tmp_path: Path) -> None:
    config = tmp_path / "postoffice.toml"
    config.write_text('data_dir = "var"\n')

    def run(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*POSTOFFICE, *args, "--config", str(config)], input=stdin, capture_output=True
        )

    assert run("user", "add", "carol", stdin=b"pw one\n").returncode == 0
    assert run("user", "add", "carol", stdin=b"pw\n").returncode == 1
    assert run("user", "add", "../evil", stdin=b"pw\n").returncode == 1
    assert run("user", "list").stdout == b"carol\n"
    assert b"{ARGON2ID}" in (tmp_path / "var" / "passwd").read_bytes()
    assert b"pw one" not in (tmp_path / "var" / "passwd").read_bytes()
    assert run("user", "passwd", "carol", stdin=b"pw two\n").returncode == 0
    delivered = run("deliver", "carol", stdin=b"Subject: x\n\nhi\n")
    assert delivered.returncode == 0, delivered.stderr
    files = list((tmp_path / "var" / "mail" / "carol" / "Maildir" / "new").iterdir())
    assert len(files) == 1 and files[0].read_bytes() == b"Subject: x\n\nhi\n"
    unknown = run("deliver", "dave", stdin=b"Subject: x\n\nhi\n")
    assert unknown.returncode == 67
    assert run("user", "del", "carol").returncode == 0
    assert run("user", "list").stdout == b""


def test_workers_read_the_users_themselves_and_report_once(tmp_path: Path) -> None:
    """With two workers, the passwd-file's problems are reported once, by the parent at
    start, though each worker parses the file again for itself; both serve every user, and
    a change to the file reaches both."""
    passwd = tmp_path / "var" / "passwd"
    passwd.parent.mkdir()
    passwd.write_bytes(b"alice:{PLAIN}secret\nthis line is not a user\n")
    server = ServerProcess(tmp_path, "[process]\nworkers = 2\n")
    try:
        server.start()
        server.wait_for_workers(2)
        for _ in range(8):  # new connections, spread over the workers by the kernel
            pop = login(server.port)
            assert pop.stat() == (0, 0)
            pop.quit()
        log = server.log.read_text()
        assert log.count("is malformed") == 1, log
        assert log.count("weak schemes") == 1, log
        passwd_file.add_user(passwd, "bob", "{PLAIN}bob-secret")
        for _ in range(8):
            login(server.port, "bob", "bob-secret").quit()
    finally:
        server.stop()


def _cpu_seconds(pid: int) -> float:
    """User and system time of ``pid`` and its children that are still running."""
    total = 0
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    for each in [pid, *map(int, children.stdout.split())]:
        fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def test_a_password_verified_by_one_worker_spares_the_hash_in_the_others(
    tmp_path: Path,
) -> None:
    """Two workers: after the first login with an Argon2id password, eight more (spread
    over both workers by the kernel) cost far less CPU together than one hash. Each worker
    alone would hash again the first time a login lands on it."""
    passwd = tmp_path / "var" / "passwd"
    passwd.parent.mkdir()
    encoded = hash_password(Secret("right"), "ARGON2ID", memory_kib=65536, rounds=3)
    passwd_file.add_user(passwd, "carol", encoded)
    server = ServerProcess(tmp_path, "[process]\nworkers = 2\n")
    try:
        server.start()
        server.wait_for_workers(2)
        assert server.process is not None
        before = _cpu_seconds(server.process.pid)
        login(server.port, "carol", "right").quit()
        one_hash = _cpu_seconds(server.process.pid) - before
        before = _cpu_seconds(server.process.pid)
        for _ in range(8):
            login(server.port, "carol", "right").quit()
        eight_logins = _cpu_seconds(server.process.pid) - before
        assert one_hash >= 0.05, one_hash  # a real Argon2id check, or the test shows nothing
        assert eight_logins < one_hash / 2, (one_hash, eight_logins)
    finally:
        server.stop()
