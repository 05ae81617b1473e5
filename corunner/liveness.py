"""Node liveness: a pure state machine fed with events and the clock.

Nothing here reads a clock, a socket or a thread: every function takes ``now``
(seconds, any monotonic origin) so the rules can be tested line by line.

    pending --heartbeat--> alive <--silence / heartbeat--> dead
    pending/alive/dead --exit 0--> succeeded, --exit != 0 or signal--> failed
    pending --could not connect or start--> unreachable
    any live state --deadline--> timeout
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Dict, Iterable, List, Optional, Tuple


class State(str, enum.Enum):
    PENDING = "pending"
    ALIVE = "alive"
    DEAD = "dead"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    STOPPED = "stopped"  # ended by ``stop``: not a failure of the program

    def __str__(self) -> str:
        return self.value


#: States in which a node's program may still be running and worth waiting for.
LIVE = frozenset({State.PENDING, State.ALIVE})
#: States a node never leaves (a dead node may still come back, so it is not here).
FINAL = frozenset({State.SUCCEEDED, State.FAILED, State.UNREACHABLE, State.TIMEOUT, State.STOPPED})


@dataclass(frozen=True)
class Node:
    """What the controller knows of one node. Times are in the caller's clock."""

    host: str
    state: State = State.PENDING
    since: float = 0.0  # when the node entered its state
    started_at: Optional[float] = None  # when the executor was started
    last_seen: Optional[float] = None  # last accepted heartbeat
    ended_at: Optional[float] = None
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    error: Optional[str] = None


@dataclass(frozen=True)
class Change:
    """One state change, for the event log and the live view."""

    host: str
    old: State
    new: State
    at: float
    reason: str


def _move(
    node: Node, new: State, now: float, reason: str, **fields: object
) -> Tuple[Node, List[Change]]:
    moved = replace(node, state=new, since=now, **fields)  # type: ignore[arg-type]
    return moved, [Change(node.host, node.state, new, now, reason)]


def started(node: Node, sent_at: float, now: float) -> Node:
    """The executor runs on the node; its start command was sent at ``sent_at``.

    The run time counts from ``sent_at``, even when the node's first
    heartbeat (or its final one) arrived before the start was confirmed; a
    pending node's silence counts from ``now``, the confirmation.
    """
    first = sent_at if node.started_at is None else min(node.started_at, sent_at)
    if node.state is State.PENDING:
        return replace(node, started_at=first, since=now)
    return replace(node, started_at=first)


def _silence_reference(node: Node) -> Optional[float]:
    """What a live node's silence is measured from: its last heartbeat, else its start."""
    if node.last_seen is not None:
        return node.last_seen
    return node.since if node.started_at is not None else None


def unreachable(node: Node, now: float, error: str) -> Tuple[Node, List[Change]]:
    """Connecting to or starting on the node failed."""
    if node.state in FINAL:
        return node, []
    return _move(node, State.UNREACHABLE, now, error, error=error, ended_at=now)


def heartbeat(node: Node, now: float) -> Tuple[Node, List[Change]]:
    """The node reported that its program runs: pending or dead nodes turn alive."""
    if node.state is State.ALIVE:  # the hot path: thousands a second, no change
        return _seen(node, now), []
    if node.state in FINAL:
        return node, []
    node = _seen(node, now)
    reason = "heartbeat" if node.state is State.PENDING else "reported again"
    return _move(node, State.ALIVE, now, reason)


def _seen(node: Node, now: float) -> Node:
    """``node`` with ``last_seen = now``.

    The listener's hot path (once per heartbeat): copying the fields' dict
    costs a third of the frozen ``__init__`` and a fifth of ``replace``.
    """
    seen = _new(Node)
    fields = seen.__dict__
    fields.update(node.__dict__)
    fields["last_seen"] = now
    return seen


_new = object.__new__


def exited(
    node: Node,
    now: float,
    exit_code: Optional[int],
    signal: Optional[int],
    error: Optional[str] = None,
    stopped: bool = False,
) -> Tuple[Node, List[Change]]:
    """The program ended: succeeded with code 0, failed otherwise, stopped if
    ``stop`` ended it (whatever its code: the user asked for that end).

    ``error``: why it could not even start, when the node said so.
    """
    if node.state in FINAL:
        return node, []
    ok = exit_code == 0 and signal is None
    new = State.STOPPED if stopped else State.SUCCEEDED if ok else State.FAILED
    reason = f"exit {exit_code}" if signal is None else f"signal {signal}"
    if stopped:
        reason = f"stopped ({reason})"
    return _move(
        node,
        new,
        now,
        error or reason,
        last_seen=now,
        ended_at=now,
        exit_code=exit_code,
        signal=signal,
        error=error,
    )


