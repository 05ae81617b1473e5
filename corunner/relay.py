"""Push once, arrive everywhere: ``cp --relay``.

The controller opens SSH to every node as the direct path does, but sends
the payload once: to the first node of a chain, over that node's SSH stdin.
The chain grows as nodes come up (each new one is fed by the one that came
up before it), so the payload flows while the other logins go on.
Each node runs :mod:`corunner.relaynode` (stdlib only, sent as the boot code),
writes the bytes to a temporary file as they arrive, passes them on over TLS
to the next node, checks the sha256 and only then puts the copy in place. So
the controller's cost (bytes, CPU) does not grow with the number of nodes,
and the last node finishes soon after the first (a pipeline, as Kascade's).

Credentials are made for the transfer alone (a self-signed certificate and
key, :func:`credentials`) and reach the nodes on their SSH stdin, never on a
command line. Faults: a node's sender bypasses a successor that drops or stops
acknowledging (from the offset the next one has, see relaynode); a node that
makes no progress for ``serve_after`` seconds, and is the first such in the
chain, is served directly by the controller from the offset it has (its peers
cannot reach it, or its source died); a node served directly that still makes
no progress for ``give_up`` seconds fails as stalled. Every host ends with an
:class:`~corunner.fanout.Outcome`, as ``cp`` reports them.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime
import hashlib
import os
import posixpath
import queue
import secrets
import select
import selectors
import shlex
import socket
import ssl
import stat
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import fabric
import paramiko

from . import bootstrap, executor, relaynode, remote, transfer
from .errors import InternalError, RemoteError, StalledError, TransferError
from .fanout import Outcome
from .inventory import Host
from .spec import DEFAULT_PARALLEL
from .window import Gate, Window

#: ``--relay auto`` relays when the copies it saves the controller, (hosts - 1)
#: x size, are at least this many bytes: below it, the relay's fixed cost (a
#: login and a Python start on every node, ~1 s on the lab) is more than the
#: controller's time to send the copies itself (README: "Relayed pushes").
AUTO_MIN_SAVED = 128 << 20
#: ... and there are at least this many hosts (with two, the relay saves one copy).
AUTO_MIN_HOSTS = 3

#: Successors each node is told of: whom it feeds, then whom it may bypass to.
#: More consecutive failures than this, and the controller feeds the next one.
BYPASS_DEPTH = 16

#: The node side's start: check the interpreter, then LOADER reads the relay
#: program (relaynode) as its boot code from stdin. $1 = python; $2 and $3: a
#: remote_dir and the directory under it that the payload goes to, to be made
#: private first (``run --files --relay``), or "" for none (``cp --relay``).
RELAY_SCRIPT = r"""
py=$1 loader=@LOADER@
command -v "$py" >/dev/null 2>&1 || {
  echo "CORUNNER-ERROR python interpreter '$py' not found on the node (set python: in the inventory)" >&2
  exit 97; }
exec "$py" -I -S -c "$loader" corunner-relay "$2" "$3"
""".replace("@LOADER@", shlex.quote(bootstrap.LOADER))

#: Before the relay program: make the directory it writes in private, as a
#: start would (executor.private_dirs), or say why not as a FAIL line.
_PRIVATE = r"""
top, where = sys.argv[2:4]  # argv: -c corunner-relay TOP WHERE
if top:
    os.umask(0o077)
    why = private_dirs(top, where, True)
    if why:
        os.write(1, ("@MARKER@ FAIL " + " ".join(why.split()) + "\n").encode())
        sys.exit(1)
""".replace("@MARKER@", relaynode.MARKER)


@dataclass(frozen=True)
class Times:
    """The relay's patience, in seconds (tests shorten them)."""

    #: A node's sender gives up a successor that acknowledges nothing for this long.
    stall: float = 10.0
    #: A node without progress for this long is served directly by the controller.
    serve_after: float = 15.0
    #: A node served directly without progress for this long more has failed.
    give_up: float = 15.0
    #: A node's relay must say it listens within this long after the connection
    #: (None: as long as the node answers keepalives, as every start waits).
    start: Optional[float] = None


@dataclass(frozen=True)
class Credentials:
    """The transfer's TLS certificate and key (PEM) and the certificate's pin."""

    cert: str
    key: str
    pin: str  # sha256 of the certificate's DER, hex


