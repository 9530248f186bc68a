"""The [lmtp] table and the mail.uidl_format / mail.quota keys: the issue's example loads,
and every mistake names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from postoffice.config import ListenAddress, UnixAddress, load_config
from postoffice.errors import ConfigError

ISSUE_EXAMPLE = """
[lmtp]
listen = ["127.0.0.1:2424"]        # also "unix:var/lmtp.sock"
max_message_size = "50MB"

[mail]
uidl_format = "dovecot"            # "postoffice" (default) | "dovecot" | "courier" | "x-uidl"
"""


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "postoffice.toml"
    path.write_text(text)
    return load_config(path)


def test_the_issue_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "postoffice.toml"
    path.write_text(ISSUE_EXAMPLE)
    config = load_config(path)
    assert config.lmtp.listen == (ListenAddress(host="127.0.0.1", port=2424),)
    assert config.lmtp.max_message_size == 50_000_000
    assert config.mail.uidl_format == "dovecot"
    assert config.mail.quota == 0


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert [str(address) for address in config.lmtp.listen] == ["127.0.0.1:2424"]
    assert config.lmtp.max_message_size == 50_000_000
    assert (config.mail.uidl_format, config.mail.quota) == ("postoffice", 0)


def test_unix_socket_is_relative_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "postoffice.toml"
    path.parent.mkdir()
    path.write_text('[lmtp]\nlisten = ["unix:var/lmtp.sock", "[::1]:24"]\n[mail]\nquota = "1GiB"\n')
    config = load_config(path)
    assert config.lmtp.listen == (
        UnixAddress(path=tmp_path / "etc" / "var" / "lmtp.sock"),
        ListenAddress(host="::1", port=24),
    )
    assert str(config.lmtp.listen[0]) == f"unix:{tmp_path}/etc/var/lmtp.sock"
    assert config.mail.quota == 2**30


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[lmtp]\nlisten = ["2424"]\n', "lmtp.listen"),
        ('[lmtp]\nlisten = ["unix:"]\n', "lmtp.listen"),
        ('[lmtp]\nlisten = "127.0.0.1:2424"\n', "lmtp.listen"),
        ('[lmtp]\nmax_message_size = "lots"\n', "lmtp.max_message_size"),
        ("[lmtp]\nport = 24\n", "lmtp.port: unknown key"),
        ('[mail]\nuidl_format = "imap"\n', "mail.uidl_format"),
        ('[mail]\nuidl_format = "dovecot:%m"\n', "mail.uidl_format"),
        ("[mail]\nquota = -1\n", "mail.quota"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, text)
