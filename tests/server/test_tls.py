"""TLS on the real server: POP3S, STLS without command injection, plaintext policy, reload."""

from __future__ import annotations

import contextlib
import logging
import os
import poplib
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tests.conftest import ServerHarness, require_tool
from tests.server.test_loopback import read_until, wait_until


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(harness: ServerHarness, authority: trustme.CA) -> Iterator[ServerHarness]:
    certificate = authority.issue_cert("localhost", "127.0.0.1")
    tls_dir = harness.root / "tls"
    tls_dir.mkdir()
    certificate.private_key_pem.write_to_path(str(tls_dir / "key.pem"))
    certificate.cert_chain_pems[0].write_to_path(str(tls_dir / "fullchain.pem"))
    harness.add_user("alice", "secret")
    harness.deliver("alice", b"Subject: tls\n\nover TLS\n")
    harness.start(
        tls={"certificate": "tls/fullchain.pem", "private_key": "tls/key.pem"},
        auth={"plaintext": "never"},
    )
    yield harness


def client_context(authority: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    authority.configure_trust(context)
    return context


def test_pop3s_with_poplib(tls_server: ServerHarness, authority: trustme.CA) -> None:
    pop = poplib.POP3_SSL(
        "127.0.0.1", tls_server.tls_port, context=client_context(authority), timeout=10
    )
    capabilities = pop.capa()
    assert "STLS" not in capabilities
    assert "USER" in capabilities
    pop.user("alice")
    pop.pass_("secret")
    assert pop.retr(1)[1] == [b"Subject: tls", b"", b"over TLS"]
    pop.quit()


def test_the_end_line_names_the_peer_of_a_tls_session(
    tls_server: ServerHarness, authority: trustme.CA, caplog: pytest.LogCaptureFixture
) -> None:
    """Each session's last log line names the client's address and port, also when the
    client of a POP3S session just goes away (the TLS layer has let go of the connection
    by the time the line is written)."""
    caplog.set_level(logging.INFO)

    def end_line(port: int) -> list[str]:
        wanted = f"peer=[127.0.0.1]:{port} end user='alice'"
        return [r.getMessage() for r in caplog.records if wanted in r.getMessage()]

    context = client_context(authority)
    quitting = poplib.POP3_SSL("127.0.0.1", tls_server.tls_port, context=context, timeout=10)
    port = quitting.sock.getsockname()[1]
    quitting.user("alice")
    quitting.pass_("secret")
    quitting.quit()
    wait_until(lambda: bool(end_line(port)))
    assert "reason=quit tls=yes" in end_line(port)[0]
    leaving = poplib.POP3_SSL("127.0.0.1", tls_server.tls_port, context=context, timeout=10)
    port = leaving.sock.getsockname()[1]
    leaving.user("alice")
    leaving.pass_("secret")
    leaving.close()  # no QUIT, no TLS close_notify
    wait_until(lambda: bool(end_line(port)))
    assert "reason=closed by client tls=yes" in end_line(port)[0]


def test_stls_then_login_with_poplib(tls_server: ServerHarness, authority: trustme.CA) -> None:
    pop = poplib.POP3("127.0.0.1", tls_server.port, timeout=10)
    before = pop.capa()
    assert "STLS" in before
    assert "USER" not in before  # plaintext = "never"
    assert "SASL" not in before or "PLAIN" not in before["SASL"]
    pop.stls(context=client_context(authority))
    after = pop.capa()
    assert "STLS" not in after
    assert "USER" in after
    pop.user("alice")
    assert pop.pass_("secret").startswith(b"+OK maildrop has 1 messages")
    pop.quit()


def test_plaintext_login_refused_before_tls_even_on_loopback(tls_server: ServerHarness) -> None:
    pop = poplib.POP3("127.0.0.1", tls_server.port, timeout=10)
    pop.user("alice")
    with pytest.raises(poplib.error_proto, match="plaintext login is not allowed"):
        pop.pass_("secret")
    pop.quit()


@pytest.mark.parametrize("injected", [b"CAPA\r\n", b"USER alice\r\nPASS secret\r\n", b"QUIT\r\n"])
def test_commands_sent_with_stls_are_never_executed(
    tls_server: ServerHarness, authority: trustme.CA, injected: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", tls_server.port), timeout=10) as sock:
        read_until(sock, lambda d: d.endswith(b"\r\n"))
        sock.sendall(b"STLS\r\n" + injected)
        reply = read_until(sock, lambda d: d.endswith(b"\r\n"))
        assert reply == b"+OK begin TLS negotiation\r\n"
        context = client_context(authority)
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            # Inside TLS, nothing from the injected bytes was answered or acted on.
            tls.sendall(b"NOOP\r\n")
            assert read_until(tls, lambda d: d.endswith(b"\r\n")) == (
                b"-ERR NOOP is not allowed in the AUTHORIZATION state\r\n"
            )
            tls.sendall(b"PASS secret\r\n")
            assert read_until(tls, lambda d: d.endswith(b"\r\n")) == b"-ERR send USER first\r\n"
            tls.sendall(b"QUIT\r\n")
            read_until(tls, lambda d: d.endswith(b"\r\n"))


def test_garbage_on_the_tls_port_is_closed_with_one_log_line(
    tls_server: ServerHarness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with socket.create_connection(("127.0.0.1", tls_server.tls_port), timeout=10) as sock:
        sock.sendall(b"USER alice\r\nPASS secret\r\n" * 10)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
    assert tls_server.server is not None
    wait_until(lambda: not tls_server.server or not tls_server.server.context.sessions)
    failures = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(failures) == 1


def test_silent_client_on_the_tls_port_is_dropped(harness: ServerHarness) -> None:
    harness.start(limits={"handshake_timeout": 0.3})
    with socket.create_connection(("127.0.0.1", harness.tls_port), timeout=10) as sock:
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""
        assert time.monotonic() - started < 5


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
def test_tls_1_1_is_refused(tls_server: ServerHarness) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # so that the client really offers 1.1
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    with (
        socket.create_connection(("127.0.0.1", tls_server.tls_port), timeout=10) as sock,
        pytest.raises((ssl.SSLError, ConnectionResetError)) as refused,
    ):
        context.wrap_socket(sock, server_hostname="localhost").do_handshake()
    # The server refused it, not our own client.
    assert "NO_PROTOCOLS_AVAILABLE" not in str(refused.value)


def test_embedded_default_makes_a_self_signed_certificate(harness: ServerHarness) -> None:
    harness.start()
    certificate = harness.root / "var" / "tls" / "fullchain.pem"
    assert certificate.exists()
    assert oct((harness.root / "var" / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
    context = ssl.create_default_context(cafile=str(certificate))
    pop = poplib.POP3_SSL("127.0.0.1", harness.tls_port, context=context, timeout=10)
    assert pop.getwelcome().startswith(b"+OK")
    pop.quit()


def test_openssl_s_client_starttls_pop3(tls_server: ServerHarness, authority: trustme.CA) -> None:
    openssl = require_tool("openssl")
    ca_file = tls_server.root / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    result = subprocess.run(
        [
            openssl,
            "s_client",
            "-starttls",
            "pop3",
            "-connect",
            f"127.0.0.1:{tls_server.port}",
            "-CAfile",
            str(ca_file),
            "-verify_return_error",
            "-quiet",
        ],
        input=b"USER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n",
        capture_output=True,
        timeout=30,
    )
    assert b"+OK maildrop has 1 messages" in result.stdout, result.stderr
    assert b"+OK 1 " in result.stdout


def test_sighup_reloads_the_certificate_without_dropping_sessions(
    tmp_path: Path, authority: trustme.CA
) -> None:
    from tests.server.test_process import ServerProcess

    first = authority.issue_cert("localhost", "127.0.0.1")
    (tmp_path / "tls").mkdir()
    first.private_key_pem.write_to_path(str(tmp_path / "tls" / "key.pem"))
    first.cert_chain_pems[0].write_to_path(str(tmp_path / "tls" / "fullchain.pem"))
    server = ServerProcess(
        tmp_path,
        '[pop3s]\nlisten = ["127.0.0.1:0"]\n[tls]\ncertificate = "tls/fullchain.pem"\n'
        'private_key = "tls/key.pem"\n',
    )
    from postoffice.auth import passwd_file

    passwd_file.add_user(tmp_path / "var" / "passwd", "alice", "{PLAIN}secret")
    try:
        server.start()
        port = server.tls_port()
        context = client_context(authority)
        before = poplib.POP3_SSL("127.0.0.1", port, context=context, timeout=10)
        old_der = before.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        before.user("alice")
        before.pass_("secret")
        second = authority.issue_cert("localhost", "127.0.0.1")
        second.private_key_pem.write_to_path(str(tmp_path / "tls" / "key.pem"))
        second.cert_chain_pems[0].write_to_path(str(tmp_path / "tls" / "fullchain.pem"))
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGHUP)
        # Every worker process reloads for itself; the next connection may reach any of them.
        started = re.search(r"started (\d+) worker processes", server.log.read_text())
        workers = int(started[1]) if started else 1
        wait_until(lambda: server.log.read_text().count("certificates reloaded") >= workers)
        after = poplib.POP3_SSL("127.0.0.1", port, context=context, timeout=10)
        new_der = after.sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        assert new_der != old_der
        assert before.noop().startswith(b"+OK")  # the old session is still there
        before.quit()
        after.quit()
    finally:
        server.stop()
