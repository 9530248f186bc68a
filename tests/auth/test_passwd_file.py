"""Tests for the Dovecot-format passwd-file: reading, reloading and atomic edits."""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from postoffice.auth.base import NOT_CURRENT, UserRecord
from postoffice.auth.passwd_file import (
    PasswdFile,
    add_user,
    delete_user,
    list_users,
    parse_line,
    set_password,
)
from postoffice.errors import InvalidUsernameError, PasswdFileError

HASH = "{SSHA512}" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"
OTHER_HASH = "{PLAIN}other password"


def _write(path: Path, data: bytes, *, age: float = 0.0) -> None:
    path.write_bytes(data)
    if age:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - int(age * 1e9)))


def test_parse_line_full() -> None:
    """All eight fields are read; extra_fields keeps its colons."""
    record = parse_line(
        "alice:{PLAIN}pw:1000:100:Alice A:/home/alice:/bin/sh:userdb_mail=maildir:~/Mail quota=1G"
    )
    assert record == UserRecord(  # noqa: S604 (a passwd field, not a subprocess)
        name="alice",
        password_hash="{PLAIN}pw",
        uid=1000,
        gid=100,
        gecos="Alice A",
        home="/home/alice",
        shell="/bin/sh",
        extra_fields="userdb_mail=maildir:~/Mail quota=1G",
    )


@pytest.mark.parametrize(
    "line",
    ["bob:{PLAIN}pw", "bob:{PLAIN}pw::", "bob:{PLAIN}pw::::::"],
)
def test_parse_line_optional_fields(line: str) -> None:
    """Missing and empty fields after the password give None ids and empty strings."""
    record = parse_line(line)
    assert record == UserRecord(name="bob", password_hash="{PLAIN}pw")


@pytest.mark.parametrize(
    "line",
    ["nocolon", ":{PLAIN}pw", "bad name:{PLAIN}pw", "../x:{PLAIN}pw", "u:h:abc", "u:h:1:-1"],
)
def test_parse_line_malformed(line: str) -> None:
    """Malformed lines raise ValueError whose text does not repeat the line."""
    with pytest.raises(ValueError) as info:
        parse_line(line)
    assert line not in str(info.value)


def test_lookup_skips_comments_blank_and_malformed_lines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Comments and blank lines are skipped; malformed lines are logged by number only."""
    path = tmp_path / "passwd"
    _write(
        path,
        b"# a comment:{PLAIN}commented\n"
        b"\n"
        b"   \n"
        b"alice:{PLAIN}alice-pw:1000:1000::/home/alice::\n"
        b"mallory:{PLAIN}secret-in-bad-line:notanumber\n"
        b"\xff\xfe:{PLAIN}secret-not-utf8\n"
        b"carol:{PLAIN}carol-pw\r\n"
        b"alice:{PLAIN}second-alice\n"
        b"dave:{PLAIN}dave-pw",
    )
    caplog.set_level(logging.WARNING, logger="postoffice.auth.passwd_file")
    db = PasswdFile(path)
    alice = db.lookup("alice")
    assert alice is not None
    assert alice.password_hash == "{PLAIN}alice-pw"  # the first line wins
    assert alice.uid == 1000
    assert alice.home == "/home/alice"
    carol = db.lookup("carol")
    assert carol is not None
    assert carol.password_hash == "{PLAIN}carol-pw"  # no stray \r
    assert db.lookup("dave") is not None  # last line without newline
    assert db.lookup("mallory") is None
    assert db.lookup("# a comment") is None
    text = caplog.text
    assert "line 5" in text
    assert "line 6" in text
    assert "line 8" in text
    assert "secret" not in text
    assert "mallory" not in text


def test_lookup_is_case_sensitive_by_default(tmp_path: Path) -> None:
    """Names match exactly unless lowercase_names is set."""
    path = tmp_path / "passwd"
    _write(path, b"Alice:{PLAIN}a\nbob:{PLAIN}b\n")
    exact = PasswdFile(path)
    assert exact.lookup("Alice") is not None
    assert exact.lookup("alice") is None
    folded = PasswdFile(path, lowercase_names=True)
    for name in ("alice", "ALICE", "Alice"):
        record = folded.lookup(name)
        assert record is not None
        assert record.name == "alice"
    assert folded.lookup("BOB") is not None


def test_missing_file_means_no_users_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A missing file has no users; the warning is logged once, and a new file is seen."""
    path = tmp_path / "passwd"
    caplog.set_level(logging.WARNING, logger="postoffice.auth.passwd_file")
    db = PasswdFile(path)
    assert db.lookup("alice") is None
    assert db.lookup("alice") is None
    assert caplog.text.count("does not exist") == 1
    _write(path, b"alice:{PLAIN}a\n")
    assert db.lookup("alice") is not None


