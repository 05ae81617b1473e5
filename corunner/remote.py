"""The SSH shell around corunner: connect with checked host keys, run one
quoted command per node per phase, stream bytes in and out.

Fabric's ``Connection`` carries the settings; the data path is a raw Paramiko
channel, because Invoke's ``in_stream`` reads one byte per 10 ms and SFTP costs
a round trip per request. Every command runs under ``sh -c`` with every value
quoted by :func:`shlex.quote`, and every answer we parse is prefixed with a
marker, so noisy shell start-up files on the node cannot confuse us.

Paramiko and socket errors become :class:`~corunner.errors.RemoteError`
subclasses whose one-line message names the host and what to do. No exchange
waits forever: a node that makes no progress for :func:`stall_limit` seconds
(hung, or drowning) ends with a "stalled" error.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from typing import IO, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar

import fabric
import paramiko

from .errors import AuthError, ConnectError, HostKeyError, RemoteError, StalledError
from .inventory import Host

T = TypeVar("T")

#: Chunk size for streaming: large enough to amortise Python overhead per call.
CHUNK = 1 << 18
#: Prefer AES-GCM: it needs no separate MAC pass, which is most of Paramiko's CPU.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr")

_known_hosts_lock = threading.Lock()


class Stalled(socket.timeout):
    """A node made no progress in an SSH exchange for too long: hung or overloaded."""

    def __init__(self, seconds: float, what: str = "no progress") -> None:
        super().__init__(f"{what} for {seconds:g}s")


def stall_limit(host: Host) -> float:
    """Seconds without progress after which an exchange with ``host`` is given up.

    sshd answers a command request at once and data flows continuously, so a
    node silent this long mid-exchange is stopped, hung on a disk, or drowning:
    it is reported, never waited for forever.
    """
    return max(20.0, 2 * host.connect_timeout)


def _fresh_config() -> fabric.Config:
    """A Fabric config for one connection, never shared between threads.

    ``Connection.__init__`` writes into its config (``self.forward_agent = ...``
    is a config key), and each write re-merges the whole config, emptying it
    for a moment: a config shared by concurrent connections makes one of them
    fail at random with "No attribute or config key found for 'gateway'".
    Building one costs ~0.2 ms.
    """
    return fabric.Config(lazy=True, overrides={"load_ssh_configs": False})


class AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """Like OpenSSH's ``StrictHostKeyChecking accept-new``: record unknown keys.

    A key that *differs* from a recorded one is still refused by Paramiko
    (``BadHostKeyException``); only hosts never seen before are added.
    """

    def __init__(self, known_hosts: str):
        self.known_hosts = known_hosts

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        entry = paramiko.hostkeys.HostKeyEntry([hostname], key).to_line()
        with _known_hosts_lock:
            os.makedirs(os.path.dirname(self.known_hosts) or ".", exist_ok=True)
            with open(self.known_hosts, "a") as f:
                f.write(entry)
        client.get_host_keys().add(hostname, key.get_name(), key)


def _known_hosts_name(host: Host) -> str:
    return host.name if host.port == 22 else f"[{host.name}]:{host.port}"


@contextlib.contextmanager
def translated(host: Host) -> Iterator[None]:
    """Turn Paramiko and socket errors into one-line ``RemoteError``s naming the host."""
    who = host.id
    try:
        yield
    except RemoteError:
        raise
    except paramiko.BadHostKeyException as exc:
        raise HostKeyError(
            who,
            f"host key differs from the one in {host.known_hosts}: possible "
            f"man-in-the-middle; if the host was reinstalled, run "
            f"ssh-keygen -R {_known_hosts_name(host)} -f {host.known_hosts}",
        ) from exc
    except paramiko.AuthenticationException as exc:
        key = host.key or "the SSH agent and default keys"
        raise AuthError(
            who, f"authentication failed for user {host.user} with {key}: {exc}"
        ) from exc
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        raise ConnectError(
            who, f"connection refused on port {host.port} (is sshd running?)"
        ) from exc
    except socket.gaierror as exc:
        raise ConnectError(who, f"cannot resolve host name ({exc.strerror})") from exc
    except Stalled as exc:
        raise StalledError(who, f"stalled: {exc} (host hung or overloaded)") from exc
    except (socket.timeout, TimeoutError) as exc:
        raise ConnectError(
            who, f"no answer within {host.connect_timeout:g}s (host down or port filtered)"
        ) from exc
    except paramiko.SSHException as exc:
        text = str(exc)
        if "not found in known_hosts" in text:
            raise HostKeyError(
                who,
                f"host key not in {host.known_hosts} (add it with ssh-keyscan -p "
                f"{host.port} {host.name} >> {host.known_hosts}, or pass --accept-new-host-keys)",
            ) from exc
        if "No authentication methods available" in text:
            raise AuthError(
                who,
                f"authentication failed for user {host.user}: no key to offer (no SSH agent, "
                f"no ~/.ssh/id_* key); set key: in the inventory",
            ) from exc
        if "banner" in text or "No existing session" in text:
            raise ConnectError(
                who,
                f"no SSH answer within {host.connect_timeout:g}s (host hung or not an SSH server)",
            ) from exc
        raise ConnectError(who, f"SSH error: {text}") from exc
    except EOFError as exc:
        raise ConnectError(who, "connection closed by the host during the handshake") from exc
    except OSError as exc:
        raise ConnectError(who, exc.strerror or str(exc)) from exc


def connect(host: Host, accept_new_host_keys: bool = False) -> fabric.Connection:
    """Open an SSH connection whose host key is checked against ``host.known_hosts``."""
    conn = connection(host, accept_new_host_keys)
    if host.key and not os.path.exists(host.key):
        raise AuthError(
            host.id, f"key file {host.key} does not exist (check key: in the inventory)"
        )
    with translated(host):
        conn.open()
        transport = conn.client.get_transport()
        transport.set_keepalive(15)
    return conn


def connection(host: Host, accept_new_host_keys: bool = False) -> fabric.Connection:
    """A Connection to ``host``, not yet open, with its host key policy set.

    Safe to call from many threads at once: each gets a config of its own.
    """
    key_given = bool(host.key)
    conn = fabric.Connection(
        host.name,
        user=host.user,
        port=host.port,
        config=_fresh_config(),
        connect_kwargs={
            # No key: no key_filename at all (Fabric cannot merge a None into its key list).
            **({"key_filename": host.key} if key_given else {}),
            "look_for_keys": not key_given,
            "allow_agent": not key_given,
            "timeout": host.connect_timeout,
            "banner_timeout": host.connect_timeout,
            "auth_timeout": host.connect_timeout,
            "channel_timeout": host.connect_timeout,
        },
    )
    client: paramiko.SSHClient = conn.client
    known = host.known_hosts
    if known and os.path.exists(known):
        client.load_host_keys(known)
    if accept_new_host_keys and known:
        client.set_missing_host_key_policy(AcceptNewPolicy(known))
    else:
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return conn


def _prefer_fast_ciphers() -> None:
    preferred = [c for c in PREFERRED_CIPHERS if c in paramiko.Transport._preferred_ciphers]
    rest = [c for c in paramiko.Transport._preferred_ciphers if c not in preferred]
    paramiko.Transport._preferred_ciphers = tuple(preferred + rest)


_prefer_fast_ciphers()


def file_chunks(path: str) -> Iterator[bytes]:
    """A file's bytes in ``CHUNK``-sized pieces, for streaming to a channel."""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                return
            yield chunk


