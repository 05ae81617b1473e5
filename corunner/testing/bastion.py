"""The lab's bastion: target nodes that only a jump host reaches.

A network namespace (``ip netns add``) holds the bastion and its targets,
each a lab node (:mod:`corunner.testing.lab`: a real ``sshd`` with its own
hostname, host key and ``/tmp``, able to be killed and frozen) on its own
127.0.x.y address on the namespace's own ``lo``. The controller's namespace
has none of those addresses: a direct connection to a target is refused.
Only the bastion is reachable from outside, through a ``socat`` bridge: one
socat in the host's namespace listens on the bastion's address and port 22
and hands each connection over a unix socket to a socat inside the namespace
(``ip netns exec``), which connects to the bastion's sshd there. Its sshd
reaches the targets on the namespace's loopback, as a bastion reaches a
private network. Every byte travels on loopback addresses only (127.0.0.0/8),
in either namespace; nodes inside cannot reach the controller's listener
(they are "behind NAT"), so their heartbeats need a tunnel.

The socat pids and the namespace are recorded in ``bastion.json`` in the
state directory, so :func:`down` finds them again; ``behind.yaml`` there is an
inventory of the targets through the bastion (``inv lab.bastion``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from ..errors import LabError
from . import lab as lab_module
from .lab import Lab, Node

#: The namespace the bastion and its targets live in.
NETNS = "corunner-bastion"
#: Index of the bastion: 127.0.200.1 (targets follow: 127.0.200.2, ...), far
#: from the session lab (127.0.1.101-108) and a user's own (127.0.1.1 and up).
FIRST = lab_module.BLOCK_SIZE * 199 + 1
STATE_FILE = "bastion.json"
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


@dataclass
class Bastion:
    """A running bastion lab: ``lab.nodes[0]`` the bastion, the rest its targets."""

    lab: Lab
    netns: str
    bridge: List[int]  # the socat pids

    @property
    def bastion(self) -> Node:
        return self.lab.nodes[0]

    @property
    def targets(self) -> List[Node]:
        return self.lab.nodes[1:]

    def inventory_text(self, jump: Optional[str] = None, **group: object) -> str:
        """A hosts.yaml whose group ``behind`` holds the targets, reached through
        ``jump`` (default: the bastion), with ``group``'s settings added."""
        data = {
            "defaults": {
                "user": "root",
                "key": str(self.lab.key),
                "known_hosts": str(self.lab.known_hosts),
                "remote_dir": "/tmp/corunner",
                "python": lab_module._node_python(),
                "connect_timeout": 5,
            },
            "groups": {
                "behind": {
                    "hosts": [t.address for t in self.targets],
                    "jump": jump or self.bastion.address,
                    **group,
                }
            },
        }
        return "# written by corunner.testing.bastion: targets behind the bastion\n" + json.dumps(
            data, indent=2
        )


def check_environment() -> None:
    """LabError saying what to install if ``ip`` or ``socat`` is missing (and the lab's checks)."""
    lab_module.check_environment()
    for tool, package in (("ip", "iproute2"), ("socat", "socat"), ("nsenter", "util-linux")):
        if shutil.which(tool, path=_ENV["PATH"]) is None:
            raise LabError(f"{tool} not found: apt-get install {package}")


def up(state_dir: Path, targets: int = 3, netns: str = NETNS, ephemeral: bool = False) -> Bastion:
    """Start the namespace, the bastion and ``targets`` nodes behind it, and the bridge.

    Anything left of an earlier bastion in ``state_dir`` or ``netns`` is
    removed first. Returns once the bastion answers through the bridge;
    raises LabError (after cleaning up) otherwise.
    """
    check_environment()
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    down(state_dir, netns)
    _ip("netns", "add", netns)
    bridge: List[int] = []
    try:
        _ip("netns", "exec", netns, "ip", "link", "set", "lo", "up")
        lab = lab_module.up(1 + targets, state_dir, first=FIRST, ephemeral=ephemeral, netns=netns)
        address = lab.nodes[0].address
        sock = state_dir / "bastion.sock"
        inside = [
            "ip", "netns", "exec", netns, "socat",
            f"UNIX-LISTEN:{sock},fork,unlink-early,mode=600",
            f"TCP:{address}:{lab_module.PORT}",
        ]  # fmt: skip
        bridge.append(_start(inside, state_dir / "socat-inside.log"))
        _wait(lambda: sock.exists(), "the bridge's unix socket", bridge)
        outside = [
            "socat",
            f"TCP-LISTEN:{lab_module.PORT},bind={address},reuseaddr,fork",
            f"UNIX-CONNECT:{sock}",
        ]
        bridge.append(_start(outside, state_dir / "socat-outside.log"))
        _write_state(state_dir, netns, bridge)
        _wait(lambda: _answers(address), f"the bastion at {address} through the bridge", bridge)
        the_bastion = Bastion(lab, netns, bridge)
        (state_dir / "behind.yaml").write_text(the_bastion.inventory_text() + "\n")
    except BaseException:
        down(state_dir, netns)
        raise
    return the_bastion


def down(state_dir: Path, netns: str = NETNS) -> None:
    """Stop the bridge, the nodes and the namespace (whatever of them runs)."""
    state_dir = Path(state_dir).resolve()
    state = state_dir / STATE_FILE
    with contextlib.suppress(OSError, ValueError):
        for pid in json.loads(state.read_text()).get("bridge", []):
            if _is_socat(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
    state.unlink(missing_ok=True)
    if state_dir.is_dir():
        lab_module.down(state_dir)
    if (lab_module.NETNS_DIR / netns).exists():
        _ip("netns", "del", netns)


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, env=_ENV, check=False)
    if done.returncode != 0:
        raise LabError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")


def _start(cmd: List[str], log: Path) -> int:
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=_ENV, start_new_session=True
        )
    return proc.pid


def _is_socat(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(os.path.basename(a) == b"socat" for a in argv[:5])


def _answers(address: str) -> bool:
    try:
        return lab_module.read_banner(address).startswith("SSH-")
    except (OSError, LabError):
        return False


def _wait(ready: Callable[[], bool], what: str, pids: List[int], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not ready():
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    raise LabError(f"{what}: socat exited at once (see its log)")
        if time.monotonic() > end:
            raise LabError(f"{what} did not come up within {timeout:g}s")
        time.sleep(0.05)


def _write_state(state_dir: Path, netns: str, bridge: List[int]) -> None:
    path = state_dir / STATE_FILE
    path.write_text(json.dumps({"netns": netns, "bridge": bridge}) + "\n")
