"""The LMTP listener (RFC 2033): the MTA hands mail over, we put it into the maildrops.

Theory of operation
-------------------

aiosmtpd's ``LMTP`` protocol does the framing (LHLO, MAIL, RCPT, DATA with dot-unstuffing,
the SIZE limit); this module adds what RFC 2033 asks of a delivery agent:

- RCPT looks the recipient up (``local.LocalDelivery.check``): unknown user 550 5.1.1,
  over quota 552 5.2.2, user database trouble 451; only accepted recipients enter the
  envelope.
- After the final dot there is **one reply per accepted recipient**, in RCPT order
  (RFC 2033 §4.2): each recipient's message is written durably (``tmp/``, fsync, rename
  into ``new/``, fsync ``new/``; ``maildir.py``) before its 250 is sent, so a 250 means the
  mail survives a crash, and any failure is a 4xx that makes the MTA retry (451/452) or a
  permanent 552 for a full mailbox. aiosmtpd's own DATA failures (message larger than
  ``lmtp.max_message_size``, a line longer than RFC 5321 allows) are repeated once per
  recipient too, since a client waits for as many replies as it had recipients.
- Each copy gets ``Return-Path:`` (RFC 5321 §4.4, final delivery) and ``Delivered-To:``
  header lines, and CRLF line ends become LF as Maildir readers expect (the POP3 size,
  counted at delivery, is the same either way). Two addresses of one user get one copy.

Blocking work (the user lookup, writing and fsyncing) runs in a worker thread. A
connection cut before a recipient's reply may lead the MTA to deliver that message
again; it is never lost. Exception text never goes on the wire.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any, AnyStr

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from postoffice.auth.passwd_file import PasswdFile
from postoffice.config import Config, UnixAddress
from postoffice.delivery.local import LocalDelivery, Outcome
from postoffice.listening import LISTEN_BACKLOG, bind_tcp

__all__ = [
    "MAX_RECIPIENTS",
    "LmtpHandler",
    "bind_lmtp_sockets",
    "bound_address",
    "describe",
    "serve_lmtp",
]

log = logging.getLogger(__name__)

MAX_RECIPIENTS = 1000
"""Recipients per transaction; more get 452 4.5.3 (RFC 5321 §4.5.3.1.8 asks for 100+)."""
_UNIX_SOCKET_MODE = 0o666  # as Dovecot's lmtp socket: any local process may hand mail over
_TOO_BIG = "552 5.3.4 message too big for system"
_TROUBLE = "451 4.3.0 temporary local problem, try again later"
_IDENT = "postoffice LMTP"


class _Protocol(LMTP):
    """aiosmtpd's LMTP, answering each accepted recipient after DATA (RFC 2033 §4.2)."""

    def __init__(self, handler: LmtpHandler, **options: Any) -> None:
        super().__init__(handler, **options)
        self._after_data = False
        self._recipients = 0

    async def smtp_DATA(self, arg: str) -> None:
        self._after_data = False
        # aiosmtpd starts the next envelope before it sends the reply: count them now.
        self._recipients = len(self.envelope.rcpt_tos) if self.envelope is not None else 0
        try:
            await super().smtp_DATA(arg)
        finally:
            self._after_data = False

    async def push(self, status: AnyStr) -> None:
        text = status if isinstance(status, str) else status.decode("ascii", "replace")
        if not self._after_data:
            self._after_data = text.startswith("354")
            await super().push(text)
            return
        # The reply to the data: one line per accepted recipient.
        self._after_data = False
        lines = text.split("\r\n")
        if len(lines) != self._recipients:
            line = _TOO_BIG if text.startswith("552 ") else lines[0]
            lines = [line] * max(self._recipients, 1)
        for line in lines:
            await super().push(line)


