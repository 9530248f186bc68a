"""Processes of a server under test: found by session id, measured from /proc, stopped by PID.

Every server is started with ``start_new_session=True``, so it leads a session of its own
and every process it forks (Dovecot's login, auth and pop3 processes, postoffice's workers)
carries that session id even when re-parented. That is how they are found again: for the
memory and CPU figures, and to make sure none survives a stop.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import ClassVar, Self

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after the last ")".
    return raw[raw.rindex(")") + 2 :].split()


def session_pids(sid: int) -> list[int]:
    """Every live process whose session id is ``sid`` (zombies left out)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        # fields[0] is the state, [3] the session id (stat fields 3 and 6).
        if fields is not None and fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def pss_kib(pids: list[int]) -> int:
    """The summed proportional set size of ``pids``, in KiB (smaps_rollup)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as file:
                for line in file:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue  # exited meanwhile
    return total


def cpu_seconds(leader: int, pids: list[int]) -> float:
    """CPU time of ``pids`` plus what the leader collected from children it reaped."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # utime, stime are stat fields 14, 15; cutime, cstime 16, 17 (index 11..14 here).
        ticks += int(fields[11]) + int(fields[12])
        if pid == leader:
            ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def machine_cpu() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy (all cores), and stolen by the hypervisor."""
    with open("/proc/stat") as file:
        fields = [int(value) for value in file.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]
    return busy / CLOCK_TICKS, fields[7] / CLOCK_TICKS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_greeting(port: int, process: subprocess.Popen[bytes], log: Path, name: str) -> None:
    """Wait (up to 30 s) until ``port`` answers with a POP3 greeting."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            detail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{detail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if sock.recv(512).startswith(b"+OK"):
                    sock.sendall(b"QUIT\r\n")
                    sock.recv(512)
                    return
        except OSError:
            pass
        time.sleep(0.05)  # polling a port the server is about to open; no event to wait on
    raise RuntimeError(f"{name} did not answer on port {port} within 30s")


def stop_session(process: subprocess.Popen[bytes], *, timeout: float = 20) -> list[int]:
    """SIGTERM the leader, wait, then SIGKILL (by PID) whatever of its session is left.

    Returns the PIDs that had to be killed."""
    sid = process.pid
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    killed = []
    deadline = time.monotonic() + 10
    while (left := session_pids(sid)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.1)  # the kernel needs a moment to reap killed processes
    if session_pids(sid):
        raise RuntimeError(f"processes of session {sid} survived SIGKILL")
    return sorted(set(killed))


def raise_nofile() -> None:
    """Raise the soft open-files limit to the hard one (used in servers' preexec)."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class ManagedServer:
    """A benchmarked server: its own process session, its files in ``root``.

    Subclasses make ``root``, ``port`` and their configuration, then call ``launch``.
    """

    log_name: ClassVar[str] = ""
    """The server's own log file in ``root`` (besides ``stderr.log``)."""

    def __init__(self) -> None:
        self.root: Path | None = None
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        raise NotImplementedError

    def launch(self, command: list[str], label: str) -> None:
        """Start ``command`` and wait for its POP3 greeting on ``port``."""
        assert self.root is not None
        stderr = self.root / "stderr.log"
        with open(stderr, "wb") as err:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
                preexec_fn=raise_nofile,  # no threads here: safe
            )
        try:
            wait_for_greeting(self.port, self.process, stderr, label)
        except BaseException:
            self.stop()
            raise

    def pids(self) -> list[int]:
        return session_pids(self.process.pid) if self.process else []

    def cpu_seconds(self) -> float:
        if self.process is None:
            return 0.0
        return cpu_seconds(self.process.pid, self.pids())

    def log_tail(self, lines: int = 20) -> str:
        if self.root is None:
            return ""
        text = ""
        for name in (self.log_name, "stderr.log"):
            path = self.root / name
            if path.exists():
                text += "".join(path.read_text(errors="replace").splitlines(True)[-lines:])
        return text

    def log_text(self) -> str:
        if self.root is None or not (self.root / self.log_name).exists():
            return ""
        return (self.root / self.log_name).read_text(errors="replace")

    def stop(self, *, keep: bool = False) -> None:
        if self.process is not None:
            stop_session(self.process)
            self.process = None
        if self.root is not None and not keep:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
