"""TLS (implicit, STLS, pins), login methods, and the per-account policies."""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from postoffice.errors import RemoteProtocolError
from postoffice.fetch.errors import (
    CertificateError,
    FetchConnectionError,
    LoginError,
    PasswordCommandError,
    ServerRefusedError,
)
from postoffice.fetch.runner import fetch_account
from postoffice.fetch.session import DAY, Options
from postoffice.sasl.channel import tls_server_end_point

from .fakeserver import FakeMessage, FakePop3Server, Faults
from .helpers import big_message, five_messages, maildir_files, make_account

ServerFactory = Callable[..., Any]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_cert(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture
def server_context(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(context)
    return context


@pytest.fixture
def ca_file(tmp_path: Path, ca: trustme.CA) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def fingerprint(cert: trustme.LeafCert) -> str:
    der = ssl.PEM_cert_to_DER_cert(cert.cert_chain_pems[0].bytes().decode())
    return hashlib.sha256(der).hexdigest()


@pytest.fixture
async def start() -> AsyncIterator[ServerFactory]:
    servers: list[FakePop3Server] = []

    async def factory(**keys: Any) -> FakePop3Server:
        keys.setdefault("messages", five_messages())
        fake = FakePop3Server(**keys)
        await fake.start()
        servers.append(fake)
        return fake

    yield factory
    for fake in servers:
        await fake.stop()


@pytest.fixture
def system_store_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    yield


# -- login ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_keys", "account_keys", "method"),
    [
        ({}, {}, "plain"),
        ({"sasl": ("LOGIN",)}, {}, "login"),
        ({"sasl": ()}, {}, "user"),
        ({"sasl": (), "pipelining": False}, {}, "user"),
        ({}, {"auth": "user"}, "user"),
        ({"apop": True}, {"auth": "apop"}, "apop"),
        ({"sasl": ("PLAIN", "SCRAM-SHA-256")}, {}, "scram-sha-256"),
        ({"sasl": ("SCRAM-SHA-256",)}, {"auth": "scram-sha-256"}, "scram-sha-256"),
        ({"sasl": ("OAUTHBEARER", "PLAIN")}, {"auth": "oauthbearer"}, "oauthbearer"),
        ({"sasl": ("XOAUTH2",)}, {"auth": "xoauth2"}, "xoauth2"),
        ({"sasl": ("OAUTHBEARER", "XOAUTH2", "PLAIN")}, {}, "plain"),  # auto: no token use
    ],
)
async def test_login_methods(
    tmp_path: Path,
    start: ServerFactory,
    server_keys: dict[str, Any],
    account_keys: dict[str, Any],
    method: str,
) -> None:
    server = await start(**server_keys)
    result = await fetch_account(make_account(tmp_path, server, **account_keys))
    assert server.logins == [method]
    assert result.fetched == 5


@pytest.mark.parametrize("sasl", [("PLAIN",), ("LOGIN",), ("SCRAM-SHA-256",), ()])
async def test_wrong_password_is_a_login_error(
    tmp_path: Path, start: ServerFactory, sasl: tuple[str, ...]
) -> None:
    server = await start(sasl=sasl, password="other")
    account = make_account(tmp_path, server)
    (tmp_path / "pw").write_text("wrong\n")
    with pytest.raises(LoginError, match=r"refused .* login for 'alice': \[AUTH\]"):
        await fetch_account(account)


async def test_long_token_goes_in_a_second_step(tmp_path: Path, start: ServerFactory) -> None:
    token = "t" * 400  # too long for the AUTH line: sent after an empty challenge
    server = await start(sasl=("XOAUTH2",), password=token)
    account = make_account(tmp_path, server, auth="xoauth2")
    (tmp_path / "pw").write_text(token + "\n")
    assert (await fetch_account(account)).fetched == 5
    assert server.logins == ["xoauth2"]


async def test_rejected_token(tmp_path: Path, start: ServerFactory) -> None:
    server = await start(sasl=("OAUTHBEARER",), password="good-token")
    account = make_account(tmp_path, server, auth="oauthbearer")
    (tmp_path / "pw").write_text("expired-token\n")
    with pytest.raises(LoginError, match="refused OAUTHBEARER login"):
        await fetch_account(account)


async def test_apop_needs_a_timestamp(tmp_path: Path, start: ServerFactory) -> None:
    server = await start()
    with pytest.raises(LoginError, match="no APOP timestamp"):
        await fetch_account(make_account(tmp_path, server, auth="apop"))


async def test_password_command_failure(tmp_path: Path, start: ServerFactory) -> None:
    server = await start()
    with pytest.raises(PasswordCommandError, match="status 3"):
        await fetch_account(make_account(tmp_path, server, password_command="exit 3"))
    with pytest.raises(PasswordCommandError, match="no password"):
        await fetch_account(make_account(tmp_path, server, password_command="true"))


async def test_password_never_logged(
    tmp_path: Path, start: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start(sasl=(), password="hunter2-unique")
    caplog.set_level(logging.DEBUG)
    await fetch_account(make_account(tmp_path, server))
    assert "hunter2-unique" not in caplog.text


# -- TLS -----------------------------------------------------------------------------------


async def test_stls_with_ca_file(
    tmp_path: Path, start: ServerFactory, server_context: ssl.SSLContext, ca_file: Path
) -> None:
    server = await start(stls_context=server_context)
    account = make_account(tmp_path, server, tls="starttls", ca_file=str(ca_file))
    assert (await fetch_account(account)).fetched == 5


async def test_implicit_tls_with_ca_file(
    tmp_path: Path, start: ServerFactory, server_context: ssl.SSLContext, ca_file: Path
) -> None:
    server = await start(implicit_context=server_context)
    account = make_account(tmp_path, server, tls="implicit", ca_file=str(ca_file))
    assert (await fetch_account(account)).fetched == 5


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_untrusted_certificate_names_the_fix(
    tmp_path: Path,
    start: ServerFactory,
    server_context: ssl.SSLContext,
    server_cert: trustme.LeafCert,
    tls: str,
    system_store_only: None,
) -> None:
    key = "implicit_context" if tls == "implicit" else "stls_context"
    server = await start(**{key: server_context})
    account = make_account(tmp_path, server, tls=tls)
    with pytest.raises(CertificateError) as caught:
        await fetch_account(account)
    message = str(caught.value)
    assert "failed verification" in message
    assert f'fingerprint = "sha256:{fingerprint(server_cert)}"' in message
    assert server.logins == []


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
async def test_fingerprint_pin(
    tmp_path: Path,
    start: ServerFactory,
    server_context: ssl.SSLContext,
    server_cert: trustme.LeafCert,
    tls: str,
) -> None:
    key = "implicit_context" if tls == "implicit" else "stls_context"
    server = await start(**{key: server_context})
    pin = f"sha256:{fingerprint(server_cert)}"
    assert (await fetch_account(make_account(tmp_path, server, tls=tls, fingerprint=pin))).fetched
    wrong = "sha256:" + "00" * 32
    with pytest.raises(CertificateError, match="does not match the pinned fingerprint"):
        await fetch_account(make_account(tmp_path, server, tls=tls, fingerprint=wrong))
    assert server.logins == ["plain"]


@pytest.mark.parametrize("right", [True, False])
async def test_scram_plus_binds_to_the_certificate(
    tmp_path: Path,
    start: ServerFactory,
    server_context: ssl.SSLContext,
    server_cert: trustme.LeafCert,
    ca_file: Path,
    right: bool,
) -> None:
    der = ssl.PEM_cert_to_DER_cert(server_cert.cert_chain_pems[0].bytes().decode())
    # A man in the middle with another certificate would present another binding.
    binding = tls_server_end_point(der if right else der + b"x", "sha256")
    server = await start(
        stls_context=server_context,
        sasl=("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"),
        channel_bindings=(binding,),
    )
    account = make_account(
        tmp_path, server, tls="starttls", ca_file=str(ca_file), auth="scram-sha-256-plus"
    )
    if right:
        assert (await fetch_account(account)).fetched == 5
        assert server.logins == ["scram-sha-256-plus"]
    else:
        with pytest.raises(LoginError):
            await fetch_account(account)


async def test_scram_plus_needs_tls(tmp_path: Path, start: ServerFactory) -> None:
    server = await start(sasl=("SCRAM-SHA-256-PLUS",))
    with pytest.raises(LoginError, match="needs TLS"):
        await fetch_account(make_account(tmp_path, server, auth="scram-sha-256-plus"))


async def test_refused_stls_never_falls_back(tmp_path: Path, start: ServerFactory) -> None:
    server = await start()  # no STLS
    with pytest.raises(FetchConnectionError, match="never falls back to cleartext"):
        await fetch_account(make_account(tmp_path, server, tls="starttls"))
    assert server.logins == []


async def test_bytes_injected_after_stls_end_the_session(
    tmp_path: Path, start: ServerFactory, server_context: ssl.SSLContext, ca_file: Path
) -> None:
    server = await start(stls_context=server_context)
    server.faults = Faults(inject_after_stls=b"+OK injected\r\n")
    account = make_account(tmp_path, server, tls="starttls", ca_file=str(ca_file))
    with pytest.raises(RemoteProtocolError, match="after STLS"):
        await fetch_account(account)
    assert server.logins == []


# -- policies ------------------------------------------------------------------------------


@pytest.mark.parametrize("oversize", ["skip", "delete"])
async def test_max_message_size(tmp_path: Path, start: ServerFactory, oversize: str) -> None:
    messages = [*five_messages()[:2], big_message("big", 100_000)]
    server = await start(messages=messages)
    account = make_account(
        tmp_path, server, mode="keep", max_message_size="50KB", oversize=oversize
    )
    result = await fetch_account(account)
    assert result.fetched == 2
    assert server.retrieved["big"] == 0
    if oversize == "skip":
        assert result.skipped == 1 and "big" in server.uids
    else:
        assert result.deleted == 1 and "big" not in server.uids


async def test_max_messages_per_session(tmp_path: Path, start: ServerFactory) -> None:
    server = await start()
    account = make_account(tmp_path, server, max_messages_per_session=2)
    counts = [(await fetch_account(account)).fetched for _ in range(4)]
    assert counts == [2, 2, 1, 0]
    assert len(maildir_files(account.maildir)) == 5


async def test_delete_after_days_in_keep_mode(tmp_path: Path, start: ServerFactory) -> None:
    server = await start()
    account = make_account(tmp_path, server, mode="keep", delete_after_days=7)
    now = 1_000_000_000.0
    first = await fetch_account(account, Options(clock=lambda: now))
    assert (first.fetched, first.deleted) == (5, 0)
    server.messages.append(FakeMessage("late", b"Subject: late\r\n\r\nx\r\n"))
    second = await fetch_account(account, Options(clock=lambda: now + 6 * DAY))
    assert (second.fetched, second.deleted) == (1, 0)
    third = await fetch_account(account, Options(clock=lambda: now + 7 * DAY))
    assert third.deleted == 5 and server.uids == ["late"]
    assert server.retrieved["uid-1"] == 1


async def test_size_mismatch_is_kept_with_a_warning(
    tmp_path: Path, start: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start()
    server.faults = Faults(wrong_size=3)
    result = await fetch_account(make_account(tmp_path, server))
    assert result.fetched == 5
    assert "LIST said" in caplog.text


async def test_server_without_uidl_is_refused(tmp_path: Path, start: ServerFactory) -> None:
    server = await start(uidl=False)
    with pytest.raises(ServerRefusedError, match="does not support UIDL"):
        await fetch_account(make_account(tmp_path, server))
    assert sum(server.retrieved.values()) == 0


@pytest.mark.parametrize("mode", ["keep", "delete"])
async def test_server_without_uidl_by_fingerprint(
    tmp_path: Path, start: ServerFactory, mode: str
) -> None:
    twin = FakeMessage("twin", five_messages()[0].data)  # same header as uid-1
    server = await start(uidl=False, messages=[*five_messages(), twin])
    account = make_account(tmp_path, server, mode=mode, without_uidl="fingerprint")
    assert (await fetch_account(account)).fetched == 6
    server.messages.append(FakeMessage("late", b"Subject: late\r\n\r\nx\r\n"))
    assert (await fetch_account(account)).fetched == 1
    assert set(server.retrieved.values()) == {1}
    assert len(maildir_files(account.maildir)) == 7
    assert server.messages == ([] if mode == "delete" else server.messages)


async def test_large_message_streams_intact(tmp_path: Path, start: ServerFactory) -> None:
    message = big_message("big", 3_000_000)
    server = await start(messages=[message])
    result = await fetch_account(make_account(tmp_path, server))
    assert result.octets == message.size
    (body,) = maildir_files(tmp_path / "Maildir").values()
    assert body == message.data.replace(b"\r\n", b"\n")
