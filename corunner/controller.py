"""Orchestration of a run: dispatch the executor, watch heartbeats, decide, record.

The controller's main thread runs one loop: it polls the heartbeat listener
(or, with heartbeats off, the open SSH channels), feeds what arrives into the
pure liveness state machine, and checks silence and the deadline. A bounded
pool of workers connects to the nodes and starts the executor; each posts its
outcome to the loop through a queue. Nothing here prints: changes go to the
``on_change`` callback and the outcome is returned as a :class:`RunReport`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import importlib.util
import json
import marshal
import os
import queue
import resource
import secrets
import selectors
import shlex
import shutil
import socket
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import fabric
import paramiko

from . import executor as executor_module
from . import remote
from .errors import (
    EXIT_FAILED,
    EXIT_LOST,
    EXIT_OK,
    InternalError,
    RemoteError,
    StartError,
    UsageError,
)
from .fanout import DEFAULT_PARALLEL
from .inventory import Host
from .listener import Listener
from .liveness import Change, Fleet, State
from .record import RunRecord, new_run_id

EXECUTOR_SOURCE = executor_module.__file__

#: How a node loads the executor for probe and stop ($1 of the Python command
#: line, so that its processes read ``.../executor.py VERB ...``): imported,
#: not run as a script, so that Python loads the bytecode shipped beside it
#: (see executor_bytecode) instead of compiling ~1,500 lines on every node.
BOOT = (
    "import sys, os.path; sys.path.insert(0, os.path.dirname(sys.argv.pop(1)));"
    " from executor import main; sys.exit(main())"
)

#: The first code a node runs (``python -I -S -c``, argv: the executor's path,
#: then its own arguments): make the run directory, write the executor and
#: its bytecode from the first two pieces of stdin (see executor.unpack for
#: the format), import it and hand over; the executor unpacks the rest.
_UNPACK = r"""
import os, sys
x = sys.argv.pop(1)
d = os.path.dirname(os.path.dirname(x))
def take(n):
    b = b""
    while len(b) < n:
        k = os.read(0, n - len(b))
        if not k:
            sys.exit("CORUNNER-ERROR the upload ended early")
        b += k
    return b
os.umask(0o077)
try:
    os.makedirs(d + "/.corunner/__pycache__", exist_ok=True)
    os.chdir(d)
    for i in (0, 1):
        h = take(@HEADER@).split()
        with open(take(int(h[3])), "wb") as f:
            f.write(take(int(h[2])))
except OSError as e:
    sys.exit("CORUNNER-ERROR cannot write the executor in %s: %s" % (d, e.strerror or e))
sys.path.insert(0, os.path.abspath(".corunner"))
from executor import main
sys.exit(main())
""".replace("@HEADER@", str(executor_module.FRAME_HEADER))

#: Upload and start in one command: the upload arrives on stdin, and Python
#: reads it itself (no tar, mkdir or setsid on the node). The executor needs
#: only the standard library: ``-I -S`` skips site-packages and site hooks, a
#: third of Python's start-up on a Debian node.
#: $1 = run directory, $2 = python, $3 = "bg" (detached, heartbeats) or "fg".
START_SCRIPT = r"""
dir=$1 py=$2 unpack=@UNPACK@
command -v "$py" >/dev/null 2>&1 || {
  echo "CORUNNER-ERROR python interpreter '$py' not found on the node (set python: in the inventory)" >&2
  exit 97; }
if [ "$3" = fg ]; then set -- --foreground; else set --; fi
exec "$py" -I -S -c "$unpack" "$dir/.corunner/executor.py" start "$dir" "$@"
""".replace("@UNPACK@", shlex.quote(_UNPACK))

#: Ask the executor on the node about a run: $1 = run directory, $2 = python, $3 = verb.
ASK_SCRIPT = r"""
dir=$1 py=$2 boot=@BOOT@
if [ ! -f "$dir/.corunner/executor.py" ]; then  # never started here, or removed since
  case $3 in
    stop) echo "CORUNNER-STOP {\"stopped\": false, \"state\": \"missing\"}" ;;
    *) echo "CORUNNER-PROBE {\"state\": \"missing\"}" ;;
  esac
  exit 0; fi
