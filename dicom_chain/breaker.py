"""A destination-wide back-off (circuit breaker) for forwarding: a PACS that cannot be reached
costs nothing per newly received instance.

Without it every instance queued while the PACS is down is leased, tried (connection refused)
and settled with a retry: CPU and write-lock holds per instance on the machine that is receiving.
With it, the first worker that cannot associate opens the breaker; while open no worker of that
destination leases anything; once the delay has passed one worker probes (a small batch), and
success closes it at once, failure doubles the delay (``outbox.backoff_delay``'s schedule).

Pure state, in memory, one per destination and process, with an injected clock: a restarted
forwarder probes at once. What reaches the ledger is one event when the destination goes down
and one when it is back (``recorded`` says which the ledger last got, so a restarted forwarder
neither repeats a down event nor forgets the up event that ends it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import Enum

from dicom_chain.outbox import ForwardCause, backoff_delay

# Failures to associate that say the destination itself cannot be reached now, so that trying
# the next instance would fail the same way. CONTEXTS is the PACS answering (it refuses SOP
# classes, per instance); a rejection, even permanent (an unknown called AE title), refuses
# every instance alike until a person fixes it, so probing it with back-off is what costs least.
DOWN_CAUSES = frozenset(
    {
        ForwardCause.DNS,
        ForwardCause.REFUSED,
        ForwardCause.UNREACHABLE,
        ForwardCause.TIMEOUT,
        ForwardCause.REJECTED,
        ForwardCause.ABORTED,
    }
)


class Permit(Enum):
    """What a worker may lease now."""

    ALL = "all"  # closed: lease as usual
    PROBE = "probe"  # open and due: this worker alone tries a small batch
    NONE = "none"  # open: lease nothing


class Breaker:
    """One destination's breaker, shared by that destination's worker threads."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        delay: Callable[[int], float] = backoff_delay,
        recorded: bool = False,
    ) -> None:
        """``delay(n)``: seconds before the probe after the n-th failure in a row (1-based).
        ``recorded``: the ledger's last word on this destination is that it is down."""
        self._clock = clock
        self._delay = delay
        self._lock = threading.Lock()
        self.failures = 0  # failed associations in a row; 0: closed
        self.probing = False
        self._prober: int | None = None  # the thread given the probe (abandon is its alone)
        self.next_probe = 0.0  # clock time after which one worker may probe
        self.down_since: float | None = None  # clock time it opened
        self.recorded = recorded

    @property
    def down(self) -> bool:
        return self.failures > 0

    def permit(self) -> Permit:
        with self._lock:
            if not self.failures:
                return Permit.ALL
            if self.probing or self._clock() < self.next_probe:
                return Permit.NONE
            self.probing, self._prober = True, threading.get_ident()
            return Permit.PROBE

    def failed(self) -> bool:
        """A worker could not associate for a DOWN_CAUSES reason. True: the caller records that
        the destination went down (it had not been recorded)."""
        with self._lock:
            if self.failures and not self.probing:
                return False  # already open: another worker's batch, leased before it opened, failed too
            now = self._clock()
            if not self.failures:
                self.down_since = now
            self.failures += 1
            self.probing, self._prober = False, None
            self.next_probe = now + self._delay(self.failures)
            record, self.recorded = not self.recorded, True
            return record

    def succeeded(self) -> bool:
        """A worker associated (or the PACS answered at all). True: the caller records that the
        destination is back (the ledger last said it was down)."""
        with self._lock:
            self.failures, self.probing, self._prober, self.down_since = 0, False, None, None
            record, self.recorded = self.recorded, False
            return record

    def abandon(self) -> None:
        """The probing worker leased nothing, or stopped before trying: the next may probe.
        Only the probing thread's call counts (once its probe is settled, it is a no-op)."""
        with self._lock:
            if self.probing and self._prober == threading.get_ident():
                self.probing, self._prober = False, None

    def next_probe_in(self) -> float | None:
        """Seconds until the next probe may start (0: due); None when closed."""
        with self._lock:
            return max(0.0, self.next_probe - self._clock()) if self.failures else None
