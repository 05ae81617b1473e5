"""The lab: a local test cluster of real OpenSSH servers, one per "node".

Each node is one ``sshd`` in its own mount, UTS and PID namespaces, started by
``unshare`` as root. It listens on its own loopback address ``127.0.1.<i>:22``
(:func:`node_address`: indices above 254 go on in ``127.0.2.x``, ``127.0.3.x``...),
answers ``hostname`` with ``node<i>``, has its own host key and a private tmpfs
on ``/tmp``. The network namespace is shared with the host on purpose: a node
reaches the controller's listener on ``127.0.0.1``. Everything else (``/root``,
``/var``, installed programs) is the host's, so only ``/tmp`` is per node.

Faults are simulated on the processes: :meth:`Lab.kill` is a dead machine (its
sockets close, new connections are refused), :meth:`Lab.freeze` is a hung one
(SIGSTOP: the kernel still completes TCP handshakes, but nothing answers).

The state (keys, ``known_hosts``, ``hosts.yaml``, per-node sshd files and a
``lab.json`` recording the ``unshare`` pids) lives in one state directory, so
another process can :func:`load` the running lab or :func:`down` it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import re
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
)

from ..errors import LabError

DEFAULT_STATE_DIR = Path(".corunner/lab")

SSHD = Path("/usr/sbin/sshd")
#: Where each node sees the state directory: a bind mount made inside the node's
#: mount namespace before the tmpfs hides ``/tmp`` (the state dir may be under it).
NODE_VIEW = Path("/run/corunner-lab")
#: ``$0`` of the shell that becomes sshd: marks an ``unshare`` process as ours.
MARKER = "corunner-lab-node"
PORT = 22
#: The first block of node addresses: node ``i`` is ``127.0.1.<i>`` for i in 1..254.
NETWORK = "127.0.1."
#: Node addresses per /24 block: .1 to .254 (never .0 or .255).
BLOCK_SIZE = 254
#: Highest node index: ``127.0.254.254``. Blocks go on from ``127.0.1.0/24`` up,
#: ``127.0.0.0/24`` (the controller's 127.0.0.1) is never used.
MAX_INDEX = BLOCK_SIZE * 254
STATE_FILE = "lab.json"
STATE_VERSION = 1
#: sshd refuses to start without its privilege separation directory.
PRIVSEP_DIR = Path("/run/sshd")

# Inside the node: hide nothing of the host but /tmp, then become sshd (PID 1).
# Arguments: $1 state dir, $2 hostname, $3 sshd_config and $4 log, as seen inside.
_NODE_SCRIPT = (
    "set -e; "
    f'mount --bind "$1" {NODE_VIEW}; '
    "mount -t tmpfs -o mode=1777 tmpfs /tmp; "
    'hostname "$2"; '
    f'exec {SSHD} -D -f "$3" -E "$4"'
)
_UNSHARE = (
    "unshare",
    "--kill-child",
    "--mount",
    "--uts",
    "--pid",
    "--fork",
    "--mount-proc",
    "--propagation",
    "private",
)
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

#: ``unshare`` processes started by this Python process, kept to reap them.
_children: Dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class Node:
    """One node of the lab; ``pid`` is the host pid of its ``unshare`` process."""

    index: int
    address: str
    hostname: str
    pid: int


@dataclass(frozen=True)
class Memory:
    """What the lab's processes take, summed over every process of every node (bytes).

    ``pss`` (proportional set size) shares each page among the processes mapping
    it, so it adds up to what the nodes really cost; ``rss`` counts shared pages
    (libraries) once per process and overstates it.
    """

    processes: int
    rss: int
    pss: int


@dataclass
class Lab:
    """A running lab and the files a client needs to reach it.

    ``nodes`` is updated in place by :meth:`restart` (a restarted node has a new
    pid). Methods taking ``i`` accept a node index, address or hostname.
    """

    state_dir: Path
    nodes: List[Node]
    #: The network namespace the nodes live in (``ip netns``), None for the host's.
    netns: Optional[str] = None
    key: Path = field(init=False)
    known_hosts: Path = field(init=False)
    inventory: Path = field(init=False)
    ssh_config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.state_dir = self.state_dir.resolve()
        self.key = self.state_dir / "id_ed25519"
        self.known_hosts = self.state_dir / "known_hosts"
        self.inventory = self.state_dir / "hosts.yaml"
        self.ssh_config = self.state_dir / "ssh_config"

    def node(self, address_or_index: Union[int, str]) -> Node:
        """The node with this index (``3``), address (``127.0.1.3``) or hostname (``node3``).

        Raises LabError for a node this lab does not have.
        """
        for node in self.nodes:
            if address_or_index in (node.index, node.address, node.hostname):
                return node
        raise LabError(
            f"the lab in {self.state_dir} has no node {address_or_index!r} "
            f"(it has {_host_pattern([n.index for n in self.nodes])})"
        )

    def memory(self) -> Memory:
        """The memory of every process of the running nodes: ``unshare``, sshd and
        whatever runs in the node (sessions, programs)."""
        return _memory([n.pid for n in self.nodes if _is_ours(n.pid, self.state_dir)])

    def kill(self, i: Union[int, str]) -> None:
        """SIGKILL the node: its sshd and every process in it die, like a dead machine.

        Returns once its port is closed (new connections are refused). A node
        that is already dead is left alone. Raises LabError if it lingers.
        """
        node = self.node(i)
        if _is_ours(node.pid, self.state_dir):
            _kill_and_wait([node.pid])

    def freeze(self, i: Union[int, str]) -> None:
        """SIGSTOP every process of the node, like a hung machine.

        Connections are still accepted by the kernel, but no banner or reply
        comes until :meth:`thaw`. Raises LabError if the node is not running.
        """
        node = self._running(i)
        init = _child_of(node.pid)
        seen: Set[int] = set()
        # Stop PID 1 (the listening sshd) first so it cannot fork more, then
        # rescan until no new process shows up. SIGSTOP takes effect when each
        # process next runs: wait for that, so the node is hung once this returns.
        for _ in range(10):
            pids = [p for p in _pids_in_namespace_of(init) if p not in seen]
            if not pids:
                return
            pids.sort(key=lambda p: p != init)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            seen.update(pids)
            _wait_stopped(seen, node)

    def thaw(self, i: Union[int, str]) -> None:
        """SIGCONT every process of the node: it carries on where it stopped."""
        node = self._running(i)
        for pid in _pids_in_namespace_of(_child_of(node.pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def restart(self, i: Union[int, str], timeout: float = 30.0) -> None:
        """Start the node again with the same address, host key and hostname (a reboot).

        A node still running is killed first. Its ``/tmp`` is empty again.
        Returns once it answers with an SSH banner; raises LabError if it does
        not within ``timeout`` seconds.
        """
        old = self.node(i)
        with _locked(self.state_dir):
            self.kill(old.index)
            new = replace(old, pid=_spawn(self.state_dir, old.index, self.netns))
            self.nodes[self.nodes.index(old)] = new
            _write_state(self.state_dir, self.nodes, _read_owner(self.state_dir), self.netns)
            try:
                _wait_for_banners([new], self.state_dir, time.monotonic() + timeout, self.netns)
            except BaseException:
                self.kill(new.index)  # a node half up would confuse the next test
                raise

    def extra_node(
        self,
        index: int,
        address: str,
        port: int,
        sftp_server: str = "internal-sftp",
        timeout: float = 30.0,
    ) -> Node:
        """Start one more node, not in :attr:`nodes`: sshd on ``address``:``port``.

        For hosts the usual nodes cannot be: an IPv6 address (``::1``) with a
        port of its own, or an external ``sftp_server``
        (``/usr/lib/openssh/sftp-server``, which sshd starts through the
        user's login shell, so a start-up file's output reaches the SFTP
        stream). Its key is added to :attr:`known_hosts` as ``[address]:port``.
        Stop it with :meth:`stop_extra`; :func:`down` stops it too. Raises
        LabError if it gives no SSH banner within ``timeout`` seconds.
        """
        listen = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        with _locked(self.state_dir):
            directory = _node_dir(self.state_dir, index)
            directory.mkdir(parents=True, exist_ok=True)
            host_key = directory / "ssh_host_ed25519_key"
            _ensure_keys([(host_key, _hostname(index))])
            text = _sshd_config_text(index, _sshd_version(), listen, sftp_server)
            _write_text(directory / "sshd_config", text)
            node = Node(index, address, _hostname(index), _spawn(self.state_dir, index))
        kind, blob = host_key.with_suffix(".pub").read_text().split()[:2]
        with open(self.known_hosts, "a") as f:
            f.write(f"[{address}]:{port} {kind} {blob}\n")
        deadline = time.monotonic() + timeout
        while True:
            try:
                read_banner(address, port=port)
                return node
            except OSError as exc:
                if time.monotonic() > deadline or _exited(node.pid, self.state_dir):
                    self.stop_extra(node)
                    raise LabError(
                        f"extra node {listen} did not start ({exc}): "
                        f"{_log_tail(self.state_dir, index)}"
                    ) from exc
                time.sleep(0.05)

    def stop_extra(self, node: Node) -> None:
        """Kill a node started by :meth:`extra_node`."""
        if _is_ours(node.pid, self.state_dir):
            _kill_and_wait([node.pid])

    def is_running(self, i: Union[int, str]) -> bool:
        """Whether the node's processes are alive (frozen counts as running)."""
        return _is_ours(self.node(i).pid, self.state_dir)

    def is_frozen(self, i: Union[int, str]) -> bool:
        """Whether the node's sshd is stopped by :meth:`freeze`."""
        node = self.node(i)
        if not _is_ours(node.pid, self.state_dir):
            return False
        init = _child_of(node.pid)
        return init is not None and _proc_state(init) == "T"

    def _running(self, i: Union[int, str]) -> Node:
        node = self.node(i)
        if not _is_ours(node.pid, self.state_dir):
            raise LabError(f"{node.hostname} ({node.address}) is not running: restart it first")
        return node


