"""Configuration: the documented examples load, every error names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from postoffice.config import load_config
from postoffice.errors import ConfigError
from postoffice.units import parse_duration, parse_size

ISSUE_EXAMPLE = """
data_dir = "var"

[pop3]
listen = ["127.0.0.1:1110"]          # host:port, [::1]:port; port 0 picks a free port

[auth]
passwd_file = "var/passwd"           # Dovecot passwd-file format

[mail]
maildir = "var/mail/{user}/Maildir"  # also {localpart}, {domain}, and {home}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "postoffice.toml"
    path.write_text(text)
    return path


def test_the_documented_example_loads_relative_to_the_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ISSUE_EXAMPLE))
    assert config.data_dir == tmp_path / "var"
    assert config.auth.passwd_file == tmp_path / "var" / "passwd"
    assert config.mail.maildir == f"{tmp_path}/var/mail/{{user}}/Maildir"
    assert [str(address) for address in config.pop3.listen] == ["127.0.0.1:1110"]


def test_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None)
    assert config.data_dir == tmp_path / "var"
    assert config.auth.passwd_file == tmp_path / "var" / "passwd"
    assert config.mail.maildir == "{data_dir}/mail/{user}/Maildir"
    assert config.limits.idle_timeout >= 600
    assert config.pop3.apop is False
    assert config.pop3.expire == "NEVER"
    assert config.auth.cache_ttl == 3600
    assert config.auth.cache_entries == 100_000


def test_ipv6_and_port_zero(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[pop3]\nlisten = ["[::1]:0", "127.0.0.1:0"]\n'))
    assert [(a.host, a.port) for a in config.pop3.listen] == [("::1", 0), ("127.0.0.1", 0)]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[pop3]\nlisten = ["localhost"]\n', "pop3.listen"),
        ('[pop3]\nlisten = ["127.0.0.1:70000"]\n', "pop3.listen"),
        ("[pop3]\nlisten = 1110\n", "pop3.listen"),
        ("[pop3]\nlistne = []\n", "pop3.listne"),
        ("[pop3]\napop = 1\n", "pop3.apop"),
        ('[pop3]\nexpire = "soon"\n', "pop3.expire"),
        ("[pop3]\nmax_line_length = 100\n", "pop3.max_line_length"),
        ("[limits]\nidle_timeout = 60\n", "limits.idle_timeout"),
        ('[limits]\nlogin_timeout = "forever"\n', "limits.login_timeout"),
        ('[mail]\nmaildir = "mail/{usr}"\n', "mail.maildir"),
        ('[mail]\nmaildir = "mail/shared"\n', "mail.maildir"),
        ('[auth]\ntrusted_networks = ["10.0.0.0/33"]\n', "auth.trusted_networks"),
        ("[auth]\ncache_ttl = -1\n", "auth.cache_ttl"),
        ("[auth]\ncache_entries = 0\n", "auth.cache_entries"),
        ("unknown_top = 1\n", "unknown_top"),
        ('log_level = "loud"\n', "log_level"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=f"^{key}: "):
        load_config(write(tmp_path, text))


def test_broken_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[pop3\n"))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("value", "seconds"), [(30, 30.0), ("90s", 90.0), ("10m", 600.0), ("2h", 7200.0), (1.5, 1.5)]
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value, "k") == seconds


@pytest.mark.parametrize(("value", "octets"), [(10, 10), ("50MB", 50_000_000), ("1MiB", 2**20)])
def test_sizes(value: object, octets: int) -> None:
    assert parse_size(value, "k") == octets


def test_the_password_cache_can_be_set_or_turned_off(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, '[auth]\ncache_ttl = "10m"\ncache_entries = 500\n'))
    assert (config.auth.cache_ttl, config.auth.cache_entries) == (600, 500)
    assert load_config(write(tmp_path, "[auth]\ncache_ttl = 0\n")).auth.cache_ttl == 0
