"""How many hosts to start at once: a window that follows observed progress.

Starting more SSH logins than the nodes (or the controller) can serve only
makes every one of them slower: on a loaded lab of 200 nodes, 64 starts in
flight took 76 s where 16 took 32 s. The window works like TCP Vegas: it
compares how long starts take now with the quickest it has seen; while the
difference says fewer than ``LOW`` starts are queued somewhere, it grows by
one per completed start (doubling per window of starts), and past ``HIGH``
it shrinks by one. It never exceeds ``--parallel`` (the user's ceiling) nor
goes below ``FLOOR``. On a fleet whose nodes have their own CPUs, starts do
not slow down as more run, and the window opens to the ceiling.

:class:`Window` is pure (times are passed in); :class:`Gate` is the thin
thread-safe shell the run's workers pass through.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque
from typing import Deque, Optional

#: Starts in flight before anything is known.
INITIAL = 8
#: The window never goes below this (or the ceiling, if lower).
FLOOR = 4
#: Estimated starts queued behind others: grow below LOW, shrink above HIGH.
LOW = 2.0
HIGH = 4.0
#: Completions needed before the window adapts.
WARMUP = 4


class Window:
    """The number of starts allowed in flight, adapted to their latency."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(1, ceiling)
        self.size = min(self.ceiling, INITIAL)
        self.floor = min(self.ceiling, FLOOR)
        self.recent: Deque[float] = deque(maxlen=max(8, self.ceiling))
        self.base: Optional[float] = None  # the quickest typical start seen, in seconds

    def done(self, seconds: float) -> int:
        """One start took ``seconds``: the new size."""
        self.recent.append(max(seconds, 1e-6))
        if len(self.recent) < WARMUP:
            return self.size
        typical = statistics.median(self.recent)
        self.base = typical if self.base is None else min(self.base, typical)
        queued = self.size * (1.0 - self.base / typical)
        if queued < LOW:
            self.size = min(self.ceiling, self.size + 1)
        elif queued > HIGH:
            self.size = max(self.floor, self.size - 1)
        return self.size


class Gate:
    """Lets at most ``window.size`` workers through at once; closable (deadline, Ctrl-C)."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.in_flight = 0
        self.closed = False
        self.peak = 0
        self._cond = threading.Condition()

    def enter(self) -> bool:
        """Wait for room; False if the gate was closed meanwhile (then do not start)."""
        with self._cond:
            while not self.closed and self.in_flight >= self.window.size:
                self._cond.wait()
            if self.closed:
                return False
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            return True

    def leave(self, seconds: Optional[float]) -> None:
        """A start ended after ``seconds`` (None: it failed, and says nothing of load)."""
        with self._cond:
            self.in_flight -= 1
            if seconds is not None:
                self.window.done(seconds)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
