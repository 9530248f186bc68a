"""``postoffice fetch`` beside ``mpop`` and ``fetchmail``, from one private loopback Dovecot.

    .venv-bench/bin/python -m bench.fetch_compare [--messages 2000] [--runs 3] [--tools ...]

(``make .venv-bench/bin/postoffice`` makes that virtualenv with the distribution's python3;
the ``postoffice`` run is the one beside the interpreter that runs this script.)

The figure issue 5 closes with: the time to fetch 2,000 messages of 1 KB and 2,000 of 50 KB
(``bench.corpus.Messages``: plain text, and MIME with a base64 attachment) from Dovecot, for

- ``postoffice-delete``: ``postoffice fetch``, ``mode = "delete"``, into a Maildir;
- ``postoffice-keep``: the same in ``mode = "keep"`` (fresh journal: it downloads all and
  deletes nothing);
- ``mpop``: ``--keep=off --delivery=maildir,DIR`` (pipelining, as mpop does by default);
- ``fetchmail``: ``fetchall nokeep`` into an MDA that stores each message in a file of its
  own (``cat > DIR/msg.$$``); fetchmail has no Maildir delivery of its own.

Every tool logs in with SASL PLAIN over cleartext loopback (Dovecot runs without TLS here)
and runs as a child process (so each includes its start-up), with its wall-clock time
measured from the start to the exit. Before each run the maildrop is rebuilt: Dovecot's
index files removed and the messages hard-linked afresh into ``new/``, so every run meets
a maildrop Dovecot has never seen; the local destination and state start empty (a new
folder per run; ``Bench.scratch`` says why the earlier ones stay until the end). Each run is
checked afterwards (every message delivered, the server emptied or left full as the mode
promises) and is bounded by ``--timeout``. The tools take turns within each round, so a
slow drift of the machine touches all of them alike; one untimed warm-up run per size
comes first. Printed: one line per tool and size with the median of ``--runs`` and its
spread, messages and megabytes per second, the ratio to mpop (time / mpop's time: above 1
is slower), and the CPU seconds each tool used (less sensitive to a busy machine than the
wall-clock time). The load average at the start and the end is printed too. Before the
first run it waits (``--settle``, up to 7 minutes) until six minutes have passed since its
previous run deleted its scratch folder and creating a file costs its usual CPU: see
``settle`` for the filesystem effect that otherwise makes creating a file up to
ten times dearer (and every tool's run about twice as long, bench/README.md).

The postoffice package is byte-compiled before the first run, as installing it does: where
the environment forbids writing bytecode (``PYTHONDONTWRITEBYTECODE``), every start would
otherwise compile some ninety modules from source, which no installed postoffice does.

What each tool promises differs, and that is part of the figure: postoffice makes every
message durable (one syncfs per group of messages on Linux, fsyncs elsewhere), renames it
into ``new/``, fsyncs the folder and commits its journal (SQLite, ``synchronous = FULL``),
group by group, before sending DELE; mpop fsyncs each delivered file; fetchmail's MDA here
syncs nothing. Needs root (Dovecot switches users); Dovecot comes from ``bench.dovecot``.
Not a test: run it by hand.
"""

from __future__ import annotations

import argparse
import compileall
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.corpus import MAIL_USER, QUICK, Corpus, Messages
from bench.dovecot import DovecotServer, ensure_installed, version

USER = "fetch"
PASSWORD = "pw-fetch"  # noqa: S105 - the throwaway user of a private server
TOOLS = ("postoffice-delete", "postoffice-keep", "mpop", "fetchmail")
SIZES = {"1 KB": 1_000, "50 KB": 50_000}
BASELINE = "mpop"


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float
    cpu: float
    """User and system CPU seconds of the tool and what it ran (MDA, password command)."""
    delivered: int


@dataclass(slots=True)
class Figures:
    runs: list[Run] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(run.seconds for run in self.runs) if self.runs else None

    @property
    def median_cpu(self) -> float:
        return statistics.median(run.cpu for run in self.runs)