exec "$py" -I -S -c "$boot" "$dir/.corunner/executor.py" "$3" "$dir"
""".replace("@BOOT@", shlex.quote(BOOT))


@functools.cache
def executor_bytecode() -> Optional[Tuple[str, bytes]]:
    """The executor compiled by this Python: (its name in __pycache__, a PEP 552 .pyc).

    A node whose Python has the same cache tag (e.g. ``cpython-311``) loads it
    and skips compiling the source, ~15 ms of CPU per node and run; any other
    Python does not look for that name and compiles the source as before. The
    .pyc is checked against the source's hash, never its mtime, so it stays
    valid whatever the clocks say and is ignored if executor.py is edited.
    """
    tag = sys.implementation.cache_tag
    if tag is None:
        return None
    with open(EXECUTOR_SOURCE, "rb") as f:
        source = f.read()
    code = compile(source, "executor.py", "exec", dont_inherit=True)
    checked_hash = 0b11  # PEP 552 flags: hash-based, checked
    header = importlib.util.MAGIC_NUMBER + checked_hash.to_bytes(4, "little")
    return f"executor.{tag}.pyc", header + importlib.util.source_hash(source) + marshal.dumps(code)


@dataclass(frozen=True)
class Program:
    """What to run: a local script (uploaded) with arguments, or a command line."""

    script: Optional[str] = None
    args: Tuple[str, ...] = ()
    cmd: Optional[str] = None

    def __post_init__(self) -> None:
        if (self.script is None) == (self.cmd is None):
            raise UsageError("give exactly one of --script FILE or --cmd COMMAND")
        if self.script is not None and not os.path.isfile(self.script):
            raise UsageError(f"no such script: {self.script}")

    @property
    def has_shebang(self) -> bool:
        if self.script is None:
            return False
        with open(self.script, "rb") as f:
            return f.read(2) == b"#!"

    def config_for(self, host: Host) -> Dict[str, Any]:
        """The ``argv``/``shell`` part of the executor's config on ``host``."""
        if self.cmd is not None:
            return {"argv": None, "shell": self.cmd}
        name = os.path.basename(self.script or "")
        argv = ["./" + name] if self.has_shebang else [host.python, name]
        return {"argv": argv + list(self.args), "shell": None}

    def describe(self) -> str:
        if self.cmd is not None:
            return self.cmd
        return " ".join(shlex.quote(p) for p in (self.script or "", *self.args))


@dataclass(frozen=True)
class RunSpec:
    """Everything about a run but the hosts. Times in seconds."""

    program: Program
    files: Tuple[str, ...] = ()
    interval: float = 1.0
    dead_after: Optional[float] = None  # default: 5 intervals
    deadline: Optional[float] = None  # from the start of the run
    heartbeat: bool = True
    listen: Optional[Tuple[str, int]] = None
    parallel: int = DEFAULT_PARALLEL
    accept_new_host_keys: bool = False
    linger: float = 60.0

    @property
    def silence_limit(self) -> float:
        return self.dead_after if self.dead_after is not None else 5 * self.interval


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
        states = {h.state for h in self.hosts}
        if states & {State.DEAD, State.UNREACHABLE, State.TIMEOUT, State.PENDING, State.ALIVE}:
            return EXIT_LOST
        if State.FAILED in states:
            return EXIT_FAILED
        return EXIT_OK

    def by_state(self) -> Dict[State, List[str]]:
        out: Dict[State, List[str]] = {}
        for h in self.hosts:
            out.setdefault(h.state, []).append(h.host)
        return out


class Payload:
    """What every node reads on the start command's stdin (see executor.unpack).

    Built once: the executor and its bytecode (read by the boot code), the
    user's script, and a tar of ``--files``; between them, each host's own
    config (its secret inside, mode 0600). The script and the tar are spooled
    to a temporary file, which :meth:`remove` deletes.
    """

    def __init__(self, program: Program, files: Sequence[str], workdir: str):
        for path in files:
            if not os.path.lexists(path):
                raise UsageError(f"no such file to upload: {path}")
        with open(EXECUTOR_SOURCE, "rb") as src:
            head = [_frame(".corunner/executor.py", src.read())]
        name, data = executor_bytecode() or ("none", b"")
        head.append(_frame(f".corunner/__pycache__/{name}", data))
        self.head = b"".join(head)
        fd, self.path = tempfile.mkstemp(prefix="corunner-payload-", dir=workdir)
        with os.fdopen(fd, "wb") as f:
            if program.script:
                mode = 0o755 if program.has_shebang else 0o644
                name = os.path.basename(program.script)
                size = os.path.getsize(program.script)
                f.write(executor_module.frame_header("F", os.fsencode(name), size, mode))
                with open(program.script, "rb") as src:
                    shutil.copyfileobj(src, f, remote.CHUNK)
            if files:
                f.write(executor_module.frame_header("T"))
                with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for path in files:
                        tar.add(path, arcname=os.path.basename(os.path.abspath(path)))
            else:
                f.write(executor_module.frame_header("E"))

    def chunks(self, config: Dict[str, Any]) -> Iterator[bytes]:
        yield self.head + _frame(".corunner/config.json", json.dumps(config).encode())
        yield from remote.file_chunks(self.path)

    def remove(self) -> None:
        os.unlink(self.path)


