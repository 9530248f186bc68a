"""The fetcher against the real Dovecot, started privately on loopback ports.

Skipped when ``/usr/sbin/dovecot`` is missing, unless ``POSTOFFICE_REQUIRE_INTEROP`` is set
(CI), where a missing Dovecot fails.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from postoffice.fetch.errors import CertificateError
from postoffice.fetch.runner import fetch_account

from .helpers import expected_bodies, five_messages, maildir_files, make_account

DOVECOT = Path("/usr/sbin/dovecot")
DH = Path("/usr/share/dovecot/dh.pem")
LMTPD = Path("/usr/lib/dovecot/lmtp")  # Debian's dovecot-lmtpd


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Dovecot:
    root: Path
    pop3: int
    pop3s: int
    lmtp: int
    ca_file: Path

    @property
    def maildir(self) -> Path:
        return self.root / "home" / "alice" / "Maildir"

    def deliver(self, name: str, data: bytes) -> None:
        nobody = pwd.getpwnam("nobody")
        for folder in (self.maildir, *(self.maildir / sub for sub in ("new", "cur", "tmp"))):
            folder.mkdir(exist_ok=True)
            os.chown(folder, nobody.pw_uid, nobody.pw_gid)
        path = self.maildir / "new" / name
        path.write_bytes(data)
        os.chown(path, nobody.pw_uid, nobody.pw_gid)

    def remaining(self, user: str = "alice") -> int:
        maildir = self.root / "home" / user / "Maildir"
        return sum(len(os.listdir(maildir / sub)) for sub in ("new", "cur"))


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"dovecot exited: {log.read_text() if log.exists() else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)  # polling a port the server opens; no event to wait on
    pytest.fail("dovecot did not start listening within 60s")


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    if not DOVECOT.exists():
        if os.environ.get("POSTOFFICE_REQUIRE_INTEROP"):
            pytest.fail("dovecot is required (POSTOFFICE_REQUIRE_INTEROP) but not installed")
        pytest.skip("dovecot is not installed (apt-get install dovecot-pop3d)")
    if os.geteuid() != 0:
        # The private instance switches to the "nobody" mail user, which needs root.
        if os.environ.get("POSTOFFICE_REQUIRE_INTEROP"):
            pytest.fail("the Dovecot interop tests must run as root")
        pytest.skip("the private Dovecot instance needs root to switch users")
    # Dovecot's auth and mail processes run unprivileged, and pytest's tmp_path is private
    # to root: Dovecot gets a folder of its own that they can enter.
    root = Path(tempfile.mkdtemp(prefix="postoffice-dovecot-"))
    root.chmod(0o755)
    (root / "run").mkdir()
    nobody = pwd.getpwnam("nobody")
    home = root / "home" / "alice"
    home.mkdir(parents=True)
    for folder in (home.parent, home):
        os.chown(folder, nobody.pw_uid, nobody.pw_gid)
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_pem.write_to_path(str(root / "key.pem"))
    cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    (root / "passwd").write_text("alice:{PLAIN}secret\nbob:{PLAIN}hunter2\n")
    pop3, pop3s, lmtp = _free_port(), _free_port(), _free_port()
    uid, gid = nobody.pw_uid, nobody.pw_gid
    dh = f"ssl_dh = <{DH}\n" if DH.exists() else ""
    has_lmtp = LMTPD.exists()
    protocols = "pop3 lmtp" if has_lmtp else "pop3"
    lmtp_service = (
        f"service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n"
        f"    port = {lmtp}\n  }}\n}}"
        if has_lmtp
        else ""
    )
    (root / "dovecot.conf").write_text(
        f"""
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = {protocols}
listen = 127.0.0.1
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
{dh}
disable_plaintext_auth = no
auth_mechanisms = plain login scram-sha-256
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
{lmtp_service}
service anvil {{
  chroot =
}}
service stats {{
  chroot =
}}
"""
    )
    stderr = open(root / "stderr.log", "wb")  # noqa: SIM115 - closed in the finally below
    process = subprocess.Popen(
        [str(DOVECOT), "-F", "-c", str(root / "dovecot.conf")],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    try:
        _wait_for_port(pop3, process, root / "stderr.log")
        _wait_for_port(pop3s, process, root / "stderr.log")
        if has_lmtp:
            _wait_for_port(lmtp, process, root / "stderr.log")
        yield Dovecot(
            root=root, pop3=pop3, pop3s=pop3s, lmtp=lmtp if has_lmtp else 0, ca_file=ca_file
        )
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        stderr.close()
        shutil.rmtree(root, ignore_errors=True)


def fill(dovecot: Dovecot) -> None:
    for number, message in enumerate(five_messages(), 1):
        dovecot.deliver(f"170000000{number}.M1P1.test", message.data.replace(b"\r\n", b"\n"))


async def test_stls_keep_mode_fetches_once(tmp_path: Path, dovecot: Dovecot) -> None:
    fill(dovecot)
    account = make_account(
        tmp_path,
        host="127.0.0.1",
        port=dovecot.pop3,
        tls="starttls",
        ca_file=str(dovecot.ca_file),
        mode="keep",
    )
    first = await fetch_account(account)
    second = await fetch_account(account)
    assert (first.fetched, second.fetched) == (5, 0)
    assert sorted(maildir_files(account.maildir).values()) == expected_bodies(five_messages())
    assert dovecot.remaining() == 5
    # auth = "auto" picked the strongest mechanism Dovecot offers.
    assert "method=SCRAM-SHA-256" in (dovecot.root / "dovecot.log").read_text()


async def test_implicit_tls_delete_mode(tmp_path: Path, dovecot: Dovecot) -> None:
    fill(dovecot)
    account = make_account(
        tmp_path,
        host="127.0.0.1",
        port=dovecot.pop3s,
        tls="implicit",
        ca_file=str(dovecot.ca_file),
        mode="delete",
    )
    result = await fetch_account(account)
    assert (result.fetched, result.deleted) == (5, 5)
    assert dovecot.remaining() == 0
    assert sorted(maildir_files(account.maildir).values()) == expected_bodies(five_messages())


@pytest.mark.parametrize("auth", ["user", "login", "plain", "scram-sha-256"])
async def test_cleartext_loopback_logins(tmp_path: Path, dovecot: Dovecot, auth: str) -> None:
    fill(dovecot)
    account = make_account(tmp_path, port=dovecot.pop3, tls="none", auth=auth)
    assert (await fetch_account(account)).fetched == 5


async def test_untrusted_dovecot_certificate_is_refused(tmp_path: Path, dovecot: Dovecot) -> None:
    account = make_account(tmp_path, port=dovecot.pop3s, tls="implicit")
    with pytest.raises(CertificateError, match="fingerprint"):
        await fetch_account(account)


async def test_lmtp_into_dovecot(tmp_path: Path, dovecot: Dovecot) -> None:
    """Fetch alice's mail over POP3 and hand it to Dovecot's LMTP for bob."""
    if not dovecot.lmtp:
        reason = "Dovecot's LMTP server is not installed (apt-get install dovecot-lmtpd)"
        if os.environ.get("POSTOFFICE_REQUIRE_INTEROP"):
            pytest.fail(f"{reason}; .ci/run installs it")
        pytest.skip(reason)
    fill(dovecot)
    account = make_account(
        tmp_path,
        port=dovecot.pop3,
        tls="none",
        mode="delete",
        lmtp=f"127.0.0.1:{dovecot.lmtp}",
        recipient="bob",
    )
    result = await fetch_account(account)
    assert (result.fetched, result.deleted) == (5, 5)
    assert dovecot.remaining("alice") == 0
    assert dovecot.remaining("bob") == 5