class LmtpHandler:
    """The aiosmtpd handler: recipient checks at RCPT, deliveries after DATA."""

    def __init__(self, delivery: LocalDelivery) -> None:
        self.delivery = delivery

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """LHLO: aiosmtpd's list plus the two extensions RFC 2033 §5 requires of LMTP."""
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if len(envelope.rcpt_tos) >= MAX_RECIPIENTS:
            return "452 4.5.3 too many recipients"
        if rcpt_options:
            return "555 5.5.4 RCPT TO parameters not recognized"
        _record, outcome = await asyncio.to_thread(self.delivery.check, address)
        if outcome.ok:
            envelope.rcpt_tos.append(address)
        return outcome.reply(_printable(address))

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        sender = envelope.mail_from or "<>"
        replies = await asyncio.to_thread(
            self._deliver_all, sender, list(envelope.rcpt_tos), content
        )
        return "\r\n".join(replies)

    async def handle_exception(self, error: Exception) -> str:
        log.error("LMTP session failed: %r", error)
        return _TROUBLE

    def _deliver_all(self, sender: str, recipients: list[str], content: bytes) -> list[str]:
        """Deliver to every recipient in turn; one reply line each, in order."""
        body = content.replace(b"\r\n", b"\n")
        return_path = "<>" if sender == "<>" else f"<{_printable(sender)}>"
        done: dict[str, Outcome] = {}
        replies = []
        for address in recipients:
            record, outcome = self.delivery.check(address)
            if record is not None and outcome.ok:
                if record.name in done:
                    outcome = done[record.name]
                else:
                    header = f"Return-Path: {return_path}\nDelivered-To: {_printable(address)}\n"
                    message = header.encode("utf-8", "surrogateescape") + body
                    outcome = self.delivery.deliver(record, message)
                    done[record.name] = outcome
            replies.append(outcome.reply(_printable(address)))
        return replies


def _printable(address: str) -> str:
    """An address fit for a header or a reply line: control characters become ``?``."""
    return "".join("?" if ord(char) < 0x20 or ord(char) == 0x7F else char for char in address)


def _protocol_factory(handler: LmtpHandler, config: Config) -> _Protocol:
    size = config.lmtp.max_message_size
    return _Protocol(
        handler,
        data_size_limit=size or None,
        enable_SMTPUTF8=True,
        hostname=socket.gethostname(),
        ident=_IDENT,
        loop=asyncio.get_running_loop(),
    )


def bind_lmtp_sockets(config: Config) -> list[socket.socket]:
    """Listening sockets for every ``lmtp.listen`` address (before privileges are dropped).

    A Unix socket left by a server that is gone is replaced; a live one is not taken over.
    """
    sockets: list[socket.socket] = []
    try:
        for address in config.lmtp.listen:
            if isinstance(address, UnixAddress):
                sockets.append(_bind_unix(address.path))
            else:
                sockets.extend(bind_tcp(address))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def serve_lmtp(config: Config, sockets: list[socket.socket]) -> list[asyncio.Server]:
    """LMTP servers on ``sockets``, not yet serving (``start_serving()`` starts them)."""
    if not sockets:
        return []
    # aiosmtpd logs every command at INFO; our own log has one line per delivery.
    aiosmtpd_log = logging.getLogger("mail.log")
    if aiosmtpd_log.level == logging.NOTSET:
        aiosmtpd_log.setLevel(logging.WARNING)
    database = PasswdFile(config.auth.passwd_file, lowercase_names=config.auth.lowercase_names)
    handler = LmtpHandler(LocalDelivery(config, database))
    loop = asyncio.get_running_loop()
    servers = []
    for sock in sockets:
        if sock.family == socket.AF_UNIX:
            server = await loop.create_unix_server(
                lambda: _protocol_factory(handler, config), sock=sock, start_serving=False
            )
        else:
            server = await loop.create_server(
                lambda: _protocol_factory(handler, config), sock=sock, start_serving=False
            )
        servers.append(server)
    return servers


def bound_address(sock: socket.socket) -> tuple[str, int] | str:
    """A listening socket's (host, port), or its path for a Unix socket."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return str(name)
    return str(name[0]), int(name[1])


def describe(sock: socket.socket) -> str:
    """``127.0.0.1:2424``, ``[::1]:2424`` or ``unix:/path``, for the log."""
    bound = bound_address(sock)
    if isinstance(bound, str):
        return f"unix:{bound}"
    host = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    return f"{host}:{bound[1]}"


def _bind_unix(path: Path) -> socket.socket:
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, _UNIX_SOCKET_MODE)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a server that is gone; refuse to take over a live one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        os.unlink(path)
    else:
        raise OSError(errno.EADDRINUSE, f"another server listens on {path}")
    finally:
        probe.close()