def check_environment() -> None:
    """Check that this machine can run the lab; raise LabError saying how to fix it if not.

    Checks root, the tools (unshare, sshd, ssh-keygen, hostname), that
    namespaces can be created here, and that no server bound to all addresses
    on port 22 (typically the system sshd) keeps the nodes from binding theirs.
    """
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (namespaces, mounts, port 22): run as root, "
            "e.g. `sudo -E python3 -m pytest`"
        )
    if not os.access(SSHD, os.X_OK):
        raise LabError(f"{SSHD} not found: apt-get install openssh-server")
    for tool, package in (
        ("ssh-keygen", "openssh-client"),
        ("unshare", "util-linux"),
        ("hostname", "hostname"),
        ("mount", "mount"),
    ):
        if shutil.which(tool, path=_ENV["PATH"]) is None:
            raise LabError(f"{tool} not found: apt-get install {package}")
    probe = subprocess.run(
        [*_UNSHARE, "true"], capture_output=True, text=True, env=_ENV, check=False
    )
    if probe.returncode != 0:
        why = probe.stderr.strip().splitlines()[-1:] or [f"exit {probe.returncode}"]
        raise LabError(
            f"cannot create namespaces ({why[0]}): run on a machine, or in a "
            "container with CAP_SYS_ADMIN (e.g. docker run --privileged)"
        )
    _check_wildcard_port()


