"""Invoke tasks over the library: load, call one library function, render, exit.

``tasks.py`` at the top of the checkout re-exports :data:`ns`, and the
``corunner`` console command is an ``invoke.Program`` over the same tasks, so
``inv run ...`` and ``corunner run ...`` are the same thing.

Output: human lines go to stdout; with ``--json`` stdout holds exactly one JSON
document and everything else goes to stderr. Exit codes: see errors.py.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, TypeVar

from invoke import Collection, Exit, Program, task

from . import __version__, postrun, render, transfer
from . import lab as lab_module
from .controller import Program as RunProgram
from .controller import Run, RunReport, RunSpec
from .errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_LOST,
    EXIT_OK,
    CorunnerError,
    UsageError,
)
from .fanout import DEFAULT_PARALLEL, Outcome, on_each
from .hostrange import fold
from .inventory import Host
from .liveness import Change, Fleet
from .loader import load_inventory
from .record import find_run

F = TypeVar("F", bound=Callable[..., Any])

COMMON_HELP = {
    "hosts": "comma list of groups and host patterns (default: every host)",
    "inventory": "inventory file (default: $CORUNNER_INVENTORY, else ./hosts.yaml)",
    "parallel": f"how many hosts to work on at once (default {DEFAULT_PARALLEL})",
    "json": "print one JSON document on stdout (progress goes to stderr)",
    "accept_new_host_keys": "record keys of hosts not yet in known_hosts (like accept-new)",
}


class Out:
    """Where text goes: stdout for people, stderr when stdout carries JSON."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.stream = sys.stderr if as_json else sys.stdout

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def document(self, data: Any) -> None:
        json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
        sys.stdout.write("\n")
        sys.stdout.flush()


