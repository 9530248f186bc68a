"""Real clients doing SASL (RFC 5034) against the real server, over TLS where it matters.

Clients and what they exercise:

- curl: ``AUTH PLAIN`` / ``AUTH LOGIN`` (``--login-options AUTH=...``, with and without
  ``--sasl-ir``) over POP3S and over STLS, and ``--oauth2-bearer`` (OAUTHBEARER when the
  server offers it, XOAUTH2 when forced) with an RS256 JWT checked against a JWKS file.
  A rejected token (expired, or signed by a key the JWKS does not hold) makes curl exit
  with CURLE_LOGIN_DENIED after the server's RFC 7628 JSON error challenge.
- mpop (GNU SASL): ``auth scram-sha-256`` against ``{SCRAM-SHA-256}`` verifiers,
  ``auth plain`` over POP3S, ``auth oauthbearer`` and ``auth xoauth2`` with the token from
  ``passwordeval``.
- fetchmail: ``--auth password`` over POP3S and over STLS, checking the certificate
  against the test CA (``sslcertck``, ``sslcertfile``).
- ``openssl s_client -starttls pop3``: ``AUTH PLAIN`` with an initial response.

Every TLS client trusts only a throwaway CA from ``trustme``, which also issues the
server's certificate (``localhost`` and ``127.0.0.1``).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from postoffice.auth import passwd_file
from postoffice.auth.schemes import hash_password
from postoffice.secret import Secret
from tests.conftest import ServerHarness, require_tool
from tests.interop.common import (
    MESSAGES,
    explain,
    local_lf,
    maildir_contents,
    make_maildir,
    run_client,
    wire,
)

#: curl's exit code for "the remote server denied curl to login" (CURLE_LOGIN_DENIED).
LOGIN_DENIED = 67

ISSUER = "https://issuer.example.org"
AUDIENCE = "pop3.example.org"
KEY_ID = "test-key-1"
PASSWORD = "correct horse battery staple"
ALL_MECHANISMS = ["PLAIN", "LOGIN", "SCRAM-SHA-256", "OAUTHBEARER", "XOAUTH2"]


# -- keys, tokens and the CA -----------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64int(number: int) -> str:
    return b64url(number.to_bytes((number.bit_length() + 7) // 8, "big"))


def public_jwk(key: rsa.RSAPrivateKey, kid: str = KEY_ID) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "RSA",
        "kid": kid,
        "alg": "RS256",
        "use": "sig",
        "n": b64int(numbers.n),
        "e": b64int(numbers.e),
    }


def make_jwt(key: rsa.RSAPrivateKey, claims: dict[str, Any], kid: str = KEY_ID) -> str:
    """An RS256 JWT (RFC 7519) signed with ``key``."""
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": kid}).encode())
    payload = b64url(json.dumps(claims).encode())
    signed = f"{header}.{payload}".encode("ascii")
    signature = key.sign(signed, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{payload}.{b64url(signature)}"


def claims_for(user: str, *, expires_in: float = 3600.0) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user,
        "iat": now,
        "exp": now + int(expires_in),
    }


@dataclass(frozen=True)
class Keys:
    trusted: rsa.RSAPrivateKey
    stranger: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        trusted=rsa.generate_private_key(public_exponent=65537, key_size=2048),
        stranger=rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@dataclass
class TlsServer:
    """A started server with a trustme certificate, its CA file, and alice's messages."""

    harness: ServerHarness
    ca_file: Path
    keys: Keys

    @property
    def host(self) -> str:
        return self.harness.host

    @property
    def port(self) -> int:
        return self.harness.port

    @property
    def tls_port(self) -> int:
        return self.harness.tls_port

    def token(self, user: str = "alice", *, expires_in: float = 3600.0) -> str:
        return make_jwt(self.keys.trusted, claims_for(user, expires_in=expires_in))


