"""A run's heartbeat tunnels, kept until the run ends and opened again when one drops.

A host whose heartbeats come through its SSH connection (behind a jump host,
or ``heartbeat: tunnel``) sends them to a port its sshd forwards to us, as
``ssh -R`` does. When the host stops answering for longer than its keepalive
limit (frozen, swapping, a network blip on the way), the controller gives the
connection up, and the forwarded port goes with it: the node, back and
sending again, would be dead for the rest of the run though its executor
never stopped. So a dropped tunnel is opened again on the same node-local
port, where the executor keeps trying with its own backoff, until the run
ends; the node then turns alive again as a directly reached node does.

The policy (when to try, how long to wait after a failed try) is here; the
SSH work is the ``reopen`` function the dispatcher gives.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from .inventory import Host

log = logging.getLogger(__name__)

#: Seconds between looks at the kept connections (a dropped one is seen within this).
CHECK_EVERY = 1.0
#: The wait after a failed reopen (the node still frozen, its old sshd still
#: holding the port), doubled each time up to RETRY_CAP.
RETRY_FIRST = 1.0
RETRY_CAP = 10.0
#: Reopens at once: a bastion that drops every host behind it is not hit by all of them.
WORKERS = 8


@dataclass
class _Kept:
    host: Host
    conn: Any
    port: int
    next_try: float = 0.0
    wait: float = RETRY_FIRST
    trying: bool = False


class Tunnels:
    """The kept tunnel connections of one run; thread-safe.

    ``reopen(host, port)`` logs in to ``host`` again and has its sshd forward
    ``port`` once more, returning the new connection (raising anything on
    failure); ``is_up(conn)`` says whether a connection still stands. Both,
    the clock and the way work is run are injected, so the policy is tested
    without SSH.
    """

    def __init__(
        self,
        reopen: Callable[[Host, int], Any],
        is_up: Callable[[Any], bool],
        clock: Callable[[], float] = time.monotonic,
        submit: Optional[Callable[[Callable[[], None]], Any]] = None,
        check_every: float = CHECK_EVERY,
    ) -> None:
        self._reopen, self._is_up, self._clock = reopen, is_up, clock
        self._submit = submit
        self._check_every = check_every
        self._kept: Dict[str, _Kept] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._watcher: Optional[threading.Thread] = None
        self._pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        #: Times each host's tunnel was opened again (for the debug log and tests).
        self.reopened: Dict[str, int] = {}

    def keep(self, host: Host, conn: Any, port: int) -> bool:
        """Keep ``conn`` (carrying ``host``'s forwarded ``port``) until :meth:`close`.

        False if the run ended already: the caller closes ``conn`` itself.
        """
        with self._lock:
            if self._closed.is_set():
                return False
            self._kept[host.id] = _Kept(host, conn, port)
            if self._watcher is None and self._submit is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    WORKERS, thread_name_prefix="corunner-tunnel"
                )
                self._submit = self._pool.submit
                self._watcher = threading.Thread(
                    target=self._watch, name="corunner-tunnels", daemon=True
                )
                self._watcher.start()
        return True

    def _watch(self) -> None:
        while not self._closed.wait(self._check_every):
            self.sweep()

    def sweep(self) -> None:
        """Start a reopen for each dropped tunnel whose time has come."""
        now = self._clock()
        with self._lock:
            due = [
                k
                for k in self._kept.values()
                if not k.trying and now >= k.next_try and not self._is_up(k.conn)
            ]
            for k in due:
                k.trying = True
        for k in due:
            assert self._submit is not None
            try:
                self._submit(functools.partial(self._try, k))
            except RuntimeError:  # the run ended meanwhile: its pool takes no more
                return

    def _try(self, kept: _Kept) -> None:
        with contextlib.suppress(Exception):
            kept.conn.close()  # the dropped one: its transport's thread ends
        try:
            conn = self._reopen(kept.host, kept.port)
        except Exception as exc:  # a failed try is retried: say why only in the debug log
            log.debug("%s: heartbeat tunnel not reopened yet: %s", kept.host.id, exc)
            with self._lock:
                kept.next_try = self._clock() + kept.wait
                kept.wait = min(kept.wait * 2, RETRY_CAP)
                kept.trying = False
            return
        with self._lock:
            if self._closed.is_set():
                late = True
            else:
                late = False
                kept.conn, kept.wait, kept.trying = conn, RETRY_FIRST, False
                self.reopened[kept.host.id] = self.reopened.get(kept.host.id, 0) + 1
        if late:
            conn.close()
        else:
            log.debug("%s: heartbeat tunnel reopened on port %d", kept.host.id, kept.port)

    def close(self) -> None:
        """Close every kept connection and stop reopening (the end of the run).

        Never waits for a node: a reopen under way is left to finish on its
        own, and closes what it opened.
        """
        with self._lock:
            self._closed.set()
            kept, self._kept = list(self._kept.values()), {}
        for k in kept:
            with contextlib.suppress(Exception):
                k.conn.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
