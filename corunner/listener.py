"""The controller's heartbeat server: one selector loop for every node of a run.

The controller drives the loop by calling :meth:`Listener.poll`, so there is no
thread per node and no asyncio. Input from the network is never trusted: every
line is decoded and authenticated by :func:`corunner.executor.decode`, and every
rejected line or connection is counted in :attr:`Listener.rejected`, never
raised. Memory per connection is bounded by ``Limits.max_line``; a flood of
silent connections is shed by evicting the quietest one, so real nodes always
get in.
"""

from __future__ import annotations

import collections
import errno
import select
import selectors
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol

from corunner.executor import MAX_LINE, Heartbeat, ProtocolError, ack_line, decoder

#: Idle connections are looked for at most this often (seconds).
SWEEP_INTERVAL = 1.0
#: Bytes asked of the kernel per read: a whole backlog of lines in one call.
CHUNK = 65536
#: Connections accepted per readiness event, so a connect flood cannot starve reads.
ACCEPT_BATCH = 256
#: After running out of file descriptors, stop accepting for this long (seconds).
ACCEPT_PAUSE = 0.2
#: How long poll() keeps gathering after the first message arrived (seconds).
BATCH_WINDOW = 0.04
#: Connections allowed beyond one per known host, whatever Limits says.
HOST_HEADROOM = 64

_WAKE = "wake"


@dataclass(frozen=True)
class Limits:
    """Bounds that keep a hostile or broken peer from exhausting the controller.

    ``idle_timeout`` is the seconds a connection may go without a valid message.
    A Listener raises ``max_connections`` to its number of hosts plus
    HOST_HEADROOM, so that real nodes never evict each other.
    """

    max_line: int = MAX_LINE
    max_connections: int = 4096
    idle_timeout: float = 30.0


class _Peer(Protocol):
    """What the listener calls on a connection: a socket, or an adopted SSH channel."""

    def fileno(self) -> int: ...
    def recv(self, size: int) -> bytes: ...
    def send(self, data: bytes) -> int: ...
    def close(self) -> None: ...


class _ChannelPeer:
    """A forwarded SSH channel (a heartbeat tunnel) behaving as a non-blocking socket.

    Its ``fileno`` is Paramiko's pipe, readable when data or the end arrived,
    so the channel waits in the same epoll as every TCP connection.
    """

    __slots__ = ("chan",)

    def __init__(self, chan: Any) -> None:
        self.chan = chan
        chan.setblocking(False)

    def fileno(self) -> int:
        return int(self.chan.fileno())

    def recv(self, size: int) -> bytes:
        try:
            return bytes(self.chan.recv(size))
        except socket.timeout:
            raise BlockingIOError from None

    def send(self, data: bytes) -> int:
        return int(self.chan.send(data))

    def close(self) -> None:
        self.chan.close()


class _Conn:
    """One accepted connection: its socket, a partial line, and when it last made sense."""

    __slots__ = ("sock", "fd", "buf", "last_valid", "talked")

    def __init__(self, sock: _Peer, now: float) -> None:
        self.sock = sock
        self.fd = sock.fileno()  # -1 once dropped
        self.buf = b""
        self.last_valid = now  # clock() of the last accepted message, or of the accept
        self.talked = False  # has sent at least one accepted message


class _Listening:
    """Selector tag for a listening socket."""

    __slots__ = ("sock",)

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


