"""Invoke tasks over the library: load, call one library function, render, exit.

``tasks.py`` at the top of the checkout re-exports :data:`ns`, and the
``corunner`` console command is an ``invoke.Program`` over the same tasks, so
``inv run ...`` and ``corunner run ...`` are the same thing.

Output: human lines go to stdout; with ``--json`` stdout holds exactly one JSON
document (schemas in corunner/schemas/) and everything else goes to stderr.
Progress is a live view when that stream is a terminal, plain timestamped lines
otherwise (corunner.live). What ends a task prints the rule folded and the
exceptions in full: one folded line per outcome, then one line (or table row)
per host that did not succeed, each cause once. Hints name the command the
user typed (``corunner`` or ``inv``). Exit codes: see errors.py; SIGTERM,
SIGHUP and a closed stdout end a task cleanly (corunner.interrupts).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shlex
import signal
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple, TypeVar, cast

from invoke import Collection, Context, Exit

from . import (
    __version__,
    debuglog,
    hostkeys,
    interrupts,
    live,
    outputs,
    plan,
    postrun,
    render,
    transfer,
)
from . import relay as relay_module
from .bootstrap import check_uploads
from .controller import Run
from .errors import (
    EXIT_INTERRUPTED,
    EXIT_LOST,
    EXIT_OK,
    CorunnerError,
    UsageError,
    exit_code_for,
)
from .fanout import DEFAULT_PARALLEL, Outcome, on_each
from .hostrange import fold
from .interrupts import Interrupted
from .inventory import (
    ENV_NAME,
    HEARTBEAT_PATHS,
    Host,
    Inventory,
    ad_hoc_entry,
    clean_remote_dir,
    parse_jump,
    with_hops,
)
from .liveness import State
from .loader import load_inventory
from .options import NOT_SUCCEEDED, CorunnerProgram, rerun_hint, task
from .record import find_run, run_outcomes
from .report import RunReport, group_by_state
from .spec import Program as RunProgram
from .spec import RunSpec

F = TypeVar("F", bound=Callable[..., Any])

COMMON_HELP = {
    "hosts": "groups, host patterns, @failed...; set operators , ! & ^ (default: every host)",
    "exclude": "hosts to leave out, the same syntax as --hosts",
    "dry": "print what would be done (hosts, SSH settings, command, bytes); contact no node",
    "inventory": "inventory file (default: $CORUNNER_INVENTORY, else ./hosts.yaml)",
    "parallel": f"how many hosts to work on at once (default {DEFAULT_PARALLEL})",
    "json": "print one JSON document on stdout (progress goes to stderr)",
    "accept_new_host_keys": "record keys of hosts not yet in known_hosts (like accept-new)",
    "ssh_config": "OpenSSH client config to read, or none (default: $CORUNNER_SSH_CONFIG, the "
    "inventory's ssh_config:, else ~/.ssh/config then /etc/ssh/ssh_config)",
    "jump": "jump host(s) for every selected host, as ssh -J: [user@]host[:port][,...], "
    "or none (wins over the inventory's jump:)",
}
OUTPUT_HELP = {
    "stream": "which output to show: stdout (default) or stderr",
    "diff": "print the most common output in full, every other one as a diff against it",
}
TABLE_HELP = (
    "which hosts get a row in the table: problems (default: those that did not succeed) or all"
)
TABLES = ("problems", "all")


def command() -> str:
    """The command the user typed (``corunner`` or ``inv``): what hints tell them to run."""
    return render.command_name(sys.argv[0])


class Out:
    """Where text goes: stdout for people, stderr when stdout carries JSON."""

    def __init__(self, as_json: bool):
        self.as_json = as_json
        self.stream = sys.stderr if as_json else sys.stdout

    def line(self, text: str = "") -> None:
        interrupts.write_line(self.stream, text)

    def document(self, data: Any) -> None:
        interrupts.write_line(sys.stdout, json.dumps(data, indent=2, sort_keys=True, default=str))


def _warning(line: str) -> None:
    """Print one warning line on stderr (never stdout: --json keeps it one document)."""
    print(line, file=sys.stderr, flush=True)


def reported(fn: F) -> F:
    """Map corunner errors, Ctrl-C, SIGTERM, SIGHUP and a closed stdout to (at most)
    one line on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        hostkeys.warn_with(_warning)  # a skipped known_hosts line: once per process
        try:
            with interrupts.signals_end_cleanly():
                return fn(*args, **kwargs)
        except CorunnerError as exc:
            raise Exit(f"corunner: error: {exc}", code=exc.exit_code) from None
        except Interrupted as exc:
            # A closed stdout is what `| head` does on purpose, and a hung-up
            # terminal has no reader: no word about either.
            if not exc.output_lost:
                interrupts.tell(sys.stderr, f"corunner: {exc.why}")
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            # Invoke would exit 1 without a word.
            raise Exit(
                "corunner: interrupted (Ctrl-C); what was done stays done: "
                "run the same command again to finish",
                code=EXIT_INTERRUPTED,
            ) from None

    return cast(F, wrapper)


