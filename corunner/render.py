"""Pure formatting of what corunner prints: host tables, folded summaries,
progress lines and the JSON documents of every task.

Nothing here writes anywhere; the task layer decides where text goes.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
)

from .errors import StalledError, TransferError
from .hostrange import fold, split_patterns
from .inventory import DEFAULT_ORIGIN, SHOWN_ORIGINS, Host
from .liveness import Change, State
from .outputs import OutputGroup, groups_json
from .report import RunReport, group_by_state

if TYPE_CHECKING:  # only for annotations: rendering needs no SSH
    from .fanout import Outcome

#: The order states are listed in summaries: worst news last, where eyes land.
STATE_ORDER = [
    State.SUCCEEDED,
    State.PENDING,
    State.ALIVE,
    State.STOPPED,
    State.FAILED,
    State.TIMEOUT,
    State.DEAD,
    State.UNREACHABLE,
]


def seconds(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 100 else f"{value:.0f}s"


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> List[str]:
    """Left-aligned columns sized to their widest cell."""
    cells = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


K = TypeVar("K", bound=str)


def _state_rank(state: str) -> Tuple[int, str]:
    order = [s.value for s in STATE_ORDER]
    return (order.index(state), "") if state in order else (len(order), state)


def folded_by_state(by_state: Mapping[K, Sequence[str]]) -> List[str]:
    """``failed (2): node[3,7]`` lines, one per state present, whole (never cut).

    States (``State`` members or the strings of a run record) come in
    :data:`STATE_ORDER`; others (``missing``, ...) after them, by name.
    """
    return [
        f"{state} ({len(hosts)}): {fold(hosts)}"
        for state, hosts in sorted(by_state.items(), key=lambda item: _state_rank(str(item[0])))
        if hosts
    ]


def outcome_lines(pairs: Iterable[Tuple[str, str]]) -> List[str]:
    """``stopped (30): node[1-30]`` lines from ``(host, outcome)`` pairs, outcomes in the order first seen."""
    return [
        f"{label} ({len(hosts)}): {fold(hosts)}" for label, hosts in group_by_state(pairs).items()
    ]


# -- folded sets cut to a width ------------------------------------------------------
#: Off a terminal, the width a folded set is cut to in progress lines.
PLAIN_WIDTH = 200
_RANGE_ITEM = re.compile(r"([0-9]+)(?:-([0-9]+)(?:/([0-9]+))?)?")
_BRACKETS = re.compile(r"\[([^\]]*)\]")


def _range_size(item: str) -> int:
    match = _RANGE_ITEM.fullmatch(item)
    if match is None:  # not NodeSet's output: count it as one, never raise while printing
        return 1
    first, last, step = match.groups()
    return 1 if last is None else (int(last) - int(first)) // int(step or 1) + 1


def _names_in(pattern: str) -> int:
    """Names in one folded pattern without a top-level comma: the product of its ranges."""
    count = 1
    for body in _BRACKETS.findall(pattern):
        count *= sum(_range_size(item) for item in body.split(","))
    return count


def _cut_range(pattern: str, room: int) -> Tuple[str, int]:
    """The longest start of a one-bracket pattern's range within ``room`` characters.

    ``node[1-5,7,9-12]`` in 11 -> ``("node[1-5,7]", 6)``; ``("", 0)`` if not even
    its first item fits.
    """
    head, _, rest = pattern.partition("[")
    body, _, tail = rest.partition("]")
    best, names = "", 0
    kept: List[str] = []
    for item in body.split(","):
        kept.append(item)
        if len(kept) == 1 and "-" not in item:
            text = head + item + tail  # one name: no brackets
        else:
            text = f"{head}[{','.join(kept)}]{tail}"
        if len(text) > room:
            break
        best, names = text, names + _range_size(item)
    return best, names


def cut_folded(folded: str, width: int) -> str:
    """A folded host set cut to at most ``width`` characters: ``node[1-40] ... and 37 more``.

    Cut between patterns, or between the range items of a one-bracket pattern;
    the count says how many names were left out. Whole when it fits. The cost
    grows with the length of ``folded``, not with a re-fold of the hosts.
    """
    if len(folded) <= width:
        return folded
    items = split_patterns(folded)
    total = sum(_names_in(item) for item in items)
    room = width - len(f" ... and {total} more")
    kept: List[str] = []
    shown = 0
    for item in items:
        left = room - len(",".join(kept)) - (1 if kept else 0)
        if len(item) <= left:
            kept.append(item)
            shown += _names_in(item)
            continue
        if item.count("[") == 1:
            part, names = _cut_range(item, left)
            if part:
                kept.append(part)
                shown += names
        break
    if not kept:
        return f"{total} hosts"
    return f"{','.join(kept)} ... and {total - shown} more"


def fold_within(hosts: Iterable[str], width: int) -> str:
    """``fold(hosts)``, cut to ``width`` characters (see :func:`cut_folded`)."""
    return cut_folded(fold(hosts), width)


# -- the table of hosts ----------------------------------------------------------------
#: Host states in which the age of the last heartbeat means something: the
#: program may still run (or its node went silent).
HEARTBEAT_STATES = frozenset({"pending", "alive", "dead", "timeout"})


@dataclass(frozen=True)
class HostRow:
    """One host's line in a table, from a run report or a run record."""

    host: str
    state: str
    exit_code: Optional[int] = None
    signal: Optional[int] = None
    seconds: Optional[float] = None
    last_seen_age: Optional[float] = None
    error: str = ""

    @property
    def problem(self) -> bool:
        return self.state != State.SUCCEEDED.value or bool(self.error)


