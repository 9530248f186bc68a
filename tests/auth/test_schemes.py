"""Tests for password schemes, against hashes made by Dovecot's own ``doveadm pw``."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from postoffice.auth.schemes import (
    DUMMY_HASH,
    hash_password,
    is_known_scheme,
    is_weak_scheme,
    plaintext_password,
    scheme_of,
    verify_password,
)
from postoffice.errors import UnknownSchemeError
from postoffice.secret import Secret

DATA = Path(__file__).parent.parent / "data" / "doveadm-hashes.txt"
UNSUPPORTED = {"CRAM-MD5"}
CRYPT_FAMILIES = {"ARGON2ID", "ARGON2I", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "MD5-CRYPT"}


def _load() -> list[tuple[str, str, str]]:
    rows = []
    for line in DATA.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            scheme, password, stored = line.split("\t")
            rows.append((scheme, password, stored))
    return rows


ROWS = _load()
SUPPORTED = [row for row in ROWS if row[0] not in UNSUPPORTED]


def _id(row: tuple[str, str, str]) -> str:
    return f"{row[0]}-{row[1][:12]}"


def test_data_file_covers_the_required_schemes() -> None:
    """The doveadm data covers every scheme postoffice promises to read, and non-ASCII."""
    schemes = {row[0] for row in ROWS}
    required = {"ARGON2ID", "ARGON2I", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "SSHA512"}
    required |= {"SSHA256", "SSHA", "SHA512", "SHA256", "SHA", "PBKDF2", "PLAIN", "CLEAR"}
    assert required <= schemes
    assert any(not password.isascii() and " " in password for _, password, _ in ROWS)


@pytest.mark.parametrize("row", SUPPORTED, ids=_id)
def test_doveadm_hash_verifies_right_password_only(row: tuple[str, str, str]) -> None:
    """Every doveadm hash accepts its password and refuses wrong ones."""
    _, password, stored = row
    assert verify_password(stored, Secret(password)) is True
    assert verify_password(stored, Secret("!" + password)) is False
    assert verify_password(stored, Secret("")) is False


@pytest.mark.parametrize("row", [r for r in ROWS if r[0] in UNSUPPORTED], ids=_id)
def test_unsupported_doveadm_scheme_fails_closed(row: tuple[str, str, str]) -> None:
    """A scheme postoffice does not implement raises UnknownSchemeError, never True."""
    _, password, stored = row
    with pytest.raises(UnknownSchemeError):
        verify_password(stored, Secret(password))


@pytest.mark.parametrize(
    "row", [r for r in ROWS if r[0] in CRYPT_FAMILIES and r[1] == ROWS[0][1]], ids=_id
)
def test_hash_without_prefix_is_read_as_crypt(row: tuple[str, str, str]) -> None:
    """A bare crypt(3) string is recognised by its $id$ prefix, as Dovecot's CRYPT does."""
    _, password, stored = row
    bare = stored.split("}", 1)[1]
    assert scheme_of(bare) == "CRYPT"
    assert verify_password(bare, Secret(password)) is True
    assert verify_password(bare, Secret(password + "!")) is False
    assert verify_password("{CRYPT}" + bare, Secret(password)) is True


@pytest.mark.parametrize("prefix", ["$2b$", "$2a$"])
def test_bcrypt_prefix_variants_verify(prefix: str) -> None:
    """$2y$, $2b$ and $2a$ bcrypt hashes verify the same (ASCII passwords)."""
    _, password, stored = next(r for r in ROWS if r[0] == "BLF-CRYPT")
    variant = stored.replace("$2y$", prefix, 1)
    assert verify_password(variant, Secret(password)) is True
    assert verify_password(variant, Secret("wrong")) is False


def test_bcrypt_ignores_bytes_after_72_like_dovecot() -> None:
    """Dovecot's BLF-CRYPT uses only the first 72 bytes; so do we (and do not crash)."""
    _, password, stored = next(r for r in ROWS if r[0] == "BLF-CRYPT" and len(r[1]) > 72)
    assert verify_password(stored, Secret(password[:72] + "different tail")) is True
    assert verify_password(stored, Secret(password[:71])) is False


def test_scheme_names_are_case_insensitive() -> None:
    """{ssha512} is the same scheme as {SSHA512}."""
    _, password, stored = next(r for r in ROWS if r[0] == "SSHA512")
    lower = "{ssha512}" + stored.split("}", 1)[1]
    assert verify_password(lower, Secret(password)) is True


def test_hex_digest_in_base64_scheme_is_accepted() -> None:
    """Dovecot reads a hex digest in a base64-default scheme when the length says hex."""
    _, password, stored = next(r for r in ROWS if r[0] == "SHA512.HEX")
    as_default = "{SHA512}" + stored.split("}", 1)[1]
    assert verify_password(as_default, Secret(password)) is True
    assert verify_password(as_default, Secret("wrong")) is False


