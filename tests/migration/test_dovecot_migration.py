"""Drop-in migration from the real Dovecot: the same UIDLs, and mpop fetches nothing again.

The private Dovecot of ``tests/fetch`` (skipped without Dovecot or root, failing under
``POSTOFFICE_REQUIRE_INTEROP``) gets three users. Their mail arrives the ways Dovecot
knows: ``doveadm save``, the LDA (``dovecot-lda``) and files dropped into ``new/`` by
another program (older time stamps than the rest, so Dovecot's UID order is not the time
order). In a first phase Dovecot runs with ``pop3_uidl_format = %v.%u`` and
``pop3_save_uidl = yes`` and every user logs in, so those UIDLs are saved (``P``); then it
goes back to its default ``%08Xu%08Xv`` and more mail arrives: the listing mixes saved and
computed UIDLs, as after an earlier migration. ``mpop --keep`` fetches everything from
Dovecot; postoffice then serves the same Maildirs with ``mail.uidl_format = "dovecot"``.
"""

from __future__ import annotations

import os
import poplib
import pwd
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from postoffice.delivery.maildir import deliver_to_maildir
from tests.conftest import ServerHarness, require_tool
from tests.fetch.test_dovecot import Dovecot

USERS = {"alice": "secret", "bob": "hunter2", "carol": "pa55word"}
DOVEADM = "/usr/bin/doveadm"
LDA = "/usr/lib/dovecot/dovecot-lda"


@dataclass
class Listing:
    """What a POP3 server shows one user: STAT, LIST and UIDL, in message order."""

    stat: tuple[int, int]
    sizes: list[int]
    uidls: list[str]


def pop3_listing(port: int, user: str) -> Listing:
    pop = poplib.POP3("127.0.0.1", port, timeout=20)
    try:
        pop.user(user)
        pop.pass_(USERS[user])
        stat = pop.stat()
        sizes = [int(line.split()[1]) for line in pop.list()[1]]
        uidls = [line.split()[1].decode("ascii") for line in pop.uidl()[1]]
    finally:
        pop.quit()
    return Listing(stat=stat, sizes=sizes, uidls=uidls)


def message(user: str, number: int, how: str) -> bytes:
    return (
        f"From: sender{number}@example.org\nTo: {user}@example.org\n"
        f"Subject: {how} {number} for {user}\n\nBody {number}.\n.leading dot\n"
    ).encode()


