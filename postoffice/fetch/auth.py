"""Getting the password (or token) and logging in.

``auth = "auto"`` takes the strongest SASL mechanism the server's CAPA ``SASL`` line offers
that a password can drive (SCRAM-SHA-256, then PLAIN, then LOGIN; see ``postoffice.sasl``)
and falls back to USER/PASS. ``scram-sha-256-plus`` binds SCRAM to the server's certificate
and APOP (MD5 of the greeting's timestamp and the password, RFC 1939 §7) are used only when
asked for. For ``oauthbearer`` and ``xoauth2`` the ``password_command`` prints the access
token. With ``password_keyring = "SERVICE"`` the password (or token) comes from the system
keyring instead, through the optional ``keyring`` package (imported only then): the entry
stored for (SERVICE, ``user``), as ``keyring set SERVICE USER`` stores it. Secrets stay in
``Secret`` and are never logged. The SASL mechanisms themselves are the pure machines of
``postoffice.sasl``; this module only carries their data over POP3 (RFC 5034).
``postoffice.sasl`` is imported only when a SASL mechanism may be used (the server's CAPA
offers one this account can use): USER/PASS and APOP logins start without it (about
20 ms of start-up).
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from postoffice.errors import RemoteProtocolError
from postoffice.fetch.config import Account, AuthMethod
from postoffice.fetch.errors import KeyringError, LoginError, PasswordCommandError
from postoffice.proto.client_events import Continuation, Greeting, Reply, Request, SaslResponse
from postoffice.secret import Secret

if TYPE_CHECKING:
    from postoffice.fetch.transport import Pop3Client
    from postoffice.proto.listings import Capabilities
    from postoffice.sasl.channel import ChannelBinding
    from postoffice.sasl.mechanism import ClientCredentials

__all__ = ["choose_mechanism", "login", "read_password"]

PASSWORD_COMMAND_TIMEOUT = 120.0  # long enough for a gpg-agent prompt
_TOKEN_METHODS = frozenset({AuthMethod.OAUTHBEARER, AuthMethod.XOAUTH2})
_PASSWORD_SASL = frozenset({"SCRAM-SHA-256", "PLAIN", "LOGIN"})


def _keyring_lookup(service: str, user: str) -> str:
    """``keyring.get_password(service, user)``, blocking (a backend may ask to unlock)."""
    try:
        keyring = importlib.import_module("keyring")
    except ImportError as error:
        raise KeyringError(
            'password_keyring needs the Python package "keyring": pip install keyring'
        ) from error
    where = f"service {service!r}, user {user!r}"
    try:
        password = keyring.get_password(service, user)
    except Exception as error:  # backends raise their own (D-Bus, KWallet, ...) errors
        raise KeyringError(
            f"the system keyring cannot be read for {where}: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(password, str) or not password:
        raise KeyringError(
            f"the system keyring has no password for {where} (store it with: keyring set "
            f"{service} {user})"
        )
    return password


async def read_password(account: Account) -> Secret:
    """The password from the system keyring (``password_keyring``), or the first line
    ``password_command`` prints, run by the shell in the config folder."""
    if account.password_keyring is not None:
        try:
            async with asyncio.timeout(PASSWORD_COMMAND_TIMEOUT):
                password = await asyncio.to_thread(
                    _keyring_lookup, account.password_keyring, account.user
                )
        except TimeoutError as error:
            raise KeyringError(
                f"the system keyring did not answer within {PASSWORD_COMMAND_TIMEOUT:.0f}s "
                f"(is it locked, waiting for a prompt?)"
            ) from error
        return Secret(password)
    assert account.password_command is not None
    try:
        process = await asyncio.create_subprocess_shell(
            account.password_command,
            cwd=account.workdir,
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
    except OSError as error:
        raise PasswordCommandError(f"password_command cannot run: {error}") from error
    try:
        async with asyncio.timeout(PASSWORD_COMMAND_TIMEOUT):
            output, _ = await process.communicate()
    except TimeoutError as error:
        process.kill()
        await process.wait()
        raise PasswordCommandError(
            f"password_command did not finish within {PASSWORD_COMMAND_TIMEOUT:.0f}s"
        ) from error
    if process.returncode != 0:
        raise PasswordCommandError(f"password_command exited with status {process.returncode}")
    lines = output.decode("utf-8", "surrogateescape").splitlines()
    if not lines or not lines[0]:
        raise PasswordCommandError("password_command printed no password")
    return Secret(lines[0])


def preload_sasl(account: Account) -> asyncio.Future[ModuleType] | None:
    """Import the SASL machines in a worker thread, unless the account logs in without
    SASL for sure: started before the password command runs, it is done by the time CAPA
    is answered. Await the future before ``login``."""
    if account.auth in (AuthMethod.USER, AuthMethod.APOP):
        return None
    return asyncio.get_running_loop().run_in_executor(
        None, importlib.import_module, "postoffice.sasl.registry"
    )


def _channel_binding(client: Pop3Client) -> ChannelBinding:
    """``tls-server-end-point`` of the server's certificate (RFC 5929 §4.1): the only
    binding Python's ssl module can give for TLS 1.3 (it has no keying-material exporter)."""
    der = client.peer_certificate()
    if der is None:
        raise LoginError('auth = "scram-sha-256-plus" needs TLS (tls = "implicit" or "starttls")')
    from cryptography import x509  # only here: it costs 0.1 s to import

    from postoffice.sasl.channel import tls_server_end_point

    algorithm = x509.load_der_x509_certificate(der).signature_hash_algorithm
    try:
        return tls_server_end_point(der, algorithm.name if algorithm else None)
    except ValueError as error:
        raise LoginError(f"no channel binding for this certificate: {error}") from error