def _select(
    inventory: Optional[str],
    hosts: Optional[str],
    exclude: Optional[str] = None,
    run: Optional[str] = None,
    ssh_config: Optional[str] = None,
    jump: Optional[str] = None,
) -> Tuple[Inventory, List[Host]]:
    """Load the inventory and select; ``@failed`` and friends read run ``run`` (None: latest).

    ``jump`` (``--jump``) replaces every selected host's jump chain.
    """
    inv = load_inventory(inventory, ssh_config=ssh_config)
    return inv, _jumped(inv, _pick(inv, hosts, exclude, run), jump)


def _jumped(inv: Inventory, hosts: List[Host], jump: Optional[str]) -> List[Host]:
    """The hosts reached through ``--jump`` instead of their own chain (or proxy command)."""
    if jump is None:
        return hosts
    try:
        chain = parse_jump(jump)
    except ValueError as exc:
        raise UsageError(f"--jump: {exc}") from None
    return [
        with_hops(dataclasses.replace(h, jump=chain, proxy_command=None), inv.ssh_config)
        for h in hosts
    ]


def _pick(
    inv: Inventory, hosts: Optional[str], exclude: Optional[str], run: Optional[str]
) -> List[Host]:
    """``--hosts``/``--exclude`` over ``inv``; hosts it does not list are said once, on stderr."""
    selected = inv.select(hosts, exclude, functools.partial(run_outcomes, run))
    extra = [h.id for h in inv.not_listed(selected)]
    if extra:
        count = f"{len(extra)} host{'s' if len(extra) > 1 else ''}"
        print(
            f"note: {count} not in {inv.source}, using its defaults: {fold(extra)}",
            file=sys.stderr,
            flush=True,
        )
    _warn_ssh_config(selected)
    return selected


def _warn_ssh_config(hosts: Sequence[Host]) -> None:
    """Each ssh_config line the selected hosts cannot follow, once, on stderr."""
    said: Dict[str, None] = {}
    for host in hosts:
        said.update(dict.fromkeys(host.notes))
    for note in said:
        print(f"warning: {note}", file=sys.stderr, flush=True)


def _dry(out: Out, the_plan: plan.Plan) -> None:
    """Print what a task would do (``--dry``); nothing else happens."""
    if out.as_json:
        out.document(the_plan.document())
        return
    for line in the_plan.lines():
        out.line(line)


