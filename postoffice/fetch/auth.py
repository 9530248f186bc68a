"""Getting the password and logging in: USER/PASS, APOP, SASL PLAIN and LOGIN.

``auth = "auto"`` picks SASL PLAIN, then LOGIN, from the server's CAPA ``SASL`` line, and
falls back to USER/PASS. APOP (MD5 of the greeting's timestamp and the password, RFC 1939
§7) is used only when asked for: it needs the server to store the clear password.
The password is held in a ``Secret`` and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib

from postoffice.fetch.config import Account, AuthMethod
from postoffice.fetch.errors import LoginError, PasswordCommandError
from postoffice.fetch.transport import Pop3Client
from postoffice.proto.client_events import Continuation, Greeting, Reply, Request, SaslResponse
from postoffice.proto.listings import Capabilities
from postoffice.secret import Secret

__all__ = ["choose_method", "login", "read_password"]

PASSWORD_COMMAND_TIMEOUT = 120.0  # long enough for a gpg-agent prompt


async def read_password(account: Account) -> Secret:
    """The first line ``password_command`` prints, run by the shell in the config folder."""
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


def choose_method(account: Account, capabilities: Capabilities) -> AuthMethod:
    if account.auth is not AuthMethod.AUTO:
        return account.auth
    if "PLAIN" in capabilities.sasl:
        return AuthMethod.PLAIN
    if "LOGIN" in capabilities.sasl:
        return AuthMethod.LOGIN
    return AuthMethod.USER


def _b64(text: str) -> Secret:
    return Secret(base64.b64encode(text.encode("utf-8")).decode("ascii"))


def _refused(account: Account, method: AuthMethod, reply: Reply) -> LoginError:
    code = f"[{reply.code}] " if reply.code else ""
    hint = ""
    if reply.code in ("IN-USE", "LOGIN-DELAY", "SYS/TEMP"):
        hint = " (temporary; try again later)"
    return LoginError(
        f"{account.host} refused {method.value} login for {account.user!r}: {code}{reply.text}"
        f"{hint}"
    )


async def _sasl(
    client: Pop3Client, account: Account, method: AuthMethod, answers: list[Secret]
) -> Reply:
    """AUTH mechanism, answering each ``+`` continuation in turn (RFC 5034 §4)."""
    await client.send(Request(keyword="AUTH", arguments=(method.value.upper(),)))
    pending = list(answers)
    while True:
        event = await client.next_event()
        if isinstance(event, Reply):
            return event
        if not isinstance(event, Continuation):  # pragma: no cover - machine guarantees
            raise LoginError(f"unexpected answer to AUTH: {type(event).__name__}")
        if not pending:
            await client.send(SaslResponse(data=Secret("*")))  # cancel: nothing more to say
            continue
        await client.send(SaslResponse(data=pending.pop(0)))


async def login(
    client: Pop3Client,
    account: Account,
    password: Secret,
    capabilities: Capabilities,
    greeting: Greeting,
) -> AuthMethod:
    """Log in or raise ``LoginError``; returns the method used."""
    method = choose_method(account, capabilities)
    user = account.user
    if method is AuthMethod.PLAIN:
        reply = await _sasl(client, account, method, [_b64(f"\0{user}\0{password.reveal()}")])
    elif method is AuthMethod.LOGIN:
        reply = await _sasl(client, account, method, [_b64(user), _b64(password.reveal())])
    elif method is AuthMethod.APOP:
        if greeting.timestamp is None:
            raise LoginError(
                f'{account.host} offers no APOP timestamp in its greeting; remove auth = "apop"'
            )
        digest = hashlib.md5(  # noqa: S324 - APOP is defined as MD5 (RFC 1939 §7)
            (greeting.timestamp + password.reveal()).encode("utf-8")
        ).hexdigest()
        reply = await client.command(Request(keyword="APOP", arguments=(user, digest)))
    else:
        user_request = Request(keyword="USER", arguments=(user,))
        pass_request = Request(keyword="PASS", arguments=(password,))
        if "PIPELINING" in capabilities:
            await client.send(user_request, pass_request)
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