class DovecotMail:
    """Delivering into the private Dovecot and switching its POP3 settings."""

    def __init__(self, dovecot: Dovecot) -> None:
        self.dovecot = dovecot
        self.config = dovecot.root / "dovecot.conf"
        self.original_config = self.config.read_text()
        nobody = pwd.getpwnam("nobody")
        lines = []
        for user, password in USERS.items():
            lines.append(f"{user}:{{PLAIN}}{password}\n")
            home = dovecot.root / "home" / user
            home.mkdir(exist_ok=True)
            os.chown(home, nobody.pw_uid, nobody.pw_gid)
        (dovecot.root / "passwd").write_text("".join(lines))

    def maildir(self, user: str) -> Path:
        return self.dovecot.root / "home" / user / "Maildir"

    def doveadm_save(self, user: str, data: bytes) -> None:
        subprocess.run(
            [DOVEADM, "-c", str(self.config), "save", "-u", user],
            input=data,
            check=True,
            timeout=30,
        )

    def lda(self, user: str, data: bytes) -> None:
        subprocess.run(
            [LDA, "-c", str(self.config), "-d", user, "-f", "sender@example.org"],
            input=data,
            check=True,
            timeout=30,
        )

    def drop(self, user: str, name: str, data: bytes) -> None:
        """A file another program put into new/ (Dovecot learns of it at the next login)."""
        nobody = pwd.getpwnam("nobody")
        maildir = self.maildir(user)
        for folder in (maildir, *(maildir / sub for sub in ("new", "cur", "tmp"))):
            folder.mkdir(exist_ok=True)
            os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        path = maildir / "new" / name
        path.write_bytes(data)
        os.chown(path, nobody.pw_uid, nobody.pw_gid)

    def reconfigure(self, phase: str, settings: str) -> None:
        """Run with ``settings`` added; wait until new logins see them (by the greeting)."""
        self.config.write_text(f"{self.original_config}\nlogin_greeting = {phase}\n{settings}\n")
        subprocess.run([DOVEADM, "-c", str(self.config), "reload"], check=True, timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", self.dovecot.pop3), timeout=5) as sock:
                if sock.recv(200).startswith(f"+OK {phase}".encode()):
                    return
            time.sleep(0.05)  # Dovecot restarts its services; no event to wait on
        pytest.fail(f"Dovecot did not reload into {phase}")


def fill_through_dovecot(mail: DovecotMail) -> None:
    """Phase A (saved %v.%u UIDLs), then phase B (Dovecot's default format)."""
    mail.reconfigure("phase-a", "pop3_uidl_format = %v.%u\npop3_save_uidl = yes")
    for user in USERS:
        mail.doveadm_save(user, message(user, 1, "saved"))
        mail.lda(user, message(user, 2, "lda"))
        mail.drop(user, "1500000000.M1P1.elsewhere", message(user, 3, "dropped"))
        pop3_listing(mail.dovecot.pop3, user)  # Dovecot saves the UIDLs it shows
    mail.reconfigure("phase-b", "")
    for user in USERS:
        mail.doveadm_save(user, message(user, 4, "saved"))
        mail.drop(user, "1400000000.M2P2.elsewhere", message(user, 5, "dropped"))
        mail.lda(user, message(user, 6, "lda"))
    mail.lda("carol", b"Subject: no final newline\n\nlast line")


class Mpop:
    """mpop with one account per user and one UIDLs file for both servers."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.uidls = home / "uidls"
        self.maildir = home / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True, exist_ok=True)

    def run(self, port: int) -> subprocess.CompletedProcess[str]:
        config = self.home / f"mpoprc-{port}"
        accounts = "".join(
            f"account {user}\nuser {user}\npassword {password}\n"
            for user, password in USERS.items()
        )
        config.write_text(
            "defaults\ntls off\nauth user\ntimeout 20\nreceived_header off\n"
            f"host 127.0.0.1\nport {port}\ndelivery maildir {self.maildir}\n"
            f"uidls_file {self.uidls}\n{accounts}"
        )
        config.chmod(0o600)
        return subprocess.run(
            [
                require_tool("mpop"),
                "--file",
                str(config),
                "--half-quiet",
                "--keep",
                "--all-accounts",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"HOME": str(self.home), "PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C"},
        )

    def fetched(self) -> int:
        return sum(len(os.listdir(self.maildir / sub)) for sub in ("new", "cur"))


@pytest.fixture
def migrated(
    dovecot: Dovecot, harness: ServerHarness, tmp_path: Path
) -> Iterator[tuple[DovecotMail, ServerHarness, dict[str, Listing], Mpop]]:
    """Mail in Dovecot, its listings, mpop's first run, and postoffice on the same Maildirs."""
    for tool in (DOVEADM, LDA):
        if not Path(tool).exists():
            pytest.skip(f"{tool} is not installed (dovecot-core)")
    mail = DovecotMail(dovecot)
    fill_through_dovecot(mail)
    listings = {user: pop3_listing(dovecot.pop3, user) for user in USERS}
    mpop = Mpop(tmp_path / "mpop")
    first = mpop.run(dovecot.pop3)
    assert first.returncode == 0, first.stdout + first.stderr
    for user, password in USERS.items():
        harness.add_user(user, password)
    harness.start(
        mail={"maildir": f"{dovecot.root}/home/{{user}}/Maildir", "uidl_format": "dovecot"}
    )
    yield mail, harness, listings, mpop


def test_postoffice_serves_dovecots_listing_exactly(
    migrated: tuple[DovecotMail, ServerHarness, dict[str, Listing], Mpop],
) -> None:
    """For every user: the same STAT, LIST sizes and UIDLs, in the same order."""
    _, server, listings, _ = migrated
    total = 0
    for user, dovecot_listing in listings.items():
        assert dovecot_listing.stat[0] == (7 if user == "carol" else 6)
        assert pop3_listing(server.port, user) == dovecot_listing, user
        total += dovecot_listing.stat[0]
    saved = [uid for uid in listings["alice"].uidls if "." in uid]
    assert len(saved) == 3  # phase A's %v.%u UIDLs, saved by Dovecot and honoured
    assert total == 19
    print(
        f"\nDovecot migration: {len(listings)} users, {total} messages, "
        "UIDL listings identical (STAT, LIST, UIDL, order)",
        file=sys.stderr,
    )


def test_mpop_keep_fetches_nothing_again_after_the_switch(
    migrated: tuple[DovecotMail, ServerHarness, dict[str, Listing], Mpop],
) -> None:
    """mpop --keep took all 19 from Dovecot; against postoffice it finds nothing new."""
    _, server, _, mpop = migrated
    assert mpop.fetched() == 19
    second = mpop.run(server.port)
    assert second.returncode == 0, second.stdout + second.stderr
    assert mpop.fetched() == 19
    for user in USERS:
        assert f"{user} at 127.0.0.1:" in second.stdout
    assert "new: no messages" in second.stdout
    assert second.stdout.count("new: no messages") == len(USERS), second.stdout


def test_mail_after_the_switch_is_new_exactly_once(
    migrated: tuple[DovecotMail, ServerHarness, dict[str, Listing], Mpop],
) -> None:
    """A message delivered by postoffice after the switch is fetched once, then not again."""
    mail, server, _, mpop = migrated
    deliver_to_maildir(mail.maildir("bob"), b"Subject: after the switch\n\nnew\n")
    assert mpop.run(server.port).returncode == 0
    assert mpop.fetched() == 20
    assert mpop.run(server.port).returncode == 0
    assert mpop.fetched() == 20


def test_migrate_check_agrees(
    migrated: tuple[DovecotMail, ServerHarness, dict[str, Listing], Mpop], tmp_path: Path
) -> None:
    """`postoffice migrate check --from dovecot` exits 0; with the natural scheme, 1."""
    mail, server, _, _ = migrated
    maildirs = f"{mail.dovecot.root}/home/{{user}}/Maildir"
    config = tmp_path / "check.toml"
    config.write_text(
        f'data_dir = "{server.root}/var"\n[mail]\nmaildir = "{maildirs}"\nuidl_format = "dovecot"\n'
    )
    command = [sys.executable, "-m", "postoffice", "migrate", "check", "--config", str(config)]
    ok = subprocess.run([*command, "--from", "dovecot"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.endswith("3 users, 19 messages: no UIDL would change\n")

    config.write_text(config.read_text().replace('"dovecot"', '"postoffice"'))
    changed = subprocess.run(
        [*command, "--from", "dovecot", "alice"], capture_output=True, text=True, timeout=60
    )
    assert changed.returncode == 1
    assert "alice: 6 messages, 6 UIDLs would change" in changed.stdout
    assert 'mail.uidl_format is "postoffice", not "dovecot"' in changed.stdout


def test_server_honours_uidl_format_by_itself(dovecot: Dovecot, harness: ServerHarness) -> None:
    """Without the test's help the server serves Dovecot's UIDLs under uidl_format dovecot."""
    mail = DovecotMail(dovecot)
    mail.doveadm_save("alice", message("alice", 1, "saved"))
    expected = pop3_listing(dovecot.pop3, "alice")
    harness.add_user("alice", USERS["alice"])
    harness.start(
        mail={"maildir": f"{dovecot.root}/home/{{user}}/Maildir", "uidl_format": "dovecot"}
    )
    assert pop3_listing(harness.port, "alice") == expected
