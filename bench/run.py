"""``make bench``: every workload against postoffice and Dovecot, side by side, in one run.

    .venv-bench/bin/python -m bench.run [--quick] [--runs 3] [--only storm,bulk,...]

Steps: install Dovecot if missing, compile the C load generator, build (or reuse) the corpus,
calibrate the load generator against a do-nothing responder, prime every server on every
maildrop once, then ``--runs`` rounds; in each round every server (postoffice, Dovecot in
its default mode, Dovecot in high-performance mode; the order rotates from round to round)
is started fresh, runs every workload, and is stopped. The servers never run at the same
time. At the end one line per figure: the median of the rounds for each server with the
spread (min-max), and postoffice's figure divided by Dovecot's (``ratio``: above 1 means
postoffice's number is bigger, which is better for rates and worse for times). Raw figures
go to a JSON file. Needs root (Dovecot switches users).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench import dovecot, loadgen
from bench.corpus import FULL, QUICK, Corpus, default_root, ensure_corpus
from bench.dovecot import DovecotServer
from bench.postoffice_server import PostofficeServer, merged, parse_setting

SERVERS = ("postoffice", "dovecot", "dovecot-hp")
WORKLOADS = ("storm", "bulk", "huge", "keep", "idle")


WARMED_USERS = ("bulk", "keep", "huge")


def warm_page_cache(maildir: Path) -> int:
    """Read every message file of ``maildir`` once; the octets read."""
    octets = 0
    for sub in ("cur", "new"):
        with os.scandir(maildir / sub) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    with open(entry.path, "rb") as f:
                        octets += len(f.read())
    return octets


@dataclass(frozen=True, slots=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    target: str
    met: Callable[[float, float | None, float | None], bool] | None = None
    """(postoffice, dovecot, dovecot-hp) medians -> target met?"""


def _best(values: list[float | None], higher: bool) -> float | None:
    present = [value for value in values if value is not None]
    if not present:
        return None
    return max(present) if higher else min(present)


def _relative(factor: float, higher: bool) -> Callable[[float, float | None, float | None], bool]:
    def met(po: float, dc: float | None, hp: float | None) -> bool:
        best = _best([dc, hp], higher)
        if best is None:
            return False
        return po >= factor * best if higher else po <= factor * best

    return met


def _absolute(limit: float) -> Callable[[float, float | None, float | None], bool]:
    return lambda po, _dc, _hp: po <= limit


METRICS = (
    Metric(
        "storm.rate",
        "login storm",
        "sessions/s",
        True,
        ">= 20x dovecot-hp",
        lambda po, _dc, hp: hp is not None and po >= 20 * hp,
    ),
    Metric("storm.p50_ms", "login storm p50 session", "ms", False, "<= 10 ms", _absolute(10)),
    Metric("bulk1.mb_s", "bulk RETR one at a time", "MB/s", True, ">= 1.5x", _relative(1.5, True)),
    Metric("bulk32.mb_s", "bulk RETR 32 pipelined", "MB/s", True, ">= 1.5x", _relative(1.5, True)),
    Metric("huge.first_s", "huge: first login+STAT", "s", False, "<= 0.3 s", _absolute(0.3)),
    Metric("huge.second_s", "huge: second login+STAT", "s", False, "<= 0.1 s", _absolute(0.1)),
    Metric("huge.list_s", "huge: LIST", "s", False, "<= 0.03 s", _absolute(0.03)),
    Metric("huge.uidl_s", "huge: UIDL", "s", False, "<= 0.1 s", _absolute(0.1)),
    Metric("keep.seconds", "keep-mode sync", "s", False, "<= 0.25x", _relative(0.25, False)),
    Metric("idle.open_s", "idle: open all sessions", "s", False, "<= 1 s", _absolute(1.0)),
    Metric("idle.kib_per_session", "idle: PSS per session", "KiB", False, "<= 4", _absolute(4)),
    Metric(
        "idle.noop_p99_ms", "idle: NOOP p99, all at once", "ms", False, "<= 50 ms", _absolute(50)
    ),
    Metric("idle.paced_p99_ms", "idle: NOOP p99, paced over 2 s", "ms", False, "-"),
)
WORKLOAD_OF = {
    "storm": "storm",
    "bulk1": "bulk",
    "bulk32": "bulk",
    "huge": "huge",
    "keep": "keep",
    "idle": "idle",
}


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as file:
        for line in file:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as file:
        mem_kib = int(file.readline().split()[1])
    try:
        commit = subprocess.run(
            ["git", "-C", str(Path(__file__).parent), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        # The build matters (bench/README, "The interpreter"): which one ran the servers.
        "interpreter": os.path.realpath(sys.executable),
        "dovecot": dovecot.version(),
        "postoffice_commit": commit,
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


class Bench:
    def __init__(self, args: argparse.Namespace, corpus: Corpus, work: Path) -> None:
        self.args = args
        self.corpus = corpus
        self.work = work
        self.quick: bool = args.quick
        self.idle_sessions: int = min(args.idle_sessions, corpus.spec.users)
        self.results: dict[str, dict[str, list[float]]] = {name: {} for name in args.servers}
        self.failures: list[str] = []
        self.warnings: dict[str, list[str]] = {name: [] for name in args.servers}
        self.deliveries = 0
        self.extra: dict[str, Any] = {}
        for setting in args.postoffice_set:
            self.extra = merged(self.extra, parse_setting(setting))

    def server(self, name: str) -> PostofficeServer | DovecotServer:
        if name == "postoffice":
            return PostofficeServer(self.corpus, max_sessions=self.idle_sessions, extra=self.extra)
        mode = "default" if name == "dovecot" else "high-performance"
        return DovecotServer(self.corpus, mode=mode, max_sessions=self.idle_sessions)

    def workload(self, name: str, server: PostofficeServer | DovecotServer) -> dict[str, Any]:
        if name == "storm":
            return loadgen.login_storm(
                server,
                self.corpus,
                self.work,
                seconds=self.args.storm_seconds,
                processes=self.args.storm_processes,
            )
        if name == "bulk":
            return loadgen.bulk_download(server, self.corpus)
        if name == "huge":
            return loadgen.huge_maildrop(server, self.corpus)
        if name == "keep":
            self.deliveries += 1
            return loadgen.keep_sync(server, self.corpus, self.work, self.deliveries)
        if name == "idle":
            return loadgen.idle_sessions(server, self.corpus, self.work, self.idle_sessions)
        raise ValueError(name)

    def prime(self) -> None:
        # Every message file read once, so the first server of round 1 does not pay for the
        # disk reads that the others then find in the page cache.
        started = time.monotonic()
        octets = sum(warm_page_cache(self.corpus.maildir(user)) for user in WARMED_USERS)
        print(
            f"  page cache: read {octets / 1e6:,.0f} MB of {', '.join(WARMED_USERS)} "
            f"({time.monotonic() - started:.0f}s)",
            flush=True,
        )
        # Dovecot first: it moves the small maildrops' mail from new/ to cur/ on first sight.
        names = ["dovecot"] if any(n.startswith("dovecot") for n in self.args.servers) else []
        names += ["postoffice"] if "postoffice" in self.args.servers else []
        for name in names:
            started = time.monotonic()
            server = self.server(name)
            server.start()
            try:
                figures = loadgen.prime(server, self.corpus, self.work)
            finally:
                server.stop()
            print(
                f"  primed {name}: {figures['sessions']} sessions at {fmt(figures['rate'])}/s "
                f"({time.monotonic() - started:.0f}s)",
                flush=True,
            )

    def round(self, number: int) -> None:
        shift = number % len(self.args.servers)
        order = self.args.servers[shift:] + self.args.servers[:shift]
        # Idle sessions get a server of their own: its memory baseline is a fresh process.
        groups = [
            [w for w in self.args.only if w != "idle"],
            [w for w in self.args.only if w == "idle"],
        ]
        for name in order:
            started = time.monotonic()
            figures: dict[str, Any] = {}
            for group in groups:
                if group:
                    figures.update(self.run_group(number, name, group))
            for key, value in figures.items():
                self.results[name].setdefault(key, []).append(float(value))
            shown = ", ".join(
                f"{metric.key} {fmt(figures.get(metric.key))}"
                for metric in METRICS
                if metric.key in figures
            )
            print(
                f"  round {number + 1} {name} ({time.monotonic() - started:.0f}s): {shown}",
                flush=True,
            )

    def run_group(self, number: int, name: str, workloads: list[str]) -> dict[str, Any]:
        server = self.server(name)
        try:
            server.start()
        except Exception as error:
            self.failures.append(f"round {number + 1} {name}: start failed: {error}")
            print(f"  {name}: failed to start: {error}", flush=True)
            return {}
        figures: dict[str, Any] = {}
        try:
            for workload in workloads:
                try:
                    figures.update(self.workload(workload, server))
                except Exception as error:
                    message = f"round {number + 1} {name} {workload}: {error}"
                    self.failures.append(message)
                    print(f"  FAILED {message}", flush=True)
                    if self.args.verbose:
                        traceback.print_exc()
                        print(server.log_tail(), flush=True)
        finally:
            self.warnings[name].extend(server.warnings())
            server.stop()
        return figures

    def medians(self, name: str, key: str) -> tuple[float | None, float | None, float | None]:
        values = self.results.get(name, {}).get(key, [])
        if not values:
            return None, None, None
        return statistics.median(values), min(values), max(values)

    def table(self, calibration: dict[str, Any] | None) -> str:
        servers = self.args.servers
        lines = []
        head = f"{'figure':<34}"
        for name in servers:
            head += f" {name + ' median [min-max]':>34}"
            if name != "postoffice" and "postoffice" in servers:
                head += f" {'ratio':>6}"
        head += f"  {'target':<18} met"
        lines.append(head)
        lines.append("-" * len(head))
        for metric in METRICS:
            workload = WORKLOAD_OF[metric.key.split(".")[0]]
            if workload not in self.args.only:
                continue
            label = f"{metric.label} [{metric.unit}]"
            if metric.key.startswith("idle."):
                label = label.replace("all sessions", f"{self.idle_sessions} sessions")
            row = f"{label:<34}"
            po = self.medians("postoffice", metric.key)[0]
            others: dict[str, float | None] = {}
            for name in servers:
                median, low, high = self.medians(name, metric.key)
                others[name] = median
                cell = f"{fmt(median)} [{fmt(low)}-{fmt(high)}]" if median is not None else "-"
                row += f" {cell:>34}"
                if name != "postoffice" and "postoffice" in servers:
                    ratio = f"{po / median:.2f}" if po is not None and median else "-"
                    row += f" {ratio:>6}"
            met = "-"
            if po is not None and metric.met is not None:
                met = (
                    "yes"
                    if metric.met(po, others.get("dovecot"), others.get("dovecot-hp"))
                    else "no"
                )
            row += f"  {metric.target:<18} {met}"
            lines.append(row)
        lines.append("")
        lines.append("ratio = postoffice median / that Dovecot's median; higher is better for")
        lines.append("sessions/s and MB/s, lower is better for times, KiB and ms.")
        lines.append("")
        lines.append("load generator CPU share (1.0 = one core), median over rounds:")
        for key, label in (
            ("cpu.storm", "login storm"),
            ("cpu.bulk1", "bulk RETR one at a time"),
            ("cpu.bulk32", "bulk RETR 32 pipelined"),
            ("cpu.huge", "huge maildrop"),
            ("cpu.keep", "keep-mode sync"),
            ("cpu.idle", "idle: opening sessions"),
        ):
            if not any(key in self.results[name] for name in servers):
                continue
            cells = "  ".join(f"{name} {fmt(self.medians(name, key)[0])}" for name in servers)
            lines.append(f"  {label:<26} {cells}")
        server_rows = [
            (key, label)
            for key, label in (
                ("server_cpu.storm", "login storm"),
                ("server_cpu.bulk1", "bulk RETR one at a time"),
                ("server_cpu.bulk32", "bulk RETR 32 pipelined"),
            )
            if any(key in self.results[name] for name in servers)
        ]
        for prefix, title in (
            ("server_cpu", "server CPU share (all its processes; 2.0 = both cores), median:"),
            ("others_cpu", "CPU share of everything else on the machine (noise), median:"),
        ):
            if server_rows:
                lines.append(title)
            for key, label in server_rows:
                key = prefix + key[len("server_cpu") :]
                cells = "  ".join(f"{name} {fmt(self.medians(name, key)[0])}" for name in servers)
                lines.append(f"  {label:<26} {cells}")
        if calibration:
            lines.append(
                "calibration (load generator against a do-nothing C responder): "
                f"{fmt(calibration['storm.rate'])} sessions/s at client CPU "
                f"{fmt(calibration['cpu.storm'])}, p50 {fmt(calibration['storm.p50_ms'])} ms; "
                f"RETR {fmt(calibration['bulk1.mb_s'])} MB/s one at a time, "
                f"{fmt(calibration['bulk32.mb_s'])} MB/s pipelined"
            )
        return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller corpus, shorter storm")
    parser.add_argument("--runs", type=int, default=3, help="rounds (default 3)")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated")
    parser.add_argument("--only", default=",".join(WORKLOADS), help="workloads, comma-separated")
    parser.add_argument("--corpus", type=Path, help="corpus folder (default under the temp dir)")
    parser.add_argument("--storm-seconds", type=float, help="timed seconds (default 5, quick 2)")
    parser.add_argument("--storm-processes", type=int, default=1, help="client processes")
    parser.add_argument("--idle-sessions", type=int, help="default 5000 (quick 1000)")
    parser.add_argument(
        "--postoffice-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra postoffice setting, e.g. limits.max_sessions_per_user=20 (repeatable)",
    )
    parser.add_argument("--no-calibrate", action="store_true", help="skip the calibration")
    parser.add_argument("--json", type=Path, help="where to write the raw figures")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks, server logs")
    args = parser.parse_args(argv)
    args.servers = [name.strip() for name in args.servers.split(",") if name.strip()]
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    for name in args.servers:
        if name not in SERVERS:
            parser.error(f"unknown server {name!r}; known: {', '.join(SERVERS)}")
    for name in args.only:
        if name not in WORKLOADS:
            parser.error(f"unknown workload {name!r}; known: {', '.join(WORKLOADS)}")
    if args.storm_seconds is None:
        args.storm_seconds = 2.0 if args.quick else 5.0
    if args.idle_sessions is None:
        args.idle_sessions = 1000 if args.quick else 5000
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench.run needs root: the private Dovecot switches users", file=sys.stderr)
        return 2
    started = time.monotonic()
    dovecot.ensure_installed()
    loadgen.build()
    spec = QUICK if args.quick else FULL
    corpus = ensure_corpus(args.corpus or default_root(args.quick), spec)
    info = machine()
    print(
        f"{info['date']}: {info['nproc']} cores ({info['cpu']}), {info['ram_gib']} GiB RAM, "
        f"Linux {info['kernel']}, Python {info['python']} ({info['interpreter']}), "
        f"Dovecot {info['dovecot']}, "
        f"postoffice {info['postoffice_commit']}, load average {' '.join(info['loadavg_start'])}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-work-") as folder:
        work = Path(folder)
        bench = Bench(args, corpus, work)
        calibration = None
        if not args.no_calibrate:
            calibration = loadgen.calibrate(
                corpus, work, seconds=args.storm_seconds, processes=args.storm_processes
            )
            print(
                f"  calibration: {fmt(calibration['storm.rate'])} sessions/s "
                f"(client CPU {fmt(calibration['cpu.storm'])}), RETR "
                f"{fmt(calibration['bulk1.mb_s'])} / {fmt(calibration['bulk32.mb_s'])} MB/s",
                flush=True,
            )
        bench.prime()
        for number in range(args.runs):
            bench.round(number)
    info["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    info["minutes"] = round((time.monotonic() - started) / 60, 1)
    table = bench.table(calibration)
    print()
    print(table)
    warnings = {name: sorted(set(lines))[:20] for name, lines in bench.warnings.items() if lines}
    for name, lines in warnings.items():
        print(f"{name} logged {len(bench.warnings[name])} warnings/errors, e.g.: {lines[0]}")
    for failure in bench.failures:
        print(f"FAILED: {failure}")
    print(
        f"{args.runs} rounds in {info['minutes']} min; load average at the end "
        f"{' '.join(info['loadavg_end'])}"
    )
    out = args.json or (
        Path(tempfile.gettempdir())
        / "postoffice-bench"
        / f"results-{time.strftime('%Y%m%d-%H%M%S')}{'-quick' if args.quick else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": info,
                "spec": asdict(spec),
                "arguments": {
                    k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                },
                "calibration": calibration,
                "results": bench.results,
                "failures": bench.failures,
                "warnings": warnings,
                "table": table,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"raw figures: {out}")
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
