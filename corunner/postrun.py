"""After a run: ask the nodes how it went, stop it, bring its results home.

Everything here reads the run record first and then talks to the nodes, so
it works the same whether the controller ended normally, was interrupted or
was killed: the nodes' ``status.json`` files are the truth.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from dataclasses import dataclass
from typing import IO, Any, Callable, Dict, List, Optional, Sequence

from . import remote, transfer
from .bootstrap import ask_command, remote_dir_of, run_dir
from .errors import InventoryError, RemoteError
from .fanout import DEFAULT_PARALLEL, Outcome, on_each
from .inventory import Host, Inventory
from .liveness import State
from .outputs import NodeOutput
from .record import RunRecord

#: Bytes of a run's stdout or stderr fetched per node for grouped output.
OUTPUT_CAP = 1 << 20

#: Print a run's output file after a marker line: $1 = run dir, $2 = stdout or
#: stderr, $3 = cap in bytes, $4 = marker. The size line tells if it was cut.
OUTPUT_SCRIPT = r"""
f=$1/$2
if [ ! -f "$f" ]; then
  echo "CORUNNER-ERROR no $2 file in $1: the run never started on this node" >&2; exit 66
fi
size=$(wc -c <"$f") || exit 1
printf '%s\n%s\n' "$4" "$size"
exec head -c "$3" -- "$f"
"""

Done = Optional[Callable[[Outcome], None]]

#: What a node's status.json says, in the controller's words.
NODE_STATES = {
    "running": "alive",
    "lost": "dead",
    "missing": "missing",
    "error": "failed",
    "stopped": "stopped",  # stop ended it, and no executor was left to record how
}


@dataclass(frozen=True)
class NodeStatus:
    """One node's own account of a run, read from its status.json."""

    host: str
    state: str  # a liveness state name, or "missing" (never started there)
    exit_code: Optional[int]
    signal: Optional[int]
    detail: Dict[str, Any]

    @classmethod
    def from_probe(cls, host: str, probe: Dict[str, Any]) -> NodeStatus:
        raw = probe.get("state", "missing")
        if raw == "exited":
            ok = probe.get("exit_code") == 0 and probe.get("signal") is None
            state = State.SUCCEEDED.value if ok else State.FAILED.value
            if probe.get("stopped"):
                state = State.STOPPED.value
        else:
            state = NODE_STATES.get(raw, raw)
        return cls(host, state, probe.get("exit_code"), probe.get("signal"), probe)

    @property
    def seconds(self) -> Optional[float]:
        """The run time by the node's own clock (its start and end times), if it ended."""
        began, ended = self.detail.get("started_at"), self.detail.get("ended_at")
        times = [
            t for t in (began, ended) if isinstance(t, (int, float)) and not isinstance(t, bool)
        ]
        if len(times) != 2:
            return None
        return round(max(0.0, float(times[1]) - float(times[0])), 3)


def record_hosts(
    data: Dict[str, Any], inventory: Inventory, only: Optional[List[str]] = None
) -> List[Host]:
    """The hosts that took part in a recorded run (optionally a subset).

    Hosts the inventory lists come from it; those named ad hoc in ``--hosts``
    from the record's ``ad_hoc`` entries, with the inventory's defaults.
    """
    hosts = []
    run_id = str(data.get("run_id", ""))
    inventory = inventory.with_ad_hoc(data.get("ad_hoc") or ())
    for host_id, entry in data.get("hosts", {}).items():
        if only is not None and host_id not in only:
            continue
        try:
            host = inventory.host(host_id)
        except (KeyError, InventoryError):
            raise InventoryError(
                f"host {host_id} of run {run_id} is no longer in the inventory; "
                "pass the run's inventory with --inventory FILE",
                inventory.source,
            ) from None
        # A run may have used another remote_dir (run --remote-dir): its record knows.
        recorded = remote_dir_of((entry or {}).get("remote_dir") or "", run_id, host.id)
        if recorded is not None:
            host = dataclasses.replace(host, remote_dir=recorded)
        if data.get("become"):  # run --sudo: the programs run as that user
            host = dataclasses.replace(host, become=str(data["become"]))
        hosts.append(host)
    return hosts


def started_hosts(data: Dict[str, Any], hosts: List[Host]) -> List[Host]:
    """The hosts on which a recorded run started (not unreachable): those with outputs."""
    entries = data.get("hosts", {})
    return [h for h in hosts if entries.get(h.id, {}).get("state") != State.UNREACHABLE.value]


def _ask(run_id: str, verb: str, marker: str) -> Callable[[Any, Host], Dict[str, Any]]:
    def work(conn: Any, host: Host) -> Dict[str, Any]:
        done = remote.execute(conn, host, ask_command(host, run_id, verb), timeout=60)
        found = done.marked(marker)
        if found is None:
            raise RemoteError(host.id, f"could not read the run's status: {done.error_line()}")
        try:
            answer = json.loads(found)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):  # a hostile or broken node: not a status at all
            raise RemoteError(host.id, f"unreadable status from the node: {found[:80]}")
        return answer

    return work


#: Recorded states that are outcomes: what a node says later never replaces
#: them with less (a node whose status.json could not be finished says "dead").
OUTCOMES = frozenset({State.SUCCEEDED.value, State.FAILED.value, State.STOPPED.value})