def test_weak_schemes_are_counted_once_per_reading(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning per reading of the file counts the weak passwords by scheme, naming no
    user and quoting no password; logins add nothing, and a changed file is counted again."""
    path = tmp_path / "passwd"
    _write(
        path,
        b"alice:{PLAIN}tanstaaf\nbob:{PLAIN}b-secret\ncarol:" + HASH.encode() + b"\n"
        b"dave:{MD5-CRYPT}$1$saltsalt$C2ehL6ba6f0JH0cQ0KNnd/\n",
        age=10,
    )
    caplog.set_level(logging.WARNING, logger="postoffice.auth.passwd_file")
    assert PasswdFile(path).lookup("alice") is not None  # a command: no warning
    assert "weak" not in caplog.text
    db = PasswdFile(path, warn_weak_schemes=True)  # the server
    for _ in range(3):
        assert db.lookup("alice") is not None
        assert db.lookup("dave") is not None
    weak = [r.getMessage() for r in caplog.records if "weak schemes" in r.getMessage()]
    assert len(weak) == 1
    assert "3 of 4 users" in weak[0] and "PLAIN: 2" in weak[0] and "MD5-CRYPT: 1" in weak[0]
    assert "alice" not in caplog.text and "tanstaaf" not in caplog.text
    _write(path, b"carol:" + HASH.encode() + b"\n", age=10)
    assert db.lookup("carol") is not None
    _write(path, b"carol:" + HASH.encode() + b"\nerin:{SHA}qvTGHdzF6KLavt4PO0gs2a6pQ00=\n", age=5)
    assert db.lookup("erin") is not None
    weak = [r.getMessage() for r in caplog.records if "weak schemes" in r.getMessage()]
    assert len(weak) == 2 and "1 of 2 users" in weak[1] and "SHA: 1" in weak[1]


def test_unreadable_file_raises(tmp_path: Path) -> None:
    """A passwd-file that exists but cannot be read is an error, not 'no users'."""
    db = PasswdFile(tmp_path)  # a directory
    with pytest.raises(PasswdFileError):
        db.lookup("alice")


def test_reload_when_file_is_replaced(tmp_path: Path) -> None:
    """A file replaced by rename (new inode) is re-read on the next lookup."""
    path = tmp_path / "passwd"
    _write(path, b"alice:{PLAIN}a\n", age=10)
    db = PasswdFile(path)
    assert db.lookup("bob") is None
    new = tmp_path / "passwd.new"
    _write(new, b"bob:{PLAIN}b\n", age=10)
    os.replace(new, path)
    assert db.lookup("alice") is None
    assert db.lookup("bob") is not None


def test_reload_when_rewritten_in_place_with_same_size(tmp_path: Path) -> None:
    """Rewriting in place, same size, within one mtime tick, is still noticed."""
    path = tmp_path / "passwd"
    _write(path, b"alice:{PLAIN}aaaa\n")
    db = PasswdFile(path)
    record = db.lookup("alice")
    assert record is not None
    assert record.password_hash == "{PLAIN}aaaa"
    st = path.stat()
    with open(path, "r+b") as file:
        file.write(b"alice:{PLAIN}bbbb\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # same stat signature
    record = db.lookup("alice")
    assert record is not None
    assert record.password_hash == "{PLAIN}bbbb"


def test_unchanged_old_file_is_not_parsed_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unchanged file is parsed once: its malformed line is logged once."""
    path = tmp_path / "passwd"
    _write(path, b"alice:{PLAIN}a\nbroken\n", age=10)
    caplog.set_level(logging.WARNING, logger="postoffice.auth.passwd_file")
    db = PasswdFile(path)
    for _ in range(3):
        assert db.lookup("alice") is not None
    assert caplog.text.count("line 2") == 1


def test_reload_after_append(tmp_path: Path) -> None:
    """A line appended to the file is visible at the next lookup."""
    path = tmp_path / "passwd"
    _write(path, b"alice:{PLAIN}a\n", age=10)
    db = PasswdFile(path)
    assert db.lookup("bob") is None
    with open(path, "ab") as file:
        file.write(b"bob:{PLAIN}b\n")
    assert db.lookup("bob") is not None


# --- editing -----------------------------------------------------------------------------


def test_add_user_creates_file_with_mode_0600(tmp_path: Path) -> None:
    """A new passwd-file is created 0600 with one line in Dovecot's layout."""
    path = tmp_path / "passwd"
    add_user(path, "alice", HASH)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == f"alice:{HASH}::::::\n".encode()
    assert [u.name for u in list_users(path)] == ["alice"]


def test_add_user_with_fields(tmp_path: Path) -> None:
    """Optional fields are written in their columns and read back."""
    path = tmp_path / "passwd"
    add_user(path, "bob", HASH, uid=1001, gid=1002, home="/home/bob", extra_fields="a=b:c quota=1G")
    assert path.read_bytes() == f"bob:{HASH}:1001:1002::/home/bob::a=b:c quota=1G\n".encode()
    record = PasswdFile(path).lookup("bob")
    assert record is not None
    assert (record.uid, record.gid, record.extra_fields) == (1001, 1002, "a=b:c quota=1G")


ORIGINAL = (
    b"# users of example.org\n"
    b"alice:{PLAIN}old:1000:1000:Alice:/home/alice:/bin/sh:quota=1G\n"
    b"\n"
    b"weird line kept as is\t \n"
    b"carol:{PLAIN}c\r\n"
    b"\xff non-utf8 line\n"
    b"dave:{PLAIN}d"
)


def test_edits_keep_other_lines_byte_for_byte_and_mode(tmp_path: Path) -> None:
    """Add, set and delete change only their own line; comments, odd lines and mode stay."""
    path = tmp_path / "passwd"
    _write(path, ORIGINAL)
    path.chmod(0o640)

    add_user(path, "bob", HASH)
    assert path.read_bytes() == ORIGINAL + b"\n" + f"bob:{HASH}::::::\n".encode()

    set_password(path, "alice", OTHER_HASH)
    expected = ORIGINAL.replace(b"{PLAIN}old", OTHER_HASH.encode()) + b"\n"
    expected += f"bob:{HASH}::::::\n".encode()
    assert path.read_bytes() == expected

    set_password(path, "dave", OTHER_HASH)
    expected = expected.replace(b"dave:{PLAIN}d\n", b"dave:" + OTHER_HASH.encode() + b"\n")
    assert path.read_bytes() == expected

    delete_user(path, "carol")
    expected = expected.replace(b"carol:{PLAIN}c\r\n", b"")
    assert path.read_bytes() == expected
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd", "passwd.lock"]


def test_add_existing_user(tmp_path: Path) -> None:
    """Adding an existing user fails, unless exist_ok, which replaces only the password."""
    path = tmp_path / "passwd"
    _write(path, b"alice:{PLAIN}old:1000::::/bin/sh\n")
    with pytest.raises(PasswdFileError, match="already exists"):
        add_user(path, "alice", HASH)
    add_user(path, "alice", OTHER_HASH, exist_ok=True)
    assert path.read_bytes() == b"alice:" + OTHER_HASH.encode() + b":1000::::/bin/sh\n"


def test_names_in_edits_are_exact(tmp_path: Path) -> None:
    """Edits match names exactly: Alice is not alice."""
    path = tmp_path / "passwd"
    _write(path, b"Alice:{PLAIN}a\n")
    with pytest.raises(PasswdFileError, match="no such user"):
        delete_user(path, "alice")
    add_user(path, "alice", HASH)
    assert [u.name for u in list_users(path)] == ["Alice", "alice"]


@pytest.mark.parametrize("edit", ["set", "delete"])
def test_no_such_user(tmp_path: Path, edit: str) -> None:
    """Changing or deleting an unknown user, even in a missing file, fails clearly."""
    path = tmp_path / "passwd"
    for _ in range(2):
        with pytest.raises(PasswdFileError, match="no such user 'zoe'"):
            if edit == "set":
                set_password(path, "zoe", HASH)
            else:
                delete_user(path, "zoe")
        _write(path, b"alice:{PLAIN}a\n")


def test_edits_validate_the_name(tmp_path: Path) -> None:
    """A name outside the allow-list is refused before the file is touched."""
    path = tmp_path / "passwd"
    with pytest.raises(InvalidUsernameError):
        add_user(path, "../evil", HASH)
    with pytest.raises(InvalidUsernameError):
        set_password(path, "a:b", HASH)
    assert not path.exists()


@pytest.mark.parametrize(
    "bad_hash", ["{PLAIN}with:colon", "{PLAIN}new\nline", "", "{CRAM-MD5}00ff", "{PLAIN}\udcff"]
)
def test_edits_refuse_bad_hashes_without_quoting_them(tmp_path: Path, bad_hash: str) -> None:
    """A hash that would break the line or cannot be verified is refused, never echoed."""
    path = tmp_path / "passwd"
    with pytest.raises(PasswdFileError) as info:
        add_user(path, "alice", bad_hash)
    if bad_hash:
        assert bad_hash not in str(info.value)
    assert not path.exists()


def test_add_user_refuses_colon_in_fields(tmp_path: Path) -> None:
    """gecos, home and shell cannot hold a colon; extra_fields cannot hold a newline."""
    path = tmp_path / "passwd"
    with pytest.raises(PasswdFileError):
        add_user(path, "alice", HASH, home="/a:b")
    with pytest.raises(PasswdFileError):
        add_user(path, "alice", HASH, extra_fields="a=b\nmallory:{PLAIN}x")


def test_edit_through_symlink_keeps_the_link(tmp_path: Path) -> None:
    """Editing through a symlink replaces the target file, not the link."""
    real = tmp_path / "real-passwd"
    _write(real, b"alice:{PLAIN}a\n")
    link = tmp_path / "passwd"
    link.symlink_to(real)
    add_user(link, "bob", HASH)
    assert link.is_symlink()
    assert [u.name for u in list_users(real)] == ["alice", "bob"]


def test_concurrent_editors_lose_no_update(tmp_path: Path) -> None:
    """Editors serialised by the lock file: 16 concurrent adds give 16 users."""
    path = tmp_path / "passwd"
    errors: list[BaseException] = []

    def add(n: int) -> None:
        try:
            add_user(path, f"user{n}", HASH)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(u.name for u in list_users(path)) == sorted(f"user{n}" for n in range(16))


def test_lookup_sees_cli_edits(tmp_path: Path) -> None:
    """A running PasswdFile sees adds, password changes and deletes at once."""
    path = tmp_path / "passwd"
    db = PasswdFile(path)
    add_user(path, "alice", HASH)
    record = db.lookup("alice")
    assert record is not None
    assert record.password_hash == HASH
    set_password(path, "alice", OTHER_HASH)
    record = db.lookup("alice")
    assert record is not None
    assert record.password_hash == OTHER_HASH
    delete_user(path, "alice")
    assert db.lookup("alice") is None


def test_list_users_of_missing_file_is_empty(tmp_path: Path) -> None:
    """list_users of a missing file is an empty list."""
    assert list_users(tmp_path / "nope") == []


def test_released_records_are_parsed_again_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """After ``release_records`` the same users come back as new objects (a worker's own,
    not pages shared with its parent) without reporting the file's problems a second time;
    until then ``lookup_if_current`` sends the caller to ``lookup``. A file changed in the
    meantime is read and reported as usual."""
    path = tmp_path / "passwd"
    _write(path, b"alice:{PLAIN}a\nnot a user line\nbob:" + HASH.encode() + b"\n", age=10)
    caplog.set_level(logging.WARNING, logger="postoffice.auth.passwd_file")
    db = PasswdFile(path, warn_weak_schemes=True)
    before = db.lookup("alice")
    assert before is not None
    assert caplog.text.count("malformed") == 1 and caplog.text.count("weak schemes") == 1
    typical = db.typical_hash
    db.release_records()
    assert db.lookup_if_current("alice") is NOT_CURRENT
    after = db.lookup("alice")
    assert after == before and after is not before
    assert db.lookup_if_current("bob") == UserRecord(name="bob", password_hash=HASH)
    assert db.typical_hash == typical
    assert caplog.text.count("malformed") == 1 and caplog.text.count("weak schemes") == 1
    db.release_records()
    _write(path, b"carol:{PLAIN}c\nstill not a user\n", age=10)
    assert db.lookup("alice") is None
    assert db.lookup("carol") is not None
    assert caplog.text.count("malformed") == 2 and caplog.text.count("weak schemes") == 2
