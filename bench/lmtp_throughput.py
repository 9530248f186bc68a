"""LMTP delivery throughput: messages per second for 10 KB messages with smtplib.LMTP.

A real ``postoffice serve`` process (one worker, LMTP on a loopback port) and Python's
``smtplib.LMTP`` as the MTA. smtplib does not pipeline, so "as far as smtplib allows"
means one connection reused for every message (MAIL, RCPT, DATA, then the next), as an
MTA reuses its LMTP connections; ``--connections N`` runs N such clients at once, as an
MTA's parallel deliveries do. Every 250 means the message was fsynced and renamed into
``new/`` with ``new/`` fsynced, so the figure depends on the disk under ``--dir``.
Prints each run and the median of ``--runs``. Not a test: run it by hand.

    .venv-bench/bin/python bench/lmtp_throughput.py --messages 2000 --runs 3
    .venv-bench/bin/python bench/lmtp_throughput.py --connections 4
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

LINE = b"x" * 76 + b"\r\n"


def message(number: int, size: int) -> bytes:
    head = (
        b"From: sender@example.org\r\nTo: alice@example.org\r\n"
        b"Subject: bench %d\r\nMessage-ID: <%d@bench.example.org>\r\n\r\n" % (number, number)
    )
    return head + LINE * ((size - len(head)) // len(LINE))


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    config = root / "postoffice.toml"
    config.write_text(
        'data_dir = "var"\nlog_file = "var/server.log"\n'
        '[pop3]\nlisten = ["127.0.0.1:0"]\n[pop3s]\nlisten = []\n'
        '[lmtp]\nlisten = ["127.0.0.1:0"]\n[process]\nworkers = 1\n'
    )
    (root / "var").mkdir()
    (root / "var" / "passwd").write_text("alice:{PLAIN}secret\n")
    process = subprocess.Popen(
        [sys.executable, "-m", "postoffice", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log = root / "var" / "server.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        match = re.search(r"LMTP listening on 127\.0\.0\.1:(\d+)", text)
        if match:
            return process, int(match.group(1))
        if process.poll() is not None:
            raise SystemExit(f"server exited:\n{text}")
        time.sleep(0.05)
    process.kill()
    raise SystemExit("server did not start")


def client(port: int, messages: list[bytes], failures: list[str]) -> None:
    with smtplib.LMTP("127.0.0.1", port, timeout=60) as lmtp:
        lmtp.ehlo("bench.example.org")
        for data in messages:
            refused = lmtp.sendmail("sender@example.org", ["alice@example.org"], data)
            if refused:
                failures.append(repr(refused))


def one_run(count: int, size: int, connections: int, base: Path | None) -> float:
    root = Path(tempfile.mkdtemp(prefix="lmtp-bench-", dir=base))
    process, port = start_server(root)
    try:
        batches = [
            [message(n, size) for n in range(c, count, connections)] for c in range(connections)
        ]
        failures: list[str] = []
        threads = [
            threading.Thread(target=client, args=(port, batch, failures)) for batch in batches
        ]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        if failures:
            raise SystemExit(f"{len(failures)} refused: {failures[0]}")
        delivered = len(os.listdir(root / "var" / "mail" / "alice" / "Maildir" / "new"))
        if delivered != count:
            raise SystemExit(f"{delivered} files for {count} messages")
        return count / elapsed
    finally:
        process.terminate()
        process.wait(30)
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10_000, help="octets per message")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where the maildir lives")
    args = parser.parse_args()
    rates = []
    for run in range(1, args.runs + 1):
        rate = one_run(args.messages, args.size, args.connections, args.dir)
        rates.append(rate)
        print(f"run {run}: {rate:.0f} messages/s", flush=True)
    print(
        f"median of {args.runs}: {statistics.median(rates):.0f} messages/s "
        f"({args.messages} messages of {args.size} octets, {args.connections} connection(s))"
    )


if __name__ == "__main__":
    main()
