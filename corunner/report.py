"""What a run ended with, per host and as a whole: the values render, record
and the task layer read. Pure data; the exit code follows the one policy in
:func:`corunner.errors.exit_code_for`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple, TypeVar

from .errors import exit_code_for
from .liveness import State

S = TypeVar("S")


def group_by_state(pairs: Iterable[Tuple[str, S]]) -> Dict[S, List[str]]:
    """Hosts by state, from ``(host, state)`` pairs; states and hosts in the order first seen."""
    out: Dict[S, List[str]] = {}
    for host, state in pairs:
        out.setdefault(state, []).append(host)
    return out


@dataclass
class HostReport:
    """The outcome of one host, as printed and recorded."""

    host: str
    state: State
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    error: Optional[str] = None
    seconds: Optional[float] = None  # program run time as seen by the controller
    last_seen_age: Optional[float] = None  # seconds since the last heartbeat, at the end
    pid: Optional[int] = None
    remote_dir: str = ""
    #: Bytes sent to the node to start the run (None: never started).
    bytes_sent: Optional[int] = None
    #: Why a dead host is dead (``silent for 5.0s``, ``SSH session ended without a
    #: status``): the reason of its last state change. In run.json, not in --json.
    reason: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        out = dict(self.__dict__)
        out["state"] = self.state.value
        return out


@dataclass
class RunReport:
    """What a run ended with; ``exit_code`` follows the documented codes."""

    run_id: str
    hosts: List[HostReport]
    started_at: float
    ended_at: float
    interrupted: bool = False
    rejected: Dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return exit_code_for(h.state.value for h in self.hosts)

    def by_state(self) -> Dict[State, List[str]]:
        return group_by_state((h.host, h.state) for h in self.hosts)


#: ``--hosts @NAME`` selectors: the hosts of a recorded run whose state is one
#: of these (``None``: any state but succeeded, so a run still going counts).
OUTCOME_SELECTORS: Dict[str, Optional[FrozenSet[str]]] = {
    "failed": frozenset({State.FAILED.value}),
    "unreachable": frozenset({State.UNREACHABLE.value}),
    "dead": frozenset({State.DEAD.value}),
    "timeout": frozenset({State.TIMEOUT.value}),
    "stalled": frozenset({"stalled"}),
    "stopped": frozenset({State.STOPPED.value}),
    "not-succeeded": None,
}


@dataclass(frozen=True)
class RunOutcomes:
    """How each host of a recorded run ended, for ``--hosts @failed`` and friends.

    ``ad_hoc``: the ``user@host:port`` entries of the run's hosts that were not
    in the inventory, so they can be selected again with the same settings.
    """

    run_id: str
    states: Tuple[Tuple[str, str], ...]  # (host id, state), in the run's order
    ad_hoc: Tuple[str, ...] = ()

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> RunOutcomes:
        """From a run record's ``run.json`` content (see corunner.record)."""
        hosts = data.get("hosts") or {}
        states = tuple((str(h), str((e or {}).get("state", "?"))) for h, e in hosts.items())
        return cls(str(data.get("run_id", "?")), states, tuple(data.get("ad_hoc") or ()))

    def hosts(self, selector: str) -> List[str]:
        """The host ids that ``@selector`` picks (a key of OUTCOME_SELECTORS)."""
        wanted = OUTCOME_SELECTORS[selector]
        if wanted is None:
            return [h for h, state in self.states if state != State.SUCCEEDED.value]
        return [h for h, state in self.states if state in wanted]