@dataclass
class Completed:
    """The outcome of one remote command."""

    status: int
    stdout: bytes
    stderr: bytes

    def marked(self, marker: str) -> Optional[str]:
        """The text after the last line starting with ``marker``, ignoring shell noise."""
        return find_marked(self.stdout, marker)

    def error_line(self) -> str:
        """The most useful line of stderr, for a one-line error."""
        return last_line(self.stderr) or f"exit status {self.status}"


def find_marked(output: bytes, marker: str) -> Optional[str]:
    """The rest of the last line that starts with ``marker + ' '``."""
    prefix = (marker + " ").encode()
    found = None
    for line in output.splitlines():
        if line.startswith(prefix):
            found = line[len(prefix) :].decode("utf-8", "replace")
    return found


#: Lines that only say that an earlier line told the real error.
_TRAILERS = ("Exiting with failure status due to previous errors",)


def last_line(data: bytes) -> str:
    """The last non-blank line, with our own error marker preferred."""
    lines = [
        ln.strip()
        for ln in data.decode("utf-8", "replace").splitlines()
        if ln.strip() and not any(trailer in ln for trailer in _TRAILERS)
    ]
    for line in reversed(lines):
        if line.startswith("CORUNNER-ERROR "):
            return line[len("CORUNNER-ERROR ") :]
    return lines[-1] if lines else ""