def _frame(name: str, data: bytes, mode: int = 0o600) -> bytes:
    return executor_module.frame_header("F", name.encode(), len(data), mode) + data


#: Listen addresses that mean "every interface", which no node can connect to.
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def raise_open_files_limit(wanted: int) -> None:
    """One socket per node reporting: lift the soft limit (often 1024) toward ``wanted``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def run_dir(host: Host, run_id: str) -> str:
    return f"{host.remote_dir.rstrip('/')}/{run_id}"


@dataclass
class _Started:
    host: str
    pid: Optional[int] = None
    error: Optional[str] = None
    channel: Optional[paramiko.Channel] = None
    connection: Optional[fabric.Connection] = None


class ChannelWatcher:
    """With heartbeats off: waits on the nodes' open SSH sessions in one selector."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.waker_r, self.waker_w = socket.socketpair()
        self.waker_r.setblocking(False)
        self.selector.register(self.waker_r, selectors.EVENT_READ, None)
        self.output: Dict[str, bytes] = {}
        self.open: Dict[str, Tuple[paramiko.Channel, fabric.Connection]] = {}

    def watch(self, host: str, chan: paramiko.Channel, conn: fabric.Connection) -> None:
        self.output[host] = b""
        self.open[host] = (chan, conn)
        self.selector.register(chan, selectors.EVENT_READ, host)

    def wakeup(self) -> None:
        try:
            self.waker_w.send(b"x")
        except OSError:
            pass

    def poll(self, timeout: float) -> List[Tuple[str, Optional[Dict[str, Any]]]]:
        """Hosts whose session ended, with the status the executor printed (or None)."""
        ended = []
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                try:
                    self.waker_r.recv(4096)
                except OSError:
                    pass
                continue
            host, chan = key.data, key.fileobj
            while chan.recv_ready():
                self.output[host] += chan.recv(remote.CHUNK)[-65536:]
            while chan.recv_stderr_ready():
                chan.recv_stderr(remote.CHUNK)
            if chan.eof_received or chan.closed:
                status = remote.find_marked(self.output[host], "CORUNNER-STATUS")
                ended.append((host, json.loads(status) if status else None))
                self.forget(host)
        return ended

    def forget(self, host: str) -> None:
        chan, conn = self.open.pop(host)
        self.selector.unregister(chan)
        chan.close()
        conn.close()

    def close(self) -> None:
        for host in list(self.open):
            self.forget(host)
        self.selector.close()
        self.waker_r.close()
        self.waker_w.close()


