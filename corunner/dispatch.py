"""The run's I/O shell: start the executor on a node over SSH, and the two ways
of hearing back (heartbeats through the listener, or the open SSH sessions).

The run loop (:mod:`corunner.controller`) sees only the small types defined
here: a *starter* turns a host into :class:`Started` (or raises a
``RemoteError``), and a *watch* turns what nodes say into :class:`Heard`,
:class:`Exited` and :class:`Lost` events. Tests of the loop inject their own.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

import fabric
import paramiko

from . import executor as executor_module
from . import remote
from .bootstrap import HAVE_MARKER, NEED_MARKER, STDIN_PATH, Payload, start_command
from .errors import RemoteError, StartError
from .executor import NOREACH_MARKER
from .inventory import Host
from .listener import Listener
from .spec import RunSpec
from .tunnels import Tunnels

#: Listen addresses that mean "every interface", which no node can connect to.
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


@dataclass
class Started:
    """A host whose executor runs. ``at``: when its start command was sent (run clock)."""

    host: str
    at: float
    pid: Optional[int] = None
    #: Heartbeats off: the open session to watch for the executor's exit.
    session: Any = None
    #: Bytes sent to the node to start it (the command's stdin: scripts, upload).
    sent: int = 0
    #: The program could not even start: its (exit code, signal, why), said by the start.
    ended: Optional[Tuple[Optional[int], Optional[int], Optional[str]]] = None
    #: The node found no path to the controller for its heartbeats: its one line.
    unheard: Optional[str] = None


@dataclass(frozen=True)
class Heard:
    """A heartbeat from a host's executor at time ``at``."""

    host: str
    at: float


@dataclass(frozen=True)
class Exited:
    """A host's program ended (exit code or signal) at time ``at``."""

    host: str
    at: float
    exit_code: Optional[int]
    signal: Optional[int]
    #: Why the program could not start, when the node said so.
    error: Optional[str] = None
    #: ``stop`` ended it.
    stopped: bool = False


@dataclass(frozen=True)
class Lost:
    """The channel that told us about a host broke, with no outcome."""

    host: str
    at: float
    reason: str


Event = Union[Heard, Exited, Lost]


class ListenerWatch:
    """Heartbeats through the listener, as events."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener

    def started(self, started: Started) -> None:
        """Nothing to do: the executor connects to us."""

    def poll(self, timeout: float) -> List[Event]:
        events: List[Event] = []
        for message, at in self.listener.poll(timeout):
            if message.final:
                stopped = message.state == executor_module.STATE_STOPPED
                events.append(
                    Exited(message.host, at, message.exit_code, message.signal, stopped=stopped)
                )
            else:
                events.append(Heard(message.host, at))
        return events

    def wakeup(self) -> None:
        self.listener.wakeup()

    def rejected(self) -> Dict[str, int]:
        return dict(self.listener.rejected)

    def close(self) -> None:
        self.listener.close()


class SessionWatch:
    """Heartbeats off: each node's SSH session stays open until its executor exits."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.channels = remote.ChannelWatcher()

    def started(self, started: Started) -> None:
        chan, conn = started.session
        self.channels.watch(started.host, chan, conn)

    def poll(self, timeout: float) -> List[Event]:
        events: List[Event] = []
        for host, output in self.channels.poll(timeout):
            status = executor_module.read_marked(output, "CORUNNER-STATUS")
            outcome = executor_module.final_outcome(status)
            if outcome is None:
                events.append(Lost(host, self.clock(), "SSH session ended without a status"))
            else:
                assert status is not None
                why = status.get("error") if status.get("state") == "error" else None
                error = why if isinstance(why, str) else None
                stopped = bool(status.get("stopped"))
                events.append(Exited(host, self.clock(), *outcome, error=error, stopped=stopped))
        return events

    def wakeup(self) -> None:
        self.channels.wakeup()

    def rejected(self) -> Dict[str, int]:
        return {}

    def close(self) -> None:
        self.channels.close()


