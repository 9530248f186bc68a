"""Several server processes sharing the listening sockets.

Theory of operation
-------------------
The parent binds every listener (POP3, POP3S, LMTP), loads (or makes) the TLS certificates and drops
privileges; then it forks ``process.workers`` children. Each child runs its own event loop
and accepts on the inherited sockets, so the kernel spreads
connections over them. Nothing in a session assumes one process: the maildrop lock is an
``flock`` and the size cache is a file, both shared. Per-address connection caps and the
failure throttle are counted per process.

The parent only supervises: it forwards SIGTERM/SIGINT (stop) and SIGHUP (reload the
certificates) to the children, restarts a child that dies unexpectedly, and exits when all
children have stopped. Children ask the kernel to kill them if the parent dies, so a
``kill -9`` of the parent takes the whole server down at once, like a single process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import time

from postoffice.auth.passwd_file import PasswdFile
from postoffice.auth.schemes import dummy_hash
from postoffice.auth.verified_cache import VerifiedPasswords
from postoffice.config import Config
from postoffice.delivery import lmtp
from postoffice.server import index_news
from postoffice.server.app import (
    Pop3Server,
    bind_pop3_listeners,
    drop_privileges,
    make_verified_cache,
    open_user_database,
    read_user_database,
)
from postoffice.tls import ListenerContexts

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The event loop for a server process.

    asyncio's own loop. uvloop was measured: about 8% less CPU per login-storm session
    (the time goes to Python code, not the loop). Its ``start_tls`` accepts only its own
    transports, not the POP3 listeners' lean one (``socket_transport.py``, which saved
    more than uvloop did), so STLS and POP3S could not work on it.
    """
    return asyncio.new_event_loop()


def run(config: Config, workers: int) -> int:
    """Serve with ``workers`` processes until SIGTERM or SIGINT; the exit status."""
    bound = bind_pop3_listeners(config)
    lmtp_sockets = lmtp.bind_lmtp_sockets(config)
    for sock in lmtp_sockets:
        log.info("LMTP listening on %s", lmtp.describe(sock))
    tls = None
    if config.pop3s.listen or config.pop3.stls:
        tls = ListenerContexts(
            {"pop3": config.pop3.tls, "pop3s": config.pop3s.tls}, hostname=socket.gethostname()
        )
        tls.load()
    drop_privileges(config)
    # Read here, so a problem with the file is reported once and at start; each worker
    # parses the same bytes into records of its own as it starts (see release_records).
    users = open_user_database(config)
    read_user_database(users)
    users.release_records()
    dummy_hash()  # made once for all workers (it costs a quarter of a second)
    # Made before any worker, kept by the parent: a restarted worker reads the same inbox.
    news = index_news.channels(workers) if workers > 1 else []
    # One cache, one key for all workers: what one verifies, the others are told of.
    verified = make_verified_cache(config)
    children: dict[int, int] = {}  # pid -> worker number
    stopping = False

    def start(number: int) -> None:
        # What the workers inherit is never collected (it lives as long as they do), so the
        # collector must not touch it: touching a page copies it into every worker.
        gc.collect()
        gc.freeze()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                status = _child(config, bound, lmtp_sockets, tls, users, number, news, verified)
            finally:
                logging.shutdown()
                os._exit(status)
        children[pid] = number

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    for number in range(workers):
        start(number)
    log.info("started %d worker processes", workers)
    failures = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        number = children.pop(pid)
        if not stopping:
            failures += 1
            log.error("worker %d (pid %d) ended with status %d; restarting", number, pid, status)
            time.sleep(min(5.0, 0.1 * failures))
            start(number)
    for sock, _ in bound:
        sock.close()
    for sock in lmtp_sockets:
        sock.close()
    for pair in news:
        for sock in pair:
            sock.close()
    log.info("stopped")
    return 0


def _child(
    config: Config,
    bound: list[tuple[socket.socket, bool]],
    lmtp_sockets: list[socket.socket],
    tls: ListenerContexts | None,
    users: PasswdFile,
    number: int,
    news: list[tuple[socket.socket, socket.socket]],
    verified: VerifiedPasswords | None,
) -> int:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # A SIGHUP before the loop handles it (while the worker starts) is kept for then.
    hangups: list[int] = []
    signal.signal(signal.SIGHUP, lambda signum, _frame: hangups.append(signum))
    loop = new_event_loop()
    asyncio.set_event_loop(loop)

    news_end = None
    if news:
        news_end = index_news.IndexNews(
            news[number][0],
            [address for other, (_, address) in enumerate(news) if other != number],
            uidl_format=config.mail.uidl_format,
            verified=verified,
        )

    async def main() -> None:
        server = Pop3Server(
            config,
            bound=bound,
            lmtp_sockets=lmtp_sockets,
            tls_loaded=tls,
            users=users,
            index_news=news_end,
            verified=verified,
        )
        await server.start()
        loop.add_signal_handler(signal.SIGTERM, server.request_stop)
        loop.add_signal_handler(signal.SIGINT, server.request_stop)
        loop.add_signal_handler(signal.SIGHUP, server.reload_certificates)
        if hangups:
            server.reload_certificates()
        await server.serve_until_stopped()

    try:
        loop.run_until_complete(main())
    finally:
        # Stopping already: a late SIGTERM or SIGINT (the process group signalled as well
        # as the parent forwarding it) must not reach the loop's closed wake-up pipe.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
        loop.close()
    log.debug("worker %d stopped", number)
    return 0