class Run:
    """One run over a set of hosts; call :meth:`execute` once."""

    def __init__(
        self,
        hosts: Sequence[Host],
        spec: RunSpec,
        meta: Optional[Dict[str, Any]] = None,
        on_change: Optional[Callable[[Change, Fleet], None]] = None,
        records: Optional[str] = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not hosts:
            raise UsageError("no hosts selected")
        self.hosts = {h.id: h for h in hosts}
        self.index = {host_id: i for i, host_id in enumerate(self.hosts)}
        self.spec = spec
        self.meta = meta or {}
        self.on_change = on_change
        self.clock = clock
        self.run_id = new_run_id()
        self.secret = secrets.token_bytes(32)
        self.record = RunRecord(self.run_id, records)
        self.events: queue.SimpleQueue[_Started] = queue.SimpleQueue()
        self.pids: Dict[str, int] = {}
        self.wall0, self.mono0 = time.time(), clock()
        self.fleet = Fleet.of(self.hosts, spec.silence_limit, self.mono0)
        self.listener: Optional[Listener] = None
        self.watcher: Optional[ChannelWatcher] = None

    # -- dispatch (worker threads) -------------------------------------------
    def _controller_addresses(self, conn: fabric.Connection, node: Host) -> List[List[Any]]:
        assert self.listener is not None
        if self.spec.listen:
            host, port = self.spec.listen
            if host in WILDCARDS:  # nodes cannot connect to "any": use the address they came from
                return [["", port]]
            return [[host, port]]
        with remote.translated(node):
            local = conn.client.get_transport().sock.getsockname()[0]
            address, port = self.listener.bind(local)
        return [[address, port], ["", port]]  # "": the client address in $SSH_CONNECTION

    def _dispatch(self, host: Host, payload: Payload) -> None:
        started = _Started(host.id)
        conn = None
        keep_open = False
        try:
            conn = remote.connect(host, self.spec.accept_new_host_keys)
            config = {
                "run_id": self.run_id,
                "host": host.id,
                "interval": self.spec.interval,
                "secret": self.secret.hex(),
                "heartbeat": self.spec.heartbeat,
                "linger": self.spec.linger,
                "controller": self._controller_addresses(conn, host) if self.spec.heartbeat else [],
                "env": {
                    "CORUNNER_RUN_ID": self.run_id,
                    "CORUNNER_HOST": host.id,
                    "CORUNNER_NODE_INDEX": str(self.index[host.id]),
                    "CORUNNER_NODE_COUNT": str(len(self.hosts)),
                },
                **self.spec.program.config_for(host),
            }
            mode = "bg" if self.spec.heartbeat else "fg"
            command = remote.sh(START_SCRIPT, run_dir(host, self.run_id), host.python, mode)
            if self.spec.heartbeat:
                done = remote.execute(conn, host, command, stdin=payload.chunks(config))
                pid = done.marked("CORUNNER-STARTED")
                if done.status != 0 or not pid or not pid.strip().isdigit():
                    raise StartError(host.id, f"could not start the executor: {done.error_line()}")
                started.pid = int(pid)
            else:
                started.channel = self._start_foreground(conn, host, command, payload, config)
                started.connection = conn
                keep_open = True
        except RemoteError as exc:
            started.error = exc.cause
        except Exception as exc:  # a bug must not leave the host pending forever
            started.error = InternalError.from_exception(host.id, exc).cause
        finally:
            if conn is not None and not keep_open:
                with contextlib.suppress(Exception):
                    conn.close()
            self.events.put(started)
            self._wakeup()

    def _start_foreground(
        self,
        conn: fabric.Connection,
        host: Host,
        command: str,
        payload: Payload,
        config: Dict[str, Any],
    ) -> paramiko.Channel:
        limit = remote.stall_limit(host)
        with remote.translated(host):
            chan = remote.open_command(conn, host, command, limit)
            try:
                for chunk in payload.chunks(config):
                    chan.sendall(chunk)
                chan.shutdown_write()
            except socket.timeout:
                chan.close()
                raise remote.Stalled(limit) from None
            except OSError:
                pass  # the node's command ended early; its status tells why
            chan.settimeout(None)  # from now on, silence is the program running
            return chan

    def _wakeup(self) -> None:
        if self.listener:
            self.listener.wakeup()
        if self.watcher:
            self.watcher.wakeup()

    # -- the loop (main thread) ----------------------------------------------
    def _changes(self, changes: List[Change]) -> None:
        for change in changes:
            self.record.event(
                run_id=self.run_id,
                host=change.host,
                old=change.old.value,
                new=change.new.value,
                reason=change.reason,
                at=round(self.wall0 + change.at - self.mono0, 3),
            )
            if self.on_change:
                self.on_change(change, self.fleet)

    def _take_started(self, pending: set) -> None:
        while True:
            try:
                started = self.events.get_nowait()
            except queue.Empty:
                return
            pending.discard(started.host)
            now = self.clock()
            if started.error is not None:
                self._changes(self.fleet.unreachable(started.host, now, started.error))
                continue
            if started.pid:
                self.pids[started.host] = started.pid
            self.fleet.started(started.host, now)
            if started.channel is not None and self.watcher is not None:
                self.watcher.watch(started.host, started.channel, started.connection)

    def _take_messages(self, timeout: float) -> None:
        if self.listener is not None:
            for message, at in self.listener.poll(timeout):
                if message.final:
                    changes = self.fleet.exited(message.host, at, message.exit_code, message.signal)
                else:
                    changes = self.fleet.heartbeat(message.host, at)
                self._changes(changes)
        elif self.watcher is not None:
            for host, status in self.watcher.poll(timeout):
                now = self.clock()
                if status is None:
                    self._changes(self.fleet.lost(host, now, "SSH session ended without a status"))
                else:
                    self._changes(
                        self.fleet.exited(host, now, status.get("exit_code"), status.get("signal"))
                    )

    def execute(self) -> RunReport:
        """Dispatch, watch until nothing is left to wait for, record. Returns the report."""
        raise_open_files_limit(len(self.hosts) + 256)
        self.record.create()
        self._save(final=False)
        spec = self.spec
        payload = Payload(spec.program, spec.files, tempfile.gettempdir())
        if spec.heartbeat:
            self.listener = Listener(self.run_id, self.secret, self.hosts)
            if spec.listen:
                self.listener.bind(*spec.listen)
        else:
            self.watcher = ChannelWatcher()
        pending = set(self.hosts)
        deadline = None if spec.deadline is None else self.mono0 + spec.deadline
        pool = concurrent.futures.ThreadPoolExecutor(
            max(1, min(spec.parallel, len(self.hosts))), thread_name_prefix="corunner-start"
        )
        interrupted = False
        try:
            for host in self.hosts.values():
                pool.submit(self._dispatch, host, payload)
            while pending or not self.fleet.finished:
                now = self.clock()
                if deadline is not None and now >= deadline:
                    # Queued starts never begin; those in flight finish, so a
                    # program that did start is recorded (timeout) and stoppable.
                    pool.shutdown(wait=True, cancel_futures=True)
                    self._take_started(pending)
                    now = self.clock()
                    self._changes(self.fleet.expire(now))
                    for host in pending:  # never started before the deadline
                        self._changes(
                            self.fleet.unreachable(host, now, "not started before the deadline")
                        )
                    break
                wait = 1.0
                silence = self.fleet.next_check() if spec.heartbeat else None
                for t in (silence, deadline):
                    if t is not None:
                        wait = min(wait, max(0.0, t - now))
                self._take_messages(wait)
                self._take_started(pending)
                if spec.heartbeat:  # without heartbeats, the open session is the sign of life
                    self._changes(self.fleet.tick(self.clock()))
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            # After Ctrl-C, starts already in flight are let finish (each within the
            # connect and stall limits) and queued ones are dropped: every program
            # that was started is then known, recorded, and stoppable.
            pool.shutdown(wait=interrupted, cancel_futures=True)
            if interrupted:
                self._take_started(pending)
            report = self._report(interrupted)
            self._save(final=True, report=report)
            self.record.close()
            if self.listener:
                self.listener.close()
            if self.watcher:
                self.watcher.close()
            payload.remove()
        return report

    # -- the outcome ---------------------------------------------------------
    def _report(self, interrupted: bool) -> RunReport:
        now = self.clock()
        rows = []
        for host_id, node in self.fleet.nodes.items():
            end = node.ended_at if node.ended_at is not None else now
            rows.append(
                HostReport(
                    host=host_id,
                    state=node.state,
                    exit_code=node.exit_code,
                    signal=node.signal,
                    error=node.error,
                    seconds=None if node.started_at is None else round(end - node.started_at, 3),
                    last_seen_age=None
                    if node.last_seen is None
                    else round(now - node.last_seen, 3),
                    pid=self.pids.get(host_id),
                    remote_dir=run_dir(self.hosts[host_id], self.run_id),
                )
            )
        rejected = dict(self.listener.rejected) if self.listener else {}
        return RunReport(
            self.run_id, rows, self.wall0, self.wall0 + now - self.mono0, interrupted, rejected
        )

    def _save(self, final: bool, report: Optional[RunReport] = None) -> None:
        data: Dict[str, Any] = {
            "run_id": self.run_id,
            "program": self.spec.program.describe(),
            "interval": self.spec.interval,
            "dead_after": self.spec.silence_limit,
            "deadline": self.spec.deadline,
            "heartbeat": self.spec.heartbeat,
            "started_at": self.wall0,
            "finished": final,
            **self.meta,
        }
        if report is None:
            data["hosts"] = {
                h: {"state": "pending", "remote_dir": run_dir(self.hosts[h], self.run_id)}
                for h in self.hosts
            }
        else:
            data["hosts"] = {h.host: h.to_json() for h in report.hosts}
            data["ended_at"] = report.ended_at
            data["exit_code"] = report.exit_code
            data["interrupted"] = report.interrupted
            data["rejected"] = report.rejected
        self.record.save(data)
