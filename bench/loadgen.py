"""The load generator: ``pop3load.c`` compiled at run time, and the workloads built on it.

Python with asyncio (even with uvloop) tops out at a few thousand POP3 sessions a second on
one core, which is less than a good server should do here; the client is therefore a small
C program (epoll, one process per core at most), compiled with ``gcc -O2`` into a cache
folder the first time and whenever its source changes. Every workload reports the load
generator's own CPU share (CPU seconds over wall seconds: 1.0 is one core busy), so a
figure limited by the client shows as such. ``calibrate`` runs it against the C do-nothing
responder in the same program: the ceiling of the load generator and of loopback.

Each workload function takes a started server (``PostofficeServer`` or ``DovecotServer``)
and returns a flat dict of figures (and of the client's CPU share, under ``cpu.*``).
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from bench import procs
from bench.corpus import Corpus, password

SOURCE = Path(__file__).with_name("pop3load.c")
HOST = "127.0.0.1"


class Server(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def port(self) -> int: ...

    def pids(self) -> list[int]: ...

    def cpu_seconds(self) -> float: ...


def build() -> Path:
    """The compiled client, built when missing or out of date."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / "postoffice-bench" / "bin"
    binary = cache / f"pop3load-{digest}"
    if binary.exists():
        return binary
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise RuntimeError("no C compiler: apt-get install -y gcc")
    cache.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".tmp")
    subprocess.run(
        [gcc, "-O2", "-Wall", "-o", str(partial), str(SOURCE)], check=True, capture_output=True
    )
    partial.rename(binary)
    return binary


