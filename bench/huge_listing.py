"""LIST and UIDL with Python's poplib on a 100,000-message maildrop, cold and warm.

Cold: the server process has never seen the maildrop and no index cache exists. Warm: a
second login to the same server process (and the index cache written by the first).
Prints the median of ``--runs`` runs of each. Not a test: run it by hand.

    .venv-bench/bin/python bench/huge_listing.py --messages 100000 --runs 3
"""

from __future__ import annotations

import argparse
import os
import poplib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = b"From: a@example.org\nTo: b@example.org\nSubject: filler\n\n" + b"x" * 70 + b"\n"


def make_maildrop(root: Path, count: int) -> None:
    maildir = root / "var" / "mail" / "alice" / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    body = BODY * 18  # about 1.4 KB
    wire = len(body) + body.count(b"\n")
    for index in range(count):
        stamp = 1700000000 + index // 1000
        name = f"{stamp}.M{index % 1000}P1Q{index}.bench,S={len(body)},W={wire}"
        (maildir / "cur" / (name + ":2,S")).write_bytes(body)


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    config = root / "postoffice.toml"
    config.write_text(
        'data_dir = "var"\n[pop3]\nlisten = ["127.0.0.1:0"]\n[pop3s]\nlisten = []\n'
        "[lmtp]\nlisten = []\n"
        "[limits]\nshutdown_timeout = 1\n"
    )
    log = root / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "postoffice", "serve", "--config", str(config)],
        stderr=open(log, "wb"),  # noqa: SIM115
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = re.search(r" POP3 listening on 127\.0\.0\.1:(\d+)", log.read_text())
        if match:
            return process, int(match.group(1))
        time.sleep(0.02)
    raise SystemExit("server did not start: " + log.read_text())


def one_session(port: int) -> tuple[float, float, float]:
    started = time.perf_counter()
    pop = poplib.POP3("127.0.0.1", port, timeout=120)
    pop.user("alice")
    pop.pass_("secret")
    count = pop.stat()[0]
    login = time.perf_counter() - started
    started = time.perf_counter()
    assert len(pop.list()[1]) == count
    listing = time.perf_counter() - started
    started = time.perf_counter()
    assert len(pop.uidl()[1]) == count
    uidl = time.perf_counter() - started
    pop.quit()
    return login, listing, uidl


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    arguments = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="postoffice-bench-"))
    try:
        template = base / "template"
        make_maildrop(template, arguments.messages)
        cold: list[tuple[float, float, float]] = []
        warm: list[tuple[float, float, float]] = []
        for run in range(arguments.runs):
            root = base / f"run{run}"
            shutil.copytree(template, root)
            (root / "var" / "passwd").write_text("alice:{PLAIN}secret\n")
            process, port = start_server(root)
            try:
                cold.append(one_session(port))
                warm.append(one_session(port))
            finally:
                process.terminate()
                process.wait()
        for label, results in (("cold", cold), ("warm", warm)):
            columns = zip(*results, strict=True)
            login, listing, uidl = (statistics.median(column) for column in columns)
            print(
                f"{label}: login+STAT {login:.3f} s, LIST {listing:.3f} s, UIDL {uidl:.3f} s, "
                f"LIST+UIDL {listing + uidl:.3f} s (median of {len(results)}, "
                f"{arguments.messages} messages, {os.cpu_count()} cores)"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