def reported(fn: F) -> F:
    """Map corunner errors to one line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CorunnerError as exc:
            raise Exit(f"corunner: error: {exc}", code=exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def _select(inventory: Optional[str], hosts: Optional[str]) -> tuple:
    inv = load_inventory(inventory)
    return inv, inv.select(hosts)


def _failures(outcomes: Dict[str, Outcome], out: Out) -> int:
    """Print one line per failed host and a summary; return the exit code."""
    bad = [o for o in outcomes.values() if not o.ok]
    for o in bad:
        out.line(f"{o.host.id}: {o.error.cause}")
    good = [h for h, o in outcomes.items() if o.ok]
    out.line(
        f"ok ({len(good)}): {fold(good) or '-'}"
        + (f"   failed ({len(bad)}): {fold(o.host.id for o in bad)}" if bad else "")
    )
    if not bad:
        return EXIT_OK
    lost = any(type(o.error).__name__ != "TransferError" for o in bad)
    return EXIT_LOST if lost else EXIT_FAILED


def _outcome_json(o: Outcome) -> Dict[str, Any]:
    data: Dict[str, Any] = {
        "host": o.host.id,
        "ok": o.ok,
        "error": None if o.ok else o.error.cause,
        "seconds": round(o.seconds, 3),
    }
    if isinstance(o.value, transfer.Pulled):
        data.update(files=o.value.files, bytes=o.value.bytes, skipped=o.value.skipped)
    return data


# -- hosts ---------------------------------------------------------------------
@task(
    help={
        "hosts": COMMON_HELP["hosts"],
        "inventory": COMMON_HELP["inventory"],
        "json": COMMON_HELP["json"],
    }
)
@reported
def hosts(c, hosts=None, inventory=None, json=False):
    """List the selected hosts with their user and port, their count and folded form."""
    inv, selected = _select(inventory, hosts)
    out = Out(json)
    if json:
        out.document(
            {
                "inventory": inv.source,
                "count": len(selected),
                "folded": fold(h.id for h in selected),
                "hosts": [
                    {
                        "id": h.id,
                        "name": h.name,
                        "user": h.user,
                        "port": h.port,
                        "groups": list(h.groups),
                    }
                    for h in selected
                ],
            }
        )
        return
    rows = [(h.id, h.user, str(h.port), ",".join(h.groups)) for h in selected]
    for line in render.table(rows, ("HOST", "USER", "PORT", "GROUPS")):
        out.line(line)
    out.line(f"{len(selected)} hosts: {fold(h.id for h in selected)}")


# -- cp ------------------------------------------------------------------------
@task(
    help={
        "src": "what to copy (a local path, or a remote path with --pull)",
        "dest": "where to (remote path; with --pull a local directory)",
        "pull": "copy from the nodes to here instead",
        "divide": "with --pull: one directory per host, DEST/<host>/",
        **COMMON_HELP,
    }
)
@reported
def cp(
    c,
    src,
    dest,
    pull=False,
    divide=False,
    hosts=None,
    inventory=None,
    parallel=DEFAULT_PARALLEL,
    json=False,
    accept_new_host_keys=False,
):
    """Copy a file or tree to every node at once, or (--pull) from every node."""
    _, selected = _select(inventory, hosts)
    out = Out(json)
    began = time.monotonic()
    if pull:
        outcomes = on_each(
            selected,
            lambda conn, host: transfer.pull(conn, host, src, dest, divide),
            parallel,
            accept_new_host_keys,
        )
    else:
        if divide:
            raise UsageError("--divide only applies to --pull")
        with tempfile.TemporaryDirectory(prefix="corunner-") as work:
            archive = transfer.build_archive(src, work)
            outcomes = on_each(
                selected,
                lambda conn, host: transfer.push(conn, host, archive, dest),
                parallel,
                accept_new_host_keys,
            )
    _finish_transfer(outcomes, out, "pull" if pull else "push", src, dest, began)


def _finish_transfer(
    outcomes: Dict[str, Outcome], out: Out, kind: str, src: str, dest: str, began: float
) -> None:
    for o in outcomes.values():
        if o.ok and isinstance(o.value, transfer.Pulled):
            for skipped in o.value.skipped:
                out.line(f"{o.host.id}: refused unsafe entry {skipped}")
    code = _failures(outcomes, out)
    out.line(f"{kind} {src} -> {dest}: {len(outcomes)} hosts in {time.monotonic() - began:.1f}s")
    if out.as_json:
        out.document(
            {
                "direction": kind,
                "src": src,
                "dest": dest,
                "exit_code": code,
                "hosts": [_outcome_json(o) for o in outcomes.values()],
            }
        )
    if code:
        raise Exit(code=code)


# -- run -----------------------------------------------------------------------
def _parse_listen(listen: Optional[str]) -> Optional[tuple]:
    if not listen:
        return None
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"--listen wants HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _print_change(out: Out) -> Callable[[Change, Fleet], None]:
    def show(change: Change, fleet: Fleet) -> None:
        out.line(
            f"{render.clock(time.time())} {change.host}: {change.old.value} -> {change.new.value}"
            f" ({change.reason})"
        )

    return show


def print_report(report: RunReport, out: Out) -> None:
    rows = [
        (
            h.host,
            h.state.value,
            render.outcome(h.state, h.exit_code, h.signal),
            render.seconds(h.seconds),
            render.seconds(h.last_seen_age),
            h.error or "",
        )
        for h in report.hosts
    ]
    for line in render.table(rows, ("HOST", "STATE", "RESULT", "TIME", "LAST HB", "ERROR")):
        out.line(line)
    for line in render.errors((h.host, h.error) for h in report.hosts if h.error):
        out.line(line)
    for line in render.folded_by_state(report.by_state()):
        out.line(line)


def report_json(report: RunReport) -> Dict[str, Any]:
    return {
        "run_id": report.run_id,
        "exit_code": report.exit_code,
        "started_at": report.started_at,
        "ended_at": report.ended_at,
        "interrupted": report.interrupted,
        "rejected": report.rejected,
        "summary": {s.value: fold(h) for s, h in report.by_state().items()},
        "hosts": [h.to_json() for h in report.hosts],
    }


@task(
    help={
        "script": "local script to upload and run (#! decides the interpreter, else the inventory's python)",
        "cmd": "a command line to run instead of a script",
        "args": "arguments for the script, as one shell-quoted string",
        "files": "comma list of more files or directories to upload beside it",
        "interval": "seconds between heartbeats (default 1)",
        "dead_after": "seconds of silence before a node is dead (default 5 intervals)",
        "deadline": "seconds after which still-running nodes time out",
        "heartbeat": "watch nodes by heartbeat; --no-heartbeat keeps SSH sessions open instead",
        "listen": "HOST:PORT for the heartbeat listener (default: the address nodes reach us by)",
        **COMMON_HELP,
    }
)
@reported
def run(
    c,
    script=None,
    cmd=None,
    args="",
    files="",
    hosts=None,
    inventory=None,
    parallel=DEFAULT_PARALLEL,
    interval=1.0,
    dead_after=None,
    deadline=None,
    heartbeat=True,
    listen=None,
    json=False,
    accept_new_host_keys=False,
):
    """Run a script or command on every selected node at once and watch it to the end."""
    inv, selected = _select(inventory, hosts)
    out = Out(json)
    spec = RunSpec(
        program=RunProgram(script=script, args=tuple(shlex.split(args or "")), cmd=cmd),
        files=tuple(f for f in (files or "").split(",") if f),
        interval=float(interval),
        dead_after=None if dead_after is None else float(dead_after),
        deadline=None if deadline is None else float(deadline),
        heartbeat=heartbeat,
        listen=_parse_listen(listen),
        parallel=int(parallel),
        accept_new_host_keys=accept_new_host_keys,
    )
    if spec.interval <= 0:
        raise UsageError("--interval must be positive")
    the_run = Run(
        selected,
        spec,
        meta={"inventory": inv.source, "selection": hosts},
        on_change=_print_change(out),
    )
    out.line(
        f"run {the_run.run_id}: {spec.program.describe()} on {len(selected)} hosts: "
        f"{fold(h.id for h in selected)}"
    )
    try:
        report = the_run.execute()
    except KeyboardInterrupt:
        _interrupted(the_run, selected, out)
        raise Exit(code=EXIT_INTERRUPTED) from None
    print_report(report, out)
    out.line(
        f"run {report.run_id} ended in {report.ended_at - report.started_at:.1f}s; "
        f"collect its results with: inv collect --run {report.run_id} --divide"
    )
    if json:
        out.document(report_json(report))
    if report.exit_code:
        raise Exit(code=report.exit_code)


def _interrupted(the_run: Run, selected: List[Host], out: Out) -> None:
    """Ctrl-C: ask whether to stop the remote programs; never ask off a terminal."""
    run_id = the_run.run_id
    out.line(f"\ninterrupted; the run record is in {the_run.record.dir}")
    if sys.stdin.isatty() and sys.stdout.isatty():
        try:
            answer = input("Stop the programs on the nodes? [y/N] ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            answer = ""
        if answer in ("y", "yes"):
            outcomes = postrun.stop(the_run.record, selected)
            _failures(outcomes, out)
            return
    out.line(f"the programs keep running on the nodes; stop them with: inv stop --run {run_id}")


# -- status, stop, collect -------------------------------------------------------
@task(
    help={
        "run": "run id (default: the latest run)",
        "refresh": "ask every node for its own status.json (works after the controller died)",
        "inventory": COMMON_HELP["inventory"],
        "json": COMMON_HELP["json"],
    }
)
@reported
def status(c, run=None, refresh=False, inventory=None, json=False):
    """Show how a run went, from its record or (--refresh) from the nodes themselves."""
    record = find_run(run)
    out = Out(json)
    data = record.load()
    if refresh:
        inv = load_inventory(inventory or data.get("inventory"))
        outcomes = postrun.refresh(record, postrun.record_hosts(data, inv))
        for o in outcomes.values():
            if not o.ok:
                out.line(f"{o.host.id}: {o.error.cause}")
        data = record.load()
    rows, by_state = [], {}
    for host, entry in data["hosts"].items():
        state = entry.get("state", "?")
        by_state.setdefault(state, []).append(host)
        result = render.outcome(None, entry.get("exit_code"), entry.get("signal"))  # type: ignore[arg-type]
        rows.append((host, state, result, entry.get("error") or entry.get("refresh_error") or ""))
    out.line(f"run {data['run_id']}: {data.get('program', '')}")
    for line in render.table(rows, ("HOST", "STATE", "RESULT", "ERROR")):
        out.line(line)
    for state, hosts_in in sorted(by_state.items()):
        out.line(f"{state} ({len(hosts_in)}): {fold(hosts_in)}")
    if json:
        out.document(data)


@task(
    help={
        "run": "run id (default: the latest run)",
        "hosts": COMMON_HELP["hosts"],
        "inventory": COMMON_HELP["inventory"],
        "json": COMMON_HELP["json"],
    }
)
@reported
def stop(c, run=None, hosts=None, inventory=None, json=False):
    """Terminate a run's program (its whole process group) on every node still running it."""
    record = find_run(run)
    data = record.load()
    inv = load_inventory(inventory or data.get("inventory"))
    only = [h.id for h in inv.select(hosts)] if hosts else None
    out = Out(json)
    outcomes = postrun.stop(record, postrun.record_hosts(data, inv, only))
    for o in outcomes.values():
        if o.ok:
            state = "stopped" if o.value.get("stopped") else f"not running ({o.value.get('state')})"
            out.line(f"{o.host.id}: {state}")
    code = _failures(outcomes, out)
    if json:
        out.document(
            {
                "run_id": record.run_id,
                "exit_code": code,
                "hosts": [{**_outcome_json(o), "node": o.value} for o in outcomes.values()],
            }
        )
    if code:
        raise Exit(code=code)