def host_table(rows: Sequence[HostRow], everything: bool = False) -> List[str]:
    """The hosts that did not succeed (``everything``: all of them), one line each.

    TIME is the run time of every host that ran; LAST HB only where a
    heartbeat's age tells something (the program may still run, or the node
    went silent), and the column is left out when no row has one. No rows
    to show give no lines at all.
    """
    shown = list(rows) if everything else [r for r in rows if r.problem]
    if not shown:
        return []
    cells = [
        [
            r.host,
            r.state,
            outcome(r.exit_code, r.signal),
            seconds(r.seconds),
            seconds(r.last_seen_age) if r.state in HEARTBEAT_STATES else "",
            r.error,
        ]
        for r in shown
    ]
    header = ["HOST", "STATE", "RESULT", "TIME", "LAST HB", "ERROR"]
    keep = [i for i in range(len(header)) if i < 4 or any(c[i] for c in cells)]
    return table([[c[i] for i in keep] for c in cells], [header[i] for i in keep])


def outcome(exit_code: Optional[int], signal: Optional[int]) -> str:
    """A program's result in a table cell: ``signal 9``, ``exit 3``, or ``-``."""
    if signal is not None:
        return f"signal {signal}"
    if exit_code is not None:
        return f"exit {exit_code}"
    return "-"


def clock(at: float) -> str:
    """A wall-clock time for timestamped lines, local time with milliseconds."""
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


#: The cause of hosts that failed because their jump host did (remote.Gateways).
_JUMP_CAUSE = re.compile(r"\S+ \(jump host for \d+ hosts?\): ")


def errors(pairs: Iterable[Tuple[str, str]]) -> List[str]:
    """One ``host: cause`` line per failed host; the hosts behind a jump host
    that failed share one line, folded: ``node[1-64]: gw (jump host for 64 hosts): ...``."""
    pairs = list(pairs)
    behind: Dict[str, List[str]] = {}
    for host, cause in pairs:
        if _JUMP_CAUSE.match(cause):
            behind.setdefault(cause, []).append(host)
    lines = []
    for host, cause in pairs:
        if cause not in behind:
            lines.append(f"{host}: {cause}")
        elif behind[cause]:
            lines.append(f"{fold(behind[cause])}: {cause}")
            behind[cause] = []
    return lines