class _ReadReadiness:
    """Which of many sockets can be read, each reported as the object it was registered with.

    epoll where the system has it: at 10,000 nodes a selectors selector adds
    ~0.5 us per event (a key lookup and a tuple), a tenth of a message's cost.
    Elsewhere, the selectors module's best selector.
    """

    def __init__(self) -> None:
        if hasattr(select, "epoll"):
            self._epoll: Optional[select.epoll] = select.epoll()
        else:
            self._epoll = None
            self._selector = selectors.DefaultSelector()  # only where there is no epoll
        self._targets: dict[int, object] = {}

    def register(self, sock: _Peer, target: object) -> None:
        fd = sock.fileno()
        if self._epoll is not None:
            self._epoll.register(fd, select.EPOLLIN)
        else:
            self._selector.register(fd, selectors.EVENT_READ)
        self._targets[fd] = target

    def unregister(self, sock: _Peer) -> None:
        fd = sock.fileno()
        del self._targets[fd]  # KeyError if not registered, as selectors does
        if self._epoll is not None:
            self._epoll.unregister(fd)
        else:
            self._selector.unregister(fd)

    def ready(self, timeout: float) -> list[object]:
        """The targets of the sockets readable within ``timeout`` seconds (or closed, or in error)."""
        targets = self._targets
        if self._epoll is not None:
            events = self._epoll.poll(timeout, max(1, len(targets)))
            return [targets[fd] for fd, _ in events]
        return [targets[key.fd] for key, _ in self._selector.select(timeout)]

    def close(self) -> None:
        (self._epoll or self._selector).close()


