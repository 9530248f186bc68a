"""``postoffice deliver`` as an MTA runs it, and a really full disk under LMTP and deliver."""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from postoffice.auth import passwd_file
from tests.conftest import ServerHarness

POSTOFFICE = [sys.executable, "-m", "postoffice"]
MESSAGE = b"From: a@example.org\nSubject: piped\n\nbody\n"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "postoffice.toml"
    path.write_text('data_dir = "var"\n[mail]\nquota = "1KB"\n')
    (tmp_path / "var").mkdir()
    passwd_file.add_user(tmp_path / "var" / "passwd", "alice", "{PLAIN}x")
    passwd_file.add_user(tmp_path / "var" / "passwd", "bob", "{PLAIN}y")
    return path


def deliver(config: Path, *users: str, data: bytes = MESSAGE) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*POSTOFFICE, "deliver", "--config", str(config), *users],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )


def new_files(root: Path, user: str) -> list[bytes]:
    new = root / "var" / "mail" / user / "Maildir" / "new"
    return sorted(p.read_bytes() for p in new.iterdir()) if new.is_dir() else []


def test_delivers_the_message_as_piped(config: Path, tmp_path: Path) -> None:
    """Exit 0; each user's maildrop holds the bytes exactly as they came on stdin."""
    result = deliver(config, "alice", "bob@example.org")
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    assert new_files(tmp_path, "alice") == new_files(tmp_path, "bob") == [MESSAGE]


def test_unknown_user_is_67_and_delivers_nothing(config: Path, tmp_path: Path) -> None:
    """EX_NOUSER when any user is unknown; nobody gets a copy."""
    result = deliver(config, "alice", "ghost")
    assert result.returncode == 67
    assert b"'ghost': no such user" in result.stderr
    assert new_files(tmp_path, "alice") == []


def test_over_quota_is_73(config: Path, tmp_path: Path) -> None:
    assert deliver(config, "alice", data=b"x" * 900).returncode == 0
    result = deliver(config, "alice", data=b"y" * 200)
    assert result.returncode == 73
    assert b"mailbox full (5.2.2)" in result.stderr
    assert len(new_files(tmp_path, "alice")) == 1


def test_storage_error_is_75_and_leaves_nothing(config: Path, tmp_path: Path) -> None:
    """A maildir that cannot take the file (new/ is not a directory): EX_TEMPFAIL."""
    maildir = tmp_path / "var" / "mail" / "alice" / "Maildir"
    for sub in ("cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new").write_text("not a directory")
    result = deliver(config, "alice")
    assert result.returncode == 75
    assert b"temporary local problem" in result.stderr
    assert os.listdir(maildir / "tmp") == []


def test_temporary_failure_outranks_a_bounce(config: Path, tmp_path: Path) -> None:
    """One user over quota, the other temporarily failing: 75, so the MTA retries."""
    assert deliver(config, "alice", data=b"x" * 1000).returncode == 0
    bob = tmp_path / "var" / "mail" / "bob" / "Maildir"
    bob.mkdir(parents=True)
    (bob / "new").write_text("not a directory")
    assert deliver(config, "alice", "bob").returncode == 75


def test_configuration_error_is_78(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[mail]\nuidl_format = 'nonsense'\n")
    result = deliver(bad, "alice")
    assert result.returncode == 78
    assert b"mail.uidl_format" in result.stderr


# -- a filesystem that is really full ----------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs; skipped where mounting is not allowed (not root, containers)."""
    mountpoint = tmp_path / "small"
    mountpoint.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mountpoint)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


def fill(path: Path, leave: int) -> None:
    """Fill the filesystem of ``path`` until about ``leave`` octets are free."""
    stats = os.statvfs(path)
    free = stats.f_bavail * stats.f_frsize
    with open(path / "filler", "wb") as f:
        f.write(b"\0" * max(free - leave, 0))


def test_full_disk_under_lmtp_and_deliver(harness: ServerHarness, small_filesystem: Path) -> None:
    """ENOSPC for real: 452 4.3.1 per recipient and exit 75; new/ and tmp/ stay empty."""
    harness.add_user("alice", "secret")
    harness.start(mail={"maildir": str(small_filesystem) + "/{user}/Maildir"})
    maildir = small_filesystem / "alice" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    fill(small_filesystem, 8192)
    big = b"Subject: big\r\n\r\n" + (b"z" * 70 + b"\r\n") * 1000
    with smtplib.LMTP(harness.host, harness.lmtp_port, timeout=10) as client:
        client.ehlo("mta")
        client.mail("s@example.org")
        assert client.rcpt("alice")[0] == 250
        code, text = client.data(big)
    assert (code, text[:5]) == (452, b"4.3.1")
    assert os.listdir(maildir / "new") == []
    assert os.listdir(maildir / "tmp") == []

    config = harness.root / "deliver.toml"
    config.write_text(
        f'data_dir = "var"\n[mail]\nmaildir = "{small_filesystem}/{{user}}/Maildir"\n'
    )
    result = deliver(config, "alice", data=big)
    assert result.returncode == 75
    assert b"insufficient system storage" in result.stderr
    assert os.listdir(maildir / "new") == []
    assert os.listdir(maildir / "tmp") == []
