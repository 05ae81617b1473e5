"""The SSH shell around corunner: connect with checked host keys, run one
quoted command per node per phase, stream bytes in and out.

Fabric's ``Connection`` carries the settings; the data path is a raw Paramiko
channel, because Invoke's ``in_stream`` reads one byte per 10 ms and SFTP costs
a round trip per request. Every command is a POSIX ``sh`` script with its
arguments quoted by :func:`shlex.quote`, carried on stdin: the user's login
shell (sh, bash, zsh, fish, tcsh, csh) only ever sees :data:`READER`, one
line that means the same to all of them (see :func:`sh`). Every answer we
parse is prefixed with a marker, so noisy shell start-up files on the node
cannot confuse us.

Paramiko and socket errors become :class:`~corunner.errors.RemoteError`
subclasses whose one-line message names the host and what to do. No exchange
waits forever, and none gives up on a host that is merely slow: every
connection's health is judged as OpenSSH's ``ServerAliveInterval`` and
``ServerAliveCountMax`` do, by keepalive requests that sshd answers itself
while the user's shell is still busy. A host that answers nothing for
:data:`ALIVE_LIMIT` seconds (hung, or gone) ends with a "stalled" error.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import selectors
import shlex
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import (
    IO,
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
)

import fabric
import paramiko

from . import hostkeys, keys
from .errors import AuthError, ConnectError, JumpError, RemoteError, StalledError
from .inventory import (
    DEFAULT_ALIVE_COUNT_MAX,
    DEFAULT_ALIVE_INTERVAL,
    DEFAULT_ORIGIN,
    Host,
    hop_host,
)

T = TypeVar("T")

#: Chunk size for streaming: large enough to amortise Python overhead per call.
CHUNK = 1 << 18
#: Prefer AES-GCM: it needs no separate MAC pass, which is most of Paramiko's CPU.
PREFERRED_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr")

#: Seconds between keepalive requests on a connection that has heard nothing
#: (OpenSSH's ServerAliveInterval; a host's ssh_config may set its own) ...
ALIVE_INTERVAL = DEFAULT_ALIVE_INTERVAL
#: ... and how many may go unanswered before the host is given up
#: (ServerAliveCountMax, whose default is also 3).
ALIVE_COUNT_MAX = DEFAULT_ALIVE_COUNT_MAX
#: Seconds of total silence after which a connected host is hung: it is
#: reported at the next keepalive after that, so within ALIVE_LIMIT + ALIVE_INTERVAL.
ALIVE_LIMIT = ALIVE_INTERVAL * ALIVE_COUNT_MAX

# Paramiko logs every broken connection at ERROR with a traceback; with no
# handler configured, Python's last-resort handler would print it at the user.
# Each failure reaches the user once, as corunner's own one-line message.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
#: corunner's own log of what went wrong before it became one line (``--debug``).
log = logging.getLogger("corunner.remote")


class Stalled(socket.timeout):
    """An exchange with an explicit time limit made no progress for that long."""

    def __init__(self, seconds: float, what: str = "no progress") -> None:
        super().__init__(f"{what} for {seconds:g}s")


class Unanswered(paramiko.SSHException):
    """The host answered none of the last keepalives: hung, or gone."""


class HealthTransport(paramiko.Transport):
    """A Paramiko transport that knows when it last heard from the host.

    Any packet counts as a sign of life. When the connection has been quiet
    for ALIVE_INTERVAL, a ``keepalive@openssh.com`` request asks sshd for an
    answer (sshd gives one however busy the user's shell is); after
    ALIVE_LIMIT seconds of silence the transport ends with :class:`Unanswered`,
    which every waiting channel then raises. One thread per connection, the
    transport's own: nothing here grows with the fleet.
    """

    def __init__(
        self,
        *args: Any,
        alive_interval: float = ALIVE_INTERVAL,
        alive_count_max: int = ALIVE_COUNT_MAX,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.alive_limit = alive_interval * alive_count_max
        self.last_heard = time.monotonic()
        self.unanswered: Optional[Unanswered] = None
        read = self.packetizer.read_message

        def read_message() -> Any:
            message = read()
            self.last_heard = time.monotonic()
            return message

        self.packetizer.read_message = read_message
        self.packetizer.set_keepalive(alive_interval, self._keepalive)

    def _keepalive(self) -> None:
        """Called by the transport's own thread after the alive interval without a write."""
        silent = time.monotonic() - self.last_heard
        if silent >= self.alive_limit:
            self.unanswered = Unanswered(f"no answer to keepalives for {silent:.0f}s")
            raise self.unanswered  # ends the transport; its channels raise it
        # Never wait here behind a writer or a key exchange: this thread reads for them.
        if self.clear_to_send.is_set() and not self.clear_to_send_lock.locked():
            request = paramiko.Message()
            request.add_byte(paramiko.common.cMSG_GLOBAL_REQUEST)
            request.add_string("keepalive@openssh.com")
            request.add_boolean(True)  # want a reply: the reply is the sign of life
            self._send_user_message(request)


def unanswered(conn: Optional[fabric.Connection]) -> Optional[Unanswered]:
    """The keepalive verdict of ``conn``'s transport, if it gave the host up."""
    client = getattr(conn, "client", None)
    transport = client.get_transport() if client is not None else None
    return getattr(transport, "unanswered", None)


def raise_if_hung(conn: Optional[fabric.Connection]) -> None:
    """Raise :class:`Unanswered` if ``conn`` ended because the host stopped answering.

    A channel of a dead transport reads as closed, which would otherwise look
    like a command that ended; call this before trusting such an end.
    """
    verdict = unanswered(conn)
    if verdict is not None:
        raise verdict


def _fresh_config() -> fabric.Config:
    """A Fabric config for one connection, never shared between threads.

    ``Connection.__init__`` writes into its config (``self.forward_agent = ...``
    is a config key), and each write re-merges the whole config, emptying it
    for a moment: a config shared by concurrent connections makes one of them
    fail at random with "No attribute or config key found for 'gateway'".
    Building one costs ~0.2 ms.
    """
    return fabric.Config(lazy=True, overrides={"load_ssh_configs": False})


@contextlib.contextmanager
def translated(host: Host, conn: Optional[fabric.Connection] = None) -> Iterator[None]:
    """Turn Paramiko and socket errors into one-line ``RemoteError``s naming the host.

    With ``conn``, any failure on a connection whose host stopped answering
    keepalives is reported as that (stalled), whatever error surfaced first.
    """
    who = host.id
    try:
        yield
    except RemoteError:
        raise
    except (Unanswered, Stalled) as exc:
        raise StalledError(who, f"stalled: {exc} (host hung or overloaded)") from exc
    except (paramiko.SSHException, EOFError, OSError) as exc:
        log.debug("%s: %s", who, exc, exc_info=True)
        verdict = unanswered(conn)
        if verdict is not None:
            raise StalledError(who, f"stalled: {verdict} (host hung or overloaded)") from exc
        _raise_translated(host, exc)


def _raise_translated(host: Host, error: BaseException) -> None:
    """Raise the RemoteError for a Paramiko or socket ``error`` (see :func:`translated`)."""
    who = host.id
    try:
        raise error
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
    except (socket.timeout, TimeoutError) as exc:
        raise ConnectError(
            who, f"no answer within {host.connect_timeout:g}s (host down or port filtered)"
        ) from exc
    except paramiko.SSHException as exc:
        text = str(exc)
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


def connect(
    host: Host, accept_new_host_keys: bool = False, gateways: Optional[Gateways] = None
) -> fabric.Connection:
    """Open an SSH connection whose host key is checked against ``host.known_hosts``.

    With ``key:`` set, the key signs as ``ssh -i`` has it sign: ssh-agent's
    copy when the agent holds it (see :mod:`corunner.keys`). A host behind
    jump hosts (or a proxy command) is reached through ``gateways``, the
    command's shared connections to them; raises ValueError if it is None
    then (a bug: every caller has one).
    """
    sock: Any = None
    if host.jump or host.proxy_command:
        if gateways is None:
            raise ValueError(f"{host.id} is reached through a jump host: pass the Gateways")
        sock = gateways.sock(host)
    return _open(host, accept_new_host_keys, sock)


def _open(host: Host, accept_new_host_keys: bool, sock: Any) -> fabric.Connection:
    """Log in to ``host`` over ``sock`` (None: a TCP connection of its own)."""
    if host.key and not os.path.exists(host.key) and not _key_from_ssh_config(host):
        raise AuthError(
            host.id, f"key file {host.key} does not exist (check key: in the inventory)"
        )
    conn, agent = _connection(host, accept_new_host_keys, sock)
    try:
        with translated(host):
            conn.open()
    finally:
        if agent is not None:
            agent.close()  # it signed during the login, if at all; nothing after
    return conn


def is_open(conn: fabric.Connection) -> bool:
    """Whether ``conn``'s SSH transport is still up (a connection kept from an earlier step)."""
    transport = conn.client.get_transport() if conn.is_connected else None
    return transport is not None and transport.is_active()


def connection(
    host: Host, accept_new_host_keys: bool = False, sock: Any = None
) -> fabric.Connection:
    """A Connection to ``host``, not yet open, with its host key policy set.

    ``sock``: the socket-like path to it (a jump host's direct-tcpip channel,
    a ProxyCommand), None for a TCP connection of its own. Safe to call from
    many threads at once: each gets a config of its own.
    """
    return _connection(host, accept_new_host_keys, sock)[0]


def _connection(
    host: Host, accept_new_host_keys: bool, sock: Any = None
) -> Tuple[fabric.Connection, Optional[paramiko.Agent]]:
    """:func:`connection`, and the ssh-agent connection whose key will sign, if any."""
    files = key_files(host)
    key_given = bool(files)
    agent: Optional[paramiko.Agent] = None
    # No key: no key_filename at all (Fabric cannot merge a None into its key list).
    identity: Dict[str, Any] = {}
    if len(files) == 1 and os.path.exists(files[0]):
        identity, agent = keys.identity(host.id, files[0])
    elif files:
        identity = {"key_filename": files}
    known = host.known_hosts_files + global_known_hosts(host)
    conn = fabric.Connection(
        host.address,
        user=host.user,
        port=host.port,
        config=_fresh_config(),
        connect_kwargs={
            **identity,
            "look_for_keys": not key_given,
            "allow_agent": not key_given and not host.identities_only,
            "timeout": host.connect_timeout,
            "banner_timeout": host.connect_timeout,
            "auth_timeout": host.connect_timeout,
            "channel_timeout": host.connect_timeout,
            "transport_factory": functools.partial(
                HealthTransport,
                alive_interval=host.alive_interval,
                alive_count_max=host.alive_count_max,
            ),
            **({"sock": sock} if sock is not None else {}),
            **_host_key_algorithms(
                hostkeys.known_hosts_for(known).key_types(host.address, host.port)
            ),
        },
    )
    # Paramiko's own store stays empty, so every key goes to the policy, which
    # checks it against the files parsed once per process (corunner.hostkeys).
    # Keys are known under the address connected to, as ssh knows them under HostName.
    conn.client.set_missing_host_key_policy(
        hostkeys.HostKeyPolicy(
            host.id,
            host.address,
            host.port,
            known,
            accept_new=accept_new_host_keys or host.strict_host_keys in ("accept-new", "no"),
            write_path=host.known_hosts,
            hash_names=host.hash_known_hosts,
        )
    )
    return conn, agent


def global_known_hosts(host: Host) -> Tuple[str, ...]:
    """The host's GlobalKnownHostsFile list: its own, else the system's."""
    if host.global_known_hosts_files is None:
        return hostkeys.default_paths(())
    return host.global_known_hosts_files


def key_files(host: Host) -> List[str]:
    """The key files to offer: the inventory's ``key:`` as it is (a missing one is an
    error), ssh_config's IdentityFiles those that exist (ssh skips the others)."""
    if host.key and not _key_from_ssh_config(host):
        return [host.key]
    return [k for k in (host.key, *host.extra_keys) if k and os.path.exists(k)]


def _key_from_ssh_config(host: Host) -> bool:
    origin = host.origin("key")
    return origin != DEFAULT_ORIGIN and not origin.startswith("inventory ")


def chain_of(host: Host) -> Tuple[Host, ...]:
    """The jump hosts in front of ``host``, first hop first (resolved by the inventory,
    or here from the hop strings alone for a Host made without it)."""
    if len(host.hops) == len(host.jump):
        return host.hops
    return tuple(hop_host(host, hop) for hop in host.jump)


@dataclass
class _Hop:
    """One jump host's connection in a :class:`Gateways`, or why there is none."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    conn: Optional[fabric.Connection] = None
    error: Optional[RemoteError] = None
    failed_at: float = 0.0  # when ``error`` came (the Gateways' clock)


#: Seconds a jump host that could not be reached (refused, timed out, hung) is
#: given up for before it is tried again: long enough that the hosts behind a
#: dead one fail at once with its line, short enough that heartbeat tunnels
#: dropped with a rebooted bastion come back (corunner.tunnels). A jump host
#: that refused the key or showed an unknown host key is not tried again.
HOP_RETRY = 5.0


class Gateways:
    """The connections to the jump hosts of one command, shared by every host behind them.

    A stock sshd drops unauthenticated connections beyond ``MaxStartups``
    (10 at once), so 64 hosts behind one bastion must not each log in to it:
    each jump host (each chain prefix) gets ONE connection, opened by the
    first thread that needs it, and every host behind it gets a
    ``direct-tcpip`` channel over it (as Fabric's ``gateway=`` and OpenSSH's
    ``ProxyJump`` do). A jump host that cannot be reached is tried once; every
    host behind it then fails with the same line naming it, for HOP_RETRY
    seconds (for good if it refused the login). Thread-safe;
    :meth:`close` at the end of the command.
    """

    def __init__(
        self,
        hosts: Iterable[Host] = (),
        accept_new_host_keys: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.accept_new_host_keys = accept_new_host_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._hops: Dict[Tuple[Host, ...], _Hop] = {}
        self._closed = False
        #: Hosts behind each jump host (chain prefix), for the failure line.
        self.behind: Counter[Tuple[Host, ...]] = Counter()
        for host in hosts:
            chain = chain_of(host)
            for depth in range(1, len(chain) + 1):
                self.behind[chain[:depth]] += 1

    def sock(self, host: Host) -> Any:
        """A socket-like path to ``host``: a channel through its jump hosts, or its proxy command.

        Raises JumpError naming the jump host that failed, ConnectError if the
        last jump host cannot reach ``host``.
        """
        if host.proxy_command:
            with translated(host):
                try:
                    # Its %h, %p, ... are filled in already (corunner.sshconfig).
                    return paramiko.ProxyCommand(host.proxy_command)
                except paramiko.ssh_exception.ProxyCommandFailure as exc:
                    raise ConnectError(host.id, f"proxy command failed: {exc}") from exc
        chain = chain_of(host)
        transport = self._transport(host, chain)
        last = chain[-1]
        try:
            return transport.open_channel(
                "direct-tcpip",
                dest_addr=(host.address, host.port),
                src_addr=("", 0),
                timeout=host.connect_timeout,
            )
        except paramiko.ChannelException as exc:
            raise ConnectError(
                host.id,
                f"jump host {last.id} cannot connect to {host.name} port {host.port}: "
                f"{exc.text} (is sshd running there?)",
            ) from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise self._failed(host, chain, last, exc) from exc

    def _failed(
        self, host: Host, chain: Tuple[Host, ...], hop: Host, exc: BaseException
    ) -> JumpError:
        """The one line every host behind ``hop`` says when it failed with ``exc``."""
        if isinstance(exc, RemoteError):
            cause = exc.cause
        else:
            try:
                with translated(hop):
                    raise exc
            except RemoteError as translated_exc:
                cause = translated_exc.cause
        depth = next(i for i, h in enumerate(chain, 1) if h == hop)
        count = self.behind.get(chain[:depth], 1)
        noun = "host" if count == 1 else "hosts"
        return JumpError(host.id, f"{hop.id} (jump host for {count} {noun}): {cause}", hop.id)

    def _transport(self, host: Host, chain: Tuple[Host, ...]) -> paramiko.Transport:
        """The open transport to the last hop of ``chain``, connecting (once) if needed."""
        with self._lock:
            if self._closed:
                raise ConnectError(host.id, "the command's jump host connections are closed")
            entry = self._hops.setdefault(chain, _Hop())
        hop = chain[-1]
        with entry.lock:
            if entry.error is not None:
                transient = isinstance(entry.error, (ConnectError, StalledError))
                if not transient or self._clock() - entry.failed_at < HOP_RETRY:
                    raise self._failed(host, chain, hop, entry.error)
                entry.error = None
            if entry.conn is not None:
                transport = entry.conn.client.get_transport()
                if transport is not None and transport.is_active():
                    return transport
                entry.conn.close()  # gone since: connect again
                entry.conn = None
            try:
                sock = None
                if len(chain) > 1:
                    outer = self._transport(host, chain[:-1])
                    with translated(hop):
                        sock = outer.open_channel(
                            "direct-tcpip",
                            dest_addr=(hop.address, hop.port),
                            src_addr=("", 0),
                            timeout=hop.connect_timeout,
                        )
                conn = _open(hop, self.accept_new_host_keys, sock)
            except JumpError:
                raise  # an earlier hop's, already said so
            except RemoteError as exc:
                entry.error, entry.failed_at = exc, self._clock()
                raise self._failed(host, chain, hop, exc) from exc
            entry.conn = conn
            return conn.client.get_transport()

    def close(self) -> None:
        """Close every jump host connection, the innermost first. Idempotent."""
        with self._lock:
            self._closed = True
            hops = sorted(self._hops.items(), key=lambda item: -len(item[0]))
            self._hops = {}
        for _, entry in hops:
            if entry.conn is not None:
                with contextlib.suppress(Exception):
                    entry.conn.close()

    def __enter__(self) -> Gateways:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def local_address(conn: fabric.Connection) -> Optional[str]:
    """The controller's own address on ``conn``'s first hop; None through a proxy command."""
    sock: Any = conn.client.get_transport().sock
    while isinstance(sock, paramiko.Channel):
        sock = sock.get_transport().sock
    getsockname = getattr(sock, "getsockname", None)
    return str(getsockname()[0]) if getsockname is not None else None


def _host_key_algorithms(known_types: Sequence[str]) -> Dict[str, Any]:
    """Ask only for the key types known_hosts holds for the host, as OpenSSH does.

    Otherwise the server picks its preferred type (say ed25519) while
    known_hosts has only the host's RSA key: "unknown", and accept-new would
    add a second key. Nothing known: every type, the server's choice.
    """
    if not known_types:
        return {}

    def known(algorithm: str) -> bool:
        return any(
            algorithm == t or (t == "ssh-rsa" and algorithm.startswith("rsa-sha2-"))
            for t in known_types
        )

    refused = [a for a in paramiko.Transport._preferred_keys if not known(a)]
    return {"disabled_algorithms": {"keys": refused}} if refused else {}


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
    #: Bytes sent on the command's stdin (its head included).
    sent: int = 0

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


#: The one line sent to the node user's login shell, for every command. It has
#: no newline, ``!``, backslash or ``'`` inside its quotes, so sh, dash, bash,
#: zsh, fish, tcsh and csh all hand it to /bin/sh unchanged. That sh reads a
#: line count, then that many lines of stdin (``read`` takes one byte at a
#: time, so nothing after them is consumed: it stays the script's input), and
#: evals them. A stdin that ends early exits 98.
READER = (
    'exec /bin/sh -c \'read -r c||exit 98;n=$(printf "\\n.");n=${n%.};s=;'
    'while [ "$c" -gt 0 ];do IFS= read -r l||exit 98;s=$s$l$n;c=$((c-1));done;'
    'eval "$s"\''
)


@dataclass(frozen=True)
class Command:
    """A command for one node: the line its login shell runs, and what goes first on stdin."""

    line: str
    #: The script and its arguments, for :data:`READER`; any other stdin follows it.
    head: bytes

    def followed_by(self, data: bytes) -> Command:
        """This command with ``data`` sent right after its script (read by the script)."""
        return Command(self.line, self.head + data)


def sh(script: str, *args: str) -> Command:
    """A command that runs ``script`` under POSIX ``sh`` with ``$1..$n`` = ``args``.

    Whatever the user's login shell, the script sees its arguments literally:
    they travel on stdin as ``set --`` with each quoted for sh, never through
    the login shell (csh expands ``!`` even inside single quotes, fish reads
    backslashes there) and never on a command line others can read.
    """
    body = " ".join(["set --", *(shlex.quote(a) for a in args)]) + "\n" + script
    if not body.endswith("\n"):
        body += "\n"
    return Command(READER, f"{body.count(chr(10))}\n{body}".encode("utf-8", "surrogateescape"))


def execute(
    conn: fabric.Connection,
    host: Host,
    command: Command,
    stdin: Optional[Iterable[bytes]] = None,
    timeout: Optional[float] = None,
) -> Completed:
    """Run ``command`` on one open connection, streaming ``stdin`` chunks to it after its head.

    If the node stops reading (its command failed), sending stops and the
    command's own error is returned rather than a broken-pipe error. A node
    that stops answering fails with a "stalled" StalledError; so does one
    that makes no progress for ``timeout`` seconds, when a timeout is given.
    """
    with translated(host, conn):
        chan = open_command(conn, host, command, timeout)
        try:
            sent = send_all(chan, [command.head, *(stdin or ())], timeout)
            with contextlib.suppress(OSError, EOFError):
                chan.shutdown_write()
            out, err = drain(chan, timeout)
            return Completed(chan.recv_exit_status(), out, err, sent)
        finally:
            chan.close()


#: What to send once a command said one of its markers: called with the marker.
Reply = Callable[[str], Iterable[bytes]]


def converse(
    conn: fabric.Connection,
    host: Host,
    command: Command,
    markers: Sequence[str],
    reply: Reply,
    timeout: Optional[float] = None,
) -> Completed:
    """Run ``command``, wait for the first of ``markers`` on a line of its stdout,
    send ``reply(marker)``, and return as :func:`execute` does.

    One command and one channel: the node tells what it needs before the
    bulk is sent (the start boot code: whether its cache holds the executor).
    A command that ends before saying a marker is sent nothing more; its
    status and stderr say why.
    """
    with translated(host, conn):
        chan = open_command(conn, host, command, timeout)
        try:
            sent = send_all(chan, [command.head], timeout)
            said, out, err = await_marker(chan, markers, timeout)
            if said is not None:
                sent += send_all(chan, reply(said), timeout)
            with contextlib.suppress(OSError, EOFError):
                chan.shutdown_write()
            more, more_err = drain(chan, timeout)
            return Completed(chan.recv_exit_status(), out + more, err + more_err, sent)
        finally:
            chan.close()


def await_marker(
    chan: paramiko.Channel, markers: Sequence[str], timeout: Optional[float] = None
) -> Tuple[Optional[str], bytes, bytes]:
    """Read stdout until a line equal to one of ``markers``: (that marker or None, stdout, stderr).

    What came before it (shell start-up noise) is kept in the stdout returned.
    None if the command ended first. Raises :class:`Stalled` after ``timeout``
    seconds without a byte, :class:`Unanswered` if the host stopped answering.
    """
    wanted = {m.encode(): m for m in markers}
    out, err = b"", []
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        got = False
        while chan.recv_stderr_ready():
            err.append(chan.recv_stderr(CHUNK))
            got = True
        if chan.recv_ready():
            data = chan.recv(CHUNK)
            if not data:  # the end of stdout
                return None, out, b"".join(err)
            out += data
            got = True
            for line in out.splitlines():  # a few lines of noise at most
                if line in wanted:
                    return wanted[line], out, b"".join(err)
        if got:
            if timeout is not None:
                deadline = time.monotonic() + timeout
            continue
        if chan.eof_received or chan.closed:
            _raise_if_channel_hung(chan)
            return None, out, b"".join(err)
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            raise Stalled(timeout or 0)
        select.select([chan], [], [], min(wait, 1.0) if wait is not None else 1.0)


def send_all(
    chan: paramiko.Channel, chunks: Iterable[bytes], timeout: Optional[float] = None
) -> int:
    """Send ``chunks`` until done or the node stops reading; the bytes sent.

    A node that stops reading (its command failed, or it went) is no error
    here: the command's status says which. No progress for ``timeout``
    seconds raises :class:`Stalled`.
    """
    sent = 0
    try:
        for chunk in chunks:
            chan.sendall(chunk)
            sent += len(chunk)
    except socket.timeout:
        raise Stalled(timeout or 0) from None
    except (OSError, EOFError):
        pass
    return sent


def open_command(
    conn: fabric.Connection, host: Host, command: Command, timeout: Optional[float] = None
) -> paramiko.Channel:
    """A session channel running ``command``'s line (sends and receives time out after ``timeout``).

    Nothing is sent yet: the caller sends ``command.head`` first on stdin.
    """
    return _session(conn, host, timeout, lambda chan: chan.exec_command(command.line))


class SFTPBroken(Exception):
    """The node's SFTP server started but its handshake failed: the cause, in one line."""


def open_sftp(conn: fabric.Connection, host: Host) -> Optional[paramiko.SFTPClient]:
    """An SFTP session on ``conn``, or None if the node has no SFTP subsystem.

    Callers then use a command instead. An external ``sftp-server`` is
    started through the user's login shell, so a start-up file that prints
    on stdout breaks the handshake (Paramiko: "Garbage packet received"):
    that raises :class:`SFTPBroken` with the cause, for the caller to say
    and go the command's way. A node that stops answering raises
    :class:`Unanswered` (through the transport's keepalives).
    """
    try:
        chan = _session(conn, host, None, lambda c: c.invoke_subsystem("sftp"))
    except (paramiko.SSHException, OSError, EOFError):
        raise_if_hung(conn)
        return None
    try:
        return paramiko.SFTPClient(chan)
    except (paramiko.SFTPError, paramiko.SSHException, OSError, EOFError) as exc:
        chan.close()
        raise_if_hung(conn)
        why = str(exc) or type(exc).__name__
        if "Garbage packet" in why:
            why += " (does a start-up file of the login shell print to stdout?)"
        raise SFTPBroken(f"SFTP failed: {why}") from exc


def _session(
    conn: fabric.Connection,
    host: Host,
    timeout: Optional[float],
    request: Callable[[paramiko.Channel], None],
) -> paramiko.Channel:
    """A session channel, after ``request`` (exec or subsystem) was answered.

    Paramiko waits for the answer with no time limit of its own; the
    transport's keepalives end that wait if the host stops answering.
    """
    chan = conn.client.get_transport().open_session(timeout=host.connect_timeout)
    chan.settimeout(timeout)
    request(chan)
    return chan


def _raise_if_channel_hung(chan: paramiko.Channel) -> None:
    """A closed channel of a transport that gave its host up: raise that, not an end."""
    verdict = getattr(chan.get_transport(), "unanswered", None)
    if verdict is not None:
        raise verdict


def drain(chan: paramiko.Channel, timeout: Optional[float] = None) -> Tuple[bytes, bytes]:
    """Read stdout and stderr until the channel ends, without busy-waiting.

    Both streams share one flow-control window, so both are read as they come.
    Raises :class:`Stalled` if nothing arrives for ``timeout`` seconds (when
    given) and :class:`Unanswered` if the host stopped answering.
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
            _raise_if_channel_hung(chan)
            return b"".join(out), b"".join(err)
        wait = None if deadline is None else deadline - time.monotonic()
        if wait is not None and wait <= 0:
            raise Stalled(timeout or 0)
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
        #: stderr, read as it comes: stdout and stderr share one flow-control
        #: window, so unread stderr would stop stdout too.
        self.stderr: List[bytes] = []

    def _fill(self) -> bool:
        chan = self.chan
        while True:
            while chan.recv_stderr_ready():
                self.stderr.append(chan.recv_stderr(CHUNK))
            if chan.recv_ready() or chan.eof_received or chan.closed:
                data = chan.recv(CHUNK)
                self.buffer += data
                return bool(data)
            if not select.select([chan], [], [], chan.gettimeout())[0]:
                raise socket.timeout()

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
    command: Command,
    marker: str,
    consume: Callable[[IO[bytes]], T],
    timeout: Optional[float] = None,
) -> Tuple[T, Completed]:
    """Run ``command`` and hand its stdout after ``marker`` to ``consume``.

    stderr is read as it comes (in the channel's own buffer, so a command
    that writes much of it never blocks on a full window). Returns what
    ``consume`` returned and the command's status and stderr.
    """
    with translated(host, conn):
        chan = open_command(conn, host, command, timeout)
        try:
            send_all(chan, [command.head], timeout)
            with contextlib.suppress(OSError, EOFError):
                chan.shutdown_write()
            stream = MarkedStream(chan, marker.encode())
            try:
                result = consume(stream)  # type: ignore[arg-type]
                _, err = drain(chan, timeout)  # what the consumer left, and stderr
            except socket.timeout:
                raise Stalled(timeout or 0) from None
            _raise_if_channel_hung(chan)
            err = b"".join(stream.stderr) + err
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
            host: str = key.data
            chan, _ = self.open[host]
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
    conn: fabric.Connection,
    host: Host,
    command: Command,
    markers: Sequence[str],
    reply: Reply,
) -> Tuple[paramiko.Channel, int]:
    """As :func:`converse`, but hand back the still-open channel and the bytes sent.

    For a command whose end is the news (the executor in the foreground):
    once the upload is sent, silence is the program running, so the channel
    no longer times out. A command that ended before its marker is handed
    back all the same: its session's end is the news then.
    """
    with translated(host, conn):
        chan = open_command(conn, host, command)
        sent = 0
        try:
            chan.sendall(command.head)
            sent += len(command.head)
            said, _, _ = await_marker(chan, markers)
            if said is not None:
                for chunk in reply(said):
                    chan.sendall(chunk)
                    sent += len(chunk)
            chan.shutdown_write()
        except (OSError, EOFError):
            raise_if_hung(conn)  # else the node's command ended early; its status tells why
        return chan, sent
