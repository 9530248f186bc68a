"""Atomic Maildir delivery: exact bytes, size tags, nothing partial on storage errors."""

from __future__ import annotations

import errno
import io
import os
import re
import socket
import time
from pathlib import Path

import pytest

from postoffice.delivery import maildir as delivery_module
from postoffice.delivery.maildir import deliver_to_maildir
from postoffice.errors import TemporaryDeliveryError
from postoffice.storage.maildir import MaildirMaildrop
from postoffice.storage.wire import wire_size

NAME_RE = re.compile(r"(\d+)\.M(\d+)P(\d+)Q(\d+)R([0-9a-f]{8})\.([^/:,]+),S=(\d+),W=(\d+)")
MESSAGE = b"From: a@example.org\nSubject: hi\n\n.dot line\r\nno final newline"


@pytest.mark.parametrize("as_stream", [False, True], ids=["bytes", "stream"])
def test_delivered_bytes_and_size_tags(tmp_path: Path, as_stream: bool) -> None:
    """The file in new/ holds the input exactly and its name carries S= and W= sizes."""
    md = tmp_path / "Maildir"
    source = io.BytesIO(MESSAGE) if as_stream else MESSAGE
    name = deliver_to_maildir(md, source)
    assert (md / "new" / name).read_bytes() == MESSAGE
    match = NAME_RE.fullmatch(name)
    assert match is not None
    assert int(match[7]) == len(MESSAGE)
    assert int(match[8]) == wire_size(MESSAGE)
    assert int(match[3]) == os.getpid()
    assert os.listdir(md / "tmp") == []


def test_large_stream_is_written_in_chunks(tmp_path: Path) -> None:
    """A stream larger than one chunk, with CRLF split across chunks, is sized exactly."""
    data = b"x" * (65536 - 1) + b"\r\n" + b"line\n" * 30000
    name = deliver_to_maildir(tmp_path, io.BytesIO(data))
    assert (tmp_path / "new" / name).read_bytes() == data
    assert name.endswith(f",S={len(data)},W={wire_size(data)}")


def test_names_are_unique_even_when_the_clock_stands_still(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a frozen clock every delivery still gets its own file."""
    monkeypatch.setattr(time, "time_ns", lambda: 1_700_000_000_000_000_000)
    names = {deliver_to_maildir(tmp_path, b"m\n") for _ in range(50)}
    assert len(names) == 50
    assert len(os.listdir(tmp_path / "new")) == 50


def test_tmp_collision_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the chosen tmp/ name exists, another name is tried and the old file untouched."""
    names = iter(["1.taken.h", "2.free.h"])
    monkeypatch.setattr(delivery_module, "_unique_name", lambda: next(names))
    (tmp_path / "tmp").mkdir(parents=True)
    (tmp_path / "tmp" / "1.taken.h").write_bytes(b"someone else's\n")
    name = deliver_to_maildir(tmp_path, b"mine\n")
    assert name == "2.free.h,S=5,W=6"
    assert (tmp_path / "tmp" / "1.taken.h").read_bytes() == b"someone else's\n"


def test_hostname_is_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    """'/' and ':' in the host name become \\057 and \\072 as Maildir requires."""
    monkeypatch.setattr(socket, "gethostname", lambda: "a/b:c,d")
    assert delivery_module._hostname() == r"a\057b\072c\054d"


def test_delivered_mail_is_served_with_its_tagged_size(tmp_path: Path) -> None:
    """A POP3 snapshot lists the delivered message with its exact wire size."""
    deliver_to_maildir(tmp_path, MESSAGE)
    [message] = MaildirMaildrop(tmp_path).snapshot()
    assert message.size == wire_size(MESSAGE)


@pytest.mark.parametrize("failing", ["write", "fsync", "rename", "dir-fsync"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_storage_error_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, code: int
) -> None:
    """A disk full or I/O error at any step raises TemporaryDeliveryError, leaving no file."""
    md = tmp_path / "Maildir"
    deliver_to_maildir(md, b"earlier mail\n")
    before = os.listdir(md / "new")
    real_fsync = os.fsync
    fsyncs = 0

    def fail(*args: object) -> None:
        raise OSError(code, os.strerror(code))

    def fsync(fd: int) -> None:
        nonlocal fsyncs
        fsyncs += 1
        # The first fsync is the file's, the second the new/ directory's.
        if (failing == "fsync" and fsyncs == 1) or (failing == "dir-fsync" and fsyncs == 2):
            fail()
        real_fsync(fd)

    if failing in ("write", "rename"):
        monkeypatch.setattr(os, failing, fail)
    else:
        monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(TemporaryDeliveryError) as caught:
        deliver_to_maildir(md, io.BytesIO(b"x" * 200_000))
    assert isinstance(caught.value.__cause__, OSError)
    assert caught.value.__cause__.errno == code
    monkeypatch.undo()
    assert os.listdir(md / "new") == before
    assert os.listdir(md / "tmp") == []


def test_failing_input_stream_leaves_nothing(tmp_path: Path) -> None:
    """An error reading the input (not a storage error) propagates and leaves no file."""

    class Broken(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: object) -> int:
            raise ValueError("client went away")

    with pytest.raises(ValueError):
        deliver_to_maildir(tmp_path, io.BufferedReader(Broken()))
    assert os.listdir(tmp_path / "tmp") == []
    assert os.listdir(tmp_path / "new") == []
