"""The connection and session counts on their own (the server's use of them is tested in
test_behaviour and test_defences)."""

from __future__ import annotations

from postoffice.server.limits import ConnectionLimits


def limits(per_user: int, per_user_ip: int) -> ConnectionLimits:
    return ConnectionLimits(
        max_connections=100,
        max_connections_per_ip=100,
        max_sessions_per_user=per_user,
        max_connections_per_user_ip=per_user_ip,
    )


def test_the_user_and_address_cap_counts_only_when_it_can_bind() -> None:
    """With the per-user+address cap at or above the per-user one it can never refuse a
    login the per-user cap admits: nothing is counted for it, and the per-user cap alone
    decides."""
    same = limits(per_user=2, per_user_ip=2)
    assert not same.counts_user_ip
    assert same.admit_user("alice", "192.0.2.1")
    assert same.admit_user("alice", "192.0.2.1")
    assert not same.admit_user("alice", "192.0.2.2")
    assert not same.per_user_ip
    same.release_user("alice", "192.0.2.1")
    assert same.admit_user("alice", "192.0.2.2")
    same.release_user("alice", "192.0.2.1")
    same.release_user("alice", "192.0.2.2")
    assert not same.per_user and not same.per_user_ip


def test_a_lower_user_and_address_cap_is_counted_and_enforced() -> None:
    lower = limits(per_user=3, per_user_ip=1)
    assert lower.counts_user_ip
    assert lower.admit_user("alice", "192.0.2.1")
    assert not lower.admit_user("alice", "192.0.2.1")  # the address's one session
    assert lower.admit_user("alice", "192.0.2.2")
    assert lower.admit_user("alice", "192.0.2.3")
    assert not lower.admit_user("alice", "192.0.2.4")  # the user's three
    lower.release_user("alice", "192.0.2.1")
    assert lower.admit_user("alice", "192.0.2.1")
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        lower.release_user("alice", address)
    assert not lower.per_user and not lower.per_user_ip