class Listener:
    """Accepts authentic heartbeats of one run from its known hosts.

    A message is accepted when it decodes, carries this run id and a known
    host, and its seq is above the last one accepted for that host. An accepted
    final message is answered with ``ack_line(seq)`` on its connection; the
    executor resends the final message (with a new seq) until it gets one, so
    the controller may see more than one final message per host.

    ``clock`` (seconds, monotonic) stamps received messages and drives idle
    timeouts; inject a fake one to test timeouts without waiting. Only
    :meth:`bind`, :meth:`wakeup` and :attr:`addresses` may be called from other
    threads; :meth:`poll` belongs to the one thread that drives the loop.
    """

    def __init__(
        self,
        run_id: str,
        secret: bytes,
        hosts: Iterable[str],
        limits: Limits = Limits(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_id = run_id
        self.limits = limits
        self.rejected: collections.Counter[str] = collections.Counter()
        self._decode = decoder(bytes(secret))
        self._clock = clock
        # host -> last accepted seq; membership is the set of known hosts.
        self._last_seq: dict[str, int] = dict.fromkeys(hosts, 0)
        self._max_line = limits.max_line
        self._max_connections = max(limits.max_connections, len(self._last_seq) + HOST_HEADROOM)
        self._sel = _ReadReadiness()
        self._lock = threading.Lock()
        self._bound: dict[str, tuple[str, int]] = {}
        self._listening: list[socket.socket] = []
        self._pending: list[socket.socket] = []
        self._adopted: list[_ChannelPeer] = []  # tunnels handed over, not yet registered
        self._first_port = 0
        self._accept_paused_until = 0.0
        # Both ordered by last_valid, oldest first: eviction and idle sweeps pop the front.
        self._silent: collections.OrderedDict[int, _Conn] = collections.OrderedDict()
        self._talking: collections.OrderedDict[int, _Conn] = collections.OrderedDict()
        self._next_sweep = clock() + SWEEP_INTERVAL
        self._closed = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, _WAKE)
        self._wake_sel = selectors.DefaultSelector()  # the wake socket alone, for _doze
        self._wake_sel.register(self._wake_r, selectors.EVENT_READ)

    # -- binding ----------------------------------------------------------

    def bind(self, host: str, port: int = 0) -> tuple[str, int]:
        """Listen on ``host``; returns the bound (address, port).

        Binding a host twice returns the first address. With ``port`` 0, a later
        bind first tries the port of the first one, so every address of a run
        tends to share one port. Raises OSError if the address cannot be bound.
        """
        with self._lock:
            if self._closed:
                raise OSError(errno.EBADF, "listener is closed")
            if host in self._bound:
                return self._bound[host]
            if port:
                sock = _listen(host, port)
            elif self._first_port:
                try:
                    sock = _listen(host, self._first_port)
                except OSError:
                    sock = _listen(host, 0)
            else:
                sock = _listen(host, 0)
            address = sock.getsockname()[:2]
            self._bound[host] = address
            self._first_port = self._first_port or address[1]
            self._listening.append(sock)
            self._pending.append(sock)
        self.wakeup()
        return address

    def adopt(self, channel: Any) -> None:
        """Serve ``channel`` (an SSH channel forwarded from a node: a heartbeat
        tunnel) as if it were an accepted connection; safe from any thread.

        Everything else holds for it: authentication, limits, eviction, ACKs.
        """
        with self._lock:
            if self._closed:
                channel.close()
                return
            self._adopted.append(_ChannelPeer(channel))
        self.wakeup()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every bound (address, port), in bind order."""
        with self._lock:
            return list(self._bound.values())

    def wakeup(self) -> None:
        """Make a blocked :meth:`poll` return now; safe from any thread."""
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # buffer full means a wakeup is already pending; closed means no poll

    # -- the loop -----------------------------------------------------------

    def poll(self, timeout: float) -> list[tuple[Heartbeat, float]]:
        """Serve I/O for up to ``timeout`` seconds; return accepted messages.

        Once a message has arrived, poll lets BATCH_WINDOW seconds pass and
        then reads everything that came meanwhile in one pass: thousands of
        nodes cost ~25 passes a second, not a system call and a loop turn per
        message. Returns then, at once on :meth:`wakeup`, else at the
        timeout. Each message comes with its receive time from ``clock``.
        """
        out: list[tuple[Heartbeat, float]] = []
        if self._closed:
            return out
        end = time.monotonic() + max(0.0, timeout)
        while True:
            self._resume_accepting()
            wait = end - time.monotonic()
            if self._silent or self._talking:
                wait = min(wait, SWEEP_INTERVAL)
            if self._pending:
                wait = min(wait, ACCEPT_PAUSE)
            woken = self._serve(wait, out)
            now = self._clock()
            if now >= self._next_sweep:
                self._sweep(now)
            mono = time.monotonic()
            if woken or mono >= end:
                return out
            if out:
                if not self._doze(min(end, mono + BATCH_WINDOW) - mono):
                    self._serve(0.0, out)
                return out

    def _serve(self, wait: float, out: list[tuple[Heartbeat, float]]) -> bool:
        """One select: read, accept and drain what is ready; True if woken."""
        woken = False
        for data in self._sel.ready(max(0.0, wait)):
            if data.__class__ is _Conn:
                self._read(data, out)
            elif data is _WAKE:
                woken = True
                self._drain_wake()
            elif isinstance(data, _Listening):
                self._accept(data.sock)
        return woken

    def _doze(self, seconds: float) -> bool:
        """Sleep while the batch fills, waking early only for :meth:`wakeup`; True if woken."""
        if seconds > 0 and self._wake_sel.select(seconds):
            self._drain_wake()
            return True
        return False

    def _resume_accepting(self) -> None:
        if self._adopted:
            with self._lock:
                adopted, self._adopted = self._adopted, []
            for peer in adopted:
                self._serve_peer(peer)
        if self._pending and time.monotonic() >= self._accept_paused_until:
            with self._lock:
                pending, self._pending = self._pending, []
            for sock in pending:
                self._sel.register(sock, _Listening(sock))

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if self._evict():
                        continue
                    self._pause_accepting()
                    return
                continue  # e.g. ECONNABORTED: that peer is gone, try the next
            sock.setblocking(False)
            self._serve_peer(sock)

    def _serve_peer(self, sock: _Peer) -> None:
        """Start reading a new connection (accepted, or an adopted tunnel)."""
        if len(self._silent) + len(self._talking) >= self._max_connections:
            self._evict()
        conn = _Conn(sock, self._clock())
        self._silent[conn.fd] = conn
        self._sel.register(sock, conn)

    def _pause_accepting(self) -> None:
        """Out of descriptors with nothing to evict: stop the accept busy loop awhile."""
        self._accept_paused_until = time.monotonic() + ACCEPT_PAUSE
        for sock in self._listening:
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                continue
            with self._lock:
                self._pending.append(sock)

    def _evict(self) -> bool:
        """Close the connection longest without a valid message, silent ones first."""
        table = self._silent or self._talking
        if not table:
            return False
        self._drop(next(iter(table.values())))
        self.rejected["evicted"] += 1
        return True

    def _sweep(self, now: float) -> None:
        """Close connections that sent nothing valid for ``idle_timeout`` seconds."""
        self._next_sweep = now + SWEEP_INTERVAL
        limit = now - self.limits.idle_timeout
        for table in (self._silent, self._talking):
            while table:
                conn = next(iter(table.values()))
                if conn.last_valid > limit:
                    break
                self._drop(conn)
                self.rejected["idle"] += 1

    def _drop(self, conn: _Conn) -> None:
        """Close a connection once; its fd may be reused by the next accept."""
        if conn.fd < 0:
            return
        (self._talking if conn.talked else self._silent).pop(conn.fd, None)
        self._sel.unregister(conn.sock)
        conn.sock.close()
        conn.fd = -1

    def _read(self, conn: _Conn, out: list[tuple[Heartbeat, float]]) -> None:
        """Read what one connection sent and accept its complete, authentic lines."""
        if conn.fd < 0:
            return  # dropped earlier in this batch of events (evicted by an accept)
        try:
            data = conn.sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:
            self._drop(conn)  # a partial line at EOF is just dropped with the peer
            return
        if conn.buf:
            data = conn.buf + data
        lines = data.split(b"\n")
        rest = lines.pop()
        max_line = self._max_line
        if lines:
            now = self._clock()
            for line in lines:
                if len(line) >= max_line:  # with its newline it exceeds max_line
                    self._oversize(conn)
                    return
                self._accept_line(conn, line, now, out)
        if len(rest) >= max_line:  # can no longer end within max_line
            self._oversize(conn)
            return
        conn.buf = rest

    def _oversize(self, conn: _Conn) -> None:
        """A line too long to be ours: close rather than buffer it."""
        self.rejected["oversize"] += 1
        self._drop(conn)

    def _accept_line(
        self, conn: _Conn, line: bytes, now: float, out: list[tuple[Heartbeat, float]]
    ) -> None:
        try:
            hb = self._decode(line)
        except ProtocolError as exc:
            self.rejected[exc.reason] += 1
            return
        host, seq = hb.host, hb.seq
        if hb.run_id != self.run_id:
            self.rejected["wrong_run"] += 1
            return
        last = self._last_seq.get(host)
        if last is None:
            self.rejected["unknown_host"] += 1
            return
        if seq <= last:
            self.rejected["replay"] += 1
            return
        self._last_seq[host] = seq
        out.append((hb, now))
        conn.last_valid = now
        if conn.talked:
            self._talking.move_to_end(conn.fd)
        else:
            conn.talked = True
            del self._silent[conn.fd]
            self._talking[conn.fd] = conn
        if hb.final:
            try:
                conn.sock.send(ack_line(seq))
            except OSError:
                pass  # the executor retries with a new seq until it gets an ACK

    # -- teardown -----------------------------------------------------------

    def close(self) -> None:
        """Close every socket; later polls return nothing. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            listening, self._listening, self._pending = self._listening, [], []
            adopted, self._adopted = self._adopted, []
        for peer in adopted:
            peer.close()
        for table in (self._silent, self._talking):
            for conn in list(table.values()):
                self._drop(conn)
        for sock in listening:
            sock.close()
        self._sel.close()
        self._wake_sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _listen(host: str, port: int) -> socket.socket:
    """A non-blocking listening TCP socket on (host, port); host "" means all addresses."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
        sock.listen(4096)  # the kernel caps this at net.core.somaxconn
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