def _run(args: list[str], timeout: float = 600) -> dict[str, Any]:
    result = subprocess.run(
        [str(build()), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"pop3load {args[0]} failed: {result.stderr.strip()}")
    lines = result.stdout.strip().splitlines()
    figures: dict[str, Any] = json.loads(lines[-1])
    return figures


# -- raw modes ----------------------------------------------------------------------------


def storm(
    port: int,
    users_file: Path,
    *,
    concurrency: int = 50,
    seconds: float = 5.0,
    warmup: float = 1.0,
    processes: int = 1,
    once: bool = False,
) -> dict[str, Any]:
    return _run(
        [
            "storm",
            HOST,
            str(port),
            str(users_file),
            str(concurrency),
            str(seconds),
            str(warmup),
            str(processes),
            "1" if once else "0",
        ],
        timeout=seconds + warmup + 120,
    )


def retr(port: int, user: str, depth: int) -> dict[str, Any]:
    return _run(["retr", HOST, str(port), user, password(user), str(depth)])


def session(port: int, user: str) -> dict[str, Any]:
    return _run(["session", HOST, str(port), user, password(user)])


def uidl(port: int, user: str, out: Path) -> dict[str, Any]:
    return _run(["uidl", HOST, str(port), user, password(user), str(out)])


def sync(port: int, user: str, known: Path) -> dict[str, Any]:
    return _run(["sync", HOST, str(port), user, password(user), str(known)])


def idle(
    port: int,
    users_file: Path,
    sessions: int,
    *,
    window: int = 100,
    pace: float = 2.0,
    measure: Callable[[], dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """Open ``sessions`` idle sessions, call ``measure`` while they are all open, NOOP them
    all at once, then (``pace`` > 0) again spread evenly over ``pace`` seconds.

    Returns (open figures, measure()'s figures, [NOOP figures of each round])."""
    process = subprocess.Popen(
        [
            str(build()),
            "idle",
            HOST,
            str(port),
            str(users_file),
            str(sessions),
            str(window),
            str(pace),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None and process.stdout is not None

    def figures() -> dict[str, Any]:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"pop3load idle failed: {process.communicate()[1].strip()}")
        result: dict[str, Any] = json.loads(line)
        return result

    try:
        opened = figures()
        measured = measure() if measure else {}
        process.stdin.write("go\n")
        process.stdin.flush()
        noops = [figures() for _ in range(2 if pace > 0 else 1)]
        process.stdin.close()
        process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return opened, measured, noops


class Responder:
    """The do-nothing POP3 responder of ``pop3load.c`` (``+OK`` to everything)."""

    def __init__(self, *, processes: int = 1, messages: int = 2000, size: int = 50_000) -> None:
        self.args = ["responder", "0", str(processes), str(messages), str(size)]
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.name = "responder"

    def __enter__(self) -> Responder:
        self.process = subprocess.Popen(
            [str(build()), *self.args],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().split()
        if len(line) != 2 or line[0] != "READY":
            raise RuntimeError("the responder did not start")
        self.port = int(line[1])
        return self

    def pids(self) -> list[int]:
        return procs.session_pids(self.process.pid) if self.process else []

    def cpu_seconds(self) -> float:
        return procs.cpu_seconds(self.process.pid, self.pids()) if self.process else 0.0

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            procs.stop_session(self.process)  # type: ignore[arg-type]
            self.process = None


# -- workloads ----------------------------------------------------------------------------


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _server_cpu(server: Server, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``run()``, adding over the same span the server's CPU share (all its processes) and
    the share taken by everything else on the machine (other users' jobs: noise)."""
    busy_before, steal_before = procs.machine_cpu()
    client_before = _children_cpu()
    before, started = server.cpu_seconds(), time.monotonic()
    figures = run()
    elapsed = time.monotonic() - started
    server_cpu = server.cpu_seconds() - before
    client = _children_cpu() - client_before  # the whole client run, warm-up included
    busy, steal = procs.machine_cpu()
    if elapsed > 0:
        figures["server_cpu"] = server_cpu / elapsed
        figures["others_cpu"] = max(busy - busy_before - server_cpu - client, 0.0) / elapsed
        figures["steal"] = (steal - steal_before) / elapsed
    return figures


def _check(figures: dict[str, Any], what: str, *, errors: int = 0) -> None:
    if figures.get("errors", 0) > errors:
        raise RuntimeError(f"{what}: {figures['errors']} errors, first: {figures['first_error']}")


def login_storm(
    server: Server, corpus: Corpus, work: Path, *, seconds: float, processes: int
) -> dict[str, Any]:
    users = corpus.users_file(corpus.spec.storm_users, work / "storm-users.txt")
    figures = _server_cpu(
        server, lambda: storm(server.port, users, seconds=seconds, processes=processes)
    )
    # A handful of failures among thousands of sessions is reported, not fatal.
    _check(figures, "login storm", errors=max(5, figures["sessions"] // 100))
    return {
        "storm.rate": figures["rate"],
        "storm.p50_ms": figures["p50_ms"],
        "storm.p99_ms": figures["p99_ms"],
        "storm.errors": figures["errors"],
        "cpu.storm": figures["client_cpu"],
        "server_cpu.storm": figures["server_cpu"],
        "others_cpu.storm": figures["others_cpu"],
        "steal.storm": figures["steal"],
    }


def prime(server: Server, corpus: Corpus, work: Path) -> dict[str, Any]:
    """One session for every small user, so no server meets a maildrop for the first time
    inside a timed run (Dovecot creates its index files, postoffice its index cache)."""
    users = corpus.users_file(corpus.spec.users, work / "all-users.txt")
    figures = storm(server.port, users, once=True, processes=1)
    _check(figures, "priming", errors=0)
    for user in ("bulk", "keep"):
        session(server.port, user)
    return figures


def bulk_download(server: Server, corpus: Corpus) -> dict[str, Any]:
    single = _server_cpu(server, lambda: retr(server.port, "bulk", 1))
    piped = _server_cpu(server, lambda: retr(server.port, "bulk", 32))
    for figures in (single, piped):
        if figures["messages"] != corpus.spec.bulk_messages:
            raise RuntimeError(f"bulk: {figures['messages']} messages")
    return {
        "bulk1.mb_s": single["mb_s"],
        "bulk32.mb_s": piped["mb_s"],
        "cpu.bulk1": single["client_cpu"],
        "cpu.bulk32": piped["client_cpu"],
        "server_cpu.bulk1": single["server_cpu"],
        "server_cpu.bulk32": piped["server_cpu"],
        "others_cpu.bulk1": single["others_cpu"],
        "others_cpu.bulk32": piped["others_cpu"],
    }


def huge_maildrop(server: Server, corpus: Corpus) -> dict[str, Any]:
    corpus.forget("huge")
    first = session(server.port, "huge")
    second = session(server.port, "huge")
    for figures in (first, second):
        if figures["count"] != corpus.spec.huge_messages:
            raise RuntimeError(f"huge: STAT says {figures['count']} messages")
    return {
        "huge.first_s": first["login_stat"],
        "huge.second_s": second["login_stat"],
        "huge.list_s": second["list"],
        "huge.uidl_s": second["uidl"],
        "cpu.huge": second["client_cpu"],
    }


def keep_sync(server: Server, corpus: Corpus, work: Path, run: int) -> dict[str, Any]:
    """The server knows the 10,000 messages (a session saw them); 10 new arrive; time a
    keep-mode client: login, UIDL, RETR the new ones, QUIT."""
    known = work / f"keep-known-{server.name}.txt"
    corpus.clear_keep_new()  # back to the 10,000 the client has seen
    # Time passes between syncs: nothing in the maildrop is seconds-old when a client comes
    # (postoffice trusts a directory listing only when it is over 2 s younger than the
    # directory's mtime, as mtime ticks can be that coarse).
    time.sleep(2.5)
    uidl(server.port, "keep", known)  # the client's previous sync
    corpus.add_keep_new(run)
    time.sleep(2.5)
    figures = sync(server.port, "keep", known)
    if figures["new"] != corpus.spec.keep_new:
        raise RuntimeError(f"keep-mode sync found {figures['new']} new messages")
    return {"keep.seconds": figures["seconds"], "cpu.keep": figures["client_cpu"]}


def idle_sessions(server: Server, corpus: Corpus, work: Path, sessions: int) -> dict[str, Any]:
    """Run on a freshly started server: a few sessions warm it up (code paths, caches),
    then the baseline PSS, then ``sessions`` idle sessions, their PSS, a NOOP on each."""
    warm = corpus.users_file(min(50, sessions), work / "warm-users.txt")
    storm(server.port, warm, concurrency=10, once=True)
    users = corpus.users_file(sessions, work / "idle-users.txt")
    time.sleep(1)  # let the warm-up's processes (Dovecot's pop3 and login) exit
    baseline = procs.pss_kib(server.pids())

    def measure() -> dict[str, Any]:
        time.sleep(1)  # settle: Dovecot's login processes hand over and exit
        pids = server.pids()
        return {"pss_kib": procs.pss_kib(pids), "processes": len(pids)}

    opened, measured, (noop, paced) = idle(server.port, users, sessions, measure=measure)
    if opened["opened"] != sessions:
        raise RuntimeError(
            f"idle: opened {opened['opened']} of {sessions} sessions; first error: "
            f"{opened['first_error']}"
        )
    for figures in (noop, paced):
        if figures["answered"] != sessions:
            raise RuntimeError(f"idle: {figures['answered']} of {sessions} NOOPs answered")
    return {
        "idle.open_s": opened["seconds"],
        "idle.kib_per_session": (measured["pss_kib"] - baseline) / sessions,
        "idle.noop_p99_ms": noop["p99_ms"],
        "idle.noop_p50_ms": noop["p50_ms"],
        "idle.paced_p99_ms": paced["p99_ms"],
        "idle.processes": measured["processes"],
        "idle.timeouts": opened["timeouts"],
        "cpu.idle": opened["client_cpu"],
    }


def calibrate(corpus: Corpus, work: Path, *, seconds: float, processes: int) -> dict[str, Any]:
    """The load generator against the do-nothing responder: its own ceiling."""
    users = corpus.users_file(corpus.spec.storm_users, work / "storm-users.txt")
    with Responder(messages=corpus.spec.bulk_messages, size=corpus.spec.bulk_size) as responder:
        figures = _server_cpu(
            responder, lambda: storm(responder.port, users, seconds=seconds, processes=processes)
        )
        single = retr(responder.port, "bulk", 1)
        piped = retr(responder.port, "bulk", 32)
    return {
        "storm.rate": figures["rate"],
        "storm.p50_ms": figures["p50_ms"],
        "cpu.storm": figures["client_cpu"],
        "server_cpu.storm": figures["server_cpu"],
        "bulk1.mb_s": single["mb_s"],
        "bulk32.mb_s": piped["mb_s"],
        "cpu.bulk1": single["client_cpu"],
        "cpu.bulk32": piped["client_cpu"],
    }


if __name__ == "__main__":
    import argparse

    from bench.corpus import FULL, QUICK, default_root, ensure_corpus

    parser = argparse.ArgumentParser(description="Calibrate the load generator.")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--processes", type=int, default=1, help="client processes (storm)")
    args = parser.parse_args()
    spec = QUICK if args.quick else FULL
    built = ensure_corpus(default_root(args.quick), spec)
    with tempfile.TemporaryDirectory() as folder:
        print(json.dumps(calibrate(built, Path(folder), seconds=5, processes=args.processes)))