@pytest.mark.parametrize(
    ("scheme", "kwargs", "pattern"),
    [
        (
            "ARGON2ID",
            {"rounds": 1, "memory_kib": 1024},
            r"\{ARGON2ID\}\$argon2id\$v=19\$m=1024,t=1,p=1\$",
        ),
        (
            "ARGON2I",
            {"rounds": 1, "memory_kib": 1024},
            r"\{ARGON2I\}\$argon2i\$v=19\$m=1024,t=1,p=1\$",
        ),
        ("BLF-CRYPT", {"rounds": 4}, r"\{BLF-CRYPT\}\$2y\$04\$[./A-Za-z0-9]{53}$"),
        ("SHA512-CRYPT", {"rounds": 5000}, r"\{SHA512-CRYPT\}\$6\$[^$]+\$[./A-Za-z0-9]{86}$"),
        ("SHA256-CRYPT", {"rounds": 1000}, r"\{SHA256-CRYPT\}\$5\$rounds=1000\$"),
        ("PBKDF2", {"rounds": 100}, r"\{PBKDF2\}\$1\$[./0-9A-Za-z]{16}\$100\$[0-9a-f]{40}$"),
        ("SCRAM-SHA-256", {"rounds": 4096}, r"\{SCRAM-SHA-256\}4096,[^,]+,[^,]+,[^,]+$"),
        ("SCRAM-SHA-1", {}, r"\{SCRAM-SHA-1\}4096,"),
        ("SSHA512", {}, r"\{SSHA512\}[A-Za-z0-9+/]+=*$"),
        ("SSHA256", {}, r"\{SSHA256\}"),
        ("SSHA", {}, r"\{SSHA\}"),
        ("PLAIN", {}, r"\{PLAIN\}pä ss wörd$"),
        ("clear", {}, r"\{CLEAR\}pä ss wörd$"),
    ],
)
def test_hash_password_round_trips(scheme: str, kwargs: dict[str, int], pattern: str) -> None:
    """hash_password writes the doveadm format, and the result verifies only its password."""
    stored = hash_password(Secret("pä ss wörd"), scheme, **kwargs)
    assert re.match(pattern, stored), stored
    assert verify_password(stored, Secret("pä ss wörd")) is True
    assert verify_password(stored, Secret("pa ss word")) is False


def test_hash_password_salts_every_time() -> None:
    """Two hashes of one password differ (a fresh salt each time)."""
    one = hash_password(Secret("same"), "SSHA512")
    two = hash_password(Secret("same"), "SSHA512")
    assert one != two


def test_dummy_hash_is_a_default_cost_argon2id_hash() -> None:
    """DUMMY_HASH costs what a default ARGON2ID login costs, and matches no guessable password."""
    assert DUMMY_HASH.startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    assert verify_password(DUMMY_HASH, Secret("")) is False


@pytest.mark.parametrize("scheme", ["SHA512", "CRAM-MD5", "NOPE", "SHA512.HEX"])
def test_hash_password_refuses_unknown_or_unsalted_schemes(scheme: str) -> None:
    """hash_password writes only schemes worth writing."""
    with pytest.raises(UnknownSchemeError):
        hash_password(Secret("x"), scheme)


def test_hash_password_refuses_nul() -> None:
    """A NUL byte cannot be part of a Dovecot password."""
    with pytest.raises(ValueError, match="NUL"):
        hash_password(Secret("a\0b"), "PLAIN")


def test_candidate_with_nul_never_matches() -> None:
    """A candidate with NUL is refused even against a plaintext that would match its prefix."""
    assert verify_password("{PLAIN}a", Secret("a\0b")) is False


@pytest.mark.parametrize(
    "stored",
    [
        "{NOPE}whatever",
        "{CRAM-MD5}00",
        "$y$j9T$abc$def",  # yescrypt: not supported
        "plaintext-without-prefix",
        "{CRYPT}ABCDEFGHIJKLM",  # DES crypt: not supported
        "{SSHA512}not base64!!",
        "{SSHA}AAAA",  # shorter than a SHA-1 digest
        "{SHA256}AAAA",
        "{PBKDF2}$1$salt$notanumber$00",
        "{PBKDF2}$1$salt$5000$00",
        "{PBKDF2}$2$salt$5000$" + "00" * 20,
        "{ARGON2ID}$argon2id$v=19$garbage",
        "{ARGON2ID}$6$abc$def",
        "{BLF-CRYPT}$2y$05$bad",
        "{SHA512-CRYPT}$6$",
        "{SCRAM-SHA-256}4096,!!,!!,!!",
        "{SCRAM-SHA-256}x,a,b,c",
        "{PLAIN.HEX}zz",
    ],
)
def test_unknown_or_malformed_stored_hash_raises(stored: str) -> None:
    """Unknown schemes and unparsable data fail closed, without the data in the message."""
    with pytest.raises(UnknownSchemeError) as info:
        verify_password(stored, Secret("secret-candidate"))
    assert "secret-candidate" not in str(info.value)
    data = stored.split("}", 1)[-1]
    assert data not in str(info.value)