def up(
    nodes: int = 8,
    state_dir: Path = DEFAULT_STATE_DIR,
    first: int = 1,
    *,
    timeout: Optional[float] = None,
    ephemeral: bool = False,
    netns: Optional[str] = None,
) -> Lab:
    """Start ``nodes`` nodes at indices ``first`` and up, and return the lab.

    Node ``i`` listens on :func:`node_address` ``(i)``: ``127.0.1.<i>`` up to 254,
    then ``127.0.2.1`` and on, up to :data:`MAX_INDEX`. The nodes start all at
    once and are waited for together: 1,000 of them took 20 s on two cores, 7 s
    of it making their host keys (kept for the next time), and 1.3 MiB of
    memory (PSS) each.

    A lab already running in ``state_dir`` is stopped first: ``up`` always
    gives fresh nodes (empty ``/tmp``), never a half-reused lab. Keys already
    in ``state_dir`` are reused, so ``known_hosts`` stays valid across runs.
    ``ephemeral`` ties the lab to the calling process (test sessions): once
    that process is gone, a later ``up`` in any state dir may reclaim its
    addresses. Stale nodes whose state dir no longer records them are
    reclaimed too; nodes of another live lab are not (LabError names it).
    ``netns``: the nodes live in that network namespace (made by ``ip netns
    add``, its ``lo`` up), reachable only from there (see corunner.testing.bastion).

    Returns once every node answers with an SSH banner; raises LabError naming
    the node that did not within ``timeout`` seconds (default 30 + 0.5 per
    node), after stopping every node it started.
    """
    if nodes < 1 or first < 1 or first + nodes - 1 > MAX_INDEX:
        raise LabError(
            f"cannot place {nodes} nodes from index {first}: indices must stay within "
            f"1-{MAX_INDEX} ({node_address(1)}-{node_address(MAX_INDEX)})"
        )
    if timeout is None:
        timeout = 30.0 + 0.5 * nodes
    check_environment()
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    indices = list(range(first, first + nodes))
    with _locked(state_dir):
        _down(state_dir)
        _reclaim(indices, state_dir)
        _check_addresses_free(indices)
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        NODE_VIEW.mkdir(mode=0o755, parents=True, exist_ok=True)
        _write_files(state_dir, indices)
        owner = _process_identity(os.getpid()) if ephemeral else None
        started: List[Node] = []
        try:
            for i in indices:
                node = Node(i, node_address(i), _hostname(i), _spawn(state_dir, i, netns))
                started.append(node)
            # Recorded before waiting: a crash from here on leaves pids to clean up.
            _write_state(state_dir, started, owner, netns)
            _wait_for_banners(started, state_dir, time.monotonic() + timeout, netns)
        except BaseException:
            _kill_and_wait([n.pid for n in started if _is_ours(n.pid, state_dir)])
            _state_path(state_dir).unlink(missing_ok=True)
            raise
    return Lab(state_dir, started, netns)


def load(state_dir: Path = DEFAULT_STATE_DIR) -> Lab:
    """The lab running in ``state_dir``, from its state file.

    Raises LabError if there is none, or if none of its nodes is alive (stale
    state left by a crash or a reboot).
    """
    state_dir = Path(state_dir).resolve()
    nodes = _read_nodes(state_dir)
    if nodes is None:
        raise LabError(f"no lab in {state_dir}: start one with `inv lab.up`")
    if not any(_is_ours(n.pid, state_dir) for n in nodes):
        raise LabError(
            f"the lab in {state_dir} is not running (stale state from a crash or "
            "reboot?): start it again with `inv lab.up`"
        )
    state = _read_state(state_dir) or {}
    netns = state.get("netns")
    return Lab(state_dir, nodes, netns if isinstance(netns, str) else None)


def down(state_dir: Path = DEFAULT_STATE_DIR) -> int:
    """Kill every node of the lab in ``state_dir``; return how many were running.

    Also finds nodes the state file lost track of (by their command line, even
    if the state dir was deleted), and never signals a recorded pid that is not
    one of our ``unshare`` processes.
    """
    state_dir = Path(state_dir).resolve()
    if not state_dir.is_dir():
        return _down(state_dir)
    with _locked(state_dir):
        return _down(state_dir)


def read_banner(address: str, timeout: float = 1.0, port: int = PORT) -> str:
    """The SSH identification line a server sends first, e.g. ``SSH-2.0-OpenSSH_9.2``.

    Cheaper than a login and independent of keys: proof that sshd runs and is
    not frozen. Raises OSError: ConnectionRefusedError when nothing listens,
    TimeoutError (``socket.timeout``) when nothing answers within ``timeout``
    seconds.
    """
    deadline = time.monotonic() + timeout
    with socket.create_connection((address, port), timeout=timeout) as sock:
        data = b""
        while b"\n" not in data and len(data) < 256:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = sock.recv(256)
            if not chunk:
                raise ConnectionResetError(f"{address}:{port} closed before its banner")
            data += chunk
        # Identify ourselves so sshd logs a quiet disconnect, not an error.
        with contextlib.suppress(OSError):
            sock.sendall(b"SSH-2.0-corunner-lab-probe\r\n")
    return data.split(b"\n", 1)[0].decode("ascii", "replace").rstrip("\r")


# --- names and files ------------------------------------------------------------------


def node_address(i: int) -> str:
    """The loopback address of node ``i``: 1 -> ``127.0.1.1``, 254 -> ``127.0.1.254``,
    255 -> ``127.0.2.1``, 1000 -> ``127.0.4.238``: 254 nodes per /24 block, skipping
    .0 and .255. Raises LabError outside 1..:data:`MAX_INDEX`."""
    if not 1 <= i <= MAX_INDEX:
        raise LabError(f"no lab address for node index {i}: indices go from 1 to {MAX_INDEX}")
    block, offset = divmod(i - 1, BLOCK_SIZE)
    return f"127.0.{block + 1}.{offset + 1}"