@task(
    help={
        "run": "run id (default: the latest run)",
        "src": "remote path to pull instead of the run's directory",
        "dest": "local directory (default: results/<run id>)",
        "divide": "one directory per host, DEST/<host>/",
        **COMMON_HELP,
    }
)
@reported
def collect(
    c,
    run=None,
    src=None,
    dest=None,
    divide=False,
    hosts=None,
    inventory=None,
    parallel=DEFAULT_PARALLEL,
    json=False,
    accept_new_host_keys=False,
):
    """Pull a run's directory (or --src) from every node that ran it."""
    out = Out(json)
    run_id = None
    if src and hosts and not run:
        _, selected = _select(inventory, hosts)
    else:
        record = find_run(run)
        data = record.load()
        run_id = record.run_id
        inv = load_inventory(inventory or data.get("inventory"))
        only = [h.id for h in inv.select(hosts)] if hosts else None
        selected = postrun.record_hosts(data, inv, only)
    dest = dest or os.path.join("results", run_id or "pulled")
    began = time.monotonic()
    outcomes = postrun.collect(
        selected, src, dest, divide, run_id, int(parallel), accept_new_host_keys
    )
    _finish_transfer(outcomes, out, "collect", src or f"<remote_dir>/{run_id}", dest, began)


# -- the local test cluster ----------------------------------------------------------
@task(help={"nodes": "how many nodes (default 8)", "state_dir": "where keys and state go"})
@reported
def lab_up(c, nodes=8, state_dir=str(lab_module.DEFAULT_STATE_DIR)):
    """Start the local test cluster: one real sshd per node on 127.0.1.<i>."""
    began = time.monotonic()
    the_lab = lab_module.up(int(nodes), lab_module.Path(state_dir))
    print(
        f"{len(the_lab.nodes)} nodes up in {time.monotonic() - began:.1f}s: "
        f"{fold(n.address for n in the_lab.nodes)}"
    )
    print(f"inventory: {the_lab.inventory}")


