"""The account file: the issue's example, inheritance, relative paths, errors naming keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postoffice.errors import ConfigError
from postoffice.fetch.config import (
    AuthMethod,
    Mode,
    MtaAddress,
    Oversize,
    TlsMode,
    load_fetch_config,
    parse_fetch_config,
)

EXAMPLE = """
[defaults]
mode = "keep"

[accounts.office]
host = "127.0.0.1"
port = 1995
tls = "implicit"                   # "implicit" | "starttls" | "none"
ca_file = "ca.pem"                 # optional; system store by default; or fingerprint
user = "alice"
password_command = "cat alice.secret"
mode = "delete"                    # "keep" | "delete"
maildir = "mail/office"            # or mbox = "...", mda = "...", lmtp = "host:port"
state_dir = "state"                # where the UIDL journal lives
"""


def account(**keys: object) -> dict[str, object]:
    base: dict[str, object] = {"host": "127.0.0.1", "user": "a", "password_command": "true"}
    base.update(keys)
    return base


def test_issue_example_loads_with_paths_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("")
    config = load_fetch_config(_write(tmp_path, EXAMPLE))
    office = config.accounts["office"]
    assert office.port == 1995
    assert office.tls is TlsMode.IMPLICIT
    assert office.ca_file == tmp_path / "ca.pem"
    assert office.mode is Mode.DELETE
    assert office.maildir == tmp_path / "mail" / "office"
    assert office.state_dir == tmp_path / "state"
    assert office.workdir == tmp_path
    assert office.auth is AuthMethod.AUTO
    assert office.oversize is Oversize.SKIP


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fetch.toml"
    path.write_text(text)
    return path


def test_defaults_are_inherited_and_overridden(tmp_path: Path) -> None:
    data = {
        "defaults": {"mode": "delete", "tls": "starttls", "timeout": "2m"},
        "accounts": {"a": account(), "b": account(mode="keep", delete_after_days=30)},
    }
    config = parse_fetch_config(data, tmp_path / "f.toml")
    a, b = config.accounts["a"], config.accounts["b"]
    assert a.mode is Mode.DELETE and b.mode is Mode.KEEP
    assert a.tls is TlsMode.STARTTLS and a.port == 110
    assert a.timeout == 120.0
    assert a.every == 300.0
    assert b.delete_after_days == 30.0


def test_implicit_tls_defaults_to_port_995(tmp_path: Path) -> None:
    config = parse_fetch_config({"accounts": {"a": account()}}, tmp_path / "f.toml")
    assert config.accounts["a"].port == 995


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"accounts": {"a": account(port=0)}}, "accounts.a.port: must be between"),
        ({"accounts": {"a": account(tls="ssl")}}, 'accounts.a.tls: expected one of "implicit"'),
        ({"defaults": {"mode": "move"}, "accounts": {"a": account()}}, "defaults.mode:"),
        ({"defaults": {"colour": 1}, "accounts": {"a": account()}}, "defaults.colour: unknown"),
        ({"accounts": {"a": {"host": "h", "user": "u"}}}, "accounts.a.password_command: required"),
        ({"accounts": {"a": account(mbox="x", mda="y")}}, "accounts.a.mbox, accounts.a.mda:"),
        ({"accounts": {"a": account(fingerprint="md5:00")}}, "accounts.a.fingerprint:"),
        ({"accounts": {"a": account(max_message_size="big")}}, "accounts.a.max_message_size:"),
        ({"accounts": {"a": account(delete_after_days=-1)}}, "accounts.a.delete_after_days:"),
        ({"accounts": {"a/b": account()}}, "accounts.a/b: account names"),
        ({"accounts": {}}, "accounts: no account defined"),
        ({"accounts": {"a": account(ca_file="missing.pem")}}, "accounts.a.ca_file:"),
        ({"server": {}}, "server: unknown key"),
        ({"accounts": {"a": account(every="5s")}}, "accounts.a.every: must be at least"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_fetch_config(data, tmp_path / "f.toml")


def test_cleartext_only_on_loopback_or_when_insecure(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    parse_fetch_config({"accounts": {"a": account(tls="none")}}, path)
    parse_fetch_config({"accounts": {"a": account(tls="none", host="localhost")}}, path)
    with pytest.raises(ConfigError, match=r"accounts\.a\.tls: .*loopback"):
        parse_fetch_config({"accounts": {"a": account(tls="none", host="pop.example")}}, path)
    remote = account(tls="none", host="pop.example", insecure=True)
    parse_fetch_config({"accounts": {"a": remote}}, path)


def test_fingerprint_is_normalised(tmp_path: Path) -> None:
    pin = "sha256:" + ":".join(["AB"] * 32)
    config = parse_fetch_config({"accounts": {"a": account(fingerprint=pin)}}, tmp_path / "f")
    assert config.accounts["a"].fingerprint == "ab" * 32


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_fetch_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_fetch_config(_write(tmp_path, "[accounts"))


def test_destination_of_the_account_beats_the_default(tmp_path: Path) -> None:
    data = {
        "defaults": {"maildir": "Mail"},
        "accounts": {"a": account(mbox="inbox.mbox"), "b": account(mda="procmail"), "c": account()},
    }
    accounts = parse_fetch_config(data, tmp_path / "f.toml").accounts
    assert accounts["a"].mbox == tmp_path / "inbox.mbox" and accounts["a"].mda is None
    assert accounts["b"].mda == "procmail" and accounts["b"].mbox is None
    assert accounts["c"].maildir == tmp_path / "Mail"
    assert accounts["c"].mbox is None and accounts["c"].mda is None


def test_lmtp_and_smtp_addresses(tmp_path: Path) -> None:
    path = tmp_path / "f.toml"
    tcp = parse_fetch_config({"accounts": {"a": account(lmtp="[::1]:24", recipient="me")}}, path)
    assert (tcp.accounts["a"].forward, tcp.accounts["a"].recipient) == (
        MtaAddress(protocol="lmtp", host="::1", port=24),
        "me",
    )
    unix = parse_fetch_config({"accounts": {"a": account(lmtp="./run/lmtp")}}, path)
    socket = str(tmp_path / "run" / "lmtp")
    assert unix.accounts["a"].forward == MtaAddress(protocol="lmtp", host=socket, port=None)
    with pytest.raises(ConfigError, match=r"accounts\.a\.lmtp: expected"):
        parse_fetch_config({"accounts": {"a": account(lmtp="localhost")}}, path)
    smtp = parse_fetch_config({"accounts": {"a": account(smtp="localhost:25")}}, path)
    assert smtp.accounts["a"].forward == MtaAddress(protocol="smtp", host="localhost", port=25)
    with pytest.raises(ConfigError, match=r"accounts\.a\.smtp: only a local MTA"):
        parse_fetch_config({"accounts": {"a": account(smtp="mx.example:25")}}, path)


_UNITS = ["", "ms", "s", "m", "h", "d", "B", "kb", "KB", "MB", "mib", "GiB", "x", "kB s"]
_UNIT_TEXT = st.one_of(
    st.builds(
        "{}{}{}{}{}".format,
        st.sampled_from(["", " "]),
        st.sampled_from(["0", "7", "1.5", "30", ".5", "-2", "12345678"]),
        st.sampled_from(["", " "]),
        st.sampled_from(_UNITS),
        st.sampled_from(["", " "]),
    ),
    st.text(alphabet=" 0123456789.smhdkKMGiIbB-x", max_size=8),
)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(_UNIT_TEXT, st.integers(-5, 10**12), st.floats(-5, 1e6), st.booleans()))
def test_durations_and_sizes_read_as_the_server_reads_them(value: object) -> None:
    """The account file accepts, converts and refuses durations and sizes exactly as the
    server's configuration does."""
    from postoffice.config import parse_duration, parse_size

    for key, parse in (("timeout", parse_duration), ("max_message_size", parse_size)):
        try:
            expected: object = parse(value, f"accounts.a.{key}")
        except ConfigError as error:
            expected = str(error)
        try:
            config = parse_fetch_config({"accounts": {"a": account(**{key: value})}}, Path("f"))
            got: object = getattr(config.accounts["a"], key)
        except ConfigError as error:
            got = str(error)
        if key == "timeout" and expected == 0.0:
            expected = "accounts.a.timeout: must be more than zero"  # the fetcher's own rule
        assert got == expected
