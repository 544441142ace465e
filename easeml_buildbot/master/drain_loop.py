"""The drain loop of the master's queues kept in the ledger database (mail outbox, check runs).

Why one class: each queue is drained every ``interval`` seconds and at once when something is
added; two drains of one queue must not run side by side (the second only contends for the
same rows), a kick during a drain must not be lost, and stopping must wait for the drain in
flight. Twisted's ``LoopingCall`` gives the timer; this adds the coalescing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class DrainLoop:
    """Call ``drain() -> Deferred`` every ``interval`` seconds and on :meth:`kick`, one at a time."""

    def __init__(self, drain: Callable[[], Any], *, reactor: Any, interval: float) -> None:
        self.drain = drain
        self.reactor = reactor
        self.interval = max(0.05, float(interval))
        self._timer = None
        self._running = None  # the Deferred of the drain in progress
        self._again = False

    @property
    def active(self) -> bool:
        """Started and not stopped (a drain checks it between batches)."""
        return self._timer is not None

    def start(self) -> None:
        from twisted.internet import task

        if self._timer is None:
            self._timer = task.LoopingCall(self.kick)
            self._timer.clock = self.reactor
            self._timer.start(self.interval, now=True)

    def stop(self):
        """Stop the timer; a Deferred that fires when the drain in flight (if any) is done."""
        from twisted.internet import defer

        if self._timer is not None and self._timer.running:
            self._timer.stop()
        self._timer = None
        return self._running if self._running is not None else defer.succeed(None)

    def kick(self) -> None:
        """Drain now (coalesced: one drain at a time; a kick during a drain runs one more)."""
        if self._running is not None:
            self._again = True
            return
        self._running = self.drain()
        self._running.addBoth(self._drained)

    def _drained(self, result: Any) -> None:
        self._running = None
        if self._again and self.active:
            self._again = False
            self.kick()
        return None