class SshStarter:
    """Connects to a host and starts the executor there with its upload (worker threads)."""

    def __init__(
        self,
        run_id: str,
        secret: bytes,
        hosts: Sequence[Host],
        spec: RunSpec,
        payload: Payload,
        clock: Callable[[], float],
        listener: Optional[Listener],
    ) -> None:
        self.run_id, self.secret, self.spec = run_id, secret, spec
        self.payload, self.clock, self.listener = payload, clock, listener
        self.index = {h.id: i for i, h in enumerate(hosts)}
        self.count = len(hosts)
        #: The run's connections to jump hosts, shared by the hosts behind them.
        self.gateways = remote.Gateways(hosts, spec.accept_new_host_keys)
        #: Connections that carry a heartbeat tunnel: open until the run ends,
        #: and opened again if one drops meanwhile.
        self.tunnels = Tunnels(self._reopen_tunnel, remote.is_open)
        #: Hosts whose --files the relay put in their run directory already.
        self.staged: Set[str] = set()
        #: Hosts the relay could not log in to: their start fails alike, at once.
        self.refused: Dict[str, RemoteError] = {}
        #: Connections the relay left open, each taken by its host's start.
        self.opened: Dict[str, fabric.Connection] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the tunnels' connections, then the jump hosts' (the end of the run).

        Never waits for a node: a closed transport stops at once, answered or not.
        """
        with self._lock:
            unused = list(self.opened.values())  # the relay's, for starts that never came
            self.opened = {}
        self.tunnels.close()
        for conn in unused:
            conn.close()
        self.gateways.close()

    def config(
        self, conn: fabric.Connection, host: Host, tunnel: Optional[int] = None
    ) -> Dict[str, Any]:
        """The executor's config.json for ``host`` (its format: executor.config_document).

        ``tunnel``: the node-local port whose connections reach our listener
        through the SSH connection; the executor sends there only.
        """
        spec = self.spec
        if not spec.heartbeat:
            controller: List[List[Any]] = []
        elif tunnel is not None:
            controller = [["127.0.0.1", tunnel]]
        else:
            controller = self._controller_addresses(conn, host)
        return executor_module.config_document(
            run_id=self.run_id,
            host=host.id,
            interval=spec.interval,
            secret=self.secret,
            heartbeat=spec.heartbeat,
            linger=spec.linger,
            controller=controller,
            env={
                **dict(host.env),
                **dict(spec.env),
                "CORUNNER_RUN_ID": self.run_id,
                "CORUNNER_HOST": host.id,
                "CORUNNER_NODE_INDEX": str(self.index[host.id]),
                "CORUNNER_NODE_COUNT": str(self.count),
            },
            stdin=STDIN_PATH if spec.stdin else None,
            become=spec.become or host.become,
            **spec.program.config_for(host),
        )

    def _controller_addresses(self, conn: fabric.Connection, node: Host) -> List[List[Any]]:
        if self.spec.listen:
            host, port = self.spec.listen
            if host in WILDCARDS:  # nodes cannot connect to "any": use the address they came from
                return [["", port]]
            return [[host, port]]
        assert self.listener is not None
        with remote.translated(node):
            # Through a jump host: our address on the first hop, which the
            # node seldom reaches (it then says so: use a tunnel).
            local = remote.local_address(conn) or "127.0.0.1"
            address, port = self.listener.bind(local)
        return [[address, port], ["", port]]  # "": the client address in $SSH_CONNECTION

    def _tunnel(self, conn: fabric.Connection, host: Host, port: int = 0) -> int:
        """Ask ``host``'s sshd to forward a port of its own on 127.0.0.1 (``port``,
        or one it chooses) to our listener over ``conn``, as ``ssh -R`` does; the port.

        Each connection the executor makes there arrives as a channel, which
        the listener adopts as an accepted socket. Raises StartError if sshd
        refuses (``AllowTcpForwarding no``).
        """
        listener = self.listener
        assert listener is not None

        def arrived(chan: Any, origin: Any, server: Any) -> None:
            listener.adopt(chan)

        with remote.translated(host, conn):
            transport = conn.client.get_transport()
            try:
                return int(transport.request_port_forward("127.0.0.1", port, arrived))
            except paramiko.SSHException as exc:
                if not transport.is_active():
                    raise
                raise StartError(
                    host.id,
                    "its sshd refuses to forward a port for the heartbeats "
                    f"({exc}; AllowTcpForwarding?): use --heartbeat-via direct or --no-heartbeat",
                ) from exc

    @staticmethod
    def _not_started(
        done: remote.Completed,
    ) -> Optional[Tuple[Optional[int], Optional[int], Optional[str]]]:
        """The outcome a start printed instead of a pid: its program could not be executed."""
        status = executor_module.read_marked(done.stdout, "CORUNNER-STATUS")
        outcome = executor_module.final_outcome(status)
        if status is None or outcome is None or done.status != 0:
            return None
        error = status.get("error")
        return (*outcome, error if isinstance(error, str) else None)

    def __call__(self, host: Host) -> Started:
        """Start ``host``'s executor; raises RemoteError (the host is then unreachable).

        A host whose heartbeats come through a tunnel keeps its connection
        open until :meth:`close`; so does one watched over its session.
        """
        if host.id in self.refused:
            raise self.refused[host.id]
        with self._lock:
            conn = self.opened.pop(host.id, None)
        if conn is None or not remote.is_open(conn):
            if conn is not None:
                conn.close()
            conn = remote.connect(host, self.spec.accept_new_host_keys, self.gateways)
        keep_open = False
        try:
            tunnel = None
            if self.spec.heartbeat and host.heartbeat_via(self.spec.heartbeat_via) == "tunnel":
                tunnel = self._tunnel(conn, host)
            started = self._start(conn, host, tunnel)
            if started.session is not None:
                keep_open = True  # the SessionWatch closes it
            elif tunnel is not None and started.ended is None:
                keep_open = self.tunnels.keep(host, conn, tunnel)
            return started
        finally:
            if not keep_open:
                conn.close()

    def _reopen_tunnel(self, host: Host, port: int) -> fabric.Connection:
        """Log in to ``host`` again and forward its heartbeat ``port`` once more
        (its tunnel dropped: :mod:`corunner.tunnels`); raises if not yet possible."""
        conn = remote.connect(host, self.spec.accept_new_host_keys, self.gateways)
        try:
            self._tunnel(conn, host, port)
        except BaseException:
            conn.close()
            raise
        return conn

    def _start(self, conn: fabric.Connection, host: Host, tunnel: Optional[int]) -> Started:
        config = self.config(conn, host, tunnel)
        command = start_command(host, self.run_id, foreground=not self.spec.heartbeat)
        sent = self.clock()
        reply = self.payload.reply(config, staged=host.id in self.staged)
        markers = (HAVE_MARKER, NEED_MARKER)
        if not self.spec.heartbeat:
            chan, size = remote.start_streaming(conn, host, command, markers, reply)
            return Started(host.id, sent, session=(chan, conn), sent=size)
        done = remote.converse(conn, host, command, markers, reply)
        pid = done.marked("CORUNNER-STARTED")
        ended = self._not_started(done)
        if ended is not None:
            return Started(host.id, sent, sent=done.sent, ended=ended)
        if done.status != 0 or not pid or not pid.strip().isdigit():
            raise StartError(host.id, f"could not start the executor: {done.error_line()}")
        unheard = done.marked(NOREACH_MARKER)
        return Started(host.id, sent, pid=int(pid), sent=done.sent, unheard=unheard)