def command_name(argv0: str) -> str:
    """The command a user typed to reach corunner, for the hints it prints.

    ``inv`` (or ``invoke``) when run through Invoke's own program, ``corunner``
    for the ``corunner`` command, ``python -m corunner`` and the
    ``corunner-run``/``corunner-cp`` front-ends (which stand for ``corunner``).
    """
    name = os.path.basename(argv0)
    if name in ("inv", "invoke"):
        return name
    if name == "__main__.py" and os.path.basename(os.path.dirname(argv0)) == "invoke":
        return "inv"
    return "corunner"


# -- progress ------------------------------------------------------------------
def change_line(at: float, change: Change) -> str:
    """One plain, timestamped line per state change: ``12:00:01.250 n3: alive -> dead (...)``."""
    return f"{clock(at)} {change.host}: {change.old.value} -> {change.new.value} ({change.reason})"


def counts(by_state: Mapping[State, int]) -> str:
    """``succeeded 350  alive 640  pending 10``: the states present, in :data:`STATE_ORDER`."""
    return "  ".join(f"{s.value} {by_state[s]}" for s in STATE_ORDER if by_state.get(s))


def progress_line(
    at: float,
    by_state: Mapping[State, int],
    seconds_so_far: float,
    deadline: Optional[float] = None,
    word: str = "progress",
) -> str:
    """``12:00:05.000 progress: alive 640  succeeded 350; elapsed 5.0s``: the run folded to counts."""
    return f"{clock(at)} {word}: {counts(by_state)}; {elapsed(seconds_so_far, deadline)}"


def elapsed(seconds_so_far: float, deadline: Optional[float]) -> str:
    """``elapsed 12.3s`` or ``elapsed 12.3s of 60s (deadline)``."""
    text = f"elapsed {seconds(seconds_so_far)}"
    if deadline is not None:
        text += f" of {seconds(deadline)} (deadline)"
    return text


def recent(
    changes: Iterable[Change], groups: int = 4, width: Optional[int] = None
) -> List[Tuple[State, str, int]]:
    """The hosts that changed most recently, folded by the state they entered.

    ``changes`` hold at most the latest change of each host, oldest first; the
    result is ``(state, folded hosts, count)``, the most recent state first,
    at most ``groups`` of them; each folded set cut to ``width`` characters.
    """
    by_state: Dict[State, List[str]] = {}
    for change in reversed(list(changes)):
        if change.new not in by_state and len(by_state) == groups:
            continue
        by_state.setdefault(change.new, []).append(change.host)
    out = []
    for state, hosts in by_state.items():
        folded = fold(hosts)
        out.append((state, folded if width is None else cut_folded(folded, width), len(hosts)))
    return out


# -- JSON documents (schemas in corunner/schemas/<task>.json) --------------------
#: Bumped only when a key changes meaning or disappears; new keys may appear.
SCHEMA_VERSION = 1


def _head(task: str) -> Dict[str, Any]:
    return {"task": task, "schema_version": SCHEMA_VERSION}


def transfer_state(outcome: Outcome) -> str:
    """A copy's outcome on one host: succeeded, failed (reached, copy failed),
    stalled (reached, then stopped answering) or unreachable."""
    if outcome.ok:
        return "succeeded"
    if isinstance(outcome.error, TransferError):
        return "failed"
    return "stalled" if isinstance(outcome.error, StalledError) else "unreachable"


def hosts_document(source: str, hosts: Sequence[Host]) -> Dict[str, Any]:
    return {
        **_head("hosts"),
        "inventory": source,
        "count": len(hosts),
        "folded": fold(h.id for h in hosts),
        "hosts": [
            {
                "id": h.id,
                "name": h.name,
                "address": h.address,
                "user": h.user,
                "port": h.port,
                "key": h.key,
                "jump": list(h.jump),
                "proxy_command": h.proxy_command,
                "groups": list(h.groups),
                "remote_dir": h.remote_dir,
                "origins": {s: h.origin(s) for s in _origins_shown(h)},
                "warnings": list(h.notes),
            }
            for h in hosts
        ],
    }


def _origins_shown(host: Host) -> Tuple[str, ...]:
    extra = ("proxy_command",) if host.proxy_command is not None else ()
    return SHOWN_ORIGINS + extra