class Bench:
    """A private Dovecot, the source messages, and a scratch folder per run."""

    def __init__(
        self, root: Path, count: int, timeout: float, *, delete_between_runs: bool = False
    ) -> None:
        self.root = root
        self.count = count
        self.timeout = timeout
        self.delete_between_runs = delete_between_runs
        self.runs = 0
        # Only the passwd-file is read by DovecotServer; the spec is not used here.
        self.corpus = Corpus(root, QUICK)
        self.uid, self.gid = self.corpus.uid, self.corpus.gid
        home = self.corpus.home(USER)
        home.mkdir(parents=True)
        os.chown(home, self.uid, self.gid)
        self.corpus.passwd.write_text(
            f"{USER}:{{PLAIN}}{PASSWORD}:{self.uid}:{self.gid}::{home}::\n"
        )
        self.corpus.passwd.chmod(0o644)
        self.password_file = root / "password"
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)
        self.sources: dict[str, Path] = {}
        self.server = DovecotServer(self.corpus, max_sessions=10)
        self.work = root / "work"
        self.postoffice = Path(sys.executable).with_name("postoffice")

    def make_sources(self, label: str, size: int) -> int:
        """Write ``count`` messages of about ``size`` octets once; returns their total."""
        folder = self.root / "source" / label.replace(" ", "")
        folder.mkdir(parents=True)
        messages = Messages(seed=size)
        total = 0
        for number in range(1, self.count + 1):
            data = (
                messages.text(USER, number, size)
                if size < 5_000
                else messages.mime(USER, number, size)
            )
            wire = len(data) + data.count(b"\n")
            name = f"{1700000000 + number}.M{number}P1.fetchbench,S={len(data)},W={wire}"
            path = folder / name
            path.write_bytes(data)
            os.chown(path, self.uid, self.gid)
            total += wire
        self.sources[label] = folder
        return total

    def refill(self, label: str) -> None:
        """The maildrop as Dovecot has never seen it: only the messages, in ``new/``."""
        maildir = self.corpus.maildir(USER)
        shutil.rmtree(maildir, ignore_errors=True)
        for sub in ("", "cur", "new", "tmp"):
            (maildir / sub).mkdir()
            os.chown(maildir / sub, self.uid, self.gid)
        new = maildir / "new"
        for entry in os.scandir(self.sources[label]):
            os.link(entry.path, new / entry.name)

    def remaining(self) -> int:
        maildir = self.corpus.maildir(USER)
        return sum(len(os.listdir(maildir / sub)) for sub in ("new", "cur"))

    def scratch(self) -> Path:
        """A new empty folder for one run. The earlier runs' folders stay until the end
        unless ``delete_between_runs``: on ext4 without a journal (as on this machine),
        creating a file skips every inode of its block group freed in the last few minutes,
        one by one, so deleting one run's 2,000 files right before the next run makes
        every file the next tool creates cost a scan of them (profiled: about a third of
        postoffice's CPU time, and as much for mpop), a cost of the benchmark, not of the
        tools."""
        self.runs += 1
        if self.delete_between_runs:
            shutil.rmtree(self.work, ignore_errors=True)
            self.work.mkdir()
            return self.work
        folder = self.work / f"run-{self.runs}"
        folder.mkdir(parents=True)
        return folder

    def run(self, argv: list[str], *, env: dict[str, str] | None = None) -> float:
        started = time.perf_counter()
        completed = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=self.timeout,
            check=False,
        )
        seconds = time.perf_counter() - started
        if completed.returncode != 0:
            tail = completed.stdout.decode(errors="replace")[-1500:]
            raise RuntimeError(f"{argv[0]} exited with {completed.returncode}:\n{tail}")
        return seconds

    # -- the tools ------------------------------------------------------------------------

    def postoffice_fetch(self, mode: str) -> tuple[float, int]:
        work = self.scratch()
        config = work / "fetch.toml"
        config.write_text(
            f'[accounts.bench]\nhost = "127.0.0.1"\nport = {self.server.port}\ntls = "none"\n'
            f'user = "{USER}"\npassword_command = "cat {self.password_file}"\n'
            f'mode = "{mode}"\nmaildir = "Maildir"\nstate_dir = "state"\ntimeout = 120\n'
        )
        seconds = self.run([str(self.postoffice), "fetch", "--config", str(config), "-q"])
        return seconds, count_maildir(work / "Maildir")

    def mpop(self) -> tuple[float, int]:
        work = self.scratch()
        (work / "mpoprc").write_text("# empty: every setting is on the command line\n")
        (work / "mpoprc").chmod(0o600)
        maildir = work / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        seconds = self.run(
            [
                "mpop",
                f"--file={work / 'mpoprc'}",
                "--host=127.0.0.1",
                f"--port={self.server.port}",
                "--tls=off",
                "--auth=plain",
                f"--user={USER}",
                f"--passwordeval=cat {self.password_file}",
                f"--delivery=maildir,{maildir}",
                f"--uidls-file={work / 'uidls'}",
                "--keep=off",
                "--only-new=off",
                "--quiet",
            ]
        )
        return seconds, count_maildir(maildir)

    def fetchmail(self) -> tuple[float, int]:
        work = self.scratch()
        out = work / "mail"
        out.mkdir()
        rc = work / "fetchmailrc"
        rc.write_text(
            "set no syslog\n"
            f"set idfile {work / 'fetchids'}\n"
            f"poll 127.0.0.1 service {self.server.port} protocol pop3 auth password\n"
            f'  user "{USER}" there password "{PASSWORD}"\n'
            f'  mda "cat > {out}/msg.$$"\n'
            "  fetchall nokeep no rewrite sslproto ''\n"
        )
        rc.chmod(0o600)
        env = dict(os.environ, FETCHMAILHOME=str(work), HOME=str(work))
        argv = ["fetchmail", "--fetchmailrc", str(rc), "--nodetach", "--silent"]
        seconds = self.run(argv, env=env)
        return seconds, len(os.listdir(out))


