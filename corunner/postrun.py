"""After a run: ask the nodes how it went, stop it, bring its results home.

Everything here reads the run record first and then talks to the nodes, so
it works the same whether the controller ended normally, was interrupted or
was killed: the nodes' ``status.json`` files are the truth.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from . import remote, transfer
from .controller import ASK_SCRIPT, run_dir
from .errors import InventoryError, RemoteError
from .fanout import DEFAULT_PARALLEL, Outcome, on_each
from .inventory import Host, Inventory
from .liveness import State
from .record import RunRecord

#: What a node's status.json says, in the controller's words.
NODE_STATES = {"running": "alive", "lost": "dead", "missing": "missing", "error": "failed"}


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
        else:
            state = NODE_STATES.get(raw, raw)
        return cls(host, state, probe.get("exit_code"), probe.get("signal"), probe)


def record_hosts(
    data: Dict[str, Any], inventory: Inventory, only: Optional[List[str]] = None
) -> List[Host]:
    """The inventory's hosts that took part in a recorded run (optionally a subset)."""
    hosts = []
    for host_id in data.get("hosts", {}):
        if only is not None and host_id not in only:
            continue
        try:
            hosts.append(inventory.host(host_id))
        except (KeyError, InventoryError):
            raise InventoryError(
                f"host {host_id} of run {data.get('run_id')} is no longer in the inventory",
                inventory.source,
            ) from None
    return hosts


def _ask(run_id: str, verb: str, marker: str):
    def work(conn: Any, host: Host) -> Dict[str, Any]:
        done = remote.execute(
            conn, host, remote.sh(ASK_SCRIPT, run_dir(host, run_id), host.python, verb), timeout=60
        )
        found = done.marked(marker)
        if found is None:
            raise RemoteError(host.id, f"could not read the run's status: {done.error_line()}")
        try:
            return json.loads(found)
        except ValueError:
            raise RemoteError(host.id, f"unreadable status from the node: {found[:80]}") from None

    return work


def refresh(
    record: RunRecord, hosts: List[Host], parallel: int = DEFAULT_PARALLEL
) -> Dict[str, Outcome]:
    """Read every node's status.json and write what they say into the run record."""
    outcomes = on_each(hosts, _ask(record.run_id, "probe", "CORUNNER-PROBE"), parallel)
    data = record.load()
    for host_id, outcome in outcomes.items():
        entry = data["hosts"].setdefault(host_id, {})
        entry["refreshed_at"] = time.time()
        if outcome.ok:
            status = NodeStatus.from_probe(host_id, outcome.value)
            if status.state != "missing" or entry.get("state") in (None, "pending"):
                entry.update(state=status.state, exit_code=status.exit_code, signal=status.signal)
            entry["node"] = status.detail
        else:
            entry["refresh_error"] = str(outcome.error.cause)
    record.save(data)
    return outcomes


def stop(
    record: RunRecord, hosts: List[Host], parallel: int = DEFAULT_PARALLEL
) -> Dict[str, Outcome]:
    """Terminate the run's program (its whole process group) on every node."""
    outcomes = on_each(hosts, _ask(record.run_id, "stop", "CORUNNER-STOP"), parallel)
    data = record.load()
    for host_id, outcome in outcomes.items():
        if outcome.ok and outcome.value.get("stopped"):
            data["hosts"].setdefault(host_id, {})["stopped_at"] = time.time()
    record.save(data)
    return outcomes


def collect(
    hosts: List[Host],
    src: Optional[str],
    dest: str,
    divide: bool,
    run_id: Optional[str] = None,
    parallel: int = DEFAULT_PARALLEL,
    accept_new_host_keys: bool = False,
) -> Dict[str, Outcome]:
    """Pull ``src`` (default: the run's directory, without its secret) from every host."""

    def work(conn: Any, host: Host) -> transfer.Pulled:
        path = src or run_dir(host, run_id or "")
        exclude = None if src else ".corunner/config.json"
        return transfer.pull(conn, host, path, dest, divide, exclude, contents=not src)

    return on_each(hosts, work, parallel, accept_new_host_keys)