def sh(script: str, *args: str) -> str:
    """A command line that runs ``script`` under POSIX ``sh`` with ``$1..$n`` = ``args``.

    Whatever the user's login shell, the script sees its arguments literally.
    """
    return " ".join(shlex.quote(p) for p in ("sh", "-c", script, "corunner", *args))


def execute(
    conn: fabric.Connection,
    host: Host,
    command: str,
    stdin: Optional[Iterable[bytes]] = None,
    timeout: Optional[float] = None,
) -> Completed:
    """Run ``command`` on one open connection, streaming ``stdin`` chunks to it.

    If the node stops reading (its command failed), sending stops and the
    command's own error is returned rather than a broken-pipe error. A node
    that makes no progress for ``timeout`` seconds (default
    :func:`stall_limit`) fails with a "stalled" ConnectError.
    """
    limit = stall_limit(host) if timeout is None else timeout
    with translated(host):
        chan = open_command(conn, host, command, limit)
        try:
            if stdin is not None:
                try:
                    for chunk in stdin:
                        chan.sendall(chunk)
                except socket.timeout:
                    raise Stalled(limit) from None
                except (OSError, EOFError):
                    pass  # the node stopped reading: its command's status says why
            with contextlib.suppress(OSError, EOFError):
                chan.shutdown_write()
            out, err = drain(chan, limit)
            return Completed(chan.recv_exit_status(), out, err)
        finally:
            chan.close()


def open_command(
    conn: fabric.Connection, host: Host, command: str, limit: float
) -> paramiko.Channel:
    """A session channel running ``command``; its sends and receives time out after ``limit``."""
    return _session(conn, host, limit, lambda chan: chan.exec_command(command))


def open_sftp(conn: fabric.Connection, host: Host) -> Optional[paramiko.SFTPClient]:
    """An SFTP session whose requests time out after :func:`stall_limit` without progress.

    None if the node has no SFTP subsystem (callers then use a command
    instead); :class:`Stalled` if it does not answer.
    """
    try:
        chan = _session(conn, host, stall_limit(host), lambda c: c.invoke_subsystem("sftp"))
    except Stalled:
        raise
    except (paramiko.SSHException, OSError):
        return None
    return paramiko.SFTPClient(chan)


def _session(
    conn: fabric.Connection,
    host: Host,
    limit: float,
    request: Callable[[paramiko.Channel], None],
) -> paramiko.Channel:
    """A session channel with a ``limit`` timeout, after ``request`` (exec or subsystem)."""
    chan = conn.client.get_transport().open_session(timeout=host.connect_timeout)
    chan.settimeout(limit)
    with _watchdog(chan, limit):
        request(chan)
    return chan


