"""Do one thing on many hosts at once, with a bounded pool of workers.

Fabric's ``ThreadingGroup`` starts one thread per host and joins them with no
timeout; here at most ``parallel`` hosts are in flight, one host's failure
never stops the others, and every host ends with a value or a ``RemoteError``
(an unexpected exception becomes an ``InternalError`` for that host).
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass
from typing import Callable, Dict, Generic, Iterable, Optional, TypeVar

import fabric

from . import remote
from .errors import InternalError, RemoteError
from .inventory import Host
from .spec import DEFAULT_PARALLEL

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """How one host ended: a value, or the error that stopped it."""

    host: Host
    value: Optional[T]
    error: Optional[RemoteError]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.error is None


def on_each(
    hosts: Iterable[Host],
    work: Callable[[fabric.Connection, Host], T],
    parallel: int = DEFAULT_PARALLEL,
    accept_new_host_keys: bool = False,
    done: Optional[Callable[[Outcome[T]], None]] = None,
    first: Optional[Callable[[Host], Optional[T]]] = None,
) -> Dict[str, Outcome[T]]:
    """Connect to every host and run ``work(conn, host)``, ``parallel`` at a time.

    ``done`` is called (from a worker thread) as each host ends, for progress.
    ``first(host)``, if given, is tried before connecting: a value is the
    host's outcome (no Paramiko connection made), None connects as usual.
    Hosts behind one jump host share one connection to it, closed at the end.
    Returns outcomes keyed by host id, in the order of ``hosts``.
    """
    hosts = list(hosts)
    gateways = remote.Gateways(hosts, accept_new_host_keys)

    def one(host: Host) -> Outcome[T]:
        began = time.monotonic()
        try:
            value = first(host) if first else None
            if value is None:
                conn = remote.connect(host, accept_new_host_keys, gateways)
                try:
                    value = work(conn, host)
                finally:
                    conn.close()
            outcome: Outcome[T] = Outcome(host, value, None, time.monotonic() - began)
        except RemoteError as exc:
            outcome = Outcome(host, None, exc, time.monotonic() - began)
        except Exception as exc:  # a bug on one host must not abort the others
            error = InternalError.from_exception(host.id, exc)
            outcome = Outcome(host, None, error, time.monotonic() - began)
        if done:
            done(outcome)
        return outcome

    workers = max(1, min(parallel, len(hosts)))
    with (
        gateways,
        concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="corunner") as pool,
    ):
        results = list(pool.map(one, hosts))
    return {o.host.id: o for o in results}
