"""Tests for the user-name allow-list."""

from __future__ import annotations

import pytest

from postoffice.auth.usernames import split_username, validate_username
from postoffice.errors import InvalidUsernameError


@pytest.mark.parametrize(
    "name",
    [
        "alice",
        "Alice",
        "a",
        "bob.smith",
        "bob_smith",
        "bob-smith",
        "bob+tag@example.org",
        "x" * 255,
        "9lives",
        "a.b@c.d",
    ],
)
def test_allowed_names_pass_unchanged(name: str) -> None:
    """Names made of the allowed alphabet come back unchanged."""
    assert validate_username(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 256,
        "../etc/passwd",
        "a/b",
        "a..b",
        "..",
        ".hidden",
        "-rf",
        "nul\0byte",
        "tab\there",
        "new\nline",
        "bell\x07",
        "del\x7f",
        "space here",
        " lead",
        "trail ",
        "ünïcode",
        "\uff41dmin",  # fullwidth a
        "a\\b",
        "a:b",
        "a%b",
        "a*b",
        "line\u2028sep",
    ],
)
def test_disallowed_names_raise(name: str) -> None:
    """Anything outside the allow-list raises InvalidUsernameError."""
    with pytest.raises(InvalidUsernameError):
        validate_username(name)


def test_error_is_a_value_error_and_does_not_echo_the_name() -> None:
    """The error is a ValueError and its text never repeats the (possibly secret) name."""
    with pytest.raises(ValueError, match="position 8") as info:
        validate_username("hunter2 secret")
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("alice", ("alice", "")),
        ("alice@example.org", ("alice", "example.org")),
        ("a@b@example.org", ("a@b", "example.org")),
        ("alice@", ("alice", "")),
        ("@example.org", ("", "example.org")),
    ],
)
def test_split_username_uses_the_last_at(name: str, expected: tuple[str, str]) -> None:
    """split_username splits on the last @ and gives an empty domain without one."""
    assert split_username(name) == expected
