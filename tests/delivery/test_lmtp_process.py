"""`postoffice serve` as a process: LMTP in every worker, delivery, SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from postoffice.auth import passwd_file


@pytest.mark.parametrize("workers", [1, 2])
def test_serve_takes_mail_over_lmtp(tmp_path: Path, workers: int) -> None:
    """The LMTP listener starts with the server (and in each worker) and delivers."""
    config = tmp_path / "postoffice.toml"
    config.write_text(
        'data_dir = "var"\nlog_file = "var/server.log"\n'
        '[pop3]\nlisten = ["127.0.0.1:0"]\n[pop3s]\nlisten = []\n'
        f'[lmtp]\nlisten = ["127.0.0.1:0"]\n[process]\nworkers = {workers}\n'
    )
    (tmp_path / "var").mkdir()
    passwd_file.add_user(tmp_path / "var" / "passwd", "alice", "{PLAIN}secret")
    log = tmp_path / "var" / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "postoffice", "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        port = 0
        while time.monotonic() < deadline and not port:
            match = re.search(
                r"LMTP listening on 127\.0\.0\.1:(\d+)", log.read_text() if log.exists() else ""
            )
            if match:
                port = int(match.group(1))
            elif process.poll() is not None:
                pytest.fail("server exited: " + log.read_text())
            else:
                time.sleep(0.05)  # polling the log of another process
        assert port, "no LMTP listener was logged"
        for number in range(2 * workers):  # new connections, spread over the workers
            with smtplib.LMTP("127.0.0.1", port, timeout=20) as client:
                client.ehlo("mta")
                refused = client.sendmail(
                    "s@example.org", ["alice"], b"Subject: %d\r\n\r\nx\r\n" % number
                )
                assert refused == {}
        new = tmp_path / "var" / "mail" / "alice" / "Maildir" / "new"
        assert len(os.listdir(new)) == 2 * workers
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
