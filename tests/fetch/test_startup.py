"""What ``postoffice fetch`` loads before it knows it needs it, and work done while it waits."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from postoffice.fetch.auth import _may_use_sasl, preload_sasl
from postoffice.fetch.config import AuthMethod
from postoffice.proto.listings import Capabilities, parse_capabilities


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint(' '.join(sys.modules))"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return set(output.split())


def test_the_fetch_command_starts_without_the_sasl_machines() -> None:
    loaded = _loaded_after("import postoffice.cli, postoffice.fetch.cli")
    assert "postoffice.fetch.session" in loaded
    assert not {name for name in loaded if name.startswith("postoffice.sasl")}


def test_a_plain_login_imports_only_the_plain_machine() -> None:
    loaded = _loaded_after(
        "from postoffice.sasl.registry import client_mechanism\n"
        "from postoffice.sasl.mechanism import ClientCredentials\n"
        "from postoffice.secret import Secret\n"
        "client_mechanism('PLAIN', ClientCredentials(username='a', password=Secret('p')))"
    )
    assert "postoffice.sasl.plain" in loaded
    assert not {"postoffice.sasl.scram", "postoffice.sasl.oauth", "json"} & loaded


class _Account:
    def __init__(self, auth: AuthMethod) -> None:
        self.auth = auth


def _capa(*lines: str) -> Capabilities:
    return parse_capabilities("".join(f"{line}\r\n" for line in lines).encode())


@pytest.mark.parametrize(
    ("auth", "capabilities", "expected"),
    [
        (AuthMethod.USER, _capa("SASL PLAIN", "USER"), False),
        (AuthMethod.APOP, _capa("SASL PLAIN"), False),
        (AuthMethod.AUTO, _capa("USER"), False),
        (AuthMethod.AUTO, _capa("SASL OAUTHBEARER XOAUTH2"), False),  # no password mechanism
        (AuthMethod.AUTO, _capa("SASL plain"), True),
        (AuthMethod.AUTO, _capa("SASL LOGIN"), True),
        (AuthMethod.AUTO, _capa("SASL SCRAM-SHA-256"), True),
        (AuthMethod.PLAIN, _capa("USER"), True),  # asked for: tried, and refused if absent
        (AuthMethod.OAUTHBEARER, _capa(), True),
    ],
)
def test_sasl_is_needed_only_where_a_mechanism_may_be_used(
    auth: AuthMethod, capabilities: Capabilities, expected: bool
) -> None:
    assert _may_use_sasl(_Account(auth), capabilities) is expected  # type: ignore[arg-type]


async def test_sasl_is_preloaded_unless_the_login_is_user_or_apop() -> None:
    for auth in (AuthMethod.USER, AuthMethod.APOP):
        assert preload_sasl(_Account(auth)) is None  # type: ignore[arg-type]
    loading = preload_sasl(_Account(AuthMethod.AUTO))  # type: ignore[arg-type]
    assert loading is not None
    module = await loading
    assert module.__name__ == "postoffice.sasl.registry"


def test_the_command_exits_with_its_objects_left_out_of_the_last_collections() -> None:
    from postoffice.fetch.cli import _quick_exit

    try:
        with pytest.raises(SystemExit) as exited:
            _quick_exit(2)
        assert exited.value.code == 2
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