def _origin_text(host: Host, setting: str) -> str:
    origin = host.origin(setting)
    if origin == DEFAULT_ORIGIN:
        return {"address": "the name", "jump": "none", "key": "default (agent, ~/.ssh/id_*)"}.get(
            setting, origin
        )
    return origin


def jump_text(host: Host) -> str:
    """The jump chain as ``inv hosts`` shows it: ``a,b``, ``ProxyCommand``, or ``-``."""
    if host.jump:
        return ",".join(host.jump)
    return "ProxyCommand" if host.proxy_command is not None else "-"


def hosts_table(hosts: Sequence[Host]) -> List[str]:
    """``inv hosts``: a row per host with what a connection really uses, then where
    each setting came from, one line per set of hosts that share the origins."""
    rows = [(h.id, h.address, h.user, str(h.port), jump_text(h), ",".join(h.groups)) for h in hosts]
    lines = table(rows, ("HOST", "ADDRESS", "USER", "PORT", "JUMP", "GROUPS"))
    origins: Dict[str, List[str]] = {}
    for h in hosts:
        said = "; ".join(f"{s} {_origin_text(h, s)}" for s in _origins_shown(h))
        origins.setdefault(said, []).append(h.id)
    if hosts:
        lines.append("where the settings come from:")
        lines += [f"  {fold(ids)}: {said}" for said, ids in origins.items()]
    return lines


def _error(outcome: Outcome) -> Optional[str]:
    return None if outcome.error is None else outcome.error.cause


def transfer_document(
    task: str,
    direction: str,
    src: str,
    dest: str,
    exit_code: int,
    outcomes: Mapping[str, Outcome],
    run_id: Optional[str] = None,
) -> Dict[str, Any]:
    """The document of ``cp`` and ``collect``: one entry per host, in inventory order."""
    hosts = []
    finished: List[float] = []
    for o in outcomes.values():
        entry: Dict[str, Any] = {
            "host": o.host.id,
            "state": transfer_state(o),
            "ok": o.ok,
            "error": _error(o),
            "seconds": round(o.seconds, 3),
        }
        pulled = o.value if o.ok and hasattr(o.value, "skipped") else None
        via = getattr(o.value, "via", None)
        if via is not None:  # a relayed push (corunner.relay.Relayed)
            entry.update(via=via, bytes_sent=getattr(o.value, "bytes_sent", 0))
            finished.append(getattr(o.value, "finished_at", 0.0))
        if direction == "pull":
            entry.update(
                files=pulled.files if pulled else None,
                bytes=pulled.bytes if pulled else None,
                skipped=list(pulled.skipped) if pulled else [],
            )
        hosts.append(entry)
    doc = {
        **_head(task),
        "direction": direction,
        "src": src,
        "dest": dest,
        "exit_code": exit_code,
        "summary": _summary(h["state"] for h in hosts),
        "hosts": hosts,
    }
    if task == "collect":
        doc["run_id"] = run_id
    if any("via" in h for h in hosts):
        doc["relay"] = {
            "bytes_sent": sum(h.get("bytes_sent", 0) for h in hosts),
            "spread_seconds": round(max(finished) - min(finished), 3) if finished else None,
        }
    return doc


