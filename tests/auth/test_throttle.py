"""Tests for the failed-login throttle, on a fake clock (nothing sleeps)."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from postoffice.auth.throttle import FailureThrottle


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def throttle(clock: FakeClock) -> FailureThrottle:
    return FailureThrottle(clock=clock)


_guesses = itertools.count()


def _fail(throttle: FailureThrottle, ip: str, n: int, user: str = "alice") -> None:
    """n failures, each with a password never tried before."""
    for _ in range(n):
        throttle.record_failure(ip, user, f"guess-{next(_guesses)}".encode())


def test_no_delay_before_any_failure(throttle: FailureThrottle) -> None:
    """A client that never failed waits nothing."""
    assert throttle.delay_for("192.0.2.1") == 0.0


@pytest.mark.parametrize(
    ("failures", "delay"), [(1, 2.0), (2, 4.0), (3, 8.0), (4, 15.0), (5, 15.0), (200, 15.0)]
)
def test_delay_doubles_up_to_the_cap(
    throttle: FailureThrottle, failures: int, delay: float
) -> None:
    """Each new failure doubles the wait from base_delay, up to max_delay."""
    _fail(throttle, "192.0.2.1", failures)
    assert throttle.delay_for("192.0.2.1") == delay


def test_delay_counts_down_with_the_clock(throttle: FailureThrottle, clock: FakeClock) -> None:
    """The wait is measured from the last failure."""
    _fail(throttle, "192.0.2.1", 3)
    clock.now += 5.0
    assert throttle.delay_for("192.0.2.1") == 3.0
    clock.now += 10.0
    assert throttle.delay_for("192.0.2.1") == 0.0


def test_other_clients_are_not_delayed(throttle: FailureThrottle) -> None:
    """One client's failures do not delay another."""
    _fail(throttle, "192.0.2.1", 3)
    assert throttle.delay_for("192.0.2.2") == 0.0


def test_success_clears(throttle: FailureThrottle) -> None:
    """A successful login forgets the client's failures."""
    _fail(throttle, "192.0.2.1", 3)
    throttle.record_success("192.0.2.1")
    assert throttle.delay_for("192.0.2.1") == 0.0
    _fail(throttle, "192.0.2.1", 1)
    assert throttle.delay_for("192.0.2.1") == 2.0


def test_same_wrong_password_does_not_escalate(throttle: FailureThrottle, clock: FakeClock) -> None:
    """A client retrying a saved wrong password keeps its penalty but restarts the wait."""
    for _ in range(5):
        throttle.record_failure("192.0.2.1", "alice", b"saved-wrong")
    assert throttle.delay_for("192.0.2.1") == 2.0
    clock.now += 1.5
    throttle.record_failure("192.0.2.1", "alice", b"saved-wrong")
    assert throttle.delay_for("192.0.2.1") == 2.0
    throttle.record_failure("192.0.2.1", "bob", b"saved-wrong")  # another user: escalates
    assert throttle.delay_for("192.0.2.1") == 4.0


def test_repeat_is_recognised_among_the_last_ten_only(
    throttle: FailureThrottle, clock: FakeClock
) -> None:
    """An attempt repeated after ten other failures counts as new again."""
    throttle.record_failure("192.0.2.1", "alice", b"first")
    _fail(throttle, "192.0.2.1", 9)
    throttle.record_failure("192.0.2.1", "alice", b"first")  # still among the last 10
    assert throttle.delay_for("192.0.2.1") == 15.0
    t = FailureThrottle(base_delay=1.0, max_delay=1e9, clock=clock)
    t.record_failure("192.0.2.1", "alice", b"first")
    _fail(t, "192.0.2.1", 9)
    t.record_failure("192.0.2.1", "alice", b"first")
    assert t.delay_for("192.0.2.1") == 2.0**9
    _fail(t, "192.0.2.1", 1)  # pushes "first" out of the last ten
    t.record_failure("192.0.2.1", "alice", b"first")
    assert t.delay_for("192.0.2.1") == 2.0**11


def test_ipv6_clients_are_grouped_by_48(throttle: FailureThrottle) -> None:
    """Addresses in one IPv6 /48 share a penalty; another /48 does not."""
    _fail(throttle, "2001:db8:1:2::1", 2)
    assert throttle.delay_for("2001:db8:1:ffff::9") == 4.0
    assert throttle.delay_for("2001:db8:2::1") == 0.0


def test_ipv4_mapped_ipv6_is_the_ipv4_client(throttle: FailureThrottle) -> None:
    """::ffff:192.0.2.1 is counted as 192.0.2.1, not as an IPv6 /48."""
    _fail(throttle, "::ffff:192.0.2.1", 1)
    assert throttle.delay_for("192.0.2.1") == 2.0
    assert throttle.delay_for("192.0.2.2") == 0.0


def test_trusted_networks_are_never_delayed(clock: FakeClock) -> None:
    """Trusted networks (objects or strings) are exempt; loopback is not trusted by default."""
    throttle = FailureThrottle(
        clock=clock, trusted=(ipaddress.ip_network("10.0.0.0/8"), "2001:db8::/32")
    )
    for ip in ("10.1.2.3", "2001:db8::5", "::ffff:10.0.0.1"):
        _fail(throttle, ip, 5)
        assert throttle.delay_for(ip) == 0.0
    assert len(throttle) == 0
    _fail(throttle, "127.0.0.1", 1)
    assert throttle.delay_for("127.0.0.1") == 2.0


def test_failures_are_forgotten_after_forget_after(clock: FakeClock) -> None:
    """A client that stays away forget_after seconds starts afresh."""
    throttle = FailureThrottle(clock=clock, forget_after=600.0)
    _fail(throttle, "192.0.2.1", 4)
    clock.now += 600.0
    assert throttle.delay_for("192.0.2.1") == 0.0
    assert len(throttle) == 0
    _fail(throttle, "192.0.2.1", 1)
    assert throttle.delay_for("192.0.2.1") == 2.0


def test_memory_is_bounded_and_evicts_the_oldest(clock: FakeClock) -> None:
    """At most `memory` clients are tracked; the least recently failing go first."""
    throttle = FailureThrottle(clock=clock, memory=3)
    for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        _fail(throttle, ip, 1)
    _fail(throttle, "192.0.2.1", 1)  # 192.0.2.1 is now the most recent
    _fail(throttle, "192.0.2.4", 1)
    assert len(throttle) == 3
    assert throttle.delay_for("192.0.2.2") == 0.0  # evicted
    assert throttle.delay_for("192.0.2.1") == 4.0
    assert throttle.delay_for("192.0.2.4") == 2.0


def test_non_ip_peers_are_tracked_by_name(throttle: FailureThrottle) -> None:
    """A peer that is not an IP address (a Unix socket) is still throttled."""
    _fail(throttle, "local", 1)
    assert throttle.delay_for("local") == 2.0


@pytest.mark.parametrize(
    "kwargs", [{"memory": 0}, {"base_delay": -1.0}, {"max_delay": -1.0}, {"forget_after": 0.0}]
)
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    """Nonsense settings raise ValueError."""
    with pytest.raises(ValueError):
        FailureThrottle(**kwargs)  # type: ignore[arg-type]