RECENTLY_DELETED_SECONDS = 370.0
"""How long ext4 keeps skipping a freed inode when it allocates one (``recently_deleted``:
a minute after its deletion, six while its inode table block is dirty), plus a margin."""
DELETION_MARK = Path(tempfile.gettempdir()) / "postoffice-bench-fetch-deleted"
"""Its modification time: when this script last deleted its scratch folder."""
SETTLE_PROBE_FILES = 200
SETTLED_US = 100.0
"""A file created, written and closed in less CPU than this (microseconds) is normal here
(25-60 us on a quiet filesystem); 200-960 us was measured with recently freed inodes
nearby."""


def creation_cost_us(folder: Path) -> float:
    """CPU microseconds to create, write (1 KB) and close one file in a new subfolder of
    ``folder``, the median of ``SETTLE_PROBE_FILES``. The files stay: deleting them would
    cause what this measures."""
    probe = Path(tempfile.mkdtemp(prefix="settle-", dir=folder))
    data = b"x" * 1000
    costs = []
    for number in range(SETTLE_PROBE_FILES):
        started = time.thread_time()
        fd = os.open(probe / f"m{number}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.close(fd)
        costs.append(time.thread_time() - started)
    return statistics.median(costs) * 1e6


def _deleted_at() -> float:
    try:
        return DELETION_MARK.stat().st_mtime
    except OSError:
        return 0.0


def settle(folder: Path, limit: float) -> None:
    """Wait (up to ``limit`` seconds) until creating a file costs what it does on a quiet
    filesystem. On ext4 without a journal, as here, creating a file skips every inode of
    its block group freed in the last minutes (up to six while the inode table block is not
    written back), one by one: right after a run that deleted tens of thousands of files
    (this script's own end, or anyone's ``rm -r``), every tool's files cost ten times their
    usual CPU (bench/README.md, the fetcher)."""
    started = time.monotonic()
    left = _deleted_at() + RECENTLY_DELETED_SECONDS - time.time()
    if left > 0:
        # The probe below does not always see it: a minute after the last run's deletion
        # it read 47 us (28 November, 10:19), and the runs that followed took twice as long.
        print(
            f"waiting {min(left, limit):.0f}s: the last run deleted its scratch folder "
            f"{RECENTLY_DELETED_SECONDS - left:.0f}s ago",
            flush=True,
        )
        time.sleep(min(left, limit))
    while True:
        cost = creation_cost_us(folder)
        waited = time.monotonic() - started
        if cost <= SETTLED_US or waited >= limit:
            state = "settled" if cost <= SETTLED_US else f"not settled after {waited:.0f}s"
            print(f"creating a file: {cost:.0f} us of CPU ({state})", flush=True)
            return
        print(f"creating a file: {cost:.0f} us of CPU, waiting for freed inodes to age", flush=True)
        time.sleep(min(20.0, max(1.0, limit - waited)))


def count_maildir(maildir: Path) -> int:
    return sum(len(os.listdir(maildir / sub)) for sub in ("new", "cur") if (maildir / sub).is_dir())


def available(tool: str) -> bool:
    return tool.startswith("postoffice") or shutil.which(tool) is not None


def measure(bench: Bench, tool: str, label: str) -> Run:
    """One timed run of ``tool`` on a fresh maildrop, checked afterwards."""
    actions: dict[str, Callable[[], tuple[float, int]]] = {
        "postoffice-delete": lambda: bench.postoffice_fetch("delete"),
        "postoffice-keep": lambda: bench.postoffice_fetch("keep"),
        "mpop": bench.mpop,
        "fetchmail": bench.fetchmail,
    }
    bench.refill(label)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, delivered = actions[tool]()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    left = bench.remaining()
    expected_left = bench.count if tool == "postoffice-keep" else 0
    if delivered != bench.count or left != expected_left:
        raise RuntimeError(
            f"{tool}: {delivered} of {bench.count} delivered, {left} left on the server "
            f"(expected {expected_left})"
        )
    return Run(seconds=seconds, cpu=cpu, delivered=delivered)


def report(
    results: dict[tuple[str, str], Figures], tools: list[str], octets: dict[str, int], count: int
) -> None:
    print()
    print(
        f"{'tool':<18} {'size':>6} {'median':>8} {'spread':>15} {'msg/s':>7} {'MB/s':>6} "
        f"{'vs mpop':>8} {'CPU':>7}"
    )
    for label in SIZES:
        base = results.get((BASELINE, label))
        base_median = base.median if base is not None else None
        for tool in tools:
            figures = results[(tool, label)]
            median = figures.median
            if median is None:
                print(f"{tool:<18} {label:>6} {'failed':>8}  {'; '.join(figures.failures)[:80]}")
                continue
            times = [run.seconds for run in figures.runs]
            spread = f"{min(times):.2f}-{max(times):.2f}s"
            ratio = f"{median / base_median:.2f}x" if base_median else "-"
            print(
                f"{tool:<18} {label:>6} {median:>7.2f}s {spread:>15} {count / median:>7.0f} "
                f"{octets[label] / median / 1e6:>6.1f} {ratio:>8} {figures.median_cpu:>6.2f}s"
            )
    print("vs mpop: the tool's median time divided by mpop's (above 1: slower than mpop)")
    print("CPU: median user+system seconds of the tool and its children (MDA, password command)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per size")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per tool and size")
    parser.add_argument(
        "--tools", default=",".join(TOOLS), help=f"comma-separated, of {', '.join(TOOLS)}"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds one run may take")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument(
        "--settle",
        type=float,
        default=420,
        metavar="SECONDS",
        help="wait up to this long, before timing, for file creation to cost its usual "
        "(see settle(); 0: do not wait)",
    )
    parser.add_argument(
        "--delete-between-runs",
        action="store_true",
        help="delete each run's local copies before the next run (as before 2026-11-27: "
        "costs every tool a scan of freed inodes per file created on ext4 without a journal)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop Dovecot on the way out
    tools = [tool for tool in args.tools.split(",") if tool]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        parser.error(f"unknown tools: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        parser.error("needs root: the private Dovecot switches users")
    missing = [tool for tool in tools if not available(tool)]
    for tool in missing:
        print(f"{tool} is not installed: left out", flush=True)
    tools = [tool for tool in tools if tool not in missing]
    ensure_installed()
    if any(tool.startswith("postoffice") for tool in tools):
        import postoffice

        compileall.compile_dir(Path(postoffice.__file__).parent, quiet=1)
    root = Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    root.chmod(0o755)  # Dovecot's unprivileged processes enter it
    bench = Bench(root, args.messages, args.timeout, delete_between_runs=args.delete_between_runs)
    results = {(tool, label): Figures() for tool in tools for label in SIZES}
    octets: dict[str, int] = {}
    try:
        for label, size in SIZES.items():
            octets[label] = bench.make_sources(label, size)
        bench.server.start()
        if args.settle > 0:
            settle(root, args.settle)
        print(
            f"{version()} on 127.0.0.1:{bench.server.port}; {args.messages} messages per size; "
            f"{args.runs} runs; mail user {MAIL_USER}; scratch {root}; "
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        for label in SIZES:
            warm = BASELINE if BASELINE in tools else tools[0]
            measure(bench, warm, label)  # untimed: page cache, Dovecot's processes
            for round_number in range(args.runs):
                order = tools[round_number % len(tools) :] + tools[: round_number % len(tools)]
                for tool in order:
                    figures = results[(tool, label)]
                    try:
                        run = measure(bench, tool, label)
                    except (RuntimeError, subprocess.TimeoutExpired, OSError) as error:
                        figures.failures.append(str(error).splitlines()[0])
                        print(f"  {label} {tool}: FAILED {error}", flush=True)
                        continue
                    figures.runs.append(run)
                    print(
                        f"  {label} round {round_number + 1} {tool}: {run.seconds:.2f}s", flush=True
                    )
        print(f"load average at the end: {os.getloadavg()[0]:.1f}")
        warnings = bench.server.warnings()
        if warnings:
            print("Dovecot logged:", *warnings[:10], sep="\n  ")
    finally:
        bench.server.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
            DELETION_MARK.touch()  # the next run waits for these freed inodes to age
    report(results, tools, octets, args.messages)


if __name__ == "__main__":
    main()
