"""`postoffice migrate check` on hand-made Dovecot and Courier maildirs (no server needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from postoffice.auth import passwd_file
from postoffice.auth.base import UserRecord
from postoffice.config import load_config
from postoffice.migrate.check import check_user
from postoffice.storage.maildir import INDEX_NAME, ensure_maildir
from postoffice.storage.uidl_dovecot import DovecotFormat

DEFAULT = DovecotFormat.compile("%08Xu%08Xv")


def setup(tmp_path: Path, uidl_format: str) -> Path:
    config = tmp_path / "postoffice.toml"
    config.write_text(f'data_dir = "var"\n[mail]\nuidl_format = "{uidl_format}"\n')
    (tmp_path / "var").mkdir()
    for user in ("alice", "bob"):
        passwd_file.add_user(tmp_path / "var" / "passwd", user, "{PLAIN}x")
    return config


def maildir(tmp_path: Path, user: str) -> Path:
    path = tmp_path / "var" / "mail" / user / "Maildir"
    ensure_maildir(path)
    return path


def run(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "postoffice", "migrate", "check", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_changes_unseen_and_clean_users(tmp_path: Path) -> None:
    """Duplicates and over-long saved UIDLs are changes; mail Dovecot never saw is not."""
    config = setup(tmp_path, "dovecot")
    alice = maildir(tmp_path, "alice")
    (alice / "dovecot-uidlist").write_text(
        f"3 V7 N5\n1 Psame :1.a.h\n2 Psame :2.b.h\n3 P{'x' * 71} :3.c.h\n4 :4.d.h\n"
    )
    for name in ("1.a.h", "2.b.h", "3.c.h", "4.d.h", "5.new.h"):
        (alice / "cur" / f"{name}:2,S").write_bytes(b"Subject: x\n\nx\n")
    bob = maildir(tmp_path, "bob")
    (bob / "dovecot-uidlist").write_text("3 V7 N2\n1 :1.a.h\n")
    (bob / "new" / "1.a.h").write_bytes(b"x\n")

    result = run(config, "--from", "dovecot")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "alice: 5 messages, 2 UIDLs would change; 1 dovecot never listed "
        "(new UIDLs, no client has them)"
    )
    assert lines[1].startswith("  cur/2.b.h:2,S: same -> D")
    assert lines[1].endswith("(duplicate UIDL: only the first message keeps it)")
    assert "not a valid UIDL" in lines[2]
    assert lines[-1] == "2 users, 6 messages: 2 UIDLs would change"
    assert not (alice / INDEX_NAME).exists()  # the check writes nothing

    clean = run(config, "--from", "dovecot", "bob")
    assert (clean.returncode, clean.stdout) == (0, "1 users, 1 messages: no UIDL would change\n")


def test_pop3_uidl_format_option(tmp_path: Path) -> None:
    """Dovecot ran with another pop3_uidl_format: the check must be told (or configured)."""
    config = setup(tmp_path, "dovecot:%v-%u")
    alice = maildir(tmp_path, "alice")
    (alice / "dovecot-uidlist").write_text("3 V7 N2\n1 :1.a.h\n")
    (alice / "new" / "1.a.h").write_bytes(b"x\n")
    assert run(config, "--from", "dovecot").returncode == 0
    assert run(config, "--from", "dovecot", "--pop3-uidl-format", "%u").returncode == 1
    bad = run(config, "--from", "dovecot", "--pop3-uidl-format", "%m")
    assert bad.returncode == 2
    assert "header MD5" in bad.stderr


def test_courier(tmp_path: Path) -> None:
    config = setup(tmp_path, "courier")
    alice = maildir(tmp_path, "alice")
    (alice / "courierpop3dsizelist").write_text("/3 3 99\n1.a.h:2,S 10 1:99:0\n2.b.h 10 2:99:0\n")
    (alice / "cur" / "1.a.h:2,S").write_bytes(b"x\n")
    (alice / "cur" / "2.b.h:2,").write_bytes(b"x\n")
    result = run(config, "--from", "courier", "-v")
    assert result.returncode == 0, result.stdout
    assert "alice: 2 messages, every UIDL stays" in result.stdout


def test_unreadable_records_leave_the_user_unchecked(tmp_path: Path) -> None:
    config = setup(tmp_path, "dovecot")
    alice = maildir(tmp_path, "alice")
    (alice / "dovecot-uidlist").write_text("7 nonsense\n")
    (alice / "new" / "1.a.h").write_bytes(b"x\n")
    result = run(config, "--from", "dovecot")
    assert result.returncode == 2
    assert "alice: NOT CHECKED:" in result.stdout


@pytest.mark.parametrize("source", ["dovecot", "courier"])
def test_user_without_mail_is_fine(tmp_path: Path, source: str) -> None:
    config = load_config(setup(tmp_path, source))
    report = check_user(config, UserRecord(name="alice"), source, DEFAULT)
    assert (report.messages, report.changes, report.problem) == (0, [], "")