@contextlib.contextmanager
def _watchdog(chan: paramiko.Channel, limit: float) -> Iterator[None]:
    """Close ``chan`` if the request inside takes ``limit`` seconds; raise :class:`Stalled`.

    Paramiko waits for the answer to a channel request without a timeout, so
    a node that hangs right then would be waited for forever.
    """
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        # Marks the channel closed (which wakes the request) before telling the
        # node, so a connection that is already broken may fail here harmlessly.
        with contextlib.suppress(Exception):
            chan.close()

    timer = threading.Timer(limit, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except (paramiko.SSHException, EOFError, OSError):
        if fired.is_set():
            raise Stalled(limit, "no answer to a request") from None
        raise
    finally:
        timer.cancel()


def drain(chan: paramiko.Channel, timeout: Optional[float] = None) -> Tuple[bytes, bytes]:
    """Read stdout and stderr until the channel ends, without busy-waiting.

    Both streams share one flow-control window, so both are read as they come.
    Raises :class:`Stalled` if nothing arrives for ``timeout`` seconds.
    """
    out, err = [], []
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        got = False
        while chan.recv_stderr_ready():
            err.append(chan.recv_stderr(CHUNK))
            got = True
        if chan.recv_ready():
            out.append(chan.recv(CHUNK))
            got = True
        if got:
            if timeout is not None:
                deadline = time.monotonic() + timeout
            continue
        if chan.eof_received or chan.closed:
            while chan.recv_stderr_ready():
                err.append(chan.recv_stderr(CHUNK))
            return b"".join(out), b"".join(err)
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            raise Stalled(timeout)
        select.select([chan], [], [], min(wait, 1.0) if wait is not None else 1.0)


class MarkedStream:
    """A read-only file over a channel's stdout, starting after a marker line.

    Shell start-up files may print anything before our command runs; the data
    we want begins right after the first line equal to ``marker``.
    """

    def __init__(self, chan: paramiko.Channel, marker: bytes):
        self.chan = chan
        self.marker = marker + b"\n"
        self.buffer = b""
        self.found = False

    def _fill(self) -> bool:
        data = self.chan.recv(CHUNK)
        self.buffer += data
        return bool(data)

    def _find_marker(self) -> None:
        while not self.found:
            at = self.buffer.find(self.marker)
            if at >= 0 and (at == 0 or self.buffer[at - 1 : at] == b"\n"):
                self.buffer = self.buffer[at + len(self.marker) :]
                self.found = True
                return
            if len(self.buffer) > 1 << 20:  # keep the tail only: noise is not data
                self.buffer = self.buffer[-len(self.marker) :]
            if not self._fill():
                return

    def read(self, size: int = -1) -> bytes:
        self._find_marker()
        if not self.found:
            return b""
        while size < 0 or len(self.buffer) < size:
            if not self._fill():
                break
        if size < 0:
            data, self.buffer = self.buffer, b""
        else:
            data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data


def stream_from(
    conn: fabric.Connection,
    host: Host,
    command: str,
    marker: str,
    consume: Callable[[IO[bytes]], T],
    timeout: Optional[float] = None,
) -> Tuple[T, Completed]:
    """Run ``command`` and hand its stdout after ``marker`` to ``consume``.

    Returns what ``consume`` returned and the command's status and stderr.
    """
    limit = stall_limit(host) if timeout is None else timeout
    with translated(host):
        chan = open_command(conn, host, command, limit)
        try:
            chan.shutdown_write()
            stream = MarkedStream(chan, marker.encode())
            try:
                result = consume(stream)  # type: ignore[arg-type]
                while chan.recv(CHUNK):  # drain what the consumer left
                    pass
                err = b""
                while True:
                    part = chan.recv_stderr(CHUNK)
                    if not part:
                        break
                    err += part
            except socket.timeout:
                raise Stalled(limit) from None
            return result, Completed(chan.recv_exit_status(), b"", err)
        finally:
            chan.close()


#: Bytes of a watched session's stdout kept per host: the tail, where the
#: executor's final status line is. Output beyond it says nothing we read.
SESSION_TAIL = 1 << 16


def keep_tail(kept: bytes, chunk: bytes, cap: int = SESSION_TAIL) -> bytes:
    """``kept + chunk``, cut to its last ``cap`` bytes: a bound on the whole, not each chunk."""
    joined = kept + chunk
    return joined[-cap:] if len(joined) > cap else joined


class ChannelWatcher:
    """Waits on many open SSH sessions in one selector (heartbeats off).

    :meth:`poll` returns the hosts whose session ended, with the tail of what
    the session printed on stdout; stderr is read and dropped so that a
    chatty program cannot fill the flow-control window and stall.
    """

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
        with contextlib.suppress(OSError):
            self.waker_w.send(b"x")

    def poll(self, timeout: float) -> List[Tuple[str, bytes]]:
        """Hosts whose session ended within ``timeout`` seconds, with their stdout's tail."""
        ended = []
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                with contextlib.suppress(OSError):
                    self.waker_r.recv(4096)
                continue
            host, chan = key.data, key.fileobj
            while chan.recv_ready():
                self.output[host] = keep_tail(self.output[host], chan.recv(CHUNK))
            while chan.recv_stderr_ready():
                chan.recv_stderr(CHUNK)
            if chan.eof_received or chan.closed:
                ended.append((host, self.output.pop(host)))
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


def start_streaming(
    conn: fabric.Connection, host: Host, command: str, stdin: Iterable[bytes]
) -> paramiko.Channel:
    """Run ``command``, send it ``stdin``, and hand back its still-open channel.

    For a command whose end is the news (the executor in the foreground):
    once the upload is sent, silence is the program running, so the channel
    no longer times out.
    """
    limit = stall_limit(host)
    with translated(host):
        chan = open_command(conn, host, command, limit)
        try:
            for chunk in stdin:
                chan.sendall(chunk)
            chan.shutdown_write()
        except socket.timeout:
            chan.close()
            raise Stalled(limit) from None
        except OSError:
            pass  # the node's command ended early; its status tells why
        chan.settimeout(None)
        return chan