def start_server(
    harness: ServerHarness,
    authority: trustme.CA,
    keys: Keys,
    *,
    stored_as: str = "PLAIN",
    **tables: dict[str, Any],
) -> TlsServer:
    """alice (PASSWORD, stored in the scheme ``stored_as``) with MESSAGES, TLS and OAuth set up."""
    root = harness.root
    # fetchmail 6.4 insists on a subject CN, which trustme leaves out unless asked.
    certificate = authority.issue_cert("localhost", "127.0.0.1", common_name="localhost")
    (root / "tls").mkdir()
    certificate.private_key_pem.write_to_path(str(root / "tls" / "key.pem"))
    certificate.cert_chain_pems[0].write_to_path(str(root / "tls" / "fullchain.pem"))
    ca_file = root / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    (root / "jwks.json").write_text(json.dumps({"keys": [public_jwk(keys.trusted)]}))

    harness.passwd.parent.mkdir(parents=True, exist_ok=True)
    stored = hash_password(Secret(PASSWORD), stored_as)
    passwd_file.add_user(harness.passwd, "alice", stored)
    harness.users["alice"] = PASSWORD
    for message in MESSAGES:
        harness.deliver("alice", message)

    config: dict[str, dict[str, Any]] = {
        "tls": {"certificate": "tls/fullchain.pem", "private_key": "tls/key.pem"},
        "auth": {"mechanisms": ALL_MECHANISMS, "plaintext": "never"},
        "oauth": {"jwks_file": "jwks.json", "issuer": ISSUER, "audience": AUDIENCE},
    }
    for name, table in tables.items():
        config[name] = {**config.get(name, {}), **table}
    harness.start("", **config)
    return TlsServer(harness=harness, ca_file=ca_file, keys=keys)


@pytest.fixture
def server(harness: ServerHarness, authority: trustme.CA, keys: Keys) -> Iterator[TlsServer]:
    """Plaintext logins refused before TLS even on loopback, every mechanism enabled."""
    yield start_server(harness, authority, keys)


LISTING = b"".join(b"%d %d\r\n" % (n, len(wire(m))) for n, m in enumerate(MESSAGES, 1))


# -- curl ------------------------------------------------------------------------------------


