"""The destination breaker's state machine, on an injected clock."""

from __future__ import annotations

import threading

import pytest

from dicom_chain import outbox
from dicom_chain.breaker import Breaker, Permit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_opens_on_failure_and_lets_one_probe_through_after_the_delay():
    clock = Clock()
    breaker = Breaker(clock=clock, delay=lambda n: 2.0 * 2 ** (n - 1))
    assert breaker.permit() is Permit.ALL and not breaker.down
    assert breaker.failed() is True  # went down: the caller records it
    assert breaker.down and breaker.next_probe_in() == 2.0
    assert breaker.permit() is Permit.NONE  # nobody leases while down
    clock.now += 1.9
    assert breaker.permit() is Permit.NONE
    clock.now += 0.1
    assert breaker.permit() is Permit.PROBE  # one worker probes...
    assert breaker.permit() is Permit.NONE  # ... and only one
    assert breaker.failed() is False  # the probe failed: still down, nothing new to record
    assert breaker.next_probe_in() == 4.0  # the delay doubled
    clock.now += 4.0
    assert breaker.permit() is Permit.PROBE
    assert breaker.succeeded() is True  # back: the caller records it
    assert not breaker.down and breaker.next_probe_in() is None
    assert breaker.permit() is Permit.ALL and breaker.permit() is Permit.ALL  # everyone leases at once


def test_delays_follow_the_per_instance_back_off_doubling_to_its_cap():
    clock = Clock()
    breaker = Breaker(clock=clock)  # outbox.backoff_delay: 2 s doubling to 300 s, +-20%
    seen = []
    breaker.failed()
    for _ in range(12):
        wait = breaker.next_probe_in()
        assert wait is not None
        seen.append(wait)
        clock.now += wait
        assert breaker.permit() is Permit.PROBE
        breaker.failed()
    for n, wait in enumerate(seen, start=1):
        base = min(outbox.BACKOFF_FIRST_S * 2 ** (n - 1), outbox.BACKOFF_MAX_S)
        assert base * (1 - outbox.BACKOFF_JITTER) <= wait <= base * (1 + outbox.BACKOFF_JITTER), (n, wait)
    assert max(seen) <= outbox.BACKOFF_MAX_S * (1 + outbox.BACKOFF_JITTER)


def test_a_failure_of_a_batch_leased_before_it_opened_neither_records_nor_doubles():
    clock = Clock()
    breaker = Breaker(clock=clock, delay=lambda n: 10.0 * n)
    assert breaker.failed() is True
    assert breaker.failed() is False  # a second worker, whose batch was leased while closed
    assert breaker.failures == 1 and breaker.next_probe_in() == 10.0


def test_a_probe_that_leased_nothing_is_given_back_by_its_thread_only():
    clock = Clock()
    breaker = Breaker(clock=clock, delay=lambda n: 1.0)
    breaker.failed()
    clock.now += 1.0
    assert breaker.permit() is Permit.PROBE
    other = threading.Thread(target=breaker.abandon)  # not the prober: no effect
    other.start()
    other.join()
    assert breaker.permit() is Permit.NONE
    breaker.abandon()
    assert breaker.permit() is Permit.PROBE  # the queue was empty: the next poll probes again


@pytest.mark.parametrize("recorded", [False, True])
def test_what_the_ledger_last_said_decides_what_is_recorded(recorded):
    """A restarted forwarder (closed, probing at once) neither repeats a recorded outage nor
    forgets to record its end."""
    breaker = Breaker(clock=Clock(), recorded=recorded)
    assert breaker.permit() is Permit.ALL
    assert breaker.failed() is (not recorded)
    assert breaker.succeeded() is True
    assert breaker.succeeded() is False  # closed and recorded back: nothing more