def _hostname(i: int) -> str:
    return f"node{i}"


def _blocks(indices: Iterable[int]) -> Dict[int, List[int]]:
    """Last octets by third octet, both ascending: {1: [250, ..., 254], 2: [1, ...]}."""
    blocks: Dict[int, List[int]] = {}
    for i in sorted(set(indices)):
        block, offset = divmod(i - 1, BLOCK_SIZE)
        blocks.setdefault(block + 1, []).append(offset + 1)
    return blocks


def _fold_numbers(numbers: Sequence[int]) -> str:
    """Ascending numbers as a range body: [1, 2, 3, 7] -> ``1-3,7``."""
    runs: List[List[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def _bracket(numbers: Sequence[int]) -> str:
    body = _fold_numbers(numbers)
    return body if len(numbers) == 1 else f"[{body}]"


def _host_patterns(indices: Iterable[int]) -> List[str]:
    """The nodes' addresses as host patterns (hostrange syntax), in address order.

    One pattern per /24 block, and consecutive blocks holding the same last
    octets in one: indices 1..1000 -> ``127.0.[1-3].[1-254]``, ``127.0.4.[1-238]``.
    """
    groups: List[Tuple[List[int], List[int]]] = []  # (third octets, last octets)
    for block, offsets in _blocks(indices).items():
        if groups and groups[-1][1] == offsets and groups[-1][0][-1] == block - 1:
            groups[-1][0].append(block)
        else:
            groups.append(([block], offsets))
    return [f"127.0.{_bracket(blocks)}.{_bracket(offsets)}" for blocks, offsets in groups]


def _host_pattern(indices: Iterable[int]) -> str:
    return ",".join(_host_patterns(indices))


def _node_dir(state_dir: Path, i: int) -> Path:
    return state_dir / "nodes" / _hostname(i)


def _state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE


def _inventory_text(state_dir: Path, indices: List[int]) -> str:
    return (
        "# written by `inv lab.up`: the local test cluster\n"
        "defaults:\n"
        "  user: root\n"
        f"  port: {PORT}\n"
        f"  key: {state_dir / 'id_ed25519'}\n"
        f"  known_hosts: {state_dir / 'known_hosts'}\n"
        "  remote_dir: /tmp/corunner\n"
        f"  python: {_node_python()}\n"
        "  connect_timeout: 5\n"
        "groups:\n"
        "  lab:\n"
        f"    hosts: {json.dumps(_host_patterns(indices))}\n"
    )


def _node_python() -> str:
    """The nodes' Python for the inventory: the system one when it exists.

    The nodes share this machine's files, where ``python3`` on root's PATH may
    be a pyenv shim that costs ~100 ms of CPU per start on every node.
    """
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else "python3"


def _ssh_config_text(state_dir: Path, indices: List[int]) -> str:
    blocks = " ".join(f"127.0.{block}.*" for block in _blocks(indices))
    return (
        f"# written by corunner.lab: ssh -F <this file> {node_address(min(indices))}\n"
        f"Host {blocks}\n"
        "  User root\n"
        f"  IdentityFile {state_dir / 'id_ed25519'}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {state_dir / 'known_hosts'}\n"
        "  StrictHostKeyChecking yes\n"
    )


def _sshd_config_text(
    i: int,
    version: Tuple[int, int],
    listen: Optional[str] = None,
    sftp_server: str = "internal-sftp",
) -> str:
    inside = NODE_VIEW / "nodes" / _hostname(i)
    lines = [
        f"# written by corunner.lab for {_hostname(i)}; paths as the node sees them",
        f"ListenAddress {listen or f'{node_address(i)}:{PORT}'}",
        f"HostKey {inside / 'ssh_host_ed25519_key'}",
        f"AuthorizedKeysFile {NODE_VIEW / 'id_ed25519.pub'}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        # Connections not yet logged in, per node (each node is its own listener):
        # the default 10:30:100 starts dropping them at 10, which a test hammering
        # one node, or a slow controller opening several at once, reaches quickly.
        "MaxStartups 200:30:400",
        # Longer than the default 120 s: with 1,000+ nodes on a few cores a
        # controller may take minutes to get round to finishing each handshake;
        # clients time out on their own (the inventory's connect_timeout).
        "LoginGraceTime 300",
        # Channels per connection (default 10): a run multiplexes exec, SFTP and
        # forwarded channels over one connection.
        "MaxSessions 50",
        # No zlib state (~300 KiB per connection) even if a client asks for it.
        "Compression no",
        f"Subsystem sftp {sftp_server}",
        "PidFile none",
        "LogLevel INFO",  # a line per login: tests read it to prove that --dry logs in nowhere
        "PrintMotd no",
        "UseDNS no",
    ]
    if version >= (9, 8):
        # It penalises sources whose connections fail or end before login; every
        # test connects from 127.0.0.1, so faults injected on purpose would lock
        # all later tests out for a while.
        lines.append("PerSourcePenalties no")
    return "\n".join(lines) + "\n"


def _sshd_version() -> Tuple[int, int]:
    out = subprocess.run([str(SSHD), "-V"], capture_output=True, text=True, check=False)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", out.stderr + out.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _ensure_keys(paths: Iterable[Tuple[Path, str]]) -> None:
    """Generate the ed25519 keys that are missing, a few ssh-keygen at a time.

    Keys already there are kept (and made private again: ssh and sshd refuse
    keys others can read). At most :data:`_KEYGEN_JOBS` run at once: a thousand
    at once would only fight over the cores (and hold two pipes each).
    """
    jobs: List[Tuple[Path, subprocess.Popen[bytes]]] = []

    def finish(path: Path, job: subprocess.Popen[bytes]) -> None:
        _, err = job.communicate()
        if job.returncode != 0:
            raise LabError(f"ssh-keygen failed for {path}: {err.decode(errors='replace').strip()}")

    try:
        for path, comment in paths:
            if path.is_file() and path.with_suffix(".pub").is_file():
                path.chmod(0o600)
                continue
            path.unlink(missing_ok=True)
            path.with_suffix(".pub").unlink(missing_ok=True)
            if len(jobs) >= _KEYGEN_JOBS:
                finish(*jobs.pop(0))
            cmd = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
            out = subprocess.PIPE
            job = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=_ENV)
            jobs.append((path, job))
        while jobs:
            finish(*jobs.pop(0))
    finally:
        for _, job in jobs:  # only after an error: do not leave them behind
            job.kill()
            job.communicate()


_KEYGEN_JOBS = 2 * (os.cpu_count() or 1) + 2


def _write_files(state_dir: Path, indices: List[int]) -> None:
    """Keys, per-node sshd configs, known_hosts, hosts.yaml and ssh_config."""
    keys = [(state_dir / "id_ed25519", "corunner-lab-client")]
    for i in indices:
        _node_dir(state_dir, i).mkdir(parents=True, exist_ok=True)
        keys.append((_node_dir(state_dir, i) / "ssh_host_ed25519_key", _hostname(i)))
    _ensure_keys(keys)
    known = []
    version = _sshd_version()
    for i in indices:
        _write_text(_node_dir(state_dir, i) / "sshd_config", _sshd_config_text(i, version))
        kind, blob = (_node_dir(state_dir, i) / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        known.append(f"{node_address(i)} {kind} {blob}\n")
    _write_text(state_dir / "known_hosts", "".join(known))
    _write_text(state_dir / "hosts.yaml", _inventory_text(state_dir, indices))
    _write_text(state_dir / "ssh_config", _ssh_config_text(state_dir, indices))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- state file -----------------------------------------------------------------------


def _write_state(
    state_dir: Path, nodes: List[Node], owner: Optional[List[int]], netns: Optional[str] = None
) -> None:
    state = {
        "version": STATE_VERSION,
        "state_dir": str(state_dir),
        "owner": owner,
        "netns": netns,
        "nodes": [
            {"index": n.index, "address": n.address, "hostname": n.hostname, "pid": n.pid}
            for n in nodes
        ],
    }
    _write_text(_state_path(state_dir), json.dumps(state, indent=2) + "\n")


def _read_state(state_dir: Path) -> Optional[dict]:
    try:
        state = json.loads(_state_path(state_dir).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(
            f"{_state_path(state_dir)}: unreadable lab state ({exc}): "
            "delete it and run `inv lab.up`"
        ) from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise LabError(
            f"{_state_path(state_dir)}: unknown lab state format: delete it and run `inv lab.up`"
        )
    return state


def _read_nodes(state_dir: Path) -> Optional[List[Node]]:
    state = _read_state(state_dir)
    if state is None:
        return None
    try:
        return [
            Node(int(n["index"]), str(n["address"]), str(n["hostname"]), int(n["pid"]))
            for n in state["nodes"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise LabError(
            f"{_state_path(state_dir)}: malformed node entry ({exc!r}): "
            "delete it and run `inv lab.up`"
        ) from exc


def _read_owner(state_dir: Path) -> Optional[List[int]]:
    state = _read_state(state_dir)
    return state.get("owner") if state else None


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    """Serialise up/down/restart on one state dir across processes (re-entrant per process)."""
    key = str(state_dir)
    if key in _held_locks:
        yield
        return
    with open(state_dir / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        _held_locks.add(key)
        try:
            yield
        finally:
            _held_locks.discard(key)
            fcntl.flock(f, fcntl.LOCK_UN)


_held_locks: Set[str] = set()


def _busy(state_dir: Path) -> bool:
    """Whether another process is inside up, down or restart on this state dir."""
    if str(state_dir) in _held_locks:
        return True
    try:
        f = open(state_dir / ".lock")
    except OSError:
        return False
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


# --- processes ------------------------------------------------------------------------


def _spawn(state_dir: Path, i: int, netns: Optional[str] = None) -> int:
    """Start node ``i``'s unshare process (not waiting for sshd); return its pid.

    With ``netns``, nsenter puts it in that network namespace first (and
    execs unshare: the pid stays that of the node's unshare process).
    """
    inside = NODE_VIEW / "nodes" / _hostname(i)
    enter = ["nsenter", f"--net={NETNS_DIR / netns}"] if netns else []
    cmd = [
        *enter,
        *_UNSHARE,
        "sh",
        "-c",
        _NODE_SCRIPT,
        MARKER,
        str(state_dir),
        _hostname(i),
        str(inside / "sshd_config"),
        str(inside / "sshd.log"),
    ]
    with open(_node_dir(state_dir, i) / "unshare.log", "wb") as out:
        # A session of its own: a Ctrl-C meant for us does not reach the nodes.
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd="/",
            env=_ENV,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    return proc.pid


def _cmdline(pid: int) -> List[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return raw.decode(errors="replace").split("\0")[:-1]


def _lab_process(pid: int) -> Optional[Tuple[Path, int]]:
    """(state dir, node index) if ``pid`` is a live unshare process of some lab."""
    argv = _cmdline(pid)
    if not argv or os.path.basename(argv[0]) != "unshare" or MARKER not in argv:
        return None
    at = argv.index(MARKER)
    match = re.fullmatch(r"node(\d+)", argv[at + 2]) if len(argv) > at + 2 else None
    if match is None or _proc_state(pid) in (None, "Z", "X"):
        return None
    return Path(argv[at + 1]), int(match.group(1))


def _exited(pid: int, state_dir: Path) -> bool:
    """Whether a node we are starting has ended: asked of its Popen when it is our
    child (exact), else judged from /proc, twice, as a /proc read can miss."""
    proc = _children.get(pid)
    if proc is not None:
        return proc.poll() is not None
    if _is_ours(pid, state_dir):
        return False
    time.sleep(0.05)
    return not _is_ours(pid, state_dir)


def _is_ours(pid: int, state_dir: Path) -> bool:
    found = _lab_process(pid)
    return found is not None and found[0] == state_dir


def _all_lab_processes() -> Iterator[Tuple[int, Path, int]]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            found = _lab_process(int(entry.name))
            if found:
                yield int(entry.name), found[0], found[1]


def _proc_stat(pid: int) -> Optional[List[str]]:
    """Fields of /proc/<pid>/stat after the command name (index 0 is the state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def _proc_state(pid: int) -> Optional[str]:
    fields = _proc_stat(pid)
    return fields[0] if fields else None


def _process_identity(pid: int) -> Optional[List[int]]:
    """[pid, start time]: names a process even after its pid is reused."""
    fields = _proc_stat(pid)
    return [pid, int(fields[19])] if fields else None


def _child_of(pid: int) -> Optional[int]:
    """The one child of an unshare process: PID 1 of the node's namespace."""
    return _children_of([pid]).get(pid)


def _children_of(pids: Iterable[int]) -> Dict[int, int]:
    """{unshare pid: its one child} for those that have one; one /proc scan at most
    (when the kernel has no ``/proc/<pid>/task/<pid>/children``)."""
    found: Dict[int, int] = {}
    unknown: Set[int] = set()
    for pid in pids:
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            unknown.add(pid)
            continue
        if children:
            found[pid] = int(children[0])
    if unknown:
        for parent, kids in _process_tree().items():
            if parent in unknown:
                found[parent] = min(kids)
    return found


def _process_tree() -> Dict[int, List[int]]:
    """{pid: its children} of every process, from one scan of /proc."""
    tree: Dict[int, List[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _proc_stat(int(entry.name))
            if fields:
                tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _memory(roots: List[int]) -> Memory:
    """The memory of ``roots`` and all their descendants (see :class:`Memory`)."""
    tree = _process_tree()
    pids: List[int] = []
    todo = list(roots)
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += tree.get(pid, [])
    counted = rss = pss = 0
    for pid in pids:
        fields: Dict[str, int] = {}
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                name, _, value = line.partition(":")
                if name in ("Rss", "Pss"):
                    fields[name] = int(value.split()[0]) * 1024
        if "Rss" in fields:
            counted += 1
            rss += fields["Rss"]
            pss += fields.get("Pss", fields["Rss"])
    return Memory(counted, rss, pss)


def _wait_stopped(pids: Iterable[int], node: Node, timeout: float = 5.0) -> None:
    """Wait until each of ``pids`` is stopped or gone; LabError if one goes on running."""
    deadline = time.monotonic() + timeout
    while True:
        moving = [p for p in pids if _proc_state(p) not in (None, "T", "t", "Z", "X")]
        if not moving:
            return
        if time.monotonic() > deadline:
            raise LabError(
                f"{node.hostname} ({node.address}): processes {moving} still run "
                f"{timeout:.0f} s after SIGSTOP"
            )
        time.sleep(0.002)


def _pids_in_namespace_of(init: Optional[int]) -> List[int]:
    if init is None:
        return []
    try:
        ns = os.readlink(f"/proc/{init}/ns/pid")
    except OSError:
        return []
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry.name}/ns/pid") == ns:
                    pids.append(int(entry.name))
    return pids


def _gone(pid: int) -> bool:
    proc = _children.get(pid)
    if proc is not None and proc.poll() is not None:
        del _children[pid]
        return True
    return _proc_state(pid) in (None, "Z", "X")


def _kill_and_wait(pids: List[int], timeout: Optional[float] = None) -> None:
    """SIGKILL unshare processes (SIGTERM is blocked) and wait until their nodes are gone.

    The caller has checked the pids are ours. ``--kill-child`` takes the node's
    PID 1 along, and the kernel then kills the rest of its namespace. All are
    signalled first, then waited for together (default: 10 s + 20 ms per node).
    """
    if not pids:
        return
    if timeout is None:
        timeout = 10.0 + 0.02 * len(pids)
    inits = list(_children_of(pids).values())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    waiting = list(pids) + inits
    pause = 0.005
    while waiting:
        waiting = [p for p in waiting if not _gone(p)]
        if waiting and time.monotonic() > deadline:
            shown = ", ".join(map(str, waiting[:20])) + (" ..." if len(waiting) > 20 else "")
            raise LabError(
                f"{len(waiting)} lab processes ({shown}) still alive {timeout:.0f} s after SIGKILL"
            )
        if waiting:
            time.sleep(pause)
            pause = min(pause * 2, 0.05)


def _down(state_dir: Path) -> int:
    try:
        nodes = _read_nodes(state_dir) or []
    except LabError:
        nodes = []  # a damaged state file: the command-line scan below still finds them
    recorded = [n.pid for n in nodes if _is_ours(n.pid, state_dir)]
    strays = [pid for pid, where, _ in _all_lab_processes() if where == state_dir]
    pids = sorted(set(recorded) | set(strays))
    _kill_and_wait(pids)
    with contextlib.suppress(FileNotFoundError):
        _state_path(state_dir).unlink()
    return len(pids)


def _abandoned(
    pid: int, state_dir: Path, seen: Optional[Dict[Path, Tuple[bool, Set[int], bool]]] = None
) -> bool:
    """Whether a lab process is left over: its state dir forgot it, or its owner is gone.

    ``seen`` caches what was read of each state dir (busy, recorded pids, owner
    gone), so judging a thousand nodes of one lab reads its state once.
    """
    facts = seen.get(state_dir) if seen is not None else None
    if facts is None:
        facts = _lab_facts(state_dir)
        if seen is not None:
            seen[state_dir] = facts
    busy, recorded, owner_gone = facts
    if busy:
        return False  # its up/restart may not have recorded this pid yet
    return pid not in recorded or owner_gone


def _lab_facts(state_dir: Path) -> Tuple[bool, Set[int], bool]:
    """(busy, pids its state records, owner gone) of the lab in ``state_dir``."""
    if _busy(state_dir):
        return True, set(), False
    try:
        state = _read_state(state_dir)
    except LabError:
        return False, set(), True
    if state is None:
        return False, set(), True
    nodes = state.get("nodes")
    recorded: Set[int] = {
        n["pid"]
        for n in (nodes if isinstance(nodes, list) else [])
        if isinstance(n, dict) and isinstance(n.get("pid"), int)
    }
    owner = state.get("owner")
    owner_gone = isinstance(owner, list) and bool(owner) and _process_identity(owner[0]) != owner
    return False, recorded, owner_gone


def _reclaim(indices: List[int], state_dir: Path) -> None:
    """Kill left-over nodes of other labs on our addresses; refuse to touch live labs."""
    wanted = set(indices)
    stale = []
    seen: Dict[Path, Tuple[bool, Set[int], bool]] = {}
    for pid, where, i in _all_lab_processes():
        if i not in wanted or where == state_dir:
            continue
        if not _abandoned(pid, where, seen):
            raise LabError(
                f"{node_address(i)} is used by the lab in {where}: stop it first "
                f"(`inv lab.down` there, or corunner.lab.down(Path({str(where)!r})))"
            )
        stale.append(pid)
    _kill_and_wait(stale)


# --- sockets --------------------------------------------------------------------------


def _listeners(port: int) -> List[Tuple[str, int]]:
    """(address, socket inode) of every TCP socket listening on ``port``."""
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, st, inode = fields[1], fields[3], int(fields[9])
            addr_hex, port_hex = local.split(":")
            if st != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(addr_hex)
            # The kernel prints each 32-bit word of the address as a host-order number.
            words = struct.unpack(f">{len(raw) // 4}I", raw)
            packed = struct.pack(f"={len(words)}I", *words)
            family = socket.AF_INET6 if v6 else socket.AF_INET
            found.append((socket.inet_ntop(family, packed), inode))
    return found


def _socket_owner(inode: int) -> str:
    """'sshd (pid 123)' for the process holding a socket, for error messages."""
    target = f"socket:[{inode}]"
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) == target:
                        comm = Path(f"/proc/{entry.name}/comm").read_text().strip()
                        return f"{comm} (pid {entry.name})"
    return "another process"


def _check_wildcard_port() -> None:
    """Raise LabError if a server on all addresses, port 22, keeps 127.0.1.x:22 from binding."""
    taken = {addr for addr, _ in _listeners(PORT)}
    free = next((node_address(i) for i in range(254, 0, -1) if node_address(i) not in taken), None)
    if free is None:
        return
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((free, PORT))
            return
        except OSError as exc:
            error = exc
    if error.errno != errno.EADDRINUSE:
        raise LabError(
            f"cannot bind {free}:{PORT} ({error.strerror}): the lab needs the loopback "
            "interface to carry 127.0.0.0/8 (`ip addr add 127.0.0.1/8 dev lo`)"
        ) from error
    wildcard = sorted(
        (a, inode) for a, inode in _listeners(PORT) if a in ("0.0.0.0", "::")
    )  # 0.0.0.0 first: an IPv6-only [::] is not in the way
    who = _socket_owner(wildcard[0][1]) if wildcard else "another process"
    where = wildcard[0][0] if wildcard else "all addresses"
    fix = (
        "`systemctl stop ssh` or `service ssh stop`, or give it a specific ListenAddress "
        "in /etc/ssh/sshd_config"
        if who.startswith("sshd")
        else "stop it, or bind it to a specific address"
    )
    raise LabError(
        f"port {PORT} is taken on {where} by {who}, so lab nodes cannot bind "
        f"{NETWORK}x:{PORT}: {fix}"
    )


def _check_addresses_free(indices: List[int]) -> None:
    busy = {addr: inode for addr, inode in _listeners(PORT)}
    for i in indices:
        if node_address(i) in busy:
            raise LabError(
                f"{node_address(i)}:{PORT} is already in use by {_socket_owner(busy[node_address(i)])}: "
                f"stop it, or start the lab at other addresses (first=...)"
            )


#: Banner probes open at once while a lab starts. Each costs its node a fork and
#: an exec of sshd; more at once would only queue for the cores.
_PROBES = 32
#: Seconds one probe may wait for its banner before it is dropped and tried again.
_PROBE_TIMEOUT = 10.0
#: Bytes of the identification line a probe reads at most.
_BANNER_MAX = 256


@dataclass
class _Probe:
    """One non-blocking banner read in flight."""

    node: Node
    sock: socket.socket
    started: float
    connected: bool = False
    data: bytes = b""


def _wait_for_banners(
    nodes: List[Node], state_dir: Path, deadline: float, netns: Optional[str] = None
) -> None:
    """Wait until each node answers with an SSH banner; LabError naming the first that won't.

    All nodes are waited for together, with non-blocking sockets on one
    selector: a node is probed once ``/proc/net/tcp`` shows it listening (one
    read for all of them), at most :data:`_PROBES` probes at a time, each retried
    until the deadline. Exits are checked on every node a few times a second.
    Nodes in ``netns`` are probed from a thread inside it.
    """
    if netns is not None:
        in_netns(netns, lambda: _wait_for_banners(nodes, state_dir, deadline, None), scan=False)
        return
    waiting: Dict[str, Node] = {n.address: n for n in nodes}
    listening: Set[str] = set()
    retry_at: Dict[str, float] = {}
    probes: Dict[str, _Probe] = {}
    selector = selectors.DefaultSelector()
    can_scan = _SCAN.ok and os.access("/proc/net/tcp", os.R_OK)
    next_scan = next_exit_check = 0.0

    def drop(probe: _Probe, again: bool) -> None:
        selector.unregister(probe.sock)
        probe.sock.close()
        del probes[probe.node.address]
        if again:
            retry_at[probe.node.address] = time.monotonic() + 0.05
        else:
            del waiting[probe.node.address]
            listening.discard(probe.node.address)

    try:
        while waiting:
            now = time.monotonic()
            if now >= next_exit_check:
                next_exit_check = now + 0.2
                for node in waiting.values():
                    if _exited(node.pid, state_dir):
                        raise LabError(
                            f"{node.hostname} ({node.address}) exited during start-up: "
                            f"{_log_tail(state_dir, node.index)}"
                        )
            if now > deadline:
                late = next(iter(waiting.values()))
                others = f" (and {len(waiting) - 1} more)" if len(waiting) > 1 else ""
                raise LabError(
                    f"{late.hostname} ({late.address}){others} did not answer with an SSH "
                    f"banner in time: {_log_tail(state_dir, late.index)}"
                )
            if len(listening) < len(waiting) and now >= next_scan:
                next_scan = now + 0.05
                if can_scan:
                    listening |= {a for a, _ in _listeners(PORT) if a in waiting}
                else:
                    listening = set(waiting)
            for address in listening:
                if len(probes) >= _PROBES:
                    break
                if address not in probes and retry_at.get(address, 0.0) <= now:
                    _start_probe(waiting[address], selector, probes, retry_at)
            for key, events in selector.select(timeout=0.02):
                probe = key.data
                done = _advance_probe(probe, selector, events)
                if done is not None:
                    drop(probe, again=not done)
            now = time.monotonic()
            for probe in [p for p in probes.values() if now - p.started > _PROBE_TIMEOUT]:
                drop(probe, again=True)
    finally:
        for probe in probes.values():
            probe.sock.close()
        selector.close()


class _Scan(threading.local):
    """Whether this thread may read /proc/net/tcp for listeners (not inside another netns:
    /proc/net is the process's namespace, not the thread's)."""

    ok = True


_SCAN = _Scan()
#: Where ``ip netns add`` keeps the namespaces it names.
NETNS_DIR = Path("/run/netns")
_CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def in_netns(netns: str, work: Callable[[], T], scan: bool = True) -> T:
    """``work()`` in a thread that entered network namespace ``netns``: the
    sockets it makes live there. Its exception, if any, is raised here."""
    libc = ctypes.CDLL(None, use_errno=True)
    box: Dict[str, Any] = {}

    def body() -> None:
        try:
            with open(NETNS_DIR / netns) as handle:
                if libc.setns(handle.fileno(), _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise LabError(f"cannot enter network namespace {netns}: {os.strerror(err)}")
            _SCAN.ok = scan
            box["value"] = work()
        except BaseException as exc:  # handed to the caller's thread as it is
            box["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def _start_probe(
    node: Node,
    selector: selectors.BaseSelector,
    probes: Dict[str, _Probe],
    retry_at: Dict[str, float],
) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    err = sock.connect_ex((node.address, PORT))
    if err not in (0, errno.EINPROGRESS):
        sock.close()
        retry_at[node.address] = time.monotonic() + 0.05
        return
    probe = _Probe(node, sock, time.monotonic(), connected=err == 0)
    selector.register(sock, selectors.EVENT_READ if err == 0 else selectors.EVENT_WRITE, probe)
    probes[node.address] = probe


def _advance_probe(probe: _Probe, selector: selectors.BaseSelector, events: int) -> Optional[bool]:
    """Move a probe on after its socket is ready: True once it read an SSH banner,
    False if it failed (to be tried again), None while it goes on."""
    if not probe.connected:
        if probe.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return False  # refused, typically: sshd not listening yet
        probe.connected = True
        selector.modify(probe.sock, selectors.EVENT_READ, probe)
        return None
    try:
        chunk = probe.sock.recv(_BANNER_MAX)
    except BlockingIOError:
        return None
    except OSError:
        return False
    if not chunk:
        return False
    probe.data += chunk
    if b"\n" not in probe.data and len(probe.data) < _BANNER_MAX:
        return None
    if not probe.data.startswith(b"SSH-"):
        return False
    # Identify ourselves so sshd logs a quiet disconnect, not an error.
    with contextlib.suppress(OSError):
        probe.sock.send(b"SSH-2.0-corunner-lab-probe\r\n")
    return True


def _log_tail(state_dir: Path, i: int) -> str:
    lines: List[str] = []
    for name in ("unshare.log", "sshd.log"):
        with contextlib.suppress(OSError):
            lines += (_node_dir(state_dir, i) / name).read_text(errors="replace").splitlines()
    tail = " | ".join(line.strip() for line in lines[-3:] if line.strip())
    return tail or f"no log output (see {_node_dir(state_dir, i)})"