def curl(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """curl with no ~/.curlrc (``-q``), verbose so the dialogue is in stderr."""
    command = [
        require_tool("curl"),
        "-q",
        "--silent",
        "--show-error",
        "--verbose",
        "--max-time",
        "20",
        *args,
    ]
    return run_client(command, home=home)


def sent(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    """The command lines curl's verbose log shows it sent (``> ...``)."""
    return [
        line[2:]
        for line in result.stderr.decode("utf-8", "replace").splitlines()
        if line.startswith("> ")
    ]


def received(result: subprocess.CompletedProcess[bytes]) -> list[str]:
    return [
        line[2:]
        for line in result.stderr.decode("utf-8", "replace").splitlines()
        if line.startswith("< ")
    ]


@pytest.mark.parametrize("sasl_ir", [False, True], ids=["challenge", "initial-response"])
@pytest.mark.parametrize("mechanism", [None, "PLAIN", "LOGIN"], ids=str)
def test_curl_sasl_over_pop3s(
    server: TlsServer, tmp_path: Path, mechanism: str | None, sasl_ir: bool
) -> None:
    """curl logs in with SASL PLAIN (its own choice) or the mechanism forced, over POP3S."""
    options = ["--login-options", f"AUTH={mechanism}"] if mechanism else []
    result = curl(
        tmp_path,
        "--cacert",
        str(server.ca_file),
        "--user",
        f"alice:{PASSWORD}",
        *(["--sasl-ir"] if sasl_ir else []),
        *options,
        f"pop3s://127.0.0.1:{server.tls_port}/",
    )
    assert result.returncode == 0, explain(result)
    assert result.stdout == LISTING, explain(result)
    expected = mechanism or "PLAIN"
    auth = [line for line in sent(result) if line.startswith("AUTH")]
    assert len(auth) == 1, explain(result)
    assert auth[0].split()[:2] == ["AUTH", expected], explain(result)
    assert not any(line.startswith(("USER", "PASS")) for line in sent(result))
    assert any(line.startswith("+OK maildrop has 4 messages") for line in received(result))


def test_curl_sasl_plain_after_stls(server: TlsServer, tmp_path: Path) -> None:
    """On the plain port with ``--ssl-reqd``, curl sends STLS, then AUTH PLAIN inside TLS."""
    result = curl(
        tmp_path,
        "--ssl-reqd",
        "--cacert",
        str(server.ca_file),
        "--user",
        f"alice:{PASSWORD}",
        "--login-options",
        "AUTH=PLAIN",
        f"pop3://127.0.0.1:{server.port}/",
    )
    assert result.returncode == 0, explain(result)
    assert result.stdout == LISTING, explain(result)
    commands = [line.split()[0] for line in sent(result)]
    assert commands.index("STLS") < commands.index("AUTH"), explain(result)


def test_curl_refuses_to_send_plain_before_tls_when_not_offered(
    server: TlsServer, tmp_path: Path
) -> None:
    """Before TLS (plaintext = "never") CAPA offers no USER and no PLAIN/LOGIN: curl fails
    without ever sending a password in the clear."""
    result = curl(
        tmp_path,
        "--user",
        f"alice:{PASSWORD}",
        "--login-options",
        "AUTH=PLAIN",
        f"pop3://127.0.0.1:{server.port}/",
    )
    assert result.returncode != 0, explain(result)
    assert result.stdout == b""
    assert not any(line.startswith(("AUTH PLAIN", "USER", "PASS")) for line in sent(result))
    capa = received(result)
    assert "STLS" in capa, explain(result)
    assert "USER" not in capa, explain(result)
    assert "SASL SCRAM-SHA-256" in capa, explain(result)


#: What the server offers, and what curl then picks for ``--oauth2-bearer``: OAUTHBEARER
#: when offered (``--login-options AUTH=XOAUTH2`` does not change that in curl 7.88), else
#: XOAUTH2.
OFFERS = {
    "OAUTHBEARER": ALL_MECHANISMS,
    "XOAUTH2": ["PLAIN", "LOGIN", "XOAUTH2"],
}


def curl_bearer(server: TlsServer, home: Path, token: str) -> subprocess.CompletedProcess[bytes]:
    return curl(
        home,
        "--cacert",
        str(server.ca_file),
        "--user",
        "alice:",
        "--oauth2-bearer",
        token,
        f"pop3s://127.0.0.1:{server.tls_port}/",
    )


@pytest.mark.parametrize("mechanism", sorted(OFFERS))
def test_curl_oauth2_bearer(
    harness: ServerHarness, authority: trustme.CA, keys: Keys, tmp_path: Path, mechanism: str
) -> None:
    """``--oauth2-bearer`` with a valid RS256 JWT for alice logs in."""
    server = start_server(harness, authority, keys, auth={"mechanisms": OFFERS[mechanism]})
    result = curl_bearer(server, tmp_path, server.token())
    assert result.returncode == 0, explain(result)
    assert result.stdout == LISTING, explain(result)
    auth = [line.split()[:2] for line in sent(result) if line.startswith("AUTH")]
    assert auth == [["AUTH", mechanism]], explain(result)


@pytest.mark.parametrize("mechanism", sorted(OFFERS))
@pytest.mark.parametrize("problem", ["expired", "wrong-signature", "other-user"])
def test_curl_rejected_bearer_token_is_login_denied(
    harness: ServerHarness,
    authority: trustme.CA,
    keys: Keys,
    tmp_path: Path,
    mechanism: str,
    problem: str,
) -> None:
    """A token that does not check out gets the RFC 7628 JSON error challenge, then
    ``-ERR [AUTH]``: curl exits with CURLE_LOGIN_DENIED and nothing is touched."""
    server = start_server(harness, authority, keys, auth={"mechanisms": OFFERS[mechanism]})
    if problem == "expired":
        token = server.token(expires_in=-3600)
    elif problem == "wrong-signature":
        token = make_jwt(server.keys.stranger, claims_for("alice"))
    else:  # a valid token, but for someone else than the alice curl names
        token = server.token("mallory")
    result = curl_bearer(server, tmp_path, token)
    assert result.returncode == LOGIN_DENIED, explain(result)
    assert result.stdout == b""
    auth = [line.split()[:2] for line in sent(result) if line.startswith("AUTH")]
    assert auth == [["AUTH", mechanism]], explain(result)
    replies = received(result)
    challenges = [line for line in replies if line.startswith("+ ") and len(line) > 2]
    assert challenges, explain(result)
    error = json.loads(base64.b64decode(challenges[-1][2:]))
    assert error["status"] == "invalid_token", explain(result)
    if mechanism == "OAUTHBEARER":
        # curl acknowledges the error with %x01 and reads the final -ERR; for XOAUTH2 it
        # does not answer the error challenge but hangs up at once.
        assert "-ERR [AUTH] authentication failed" in replies, explain(result)
    assert maildir_contents(server.harness.maildir("alice")) == sorted(MESSAGES)


# -- mpop ------------------------------------------------------------------------------------


class Mpop:
    """An mpop account against the test server, fetching in keep mode into a Maildir."""

    def __init__(self, server: TlsServer, home: Path, settings: str) -> None:
        self.home = home
        self.maildir = make_maildir(home / "Maildir")
        self.config = home / "mpoprc"
        self.config.write_text(
            "defaults\n"
            "timeout 20\n"
            "received_header off\n"
            f"uidls_file {home / 'uidls'}\n"
            "account default\n"
            f"host {server.host}\n"
            "user alice\n"
            f"delivery maildir {self.maildir}\n" + settings
        )
        self.config.chmod(0o600)

    def run(self, *options: str) -> subprocess.CompletedProcess[bytes]:
        command = [require_tool("mpop"), "--file", str(self.config), "--keep", "--half-quiet"]
        return run_client([*command, *options], home=self.home)

    def debug(self) -> subprocess.CompletedProcess[bytes]:
        """A run with ``--debug``, for failure messages."""
        return self.run("--debug")


def tls_settings(server: TlsServer, *, implicit: bool = True) -> str:
    port = server.tls_port if implicit else server.port
    return (
        "tls on\n"
        f"tls_starttls {'off' if implicit else 'on'}\n"
        f"tls_trust_file {server.ca_file}\n"
        f"port {port}\n"
    )


def assert_mpop_fetched(mpop: Mpop, result: subprocess.CompletedProcess[bytes]) -> None:
    if result.returncode != 0:
        raise AssertionError(explain(result) + "\n" + explain(mpop.debug()))
    assert maildir_contents(mpop.maildir) == sorted(local_lf(m) for m in MESSAGES), explain(result)


#: The server bug mpop's SCRAM-SHA-256 runs into (see the report of the interop tests).


@pytest.mark.parametrize("tls", [False, True], ids=["cleartext-loopback", "stls"])
def test_mpop_scram_sha_256(
    harness: ServerHarness, authority: trustme.CA, keys: Keys, tmp_path: Path, tls: bool
) -> None:
    """SCRAM-SHA-256 against a stored ``{SCRAM-SHA-256}`` verifier, with and without TLS
    (SCRAM sends no reusable secret, so it is offered before TLS too)."""
    server = start_server(harness, authority, keys, stored_as="SCRAM-SHA-256")
    assert harness.passwd.read_text().split(":")[1].startswith("{SCRAM-SHA-256}")
    home = tmp_path / "home"
    home.mkdir()
    settings = (
        tls_settings(server, implicit=False) if tls else f"tls off\nport {server.port}\n"
    ) + f"auth scram-sha-256\npassword {PASSWORD}\n"
    mpop = Mpop(server, home, settings)
    assert_mpop_fetched(mpop, mpop.run())


def test_mpop_scram_sha_256_wrong_password_fails(
    harness: ServerHarness, authority: trustme.CA, keys: Keys, tmp_path: Path
) -> None:
    server = start_server(harness, authority, keys, stored_as="SCRAM-SHA-256")
    home = tmp_path / "home"
    home.mkdir()
    mpop = Mpop(server, home, f"tls off\nport {server.port}\nauth scram-sha-256\npassword wrong\n")
    result = mpop.run()
    assert result.returncode != 0, explain(result)
    assert b"authentication failed" in result.stderr, explain(result)
    assert maildir_contents(mpop.maildir) == []


def test_mpop_plain_over_pop3s(server: TlsServer, tmp_path: Path) -> None:
    mpop = Mpop(server, tmp_path, tls_settings(server) + f"auth plain\npassword {PASSWORD}\n")
    assert_mpop_fetched(mpop, mpop.run())


#: mpop sends OAUTHBEARER's initial response on the AUTH line whatever its length.


@pytest.mark.parametrize(
    "mechanism",
    [
        "oauthbearer",
        "xoauth2",
    ],
)
def test_mpop_bearer_token_from_passwordeval(
    server: TlsServer, tmp_path: Path, mechanism: str
) -> None:
    """The token comes from ``passwordeval``. mpop sends XOAUTH2 after an empty challenge,
    and OAUTHBEARER as an initial response on the AUTH line."""
    token_file = tmp_path / "token"
    token_file.write_text(server.token() + "\n")
    mpop = Mpop(
        server,
        tmp_path,
        tls_settings(server) + f"auth {mechanism}\npasswordeval cat {token_file}\n",
    )
    assert_mpop_fetched(mpop, mpop.run())


def test_mpop_oauthbearer_with_long_command_lines_allowed(
    harness: ServerHarness, authority: trustme.CA, keys: Keys, tmp_path: Path
) -> None:
    """With ``pop3.max_line_length`` raised, mpop's long AUTH OAUTHBEARER line goes through."""
    server = start_server(harness, authority, keys, pop3={"max_line_length": 8192})
    token_file = tmp_path / "token"
    token_file.write_text(server.token() + "\n")
    mpop = Mpop(
        server,
        tmp_path,
        tls_settings(server) + f"auth oauthbearer\npasswordeval cat {token_file}\n",
    )
    assert_mpop_fetched(mpop, mpop.run())


def test_mpop_expired_bearer_token_fails(server: TlsServer, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(server.token(expires_in=-3600) + "\n")
    mpop = Mpop(
        server,
        tmp_path,
        tls_settings(server) + f"auth xoauth2\npasswordeval cat {token_file}\n",
    )
    result = mpop.run()
    assert result.returncode != 0, explain(result)
    assert b"authentication failed" in result.stderr, explain(result)
    assert maildir_contents(mpop.maildir) == []


# -- fetchmail -------------------------------------------------------------------------------

MDA_SCRIPT = """\
import os
import sys

directory = sys.argv[1]
name = os.path.join(directory, "%04d" % len(os.listdir(directory)))
with open(name, "xb") as output:
    output.write(sys.stdin.buffer.read())
"""


@pytest.mark.parametrize("implicit", [True, False], ids=["pop3s", "stls"])
def test_fetchmail_password_over_tls(server: TlsServer, tmp_path: Path, implicit: bool) -> None:
    """``--auth password`` with the certificate checked against the test CA."""
    delivered = tmp_path / "delivered"
    delivered.mkdir()
    mda = tmp_path / "mda.py"
    mda.write_text(MDA_SCRIPT)
    config = tmp_path / "fetchmailrc"
    port = server.tls_port if implicit else server.port
    config.write_text(
        "set no syslog\n"
        "set no bouncemail\n"
        f"poll 127.0.0.1 protocol pop3 port {port} auth password timeout 20\n"
        f'  user alice password "{PASSWORD}"\n'
        f"  {'ssl ' if implicit else ''}sslproto 'TLS1.2+' sslcertck\n"
        f"  sslcertfile {server.ca_file} sslcommonname localhost\n"
        "  keep fetchall\n"
        f'  mda "{sys.executable} {mda} {delivered}"\n'
    )
    config.chmod(0o600)
    result = run_client(
        [
            require_tool("fetchmail"),
            "--fetchmailrc",
            str(config),
            "--idfile",
            str(tmp_path / "fetchids"),
            "--norewrite",
            "--invisible",
            "--verbose",
        ],
        home=tmp_path,
    )
    assert result.returncode == 0, explain(result)
    output = result.stdout.decode("utf-8", "replace") + result.stderr.decode("utf-8", "replace")
    messages = [path.read_bytes() for path in sorted(delivered.iterdir())]
    assert messages == [local_lf(m) for m in MESSAGES], explain(result)
    if not implicit:
        assert "POP3> STLS" in output, explain(result)
        assert output.index("POP3> STLS") < output.index("POP3> USER alice"), explain(result)


# -- openssl s_client ------------------------------------------------------------------------


def test_openssl_s_client_starttls_auth_plain(server: TlsServer) -> None:
    openssl = require_tool("openssl")
    initial = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    result = subprocess.run(
        [
            openssl,
            "s_client",
            "-starttls",
            "pop3",
            "-connect",
            f"127.0.0.1:{server.port}",
            "-CAfile",
            str(server.ca_file),
            "-verify_return_error",
            "-quiet",
        ],
        input=f"CAPA\r\nAUTH PLAIN {initial}\r\nSTAT\r\nQUIT\r\n".encode(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    out = result.stdout.decode("ascii", "replace")
    assert "SASL PLAIN LOGIN SCRAM-SHA-256 OAUTHBEARER XOAUTH2\r\n" in out, out
    assert "USER\r\n" in out  # offered inside TLS
    assert "STLS\r\n" not in out  # and STLS is not offered again
    assert f"+OK maildrop has {len(MESSAGES)} messages" in out, out + result.stderr.decode()
    octets = sum(len(wire(m)) for m in MESSAGES)
    assert f"+OK {len(MESSAGES)} {octets}\r\n" in out, out