@task(help={"state_dir": "where keys and state go"})
@reported
def lab_down(c, state_dir=str(lab_module.DEFAULT_STATE_DIR)):
    """Stop every node of the local test cluster."""
    print(f"{lab_module.down(lab_module.Path(state_dir))} nodes stopped")


def _lab_fault(action: str) -> Callable[..., None]:
    @task(
        name=action, help={"node": "node index or address", "state_dir": "where keys and state go"}
    )
    @reported
    def fault(c, node, state_dir=str(lab_module.DEFAULT_STATE_DIR)):
        the_lab = lab_module.load(lab_module.Path(state_dir))
        target = the_lab.node(int(node) if str(node).isdigit() else node)
        getattr(the_lab, action)(target.index)
        print(f"{target.address}: {action}")

    fault.__doc__ = {
        "kill": "Kill a lab node (a machine that dies).",
        "freeze": "Freeze a lab node's processes (a machine that hangs).",
        "thaw": "Thaw a frozen lab node.",
        "restart": "Start a killed lab node again.",
    }[action]
    return fault


lab_ns = Collection("lab")
lab_ns.add_task(lab_up, name="up")
lab_ns.add_task(lab_down, name="down")
for _action in ("kill", "freeze", "thaw", "restart"):
    lab_ns.add_task(_lab_fault(_action))

ns = Collection(hosts, cp, run, status, stop, collect, lab_ns)
program = Program(namespace=ns, version=__version__, name="corunner", binary="corunner")