def replaces(recorded: Optional[str], told: str) -> bool:
    """Whether a node's own word ``told`` replaces the ``recorded`` state of a host.

    An outcome (exit code or signal) is never overwritten by a weaker word;
    "missing" (no run directory) only fills a host that never got further
    than pending. Anything else the node says is fresher than the record.
    """
    if recorded in OUTCOMES:
        return False
    if told == "missing":
        return recorded in (None, State.PENDING.value)
    return True


def refresh(
    record: RunRecord,
    hosts: List[Host],
    parallel: int = DEFAULT_PARALLEL,
    accept_new_host_keys: bool = False,
) -> Dict[str, Outcome[Dict[str, Any]]]:
    """Read every node's status.json and write what they say into the run record."""
    outcomes = on_each(
        hosts, _ask(record.run_id, "probe", "CORUNNER-PROBE"), parallel, accept_new_host_keys
    )
    data = record.load()
    for host_id, outcome in outcomes.items():
        entry = data["hosts"].setdefault(host_id, {})
        entry["refreshed_at"] = time.time()
        if outcome.error is not None:
            entry["refresh_error"] = str(outcome.error.cause)
        elif outcome.value is not None:
            status = NodeStatus.from_probe(host_id, outcome.value)
            if replaces(entry.get("state"), status.state):
                entry.update(state=status.state, exit_code=status.exit_code, signal=status.signal)
                took = status.seconds
                if took is not None:
                    entry["seconds"] = took
            entry["node"] = status.detail
            entry.pop("refresh_error", None)
    record.save(data)
    return outcomes


def stop(
    record: RunRecord, hosts: List[Host], parallel: int = DEFAULT_PARALLEL
) -> Dict[str, Outcome[Dict[str, Any]]]:
    """Terminate the run's program (its whole process group) on every node."""
    outcomes = on_each(hosts, _ask(record.run_id, "stop", "CORUNNER-STOP"), parallel)
    data = record.load()
    for host_id, outcome in outcomes.items():
        if outcome.value is not None and outcome.value.get("stopped"):
            data["hosts"].setdefault(host_id, {})["stopped_at"] = time.time()
    record.save(data)
    return outcomes


#: What collect never brings home from a run directory: the secret, and spare space.
NEVER_COLLECTED = (".corunner/config.json", ".corunner/status.reserve")
#: What it brings only with ``--with-inputs``: the executor and the program's stdin.
INPUTS = (".corunner/executor.py", ".corunner/__pycache__", ".corunner/stdin")


def collect(
    hosts: List[Host],
    src: Optional[str],
    dest: str,
    divide: bool,
    run_id: Optional[str] = None,
    parallel: int = DEFAULT_PARALLEL,
    accept_new_host_keys: bool = False,
    done: Done = None,
    inputs: Sequence[str] = (),
    with_inputs: bool = False,
) -> Dict[str, Outcome[transfer.Pulled]]:
    """Pull ``src`` (default: the run's results) from every host.

    A run's results are its directory without what was sent to it: the
    executor, the config (with the secret: never), the program's stdin and
    ``inputs`` (the names of the uploaded script and files, from the run's
    record), unless ``with_inputs``. ``done(outcome)`` is called from a worker
    thread as each host ends, for progress.
    """
    leave = list(NEVER_COLLECTED) + ([] if with_inputs else [*INPUTS, *inputs])

    def work(conn: Any, host: Host) -> transfer.Pulled:
        path = src or run_dir(host, run_id or "")
        exclude = () if src else leave
        name = None if src else run_id  # DEST/<run id>.<host> without --divide
        return transfer.pull(conn, host, path, dest, divide, exclude, contents=not src, name=name)

    return on_each(hosts, work, parallel, accept_new_host_keys, done)


def fetch_outputs(
    run_id: str,
    hosts: List[Host],
    stream: str = "stdout",
    cap: int = OUTPUT_CAP,
    parallel: int = DEFAULT_PARALLEL,
    accept_new_host_keys: bool = False,
    done: Done = None,
) -> Dict[str, Outcome[NodeOutput]]:
    """Fetch the first ``cap`` bytes of the run's ``stream`` file from every host.

    One command per node; each outcome's value is a :class:`NodeOutput`. Shell
    noise before our marker line is skipped. A node where the file is missing
    (the run never started there) gets a ``RemoteError`` saying so.
    """
    if stream not in ("stdout", "stderr"):
        raise ValueError(f"stream must be stdout or stderr, not {stream!r}")
    marker = f"CORUNNER-OUTPUT-{secrets.token_hex(4)}"

    def read(f: IO[bytes]) -> NodeOutput:
        size_line = b""
        while not size_line.endswith(b"\n"):
            byte = f.read(1)
            if not byte:
                break
            size_line += byte
        data = f.read(cap)
        size = size_line.strip()
        return NodeOutput(data, int(size) if size.isdigit() else len(data))

    def work(conn: Any, host: Host) -> NodeOutput:
        command = remote.sh(OUTPUT_SCRIPT, run_dir(host, run_id), stream, str(cap), marker)
        output, finished = remote.stream_from(conn, host, command, marker, read, timeout=120)
        if finished.status != 0:
            raise RemoteError(
                host.id, f"could not read the run's {stream}: {finished.error_line()}"
            )
        return output

    return on_each(hosts, work, parallel, accept_new_host_keys, done)