def _summary(states: Iterable[str]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for state in states:
        out[state] = out.get(state, 0) + 1
    return out


def run_relay_lines(relay: Dict[str, Any]) -> List[str]:
    """What ``run --relay`` did with --files (Run's ``meta["relay"]``): one line, and one
    per cause of the hosts it could not serve (those got the files with their start)."""
    line = (
        f"relay: --files ({relay['size']:,} bytes) reached {relay['hosts']} hosts"
        f" with {relay['bytes_sent']:,} bytes sent from here"
    )
    if relay["direct"]:
        line += f"; served directly ({len(relay['direct'])}): {fold(relay['direct'])}"
    lines = [line]
    by_cause: Dict[str, List[str]] = {}
    for host, cause in relay["failed"].items():
        by_cause.setdefault(cause, []).append(host)
    for cause, hosts in by_cause.items():
        lines.append(f"{fold(hosts)}: relay: {cause}; sent --files with the start instead")
    return lines


def run_document(report: RunReport, program: str) -> Dict[str, Any]:
    """The document of ``run``: the run, its summary, and one entry per host."""
    by_state = report.by_state()
    return {
        **_head("run"),
        "run_id": report.run_id,
        "program": program,
        "exit_code": report.exit_code,
        "started_at": report.started_at,
        "ended_at": report.ended_at,
        "seconds": round(report.ended_at - report.started_at, 3),
        "interrupted": report.interrupted,
        "rejected": dict(report.rejected),
        "summary": {s.value: fold(h) for s, h in by_state.items()},
        "counts": {s.value: len(h) for s, h in by_state.items()},
        "hosts": [
            {
                "host": h.host,
                "run_id": report.run_id,
                "state": h.state.value,
                "exit_code": h.exit_code,
                "signal": h.signal,
                "error": h.error if h.error is not None else h.reason,  # dead: why
                "seconds": h.seconds,
                "last_seen_age": h.last_seen_age,
                "pid": h.pid,
                "remote_dir": h.remote_dir,
            }
            for h in report.hosts
        ],
    }


def status_document(data: Mapping[str, Any]) -> Dict[str, Any]:
    """The document of ``status``, from a run record (``run.json``)."""
    run_id = data["run_id"]
    hosts: Dict[str, Any] = {}
    for host, entry in data.get("hosts", {}).items():
        node = entry.get("node")
        hosts[host] = {
            "host": host,
            "run_id": run_id,
            "state": entry.get("state", "pending"),
            "exit_code": entry.get("exit_code"),
            "signal": entry.get("signal"),
            "error": entry.get("error"),
            "seconds": entry.get("seconds"),
            "last_seen_age": entry.get("last_seen_age"),
            "pid": entry.get("pid"),
            "remote_dir": entry.get("remote_dir"),
            "started_at": node.get("started_at") if node else None,
            "ended_at": node.get("ended_at") if node else None,
            "refreshed_at": entry.get("refreshed_at"),
            "refresh_error": entry.get("refresh_error"),
            "node": node,
        }
    by_state = group_by_state((host, entry["state"]) for host, entry in hosts.items())
    return {
        **_head("status"),
        "run_id": run_id,
        "program": data.get("program", ""),
        "finished": bool(data.get("finished")),
        "exit_code": data.get("exit_code"),
        "started_at": data.get("started_at"),
        "ended_at": data.get("ended_at"),
        "interrupted": bool(data.get("interrupted", False)),
        "summary": {s: fold(h) for s, h in by_state.items()},
        "counts": {s: len(h) for s, h in by_state.items()},
        "hosts": hosts,
    }


def stop_document(run_id: str, exit_code: int, outcomes: Mapping[str, Outcome]) -> Dict[str, Any]:
    """The document of ``stop``: whether each host's program was stopped."""
    hosts: List[Dict[str, Any]] = []
    for o in outcomes.values():
        answer = o.value if o.ok and isinstance(o.value, dict) else {}
        hosts.append(
            {
                "host": o.host.id,
                "run_id": run_id,
                "state": transfer_state(o),
                "ok": o.ok,
                "error": _error(o),
                "seconds": round(o.seconds, 3),
                "stopped": bool(answer.get("stopped")) if o.ok else None,
                "node_state": answer.get("state") if o.ok else None,
            }
        )
    return {
        **_head("stop"),
        "run_id": run_id,
        "exit_code": exit_code,
        "summary": _summary(h["state"] for h in hosts),
        "hosts": hosts,
    }


def outputs_document(
    stream: str, groups: Sequence[OutputGroup], errors: Mapping[str, str], cap: int
) -> Dict[str, Any]:
    """Grouped outputs for a JSON document (``run --show-output``, ``status --output``)."""
    return {
        "stream": stream,
        "cap_bytes": cap,
        "groups": groups_json(groups),
        "errors": [{"host": h, "error": e} for h, e in errors.items()],
    }