def credentials() -> Credentials:
    """A fresh self-signed certificate and key for one transfer (EC P-256, a day's validity)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corunner relay")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # nodes' clocks differ
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    return Credentials(
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        hashlib.sha256(der).hexdigest(),
    )


@dataclass(frozen=True)
class Payload:
    """What travels: one file as it is, or the tree's tar (``kind`` file or tar)."""

    path: str
    kind: str
    name: str
    size: int
    sha256: str
    mode: int
    mtime: float

    @classmethod
    def of(cls, archive: transfer.Archive) -> Payload:
        path = archive.file or archive.path
        info = os.stat(path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        kind = "file" if archive.file else "tar"
        return cls(
            path,
            kind,
            archive.name,
            info.st_size,
            digest.hexdigest(),
            stat.S_IMODE(info.st_mode),
            info.st_mtime,
        )


def wanted(choice: object, size: int, hosts: int) -> bool:
    """Whether to relay: ``--relay`` (True), or ``auto`` by the measured thresholds."""
    if choice == "auto":
        return hosts >= AUTO_MIN_HOSTS and (hosts - 1) * size >= AUTO_MIN_SAVED
    return bool(choice)


def source_size(archive: transfer.Archive) -> int:
    """The bytes a relay would send: the file, or the tree's tar."""
    return os.path.getsize(archive.file or archive.path)


@dataclass
class Chain:
    """Who feeds whom, built as nodes come up: the listeners in the order they
    joined (each fed by the one before it), and the nodes served directly."""

    order: List[str] = field(default_factory=list)
    direct: List[str] = field(default_factory=list)

    def join(self, host: str, listens: bool) -> Tuple[str, ...]:
        """Add a node that came up; the nodes to tell of it, the nearest last.

        Each listener is told of the next BYPASS_DEPTH that join after it:
        whom it feeds, then whom it may bypass to. A node that cannot listen
        is served directly and told to nobody.
        """
        if not listens:
            self.direct.append(host)
            return ()
        told = tuple(self.order[-BYPASS_DEPTH:])
        self.order.append(host)
        return told


def plan_chain(listening: Sequence[Tuple[str, bool]]) -> Chain:
    """The chain of (host, listens) joining in that order."""
    chain = Chain()
    for host, listens in listening:
        chain.join(host, listens)
    return chain


def resume_offset(have: int, size: int) -> int:
    """Where the controller resumes feeding a node that reported ``have`` bytes."""
    return max(0, min(have, size))


@dataclass(frozen=True)
class Relayed:
    """How one host got its copy: through the chain, or directly from the controller."""

    via: str  # "head" (fed first), "relay" (by a peer) or "direct" (served after a fault)
    bytes_sent: int  # by the controller, to this host (boot code, config, payload)
    #: When its copy was in place (time.monotonic()): the spread from first to last.
    finished_at: float = 0.0
    #: Successors this host's sender skipped, with why (filled on while the relay runs).
    bypassed: List[str] = field(default_factory=list)


@dataclass
class _Node:
    """The controller's side of one host's relay."""

    host: Host
    conn: fabric.Connection
    chan: paramiko.Channel
    address: str
    dest: str  # where its copy lands
    port: Optional[int] = None
    nolisten: str = ""
    have: int = 0
    progress_at: float = 0.0
    done: bool = False
    error: Optional[RemoteError] = None
    direct: bool = False
    head: bool = False
    sent: int = 0
    began: float = field(default_factory=time.monotonic)
    buffer: bytes = b""
    skipped: List[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def over(self) -> bool:
        return self.done or self.error is not None

    def send(self, data: bytes, control: bool = False) -> None:
        """Send ``data`` whole (one frame), however slowly the node reads, unless stopped
        (a feeder's payload; ``control`` frames, N and Q, go to a node that is done too)."""
        with self.lock:
            view = memoryview(data)
            while view:
                if self.stop.is_set() and not control:
                    raise EOFError("stopped")
                try:
                    n = self.chan.send(view)
                except socket.timeout:
                    continue
                if n <= 0:
                    raise EOFError("the channel closed")
                view = view[n:]
                self.sent += n

    def lines(self) -> List[Tuple[str, str]]:
        """The status lines that came since the last call (shell noise dropped)."""
        while self.chan.recv_stderr_ready():
            self.chan.recv_stderr(remote.CHUNK)
        while self.chan.recv_ready():
            data = self.chan.recv(remote.CHUNK)
            if not data:
                break
            self.buffer += data
        said = []
        *whole, self.buffer = self.buffer.split(b"\n")
        for line in whole:
            status = relaynode.parse_status(line + b"\n")
            if status is not None:
                said.append(status)
        if len(self.buffer) > 1 << 16:
            self.buffer = b""  # a line that long is noise
        return said


def push(
    hosts: Sequence[Host],
    archive: transfer.Archive,
    dest: Union[str, Callable[[Host], str]],
    parallel: int = DEFAULT_PARALLEL,
    accept_new_host_keys: bool = False,
    done: Optional[Callable[[Outcome[Relayed]], None]] = None,
    times: Times = Times(),
    fed: Optional[Callable[[int], None]] = None,
    planned: Optional[Callable[[Dict[str, Tuple[str, int]]], None]] = None,
    private: bool = False,
    gateways: Optional[remote.Gateways] = None,
    keep: Optional[Dict[str, fabric.Connection]] = None,
) -> Dict[str, Outcome[Relayed]]:
    """Copy the archive's file or tree to ``dest`` on every host, sending it once.

    ``dest`` may be a host's own (a function of it). With ``private``, each
    host's directory of ``dest`` is made private from its remote_dir down, as
    a start makes its run directory (``run --files --relay``), through the
    run's own ``gateways``, and the connection of each host whose copy is in
    place is left open in ``keep`` for its start. ``done`` is called as each host ends (progress). ``fed(offset)`` is called
    by the thread feeding the chain's head after each chunk, and
    ``planned({host: (address, port)})`` once the chain is known: hooks for
    tests that break nodes mid-transfer or knock on a relay port.
    """
    payload = Payload.of(archive)
    creds = credentials()
    transfer_id = secrets.token_hex(16)
    code, packed = _node_code()
    boot = bootstrap.boot_frame(code) + packed
    outcomes: Dict[str, Outcome[Relayed]] = {}
    lock = threading.Lock()

    def end(
        host: Host, value: Optional[Relayed], error: Optional[RemoteError], began: float
    ) -> None:
        outcome: Outcome[Relayed] = Outcome(host, value, error, time.monotonic() - began)
        with lock:
            outcomes[host.id] = outcome
        if done:
            done(outcome)

    def dest_of(host: Host) -> str:
        return dest(host) if callable(dest) else dest

    def config(node_host: Host, address: str) -> Dict[str, object]:
        return {
            "id": transfer_id,
            "cert": creds.cert,
            "key": creds.key,
            "pin": creds.pin,
            "sha256": payload.sha256,
            "size": payload.size,
            "kind": payload.kind,
            "name": payload.name,
            "dest": dest_of(node_host),
            "mode": payload.mode,
            "mtime": payload.mtime,
            "bind": node_host.relay_address or address,
            "stall": times.stall,
            "script": transfer.PUSH_SCRIPT,
        }

    gate = Gate(Window(parallel))
    own_gateways = gateways is None
    if gateways is None:
        gateways = remote.Gateways(hosts, accept_new_host_keys)  # one connection per jump host
    jumps = gateways

    def start(host: Host) -> Optional[_Node]:
        began = time.monotonic()
        conn: Optional[fabric.Connection] = None
        if not gate.enter():
            return None
        took: Optional[float] = None
        try:
            conn = remote.connect(host, accept_new_host_keys, jumps)
            with remote.translated(host, conn):
                address = _reached_at(host, conn)
                where = dest_of(host)
                top, directory = (
                    (host.remote_dir, posixpath.dirname(where)) if private else ("", "")
                )
                command = remote.sh(RELAY_SCRIPT, host.python, top, directory).followed_by(boot)
                chan = remote.open_command(conn, host, command, timeout=1.0)
                node = _Node(host, conn, chan, address, where, began=began)
                node.send(command.head + relaynode.frame("C", config(host, address)))
                _await_listening(node, times.start)
            took = time.monotonic() - began
            return node
        except RemoteError as exc:
            error: RemoteError = exc
        except Exception as exc:  # a bug on one host must not abort the others
            error = InternalError.from_exception(host.id, exc)
        finally:
            gate.leave(took)
        if conn is not None:
            conn.close()
        end(host, None, error, began)
        return None

    arrivals: queue.SimpleQueue[Optional[_Node]] = queue.SimpleQueue()
    workers = max(1, min(parallel, len(hosts)))
    nodes: Dict[str, _Node] = {}
    _, client_ctx = relaynode.contexts(creds.cert, creds.key)
    hello = relaynode.HELLO + transfer_id.encode() + b"\n"
    peer = _Peer(client_ctx, hello, creds.pin, times.stall)
    with gateways if own_gateways else contextlib.nullcontext():
        pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="corunner")
        try:
            for host in hosts:
                pool.submit(lambda h: arrivals.put(start(h)), host)
            _relay(nodes, arrivals, len(hosts), payload, times, peer, fed, planned, end)
        finally:
            # Starts still in flight end within their own limits.
            pool.shutdown(wait=True, cancel_futures=True)
            while not arrivals.empty():  # came up after the relay was cut short
                late = arrivals.get()
                if late is not None:
                    nodes.setdefault(late.host.id, late)
            _close(nodes, outcomes, end, keep)
    return {h.id: outcomes[h.id] for h in hosts}


def _close(
    nodes: Dict[str, _Node],
    outcomes: Dict[str, Outcome[Relayed]],
    end: Callable[[Host, Optional[Relayed], Optional[RemoteError], float], None],
    keep: Optional[Dict[str, fabric.Connection]] = None,
) -> None:
    """Close every node's connection (those done go to ``keep`` if given); a node
    with no outcome yet was cut short."""
    for node in nodes.values():
        node.stop.set()
        if keep is not None and node.done:
            node.chan.close()  # the relay's session; the connection stays for what comes next
            keep[node.host.id] = node.conn
        else:
            node.conn.close()
        if node.host.id not in outcomes:  # the relay itself was interrupted
            why = TransferError(node.host.id, "the relay was interrupted before this copy ended")
            end(node.host, None, why, node.began)


def _reached_at(host: Host, conn: fabric.Connection) -> str:
    """The address the node was reached on: its relay listens there, peers connect there.

    Through a jump host or a ProxyCommand the socket's peer is not the node,
    so the host's own address (resolved on the node and by its peers) is taken.
    """
    if host.jump or host.proxy_command:
        return host.address
    peer: str = conn.client.get_transport().getpeername()[0]
    return peer


def _node_code() -> Tuple[str, bytes]:
    """The boot code: the private directory check, then relaynode compressed (about a
    quarter of its ~20 KB), run by LOADER.

    LOADER runs it with its own ``take``, which reads the rest from stdin.
    """
    with open(relaynode.__file__, "rb") as f:
        packed = zlib.compress(f.read(), 9)
    code = (
        "from __future__ import annotations\nimport sys, zlib\n"
        + bootstrap.embedded(executor.private_dirs)
        + _PRIVATE
        + f"exec(zlib.decompress(take({len(packed)})))\n"
    )
    return code, packed


def _await_listening(node: _Node, timeout: Optional[float]) -> None:
    """Wait for the node's PORT or NOLISTEN line; raise the node's own error otherwise.

    A node that stops answering is given up by its connection's keepalives.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    chan = node.chan
    while deadline is None or time.monotonic() < deadline:
        for word, text in node.lines():
            if word == "PORT" and text.isdigit():
                node.port = int(text)
                return
            if word == "NOLISTEN":
                node.nolisten = text
                return
            if word == "FAIL":
                raise TransferError(node.host.id, f"copy to {node.dest} failed: {text}")
        if chan.eof_received or chan.closed:
            remote.raise_if_hung(node.conn)
            err = b""
            while chan.recv_stderr_ready():
                err += chan.recv_stderr(remote.CHUNK)
            why = remote.last_line(err) or f"exit status {chan.recv_exit_status()}"
            raise TransferError(node.host.id, f"could not start the relay: {why}")
        select.select([chan], [], [], 0.2)
    raise StalledError(node.host.id, f"stalled: the relay did not start within {timeout:g}s")


def _relay(
    nodes: Dict[str, _Node],
    arrivals: queue.SimpleQueue[Optional[_Node]],
    expected: int,
    payload: Payload,
    times: Times,
    peer: _Peer,
    fed: Optional[Callable[[int], None]],
    planned: Optional[Callable[[Dict[str, Tuple[str, int]]], None]],
    end: Callable[[Host, Optional[Relayed], Optional[RemoteError], float], None],
) -> None:
    """Grow the chain as nodes come up (``expected`` arrivals: a node, or None for
    a start that failed), feed its head, watch every node to its end.

    ``nodes`` is filled in as they arrive (the caller closes them).
    """
    chain = Chain()
    feeders: List[threading.Thread] = []
    selector = selectors.DefaultSelector()

    def serve(
        node: _Node, hook: Optional[Callable[[int], None]] = None, tls: Optional[_Peer] = None
    ) -> None:
        now = time.monotonic()
        node.direct = True
        node.progress_at = now
        if node.host.id in chain.order:  # the nodes after it get their data through it again
            for later in chain.order[chain.order.index(node.host.id) + 1 :]:
                nodes[later].progress_at = max(nodes[later].progress_at, now)
        thread = threading.Thread(
            target=_feed, args=(node, payload, hook, tls), name="corunner-relay-feed", daemon=True
        )
        feeders.append(thread)
        thread.start()

    def join(node: _Node) -> None:
        host = node.host.id
        nodes[host] = node
        node.progress_at = time.monotonic()
        selector.register(node.chan, selectors.EVENT_READ, host)
        told = chain.join(host, node.port is not None)
        if node.port is None:
            serve(node)  # its peers cannot reach it
        elif not told:  # the first to listen: the head, fed from here
            node.head = True
            # Behind a jump host or a ProxyCommand the controller cannot reach its port: SSH.
            tunnelled = bool(node.host.jump or node.host.proxy_command)
            serve(node, fed, None if tunnelled else peer)
        else:
            target = [[node.host.relay_address or node.address, node.port]]
            for before in told:
                with contextlib.suppress(EOFError, OSError):
                    nodes[before].send(relaynode.frame("N", target), control=True)

    def finish(node: _Node, error: Optional[RemoteError]) -> None:
        node.error = error
        if error is None:
            node.done = True
        node.stop.set()
        via = "head" if node.head else "direct" if node.direct else "relay"
        value = Relayed(via, node.sent, time.monotonic(), node.skipped) if error is None else None
        end(node.host, value, error, node.began)

    arrived = 0
    try:
        while arrived < expected or any(not n.over for n in nodes.values()):
            while arrived < expected and not arrivals.empty():
                node = arrivals.get()
                arrived += 1
                if node is not None:
                    join(node)
                if arrived == expected and planned:
                    planned({h: (nodes[h].address, nodes[h].port or 0) for h in chain.order})
            for key, _ in selector.select(0.1 if arrived < expected else 0.25):
                node = nodes[key.data]
                for word, text in node.lines():
                    if word == "SKIP":
                        node.skipped.append(text)  # said after DONE too: its sender goes on
                    elif node.over:
                        continue
                    elif word == "HAVE" and text.isdigit() and int(text) > node.have:
                        node.have = int(text)
                        node.progress_at = time.monotonic()
                    elif word == "DONE":
                        node.have = payload.size
                        finish(node, None)
                    elif word == "FAIL":
                        why = f"copy to {node.dest} failed: {text}"
                        finish(node, TransferError(node.host.id, why))
                if node.chan.eof_received or node.chan.closed:
                    if not node.over:
                        finish(node, _lost(node))
                    selector.unregister(node.chan)
                elif node.error is not None:
                    selector.unregister(node.chan)
            _watch(nodes, chain, times, serve, finish)
    finally:
        selector.close()
    for node in nodes.values():
        if node.done:  # its relay stops listening and ends
            with contextlib.suppress(EOFError, OSError):
                node.send(relaynode.frame("Q"), control=True)
    for thread in feeders:
        thread.join(timeout=1.0)


def _watch(
    nodes: Dict[str, _Node],
    chain: Chain,
    times: Times,
    serve: Callable[[_Node], None],
    finish: Callable[[_Node, Optional[RemoteError]], None],
) -> None:
    """Serve directly the first stalled node of the chain; fail one served that still stalls.

    Stalled: no progress for ``serve_after`` seconds while a node before it
    holds more (on a slow, loaded fleet every node waits alike: none of them
    is stalled). Only the first: the nodes after it wait on it, and are fed
    again through it once it moves (serving restarts their clocks). A node
    whose every predecessor failed is served at once: nothing else can feed it.
    """
    now = time.monotonic()
    for node in nodes.values():
        if node.direct and not node.over and now - node.progress_at > times.give_up:
            why = f"stalled: no progress for {now - node.progress_at:.0f}s during the relay"
            finish(node, StalledError(node.host.id, f"{why} (host hung or overloaded)"))
    ahead = 0  # the most any live node before this one holds: what it could have
    for host in chain.order:
        node = nodes[host]
        behind = node.have < ahead
        if node.error is None:
            ahead = max(ahead, node.have)
        if node.over or node.direct:
            continue
        if _head_lost(nodes, chain, host) or (
            behind and now - node.progress_at > times.serve_after
        ):
            serve(node)
            return


def _head_lost(nodes: Dict[str, _Node], chain: Chain, host: str) -> bool:
    """Whether every node before ``host`` in the chain has failed (so nothing feeds it)."""
    before = chain.order[: chain.order.index(host)]
    return bool(before) and all(nodes[h].error is not None for h in before)


def _lost(node: _Node) -> RemoteError:
    """The error of a node whose session ended before it said DONE or FAIL."""
    verdict = remote.unanswered(node.conn)
    if verdict is not None:
        return StalledError(node.host.id, f"stalled: {verdict} (host hung or overloaded)")
    return TransferError(
        node.host.id,
        f"the relay ended at {node.have} of the bytes: the SSH session closed (node down or rebooted?)",
    )


@dataclass(frozen=True)
class _Peer:
    """What the controller needs to feed a node's relay port as its peers do."""

    context: ssl.SSLContext
    hello: bytes
    pin: str
    stall: float


def _feed(
    node: _Node,
    payload: Payload,
    hook: Optional[Callable[[int], None]],
    tls: Optional[_Peer] = None,
) -> None:
    """Send the payload to a node from the offset it has, until it has it all.

    With ``tls``, to its relay port as a peer would: Python's ssl costs the
    controller a fraction of Paramiko's CPU per byte. Over its SSH stdin
    otherwise, or when that port cannot be reached from here.
    """
    if tls is not None and node.port and _feed_tls(node, payload, hook, tls):
        return
    offset = resume_offset(node.have, payload.size)
    try:
        with open(payload.path, "rb") as f:
            while offset < payload.size and not node.stop.is_set():
                data = os.pread(f.fileno(), remote.CHUNK, offset)
                if not data:
                    return
                node.send(relaynode.data_header(offset, len(data)) + data)
                offset += len(data)
                if hook:
                    hook(offset)
    except (EOFError, OSError):
        return  # the node went: the watcher tells why


def _feed_tls(
    node: _Node, payload: Payload, hook: Optional[Callable[[int], None]], peer: _Peer
) -> bool:
    """Feed the node over TLS until it has it all; False if its port cannot be reached.

    A node that is slow to acknowledge is waited for (the watcher judges
    stalls by the node's own progress); a send that times out, or a dropped
    connection, is taken up again from the offset the node then says it has.
    """
    connected = False
    while not node.stop.is_set():
        try:
            sock, offset = _connect_peer(node, peer)
        except (OSError, ValueError):
            if not connected:
                return False
            node.stop.wait(1.0)  # gone, or restarting: the watcher tells which
            continue
        connected = True
        if _stream(sock, offset, node, payload, hook):
            return True
    return True


def _connect_peer(node: _Node, peer: _Peer) -> Tuple[ssl.SSLSocket, int]:
    """A TLS connection to the node's relay port, and the offset it says it has."""
    raw = socket.create_connection((node.address, node.port or 0), timeout=peer.stall)
    try:
        sock = peer.context.wrap_socket(raw)
        if not relaynode.pinned(sock, peer.pin):
            raise ssl.SSLError("not the transfer's certificate")
        sock.sendall(peer.hello)
        first = b""
        while len(first) < 8:
            got = sock.recv(8 - len(first))
            if not got:
                raise ConnectionError("closed before saying its offset")
            first += got
    except (OSError, ValueError):
        raw.close()
        raise
    return sock, int.from_bytes(first, "big")


def _stream(
    sock: ssl.SSLSocket,
    offset: int,
    node: _Node,
    payload: Payload,
    hook: Optional[Callable[[int], None]],
) -> bool:
    """Send from ``offset`` on one connection; True once the node acknowledged it all."""
    sent = acked = offset
    pending = bytearray()
    try:
        with sock, open(payload.path, "rb") as f:
            while acked < payload.size:
                if node.stop.is_set():
                    return True
                if sent < payload.size and sent - acked < relaynode.WINDOW:
                    data = os.pread(f.fileno(), relaynode.CHUNK, sent)
                    sock.sendall(data)
                    sent += len(data)
                    node.sent += len(data)
                    if hook:
                        hook(sent)
                    acked = max(acked, relaynode._acks(sock, pending, False) or acked)
                else:
                    acked = max(acked, relaynode._acks(sock, pending, True) or acked)
    except (OSError, ValueError):
        return False  # timed out mid-send, or dropped: connect again
    return True
