"""The configuration examples the issues and the README publish work as written."""

from __future__ import annotations

import poplib
import ssl
import tomllib
from pathlib import Path

import trustme

from postoffice.auth import passwd_file
from postoffice.auth.schemes import hash_password
from postoffice.config import load_config
from postoffice.delivery.maildir import deliver_to_maildir
from postoffice.secret import Secret
from tests.conftest import ServerHarness, merged

TLS_EXAMPLE = """
[pop3s]
listen = ["127.0.0.1:1995"]            # implicit TLS

[tls]
certificate = "tls/fullchain.pem"      # leaf first, then intermediates
private_key = "tls/key.pem"
min_version = "1.2"

[auth]
plaintext = "loopback"                 # "never" | "loopback" | "always"
trusted_networks = []                  # CIDRs treated like loopback
mechanisms = ["PLAIN", "LOGIN", "SCRAM-SHA-256"]
"""

DELIVERY_EXAMPLE = """
[lmtp]
listen = ["127.0.0.1:2424"]        # also "unix:var/lmtp.sock"
max_message_size = "50MB"

[mail]
uidl_format = "dovecot"            # "postoffice" (default) | "dovecot" | "courier" | "x-uidl"
"""


def test_the_tls_example_loads_and_serves_scram_users_over_pop3s(tmp_path: Path) -> None:
    authority = trustme.CA()
    certificate = authority.issue_cert("localhost", "127.0.0.1")
    (tmp_path / "tls").mkdir()
    certificate.private_key_pem.write_to_path(str(tmp_path / "tls" / "key.pem"))
    certificate.cert_chain_pems[0].write_to_path(str(tmp_path / "tls" / "fullchain.pem"))
    path = tmp_path / "postoffice.toml"
    path.write_text(TLS_EXAMPLE)
    config = load_config(path)
    assert config.pop3s.tls.certificate == tmp_path / "tls" / "fullchain.pem"
    assert config.auth.mechanisms == ("PLAIN", "LOGIN", "SCRAM-SHA-256")
    # Served as written, but on a free port so that tests can run side by side.
    data = merged(tomllib.loads(TLS_EXAMPLE), {"pop3s": {"listen": ["127.0.0.1:0"]}})
    harness = ServerHarness(root=tmp_path)
    harness.passwd.parent.mkdir(parents=True)
    passwd_file.add_user(harness.passwd, "alice", hash_password(Secret("secret"), "SCRAM-SHA-256"))
    deliver_to_maildir(harness.maildir("alice"), b"Subject: hi\n\nthere\n")
    harness.start(**data)
    try:
        context = ssl.create_default_context()
        authority.configure_trust(context)
        pop = poplib.POP3_SSL("127.0.0.1", harness.tls_port, context=context, timeout=10)
        assert pop.capa()["SASL"] == ["PLAIN", "LOGIN", "SCRAM-SHA-256"]
        pop.user("alice")  # a SCRAM verifier also serves USER/PASS
        assert pop.pass_("secret").startswith(b"+OK maildrop has 1 messages")
        pop.quit()
    finally:
        harness.stop()


def test_the_delivery_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "postoffice.toml"
    path.write_text(DELIVERY_EXAMPLE)
    config = load_config(path)
    assert [str(address) for address in config.lmtp.listen] == ["127.0.0.1:2424"]
    assert config.lmtp.max_message_size == 50_000_000
    assert config.mail.uidl_format == "dovecot"