def _credentials(account: Account, secret: Secret, client: Pop3Client) -> ClientCredentials:
    from postoffice.sasl.mechanism import ClientCredentials

    if account.auth in _TOKEN_METHODS:
        return ClientCredentials(
            username=account.user, token=secret, host=account.host, port=account.port
        )
    if account.auth is AuthMethod.SCRAM_SHA_256_PLUS:
        binding = _channel_binding(client)
        return ClientCredentials(username=account.user, password=secret, channel_binding=binding)
    # Without binding data a SCRAM client says "n" (no binding), not "y": auto mode must not
    # fail against servers whose PLUS wants a binding type Python cannot produce.
    return ClientCredentials(username=account.user, password=secret)


def _may_use_sasl(account: Account, capabilities: Capabilities) -> bool:
    """False when the login is USER/PASS or APOP for sure: ``postoffice.sasl`` is then not
    needed (nor imported). ``auto`` uses SASL only if CAPA offers one of its mechanisms."""
    if account.auth in (AuthMethod.USER, AuthMethod.APOP):
        return False
    if account.auth is AuthMethod.AUTO:
        return any(name.upper() in _PASSWORD_SASL for name in capabilities.sasl)
    return True


def choose_mechanism(
    account: Account, capabilities: Capabilities, credentials: ClientCredentials
) -> str:
    """A SASL mechanism name, or ``USER`` / ``APOP``."""
    if account.auth is AuthMethod.AUTO:
        from postoffice.sasl.registry import choose_client_mechanism

        name = choose_client_mechanism(capabilities.sasl, credentials, allowed=_PASSWORD_SASL)
        return name or "USER"
    return str(account.auth.value).upper()


def _refused(account: Account, method: str, reply: Reply) -> LoginError:
    code = f"[{reply.code}] " if reply.code else ""
    hint = ""
    if reply.code in ("IN-USE", "LOGIN-DELAY", "SYS/TEMP"):
        hint = " (temporary; try again later)"
    return LoginError(
        f"{account.host} refused {method} login for {account.user!r}: {code}{reply.text}{hint}"
    )


async def _sasl(
    client: Pop3Client, account: Account, name: str, credentials: ClientCredentials
) -> Reply:
    """AUTH name, answering each ``+`` continuation with the mechanism (RFC 5034 §4)."""
    from postoffice.sasl.errors import ServerProofError
    from postoffice.sasl.framing import (
        decode_base64,
        encode_base64,
        initial_response_argument,
        initial_response_fits,
    )
    from postoffice.sasl.registry import client_mechanism

    mechanism = client_mechanism(name, credentials)
    try:
        initial = mechanism.start()
    except ValueError as error:  # e.g. a token that is not a b64token
        raise LoginError(f"{name}: {error}") from error
    arguments: tuple[str | Secret, ...] = (name,)
    if initial is not None and initial_response_fits(name, initial):
        arguments += (Secret(initial_response_argument(initial).decode("ascii")),)
    await client.send(Request(keyword="AUTH", arguments=arguments))
    while True:
        event = await client.next_event()
        if isinstance(event, Reply):
            if event.ok:
                try:
                    mechanism.success()
                except ServerProofError as error:
                    raise LoginError(
                        f"{account.host} accepted {name} without proving it knows the "
                        f"password: not the server it claims to be?"
                    ) from error
            return event
        if not isinstance(event, Continuation):  # pragma: no cover - machine guarantees
            raise RemoteProtocolError(f"unexpected answer to AUTH: {type(event).__name__}")
        try:
            answer = mechanism.respond(decode_base64(event.challenge))
        except RemoteProtocolError:
            await client.send(SaslResponse(data=Secret("*")))  # cancel (RFC 5034 §4)
            reply = await client.reply()
            raise LoginError(f"{account.host} broke the {name} exchange ({reply.text})") from None
        await client.send(SaslResponse(data=Secret(encode_base64(answer).decode("ascii"))))


async def login(
    client: Pop3Client,
    account: Account,
    secret: Secret,
    capabilities: Capabilities,
    greeting: Greeting,
) -> str:
    """Log in or raise ``LoginError``; returns the method used (``USER``, ``PLAIN``, ...)."""
    method = "USER" if account.auth is AuthMethod.AUTO else str(account.auth.value).upper()
    if _may_use_sasl(account, capabilities):
        credentials = _credentials(account, secret, client)
        method = choose_mechanism(account, capabilities, credentials)
        if method not in ("USER", "APOP"):
            reply = await _sasl(client, account, method, credentials)
            if not reply.ok:
                raise _refused(account, method, reply)
            return method
    user = account.user
    if method == "APOP":
        if greeting.timestamp is None:
            raise LoginError(
                f'{account.host} offers no APOP timestamp in its greeting; remove auth = "apop"'
            )
        digest = hashlib.md5(  # noqa: S324 - APOP is defined as MD5 (RFC 1939 §7)
            (greeting.timestamp + secret.reveal()).encode("utf-8")
        ).hexdigest()
        reply = await client.command(Request(keyword="APOP", arguments=(user, digest)))
    elif method == "USER":
        user_request = Request(keyword="USER", arguments=(user,))
        pass_request = Request(keyword="PASS", arguments=(secret,))
        if "PIPELINING" in capabilities:
            await client.send(user_request, pass_request)  # RFC 2449 §6.6
            first = await client.reply()
        else:
            first = await client.command(user_request)
            if first.ok:
                await client.send(pass_request)
        if not first.ok:
            raise _refused(account, method, first)
        reply = await client.reply()
    if not reply.ok:
        raise _refused(account, method, reply)
    return method
