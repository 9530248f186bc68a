"""The client's events behave as the frozen, slotted, keyword-only dataclasses they stand
in for: the same equality, hash and repr, frozen, and no other attributes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from postoffice.proto import client_events
from postoffice.proto.client_events import (
    BodyData,
    Continuation,
    Greeting,
    MultilineEnd,
    MultilineStart,
    Reply,
    Request,
    SaslResponse,
)
from postoffice.secret import Secret

RETR = Request(keyword="RETR", arguments=("1",))
SAMPLES: list[tuple[type[Any], dict[str, Any]]] = [
    (Request, {"keyword": "RETR", "arguments": ("1",)}),
    (Request, {"keyword": "PASS", "arguments": (Secret("hunter2"),)}),
    (SaslResponse, {"data": Secret("AGFsaWNl")}),
    (Greeting, {"ok": True, "text": "ready <1.2@host>", "timestamp": "<1.2@host>"}),
    (Reply, {"request": RETR, "ok": False, "text": "no such message", "code": "SYS/TEMP"}),
    (MultilineStart, {"request": RETR, "text": "120 octets"}),
    (BodyData, {"data": b"Subject: x\r\n"}),
    (MultilineEnd, {"request": RETR, "octets": 120}),
    (Continuation, {"request": Request(keyword="AUTH", arguments=("PLAIN",)), "challenge": ""}),
]


def _reference(cls: type[Any], fields: dict[str, Any]) -> Any:
    """The same event as a dataclass would make it."""
    made = dataclasses.make_dataclass(
        cls.__name__, list(fields), frozen=True, slots=True, kw_only=True
    )
    return made(**fields)


@pytest.mark.parametrize(("cls", "fields"), SAMPLES)
def test_an_event_is_shown_compared_and_hashed_as_its_dataclass(
    cls: type[Any], fields: dict[str, Any]
) -> None:
    event, reference = cls(**fields), _reference(cls, fields)
    assert repr(event) == repr(reference)
    assert hash(event) == hash(reference)
    assert event == cls(**fields)
    assert len({event, cls(**fields)}) == 1
    assert "hunter2" not in repr(event) and "AGFsaWNl" not in repr(event)


@pytest.mark.parametrize(("cls", "fields"), SAMPLES)
def test_an_event_is_frozen_and_has_no_other_attributes(
    cls: type[Any], fields: dict[str, Any]
) -> None:
    event = cls(**fields)
    name = next(iter(fields))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, name, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        delattr(event, name)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.other = 1
    with pytest.raises(TypeError):
        cls(*fields.values())  # keyword-only


def test_events_differ_by_class_and_by_any_field() -> None:
    assert MultilineStart(request=RETR, text="") != Continuation(request=RETR, challenge="")
    assert MultilineEnd(request=RETR, octets=1) != MultilineEnd(request=RETR, octets=2)
    assert Reply(request=RETR, ok=True, text="", code=None) != Reply(
        request=Request(keyword="RETR", arguments=("2",)), ok=True, text="", code=None
    )
    assert BodyData(data=b"x") != b"x"
    assert Request(keyword="QUIT") == Request(keyword="QUIT", arguments=())


def test_the_markers_are_single_values() -> None:
    assert repr(client_events.NEED_DATA) == "ClientNeedData()"
    assert client_events.ClientNeedData() == client_events.NEED_DATA
    assert client_events.NEED_DATA != client_events.PAUSED
    assert hash(client_events.CLOSED) == hash(client_events.ConnectionClosed())