def _number(option: str, value: Any, default: float, integer: bool = False) -> Any:
    """An option's number (seconds, or a count with ``integer``); > 0, else UsageError."""
    if value is None:
        return default
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        kind = "a whole number" if integer else "a number of seconds"
        raise UsageError(f"--{option} wants {kind}, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise UsageError(f"--{option} must be more than 0, got {value!r}")
    return number


def _optional_number(option: str, value: Any) -> Optional[float]:
    return None if value is None else _number(option, value, 0.0)


def _stream(stream: Optional[str]) -> str:
    chosen = stream or "stdout"
    if chosen not in ("stdout", "stderr"):
        raise UsageError(f"--stream wants stdout or stderr, got {stream!r}")
    return chosen


def _failures(
    outcomes: Dict[str, Outcome], out: Out, label: Callable[[Outcome], str] = lambda o: "ok"
) -> int:
    """Print the hosts folded per outcome (``label``), then one line per failed host
    with its cause, then the failed hosts folded for a retry; return the exit code."""
    for line in render.outcome_lines((h, label(o)) for h, o in outcomes.items() if o.ok):
        out.line(line)
    bad = [(o.host.id, o.error.cause) for o in outcomes.values() if o.error is not None]
    for line in render.errors(bad):
        out.line(line)
    if bad:
        failed = fold(host for host, _ in bad)
        out.line(f"failed ({len(bad)}): {failed}; {rerun_hint(failed)}")
    elif not outcomes:
        out.line("no hosts")
    return exit_code_for(render.transfer_state(o) for o in outcomes.values())


def _stopped(o: Outcome) -> str:
    """What ``stop`` did on a host it reached: ``stopped`` or ``not running (exited)``."""
    answer = o.value if isinstance(o.value, dict) else {}
    return "stopped" if answer.get("stopped") else f"not running ({answer.get('state')})"


def _show_outputs(
    run_id: str,
    hosts: List[Host],
    stream: str,
    diff: bool,
    out: Out,
    parallel: int,
    accept_new_host_keys: bool = False,
    brief: bool = False,
    not_asked: Sequence[str] = (),
) -> Dict[str, Any]:
    """Fetch a run's stdout (or stderr) from every host, print it grouped; return its JSON.

    ``brief``: the largest groups only, long outputs cut to their first and
    last lines (outputs.Brief). ``not_asked``: hosts left out (dead), named.
    """
    cap = postrun.OUTPUT_CAP
    with live.TransferView(out.stream, len(hosts), f"fetching {stream}") as view:
        fetched = postrun.fetch_outputs(
            run_id, hosts, stream, cap, parallel, accept_new_host_keys, view.done
        )
    got = {h: o.value for h, o in fetched.items() if o.value is not None}
    errors = {h: o.error.cause for h, o in fetched.items() if o.error is not None}
    groups = outputs.group(got)
    head = f"{stream} of run {run_id}: "
    if len(groups) == 1 and not groups[0].data and not groups[0].truncated:
        head += f"empty on all {len(got)} host(s)"
        lines: List[str] = []
    else:
        head += f"{len(groups)} distinct output(s) from {len(got)} host(s)"
        if diff and len(groups) > 1:
            head += ", as diffs against the most common one"
        short = None
        if brief:
            which = "" if stream == "stdout" else f" --stream {stream}"
            short = outputs.Brief(f"{command()} status --run {run_id} --output{which}")
        render_with = outputs.render_diff if diff else outputs.render_groups
        lines = render_with(groups, cap, short)
    if not_asked:
        head += f" (not asked: dead {render.fold_within(not_asked, 60)})"
    out.line(head)
    for line in lines:
        out.line(line)
    for host, cause in errors.items():
        out.line(f"{host}: {cause}")
    return render.outputs_document(stream, groups, errors, cap)


# -- hosts ---------------------------------------------------------------------
@task(
    help={
        "hosts": COMMON_HELP["hosts"],
        "exclude": COMMON_HELP["exclude"],
        "inventory": COMMON_HELP["inventory"],
        "json": COMMON_HELP["json"],
        "ssh_config": COMMON_HELP["ssh_config"],
        "jump": COMMON_HELP["jump"],
    }
)
@reported
def hosts(
    c: Context,
    hosts: Optional[str] = None,
    exclude: Optional[str] = None,
    inventory: Optional[str] = None,
    json: bool = False,
    ssh_config: Optional[str] = None,
    jump: Optional[str] = None,
) -> None:
    """List the selected hosts: the address, user, port and jump hosts a connection
    will really use and where each came from, their count and folded form."""
    inv, selected = _select(inventory, hosts, exclude, ssh_config=ssh_config, jump=jump)
    out = Out(json)
    if json:
        out.document(render.hosts_document(inv.source, selected))
        return
    for line in render.hosts_table(selected):
        out.line(line)
    out.line(f"{len(selected)} hosts: {fold(h.id for h in selected)}")


# -- cp ------------------------------------------------------------------------
@task(
    help={
        "src": "what to copy (a local path, or a remote path with --pull)",
        "dest": "where to (remote path; with --pull a local directory)",
        "pull": "copy from the nodes to here instead",
        "divide": "with --pull: one directory per host, DEST/<host>/",
        "relay": "send the payload once and let the nodes pass it on (auto: when it pays, see README)",
        **COMMON_HELP,
    },
    optional=["relay"],
)
@reported
def cp(
    c: Context,
    src: Optional[str] = None,
    dest: Optional[str] = None,
    pull: bool = False,
    divide: bool = False,
    hosts: Optional[str] = None,
    exclude: Optional[str] = None,
    inventory: Optional[str] = None,
    parallel: Optional[str] = None,
    json: bool = False,
    accept_new_host_keys: bool = False,
    dry: bool = False,
    ssh_config: Optional[str] = None,
    jump: Optional[str] = None,
    relay: Any = None,
) -> None:
    """Copy a file or tree to every node at once, or (--pull) from every node."""
    if not src or not dest:
        raise UsageError("cp needs --src SRC and --dest DEST")
    _check_relay(relay)
    if relay and pull:
        raise UsageError("--relay is for pushes: drop it, or drop --pull")
    if divide and not pull:
        raise UsageError(
            "--divide only applies to --pull (one local directory per host): add --pull or drop it"
        )
    inv, selected = _select(inventory, hosts, exclude, ssh_config=ssh_config, jump=jump)
    workers = _number("parallel", parallel, DEFAULT_PARALLEL, integer=True)
    out = Out(json)
    if dry:
        not_listed = _not_listed(inv, selected)
        _dry(out, plan.copy_plan(selected, src, dest, pull, divide, not_listed, relay))
        return
    began = time.monotonic()
    kind = "pull" if pull else "push"
    relayed = False
    with live.TransferView(out.stream, len(selected), f"{kind} {src}") as view:
        if pull:
            outcomes = on_each(
                selected,
                lambda conn, host: transfer.pull(conn, host, src, dest, divide),
                workers,
                accept_new_host_keys,
                view.done,
            )
        else:
            with tempfile.TemporaryDirectory(prefix="corunner-") as work:
                archive = transfer.build_archive(src, work)
                relayed = relay_module.wanted(
                    relay, relay_module.source_size(archive), len(selected)
                )
                if relayed:
                    outcomes = relay_module.push(
                        selected, archive, dest, workers, accept_new_host_keys, view.done
                    )
                else:
                    outcomes = on_each(
                        selected,
                        lambda conn, host: transfer.push(conn, host, archive, dest),
                        workers,
                        accept_new_host_keys,
                        view.done,
                        # Known host keys only: a new one is learnt the Paramiko way.
                        first=None
                        if accept_new_host_keys
                        else lambda host: transfer.push_with_openssh(host, archive, dest),
                    )
    if relayed:
        _relay_lines(outcomes, out)
    _finish_transfer(outcomes, out, "cp", kind, src, dest, began)


def _check_relay(relay: Any) -> None:
    if relay not in (None, False, True, "auto"):
        raise UsageError(f"--relay takes no value or auto, not {relay!r}")


def _relay_lines(outcomes: Dict[str, Outcome], out: Out) -> None:
    """What the relay did beyond the copies: the controller's bytes, who it fed directly."""
    done = [o.value for o in outcomes.values() if isinstance(o.value, relay_module.Relayed)]
    direct = [o.host.id for o in outcomes.values() if getattr(o.value, "via", "") == "direct"]
    sent = sum(r.bytes_sent for r in done)
    line = f"relay: {sent:,} bytes sent from here"
    if direct:
        line += f"; served directly ({len(direct)}): {fold(direct)}"
    out.line(line)


def _finish_transfer(
    outcomes: Dict[str, Outcome],
    out: Out,
    task_name: str,
    kind: str,
    src: str,
    dest: str,
    began: float,
    run_id: Optional[str] = None,
) -> None:
    for o in outcomes.values():
        if o.ok and isinstance(o.value, (transfer.Pulled, transfer.Pushed)):
            for note in o.value.notes:
                out.line(f"{o.host.id}: note: {note}")
        if o.ok and isinstance(o.value, transfer.Pulled):
            for skipped in o.value.skipped:
                out.line(f"{o.host.id}: refused unsafe entry {skipped}")
    code = _failures(outcomes, out)  # one folded line for the hosts that copied
    label = task_name if task_name == "collect" else kind
    out.line(f"{label} {src} -> {dest}: {len(outcomes)} hosts in {time.monotonic() - began:.1f}s")
    if out.as_json:
        out.document(render.transfer_document(task_name, kind, src, dest, code, outcomes, run_id))
    if code:
        raise Exit(code=code)


# -- run -----------------------------------------------------------------------
def _heartbeat_via(value: Optional[str]) -> Optional[str]:
    if value is None or value in HEARTBEAT_PATHS:
        return value
    raise UsageError(f"--heartbeat-via must be one of {', '.join(HEARTBEAT_PATHS)}, not {value!r}")


def _parse_listen(listen: Optional[str]) -> Optional[Tuple[str, int]]:
    if not listen:
        return None
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(
            f"--listen wants HOST:PORT with a port from 1 to 65535 (e.g. 0.0.0.0:7100), got {listen!r}"
        )
    return host.strip("[]") or "0.0.0.0", int(port)


def _remote_dir(hosts: List[Host], remote_dir: Optional[str]) -> List[Host]:
    """The hosts with ``remote_dir`` in place of the inventory's, if given."""
    if remote_dir is None:
        return hosts
    try:
        clean = clean_remote_dir(remote_dir)
    except ValueError as exc:
        raise UsageError(f"--remote-dir {exc}") from None
    return [dataclasses.replace(h, remote_dir=clean) for h in hosts]


def _env_pairs(values: List[str]) -> Tuple[Tuple[str, str], ...]:
    """``--env NAME=VALUE`` options as (name, value) pairs; UsageError for a bad one."""
    pairs: Dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not ENV_NAME.fullmatch(name):
            raise UsageError(f"--env wants NAME=VALUE with a variable name, got {item!r}")
        pairs[name] = value
    return tuple(pairs.items())


def _table(option: Optional[str]) -> bool:
    """``--table``: True for every host (``all``), False for the problems only."""
    chosen = option or "problems"
    if chosen not in TABLES:
        raise UsageError(f"--table wants problems or all, got {option!r}")
    return chosen == "all"


def print_report(report: RunReport, out: Out, everything: bool = False) -> None:
    """The hosts folded per state (whole), then a table of those that did not
    succeed (``everything``: of every host): each failure once."""
    for line in render.folded_by_state(report.by_state()):
        out.line(line)
    rows = [
        render.HostRow(
            h.host,
            h.state.value,
            h.exit_code,
            h.signal,
            h.seconds,
            h.last_seen_age,
            h.error or h.reason or "",
        )
        for h in report.hosts
    ]
    for line in render.host_table(rows, everything):
        out.line(line)


def _next_steps(report: RunReport) -> str:
    run_id, cmd = report.run_id, command()
    text = (
        f"run {run_id} ended in {report.ended_at - report.started_at:.1f}s; "
        f"collect its results with: {cmd} collect --run {run_id} --divide"
    )
    by_state = report.by_state()
    if by_state.get(State.FAILED):
        text += f"; see why it failed with: {cmd} status --run {run_id} --output --stream stderr"
    if report.exit_code == EXIT_LOST and any(by_state.get(s) for s in (State.DEAD, State.TIMEOUT)):
        text += f"; ask the nodes again with: {cmd} status --run {run_id} --refresh"
    if report.exit_code != EXIT_OK and not report.interrupted:
        text += f"; {rerun_hint(NOT_SUCCEEDED)}"
    return text


@task(
    help={
        "script": "local script to upload and run (#! decides the interpreter, else the inventory's python)",
        "cmd": "a command line to run instead of a script",
        "args": "arguments for the script, as one shell-quoted string",
        "files": "comma list of more files or directories to upload beside it",
        "interval": "seconds between heartbeats (default 1)",
        "dead_after": "seconds of silence before a node is dead (default 5 intervals)",
        "deadline": "seconds after which still-running nodes time out",
        "no_heartbeat": "no heartbeats: keep each node's SSH session open and wait on it instead",
        "listen": "HOST:PORT for the heartbeat listener (default: the address nodes reach us by)",
        "heartbeat_via": "direct (nodes connect to us), tunnel (over the SSH connection) or auto "
        "(tunnel behind a jump host; the inventory's heartbeat: by default)",
        "remote_dir": "directory on the nodes for the run directory (default: the inventory's remote_dir)",
        "quiet": "do not fetch and print the hosts' output after the run",
        "show_output": "kept for old scripts: the output is shown by default (with --json: add it to the document)",
        "table": TABLE_HELP,
        "verbose": "off a terminal, one line per state change (default: routine ones folded into counts)",
        "env": "NAME=VALUE for the program's environment (repeatable; wins over the inventory's env:)",
        "stdin": "a local file every node's program reads as its stdin (default: /dev/null)",
        "sudo": "run the program as root through sudo -n (as the inventory's become: true)",
        "sudo_user": "run the program as this user through sudo -n (implies --sudo)",
        "relay": "send --files once and let the nodes pass them on (auto: when it pays, see README)",
        **OUTPUT_HELP,
        **COMMON_HELP,
    },
    iterable=["env"],
    optional=["relay"],
)
@reported
def run(
    c: Context,
    script: Optional[str] = None,
    cmd: Optional[str] = None,
    args: str = "",
    files: str = "",
    hosts: Optional[str] = None,
    exclude: Optional[str] = None,
    inventory: Optional[str] = None,
    parallel: Optional[str] = None,
    interval: Optional[str] = None,
    dead_after: Optional[str] = None,
    deadline: Optional[str] = None,
    no_heartbeat: bool = False,
    listen: Optional[str] = None,
    heartbeat_via: Optional[str] = None,
    json: bool = False,
    accept_new_host_keys: bool = False,
    remote_dir: Optional[str] = None,
    quiet: bool = False,
    show_output: bool = False,
    table: Optional[str] = None,
    verbose: bool = False,
    diff: bool = False,
    stream: Optional[str] = None,
    env: Optional[List[str]] = None,
    stdin: Optional[str] = None,
    sudo: bool = False,
    sudo_user: Optional[str] = None,
    dry: bool = False,
    ssh_config: Optional[str] = None,
    jump: Optional[str] = None,
    relay: Any = None,
) -> None:
    """Run a script or command on every selected node at once and watch it to the end.

    Prints the hosts folded per state, a table of those that did not succeed,
    then each distinct output once under the hosts that printed it.
    """
    _check_relay(relay)
    if relay and not files:
        raise UsageError("--relay sends --files: add --files, or drop --relay")
    inv, selected = _select(inventory, hosts, exclude, ssh_config=ssh_config, jump=jump)
    selected = _remote_dir(selected, remote_dir)
    asked = show_output or diff or stream is not None
    if quiet and asked:
        raise UsageError("--quiet prints no output: drop it, or drop --show-output/--diff/--stream")
    show = not quiet and (asked or not json)  # JSON documents get outputs only when asked
    everything = _table(table)
    chosen_stream = _stream(stream)
    out = Out(json)
    spec = RunSpec(
        program=RunProgram.load(script=script, args=tuple(shlex.split(args or "")), cmd=cmd),
        files=tuple(f for f in (files or "").split(",") if f),
        interval=_number("interval", interval, 1.0),
        dead_after=_optional_number("dead-after", dead_after),
        deadline=_optional_number("deadline", deadline),
        heartbeat=not no_heartbeat,
        listen=_parse_listen(listen),
        parallel=_number("parallel", parallel, DEFAULT_PARALLEL, integer=True),
        accept_new_host_keys=accept_new_host_keys,
        env=_env_pairs(env or []),
        stdin=stdin,
        become=(sudo_user or "root") if (sudo or sudo_user) else None,
        heartbeat_via=_heartbeat_via(heartbeat_via),
        relay=relay or False,
    )
    if dry:
        _dry(out, plan.run_plan(selected, spec, _not_listed(inv, selected)))
        return
    check_uploads(spec.files, spec.stdin)
    view = live.run_view(out.stream, [h.id for h in selected], spec.deadline, verbose)
    meta: Dict[str, Any] = {"inventory": inv.source, "selection": hosts, "exclude": exclude}
    if ssh_config is not None:
        meta["ssh_config"] = ssh_config  # status, stop and collect resolve the hosts alike
    if jump is not None:
        meta["jump"] = jump  # ... and reach them through the same jump hosts
    # What was uploaded into each run directory: collect leaves it there (names only).
    meta["inputs"] = [os.path.basename(os.path.abspath(p)) for p in (script, *spec.files) if p]
    if spec.become:
        meta["become"] = spec.become  # stop ends the programs as that user
    if remote_dir is not None:
        meta["remote_dir"] = selected[0].remote_dir
    meta["ad_hoc"] = [ad_hoc_entry(h) for h in inv.not_listed(selected)]
    the_run = Run(selected, spec, meta=meta, on_change=view.on_change, on_tick=view.on_tick)
    head = f"run {the_run.run_id}: {spec.program.describe()} on {len(selected)} hosts: "
    width = live.line_width(out.stream) - len(head)
    out.line(head + render.fold_within((h.id for h in selected), max(width, 40)))
    try:
        with view:
            report = the_run.execute()
    except Interrupted as exc:
        _ended_early(the_run, exc)
    except KeyboardInterrupt:
        _interrupted(the_run, selected, out)
        raise Exit(code=EXIT_INTERRUPTED) from None
    print_report(report, out, everything)
    staged = the_run.meta.get("relay")
    if staged:
        for line in render.run_relay_lines(staged):
            out.line(line)
    doc = render.run_document(report, spec.program.describe())
    if staged:
        doc["relay"] = staged
    if show:
        # Dead nodes are not asked: a node that stopped answering could hold the
        # end of the run for a connect timeout. `status --output` asks them later.
        by_state = report.by_state()
        left_out = {*by_state.get(State.UNREACHABLE, []), *by_state.get(State.DEAD, [])}
        doc["outputs"] = _show_outputs(
            report.run_id,
            [h for h in selected if h.id not in left_out],
            chosen_stream,
            diff,
            out,
            spec.parallel,
            accept_new_host_keys,
            brief=True,
            not_asked=by_state.get(State.DEAD, []),
        )
    out.line(_next_steps(report))
    if json:
        out.document(doc)
    if report.exit_code:
        raise Exit(code=report.exit_code)


def _run_hosts(
    run_id: str,
    data: Dict[str, Any],
    inventory: Optional[str],
    hosts: Optional[str],
    exclude: Optional[str],
    ssh_config: Optional[str] = None,
    jump: Optional[str] = None,
) -> Tuple[Inventory, List[Host]]:
    """The hosts of a recorded run that ``--hosts``/``--exclude`` pick (default: all of them).

    The inventory, ``--ssh-config`` and ``--jump`` are the run's own unless given again.
    """
    listed = load_inventory(
        inventory or data.get("inventory"), ssh_config=ssh_config or data.get("ssh_config")
    )
    inv = listed.with_ad_hoc(data.get("ad_hoc") or ())  # the run's hosts named ad hoc
    only = [h.id for h in _pick(inv, hosts, exclude, run_id)] if hosts or exclude else None
    picked = _jumped(inv, postrun.record_hosts(data, inv, only), jump or data.get("jump"))
    if only is None:
        _warn_ssh_config(picked)
    return listed, picked


def _not_listed(inv: Inventory, hosts: List[Host]) -> Tuple[str, ...]:
    return tuple(h.id for h in inv.not_listed(hosts))


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
            _failures(outcomes, out, _stopped)
            return
    out.line(
        f"the programs keep running on the nodes; stop them with: {command()} stop --run {run_id}"
    )


def _ended_early(the_run: Run, exc: Interrupted) -> NoReturn:
    """SIGTERM, SIGHUP or a closed stdout during a run: say on stderr (if it is
    still there) what was recorded and what runs on; never ask, never stop."""
    record = the_run.record
    text = f"corunner: {exc.why}"
    if not os.path.exists(record.path):
        text += "; nothing was started"
    else:
        text += f"; the run record is in {record.dir}"
        if not the_run.fleet.finished:
            text += (
                f"; the programs keep running on the nodes; stop them with: "
                f"{command()} stop --run {the_run.run_id}"
            )
    interrupts.tell(sys.stderr, text)
    raise Exit(code=exc.exit_code)


# -- status, stop, collect -------------------------------------------------------
@task(
    help={
        "run": "run id (default: the latest run)",
        "refresh": "ask every node for its own status.json (works after the controller died)",
        "output": "print every host's output of the run, identical outputs once",
        "table": TABLE_HELP,
        **OUTPUT_HELP,
        "inventory": COMMON_HELP["inventory"],
        "parallel": COMMON_HELP["parallel"],
        "json": COMMON_HELP["json"],
        "accept_new_host_keys": COMMON_HELP["accept_new_host_keys"],
        "dry": COMMON_HELP["dry"],
        "ssh_config": COMMON_HELP["ssh_config"],
        "jump": COMMON_HELP["jump"],
    }
)
@reported
def status(
    c: Context,
    run: Optional[str] = None,
    refresh: bool = False,
    output: bool = False,
    table: Optional[str] = None,
    diff: bool = False,
    stream: Optional[str] = None,
    inventory: Optional[str] = None,
    parallel: Optional[str] = None,
    json: bool = False,
    accept_new_host_keys: bool = False,
    dry: bool = False,
    ssh_config: Optional[str] = None,
    jump: Optional[str] = None,
) -> None:
    """Show how a run went, from its record or (--refresh) from the nodes themselves."""
    record = find_run(run, command=command())
    debuglog.keep_in(record.dir)
    out = Out(json)
    show = output or diff or stream is not None
    everything = _table(table)
    chosen_stream = _stream(stream)
    workers = _number("parallel", parallel, DEFAULT_PARALLEL, integer=True)
    data = record.load_current()
    run_hosts: List[Host] = []
    if refresh or show or dry:
        inv = load_inventory(
            inventory or data.get("inventory"), ssh_config=ssh_config or data.get("ssh_config")
        )
        run_hosts = _jumped(inv, postrun.record_hosts(data, inv), jump or data.get("jump"))
        _warn_ssh_config(run_hosts)
    if dry:
        ran = postrun.started_hosts(data, run_hosts) if show else []
        _dry(
            out, plan.status_plan(record.run_id, record.dir, refresh, run_hosts, chosen_stream, ran)
        )
        return
    unasked: List[str] = []
    if refresh:
        outcomes = postrun.refresh(record, run_hosts, workers, accept_new_host_keys)
        # Each host that could not be asked gets its row in the table, with why.
        unasked += ["unreachable" for o in outcomes.values() if o.error is not None]
        data = record.load_current()
    out.line(f"run {data['run_id']}: {data.get('program', '')}")
    by_state = group_by_state((h, e.get("state", "?")) for h, e in data["hosts"].items())
    for line in render.folded_by_state(by_state):
        out.line(line)
    for line in render.host_table(_record_rows(data), everything):
        out.line(line)
    if not data.get("finished"):
        out.line(
            f"run {data['run_id']} has no final record (still running, or its controller "
            f"died): ask the nodes with: {command()} status --run {data['run_id']} --refresh"
        )
    doc = render.status_document(data)
    if show:
        ran = postrun.started_hosts(data, run_hosts)
        doc["outputs"] = _show_outputs(
            record.run_id, ran, chosen_stream, diff, out, workers, accept_new_host_keys
        )
        if doc["outputs"]["errors"]:
            unasked.append("unreachable")
    code = exit_code_for([*(str(e.get("state")) for e in data["hosts"].values()), *unasked])
    if json:
        out.document(doc)
    if code:
        raise Exit(code=code)


def _record_rows(data: Dict[str, Any]) -> List[render.HostRow]:
    """Table rows from a run record; a node that could not be asked says why."""
    rows = []
    for host, entry in data["hosts"].items():
        error = entry.get("error") or entry.get("reason") or ""
        if entry.get("refresh_error"):
            error = error or f"could not ask the node: {entry['refresh_error']}"
        rows.append(
            render.HostRow(
                host,
                str(entry.get("state", "?")),
                entry.get("exit_code"),
                entry.get("signal"),
                entry.get("seconds"),
                entry.get("last_seen_age"),
                error,
            )
        )
    return rows


@task(
    help={
        "run": "run id (default: the latest run)",
        "hosts": COMMON_HELP["hosts"],
        "exclude": COMMON_HELP["exclude"],
        "inventory": COMMON_HELP["inventory"],
        "json": COMMON_HELP["json"],
        "dry": COMMON_HELP["dry"],
        "ssh_config": COMMON_HELP["ssh_config"],
        "jump": COMMON_HELP["jump"],
    }
)
@reported
def stop(
    c: Context,
    run: Optional[str] = None,
    hosts: Optional[str] = None,
    exclude: Optional[str] = None,
    inventory: Optional[str] = None,
    json: bool = False,
    dry: bool = False,
    ssh_config: Optional[str] = None,
    jump: Optional[str] = None,
) -> None:
    """Terminate a run's program (its whole process group) on every node still running it."""
    record = find_run(run, command=command())
    debuglog.keep_in(record.dir)
    data = record.load()
    inv, targets = _run_hosts(record.run_id, data, inventory, hosts, exclude, ssh_config, jump)
    out = Out(json)
    if dry:
        _dry(out, plan.stop_plan(record.run_id, targets, _not_listed(inv, targets)))
        return
    outcomes = postrun.stop(record, targets)
    code = _failures(outcomes, out, _stopped)
    if json:
        out.document(render.stop_document(record.run_id, code, outcomes))
    if code:
        raise Exit(code=code)


@task(
    help={
        "run": "run id (default: the latest run)",
        "src": "remote path to pull instead of the run's directory",
        "dest": "local directory (default: results/<run id>)",
        "divide": "one directory per host, DEST/<host>/",
        "with_inputs": "also bring what was uploaded: the script, --files, the executor",
        **COMMON_HELP,
    }
)
@reported
def collect(
    c: Context,
    run: Optional[str] = None,
    src: Optional[str] = None,
    dest: Optional[str] = None,
    divide: bool = False,
    hosts: Optional[str] = None,
    exclude: Optional[str] = None,
    inventory: Optional[str] = None,
    parallel: Optional[str] = None,
    json: bool = False,
    accept_new_host_keys: bool = False,
    with_inputs: bool = False,
    dry: bool = False,
    ssh_config: Optional[str] = None,
    jump: Optional[str] = None,
) -> None:
    """Pull a run's results (or --src) from every node that ran it."""
    out = Out(json)
    run_id = None
    inputs: List[str] = []
    workers = _number("parallel", parallel, DEFAULT_PARALLEL, integer=True)
    if src and hosts and not run:
        inv, selected = _select(inventory, hosts, exclude, ssh_config=ssh_config, jump=jump)
    else:
        record = find_run(run, command=command())
        debuglog.keep_in(record.dir)
        run_id = record.run_id
        data = record.load()
        inv, selected = _run_hosts(run_id, data, inventory, hosts, exclude, ssh_config, jump)
        inputs = [str(name) for name in data.get("inputs") or []]
    dest = dest or os.path.join("results", run_id or "pulled")
    if dry:
        _dry(
            out, plan.collect_plan(run_id, selected, src, dest, divide, _not_listed(inv, selected))
        )
        return
    began = time.monotonic()
    with live.TransferView(out.stream, len(selected), "collect") as view:
        outcomes = postrun.collect(
            selected,
            src,
            dest,
            divide,
            run_id,
            workers,
            accept_new_host_keys,
            view.done,
            inputs=inputs,
            with_inputs=with_inputs,
        )
    label = src or f"<remote_dir>/{run_id}"
    _finish_transfer(outcomes, out, "collect", "pull", label, dest, began, run_id)


class PipeSafeProgram(CorunnerProgram):
    """The ``corunner`` command: corunner's program, ending cleanly on a closed stdout
    also where Invoke itself prints (``corunner --list | head -1``)."""

    def run(self, argv: Optional[List[str]] = None, exit: bool = True) -> None:
        try:
            super().run(argv, exit)
        except BrokenPipeError:
            interrupts.silence(sys.stdout)  # so that the final flush does not fail again
            sys.exit(128 + signal.SIGPIPE)


ns = Collection(hosts, cp, run, status, stop, collect)
program = PipeSafeProgram(namespace=ns, version=__version__, name="corunner", binary="corunner")