def check_silence(node: Node, now: float, dead_after: float) -> Tuple[Node, List[Change]]:
    """A pending or alive node that has been silent for ``dead_after`` seconds is dead."""
    if node.state not in LIVE:
        return node, []
    reference = _silence_reference(node)
    if reference is None or now - reference < dead_after:
        return node, []
    return _move(node, State.DEAD, now, f"silent for {now - reference:.1f}s")


def silence_deadline(node: Node, dead_after: float) -> Optional[float]:
    """When ``check_silence`` would next change this node, or None."""
    if node.state not in LIVE:
        return None
    reference = _silence_reference(node)
    return None if reference is None else reference + dead_after


def lost(node: Node, now: float, reason: str) -> Tuple[Node, List[Change]]:
    """The channel that told us about the node broke (heartbeats off): dead."""
    if node.state not in LIVE:
        return node, []
    return _move(node, State.DEAD, now, reason)


def deadline_passed(node: Node, now: float) -> Tuple[Node, List[Change]]:
    """The run's deadline passed while the node's program was still running.

    A dead node stays dead: nobody knows whether its program still runs.
    """
    if node.state not in LIVE:
        return node, []
    return _move(node, State.TIMEOUT, now, "deadline passed", ended_at=now)


@dataclass
class Fleet:
    """Every node of a run, with the change log. Still pure: ``now`` comes in."""

    dead_after: float
    nodes: Dict[str, Node] = field(default_factory=dict)
    changes: List[Change] = field(default_factory=list)
    #: No node can turn dead by silence before this time: a lower bound, kept
    #: by every event, so that ``tick`` scans the fleet only when one might.
    quiet_until: float = float("-inf")
    #: How many nodes are pending or alive; None: to be counted again.
    _live: Optional[int] = field(default=None, repr=False, compare=False)

    @classmethod
    def of(cls, hosts: Iterable[str], dead_after: float, now: float) -> Fleet:
        return cls(dead_after, {h: Node(h, since=now) for h in hosts})

    def apply(self, host: str, result: Tuple[Node, List[Change]]) -> List[Change]:
        node, changes = result
        self.nodes[host] = node
        if changes:
            self.changes.extend(changes)
            if self._live is not None:
                for change in changes:
                    self._live += (change.new in LIVE) - (change.old in LIVE)
        return changes

    def started(self, host: str, sent_at: float, now: float) -> None:
        self.nodes[host] = started(self.nodes[host], sent_at, now)
        self.quiet_until = min(self.quiet_until, now + self.dead_after)

    def unreachable(self, host: str, now: float, error: str) -> List[Change]:
        return self.apply(host, unreachable(self.nodes[host], now, error))

    def heartbeat(self, host: str, now: float) -> List[Change]:
        changes = self.apply(host, heartbeat(self.nodes[host], now))
        if changes:  # a dead node that comes back has a silence deadline again
            self.quiet_until = min(self.quiet_until, now + self.dead_after)
        return changes

    def exited(
        self,
        host: str,
        now: float,
        exit_code: Optional[int],
        signal: Optional[int],
        error: Optional[str] = None,
        stopped: bool = False,
    ) -> List[Change]:
        return self.apply(host, exited(self.nodes[host], now, exit_code, signal, error, stopped))

    def lost(self, host: str, now: float, reason: str) -> List[Change]:
        return self.apply(host, lost(self.nodes[host], now, reason))

    def tick(self, now: float) -> List[Change]:
        """Mark silent nodes dead. Scans the fleet only when a node might be due."""
        if now < self.quiet_until:
            return []
        out: List[Change] = []
        for host, node in self.nodes.items():
            if node.state in LIVE:
                out += self.apply(host, check_silence(node, now, self.dead_after))
        self.quiet_until = self._earliest_deadline()
        return out

    def _earliest_deadline(self) -> float:
        times = [
            t
            for n in self.nodes.values()
            if (t := silence_deadline(n, self.dead_after)) is not None
        ]
        return min(times) if times else float("inf")

    def expire(self, now: float) -> List[Change]:
        """The deadline passed: every node still pending or alive times out."""
        out: List[Change] = []
        for host, node in self.nodes.items():
            out += self.apply(host, deadline_passed(node, now))
        return out

    def next_check(self) -> Optional[float]:
        """The earliest time a node could turn dead by silence (None: no node can)."""
        if self.quiet_until == float("-inf"):
            self.quiet_until = self._earliest_deadline()
        return None if self.quiet_until == float("inf") else self.quiet_until

    @property
    def finished(self) -> bool:
        """True when nothing is left to wait for: no node is pending or alive.

        The run loop asks after every event; the count is kept up by every
        change, so a check costs nothing however large the fleet.
        """
        if self._live is None:
            self._live = sum(1 for n in self.nodes.values() if n.state in LIVE)
        return self._live == 0

    def by_state(self) -> Dict[State, List[str]]:
        out: Dict[State, List[str]] = {}
        for host, node in self.nodes.items():
            out.setdefault(node.state, []).append(host)
        return out