@pytest.mark.parametrize("stored", ["", "*", "!", "!$6$abc$def", "{CRYPT}*LOCKED*"])
def test_locked_crypt_values_match_nothing(stored: str) -> None:
    """Empty, '*' and '!' crypt values lock the account: False, not an error."""
    assert verify_password(stored, Secret("")) is False
    assert verify_password(stored, Secret("*")) is False


def test_undecodable_wire_bytes_compare_as_bytes() -> None:
    """A candidate decoded with surrogateescape compares as its original bytes."""
    candidate = Secret(b"caf\xe9".decode("utf-8", "surrogateescape"))
    assert verify_password("{PLAIN.HEX}636166e9", candidate) is True
    assert verify_password("{PLAIN}café", candidate) is False


@pytest.mark.parametrize(
    ("stored", "scheme"),
    [
        ("{SSHA512}abc", "SSHA512"),
        ("{ssha512.b64}abc", "SSHA512.B64"),
        ("{SHA512.base64}abc", "SHA512.B64"),
        ("{Sha512.Hex}abc", "SHA512.HEX"),
        ("$6$abc$def", "CRYPT"),
        ("{}x", "CRYPT"),
        ("{PLAIN}{x}y", "PLAIN"),
    ],
)
def test_scheme_of(stored: str, scheme: str) -> None:
    """scheme_of names the prefix scheme upper-cased, or CRYPT without one."""
    assert scheme_of(stored) == scheme


@pytest.mark.parametrize(
    ("stored", "weak"),
    [
        ("{PLAIN}x", True),
        ("{CLEAR}x", True),
        ("{CLEARTEXT}x", True),
        ("{PLAIN.B64}eA==", True),
        ("{SHA}x", True),
        ("{SHA512.HEX}x", True),
        ("{PLAIN-MD5}x", True),
        ("{MD5-CRYPT}$1$x", True),
        ("$1$abc$def", True),
        ("ABCDEFGHIJKLM", True),
        ("{SSHA512}x", False),
        ("{ARGON2ID}$argon2id$x", False),
        ("$6$abc$def", False),
        ("$2y$05$x", False),
        ("{PBKDF2}$1$x", False),
        ("*", False),
    ],
)
def test_is_weak_scheme(stored: str, weak: bool) -> None:
    """Plaintext, unsalted digests and MD5/DES schemes are weak; modern ones are not."""
    assert is_weak_scheme(stored) is weak


def test_is_known_scheme() -> None:
    """is_known_scheme tells verifiable schemes from unknown ones."""
    assert is_known_scheme("{SSHA512}x")
    assert is_known_scheme("$6$x")
    assert not is_known_scheme("{CRAM-MD5}x")


@pytest.mark.parametrize(
    ("stored", "plain"),
    [
        ("{PLAIN}pass word", "pass word"),
        ("{CLEAR}pässwörd", "pässwörd"),
        ("{PLAIN.B64}cGFzcyB3b3Jk", "pass word"),
        ("{PLAIN.HEX}7061737320776f7264", "pass word"),
        ("{SSHA512}abc", None),
        ("$6$abc", None),
    ],
)
def test_plaintext_password(stored: str, plain: str | None) -> None:
    """Only plaintext schemes give their password back (for APOP)."""
    secret = plaintext_password(stored)
    assert (secret.reveal() if secret is not None else None) == plain


@pytest.mark.skipif(shutil.which("doveadm") is None, reason="Dovecot's doveadm is not installed")
@pytest.mark.parametrize(
    ("scheme", "rounds"),
    [
        ("ARGON2ID", 1),
        ("ARGON2I", 1),
        ("BLF-CRYPT", 4),
        ("SHA512-CRYPT", 10000),
        ("SHA256-CRYPT", None),
        ("PBKDF2", None),
        ("SCRAM-SHA-256", None),
        ("SSHA512", None),
        ("PLAIN", None),
    ],
)
def test_dovecot_verifies_our_hashes(scheme: str, rounds: int | None) -> None:
    """When doveadm is installed, it accepts what hash_password writes (optional check)."""
    password = "pä ss wörd ✓"
    stored = hash_password(Secret(password), scheme, rounds=rounds, memory_kib=1024)
    right = subprocess.run(["doveadm", "pw", "-t", stored, "-p", password], capture_output=True)
    wrong = subprocess.run(["doveadm", "pw", "-t", stored, "-p", "x"], capture_output=True)
    assert right.returncode == 0
    assert wrong.returncode != 0
