"""The GS2 header that opens SCRAM and OAUTHBEARER messages (RFC 5801 §4, RFC 5802 §7).

::

    gs2-header    = gs2-cbind-flag "," [ "a=" saslname ] ","
    gs2-cbind-flag = ("p=" cb-name) / "n" / "y"
    saslname      = 1*(UTF8 except NUL "=" "," / "=2C" / "=3D")

The header is kept as received (``raw``) because SCRAM hashes it into the channel-binding
input. The non-standard ``F,`` prefix of RFC 5801 belongs to GSS-API mechanisms only and is
refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from postoffice.sasl.errors import MalformedSaslError

_CB_NAME = re.compile(r"[A-Za-z0-9.-]+")


@dataclass(frozen=True, slots=True, kw_only=True)
class Gs2Header:
    flag: str
    """``n``: the client does not do channel binding; ``y``: it does, but thinks the server
    does not; ``p``: it binds to channel ``cb_name``."""
    cb_name: str | None
    authzid: str
    raw: str


def escape_saslname(name: str) -> str:
    """RFC 5802 §5.1: ``=`` becomes ``=3D`` and ``,`` becomes ``=2C``."""
    return name.replace("=", "=3D").replace(",", "=2C")


def unescape_saslname(text: str, what: str) -> str:
    """The inverse of escape_saslname; any other ``=`` or a NUL is malformed."""
    if not text or "\0" in text:
        raise MalformedSaslError(f"{what} is empty or contains NUL")
    rest = text
    while "=" in rest:
        _, _, after = rest.partition("=")
        if after[:2] not in ("2C", "3D"):
            raise MalformedSaslError(f"{what} has '=' not followed by 2C or 3D")
        rest = after[2:]
    return text.replace("=2C", ",").replace("=3D", "=")


def make_gs2_header(flag: str, cb_name: str | None = None, authzid: str = "") -> str:
    cbind = f"p={cb_name}" if flag == "p" else flag
    return f"{cbind},{'a=' + escape_saslname(authzid) if authzid else ''},"


def parse_gs2_header(text: str) -> tuple[Gs2Header, str]:
    """The header at the start of ``text``, and the text after it."""
    parts = text.split(",", 2)
    if len(parts) != 3:
        raise MalformedSaslError("GS2 header needs two commas")
    cbind, authzid_field, rest = parts
    cb_name: str | None = None
    if cbind in ("n", "y"):
        flag = cbind
    elif cbind.startswith("p=") and _CB_NAME.fullmatch(cbind[2:]):
        flag, cb_name = "p", cbind[2:]
    else:
        raise MalformedSaslError("GS2 channel-binding flag is not n, y or p=<name>")
    authzid = ""
    if authzid_field:
        if not authzid_field.startswith("a="):
            raise MalformedSaslError("GS2 authzid field does not start with 'a='")
        authzid = unescape_saslname(authzid_field[2:], "GS2 authzid")
    raw = text[: len(cbind) + len(authzid_field) + 2]
    return Gs2Header(flag=flag, cb_name=cb_name, authzid=authzid, raw=raw), rest
