"""The lab itself: real sshd nodes reached with real SSH, host keys checked."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import uuid
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator, Optional, Tuple

import paramiko
import pytest
import yaml
from helpers import wait_until

from corunner.testing import lab as lab_module
from corunner.errors import LabError
from corunner.testing.lab import NETWORK, Lab, Node, read_banner

#: Addresses 127.0.1.1 .. 127.0.1.32: where a user's own lab (``inv lab.up``, up to
#: 32 nodes) may run while the tests do. Neither the session lab nor the throw-away
#: labs of the tests here may use them.
USER_BLOCK = range(1, 33)
#: Highest address the throw-away labs here may use.
LAST_ADDRESS = 250


def connect(lab: Lab, node: Node, host_keys: Optional[Path] = None) -> paramiko.SSHClient:
    """A client that refuses any host key not in the lab's known_hosts."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(host_keys or lab.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        node.address,
        port=22,
        username="root",
        key_filename=str(lab.key),
        look_for_keys=False,
        allow_agent=False,
        timeout=5,
        banner_timeout=5,
        auth_timeout=5,
    )
    return client


def run(client: paramiko.SSHClient, command: str) -> Tuple[int, str]:
    """(exit status, last non-empty stdout line): root's shell start-up files may be noisy."""
    _, stdout, _ = client.exec_command(command, timeout=10)
    lines = [line.strip() for line in stdout.read().decode().splitlines() if line.strip()]
    return stdout.channel.recv_exit_status(), lines[-1] if lines else ""


@pytest.fixture(autouse=True)
def _environment(lab: Lab) -> None:
    """Every test here needs what the lab needs: skip or fail alike when it cannot run."""


@pytest.fixture
def client1(lab: Lab) -> Iterator[paramiko.SSHClient]:
    with connect(lab, lab.nodes[0]) as client:
        yield client


def test_session_lab_is_a_block_of_its_own_clear_of_the_users_lab(lab: Lab) -> None:
    first = lab.nodes[0].index
    assert first > USER_BLOCK[-1]
    assert [n.index for n in lab.nodes] == list(range(first, first + len(lab.nodes)))
    assert [(n.address, n.hostname) for n in lab.nodes] == [
        (f"{NETWORK}{n.index}", f"node{n.index}") for n in lab.nodes
    ]


def test_every_node_answers_with_its_hostname_over_checked_ssh(lab: Lab) -> None:
    assert len(lab.nodes) == 8
    for node in lab.nodes:
        assert lab.node(node.index) == lab.node(node.address) == lab.node(node.hostname) == node
        with connect(lab, node) as client:
            assert run(client, "hostname") == (0, node.hostname)


def test_each_node_has_its_own_host_key_and_a_wrong_one_is_refused(
    lab: Lab, tmp_path: Path
) -> None:
    lines = lab.known_hosts.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [n.address for n in lab.nodes]
    assert len({line.split()[2] for line in lines}) == len(lab.nodes)
    node2_key = lines[1].split(None, 1)[1]
    swapped = tmp_path / "known_hosts"
    swapped.write_text(f"{lab.nodes[0].address} {node2_key}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        connect(lab, lab.nodes[0], host_keys=swapped)
    (tmp_path / "empty").write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(lab, lab.nodes[0], host_keys=tmp_path / "empty")


def test_tmp_is_private_to_each_node(lab: Lab, client1: paramiko.SSHClient) -> None:
    path = f"/tmp/lab-marker-{uuid.uuid4().hex}"
    with client1.open_sftp() as sftp:
        with sftp.open(path, "w") as f:
            f.write("first node only")
    assert run(client1, f"cat {path}") == (0, "first node only")
    with connect(lab, lab.nodes[1]) as client2:
        assert run(client2, f"test -e {path}; echo $?") == (0, "1")
    assert not os.path.exists(path)


def test_state_files_describe_the_running_lab(lab: Lab) -> None:
    assert lab_module.load(lab.state_dir).nodes == lab.nodes
    inventory = lab.inventory.read_text()
    assert inventory.startswith("# written by `inv lab.up`: the local test cluster\n")
    assert yaml.safe_load(inventory) == {
        "defaults": {
            "user": "root",
            "port": 22,
            "key": str(lab.state_dir / "id_ed25519"),
            "known_hosts": str(lab.state_dir / "known_hosts"),
            "remote_dir": "/tmp/corunner",
            "python": lab_module._node_python(),  # the system python: no pyenv shim
            "connect_timeout": 5,
        },
        "groups": {"lab": {"hosts": [f"{NETWORK}[{lab.nodes[0].index}-{lab.nodes[-1].index}]"]}},
    }
    assert lab.key.is_absolute() and (lab.key.stat().st_mode & 0o077) == 0


def test_frozen_node_gives_no_banner_until_thawed(healthy_lab: Lab) -> None:
    lab = healthy_lab
    other, frozen = lab.nodes[1], lab.nodes[2]
    lab.freeze(frozen.index)
    assert lab.is_frozen(frozen.index) and lab.is_running(frozen.index)
    with pytest.raises(socket.timeout):
        read_banner(frozen.address, timeout=1.0)
    assert read_banner(other.address, timeout=1.0).startswith("SSH-2.0-")
    lab.thaw(frozen.index)
    assert not lab.is_frozen(frozen.index)
    banner = wait_until(lambda: read_banner(frozen.address, timeout=1.0), timeout=5)
    assert banner.startswith("SSH-")


def test_killed_node_refuses_connections_then_restarts_like_a_reboot(healthy_lab: Lab) -> None:
    lab = healthy_lab
    old = lab.nodes[3]
    i = old.index
    with connect(lab, old) as client:
        assert run(client, "touch /tmp/before-kill && echo ok") == (0, "ok")
        lab.kill(i)
        assert not lab.is_running(i)
        # The dead node's sessions are closed by the kernel, not left hanging.
        wait_until(lambda: not client.get_transport().is_active(), timeout=5)
    with pytest.raises(ConnectionRefusedError):
        read_banner(old.address, timeout=1.0)

    lab.restart(i)
    assert lab.is_running(i) and lab.node(i).pid != old.pid
    assert lab_module.load(lab.state_dir).node(i) == lab.node(i)
    with connect(lab, lab.node(i)) as client:  # same host key as in known_hosts
        assert run(client, "hostname") == (0, old.hostname)
        assert run(client, "test -e /tmp/before-kill; echo $?") == (0, "1")


def test_up_replaces_a_crashed_lab_and_down_leaves_nothing(lab: Lab, tmp_path: Path) -> None:
    # Left behind by a crash: a state file whose nodes still run.
    first = _free_addresses(2, lab)
    crashed = lab_module.up(2, tmp_path, first=first)
    (tmp_path / "lab.json").write_text("{")  # damaged too: found by their command lines
    second = lab_module.up(2, tmp_path, first=first)
    assert all(not _alive(n.pid) for n in crashed.nodes)
    assert all(second.is_running(n.index) for n in second.nodes)
    assert [n.index for n in second.nodes] == [first, first + 1]
    assert read_banner(second.nodes[1].address).startswith("SSH-")

    assert lab_module.down(tmp_path) == 2
    assert lab_module.down(tmp_path) == 0
    with pytest.raises(ConnectionRefusedError):
        read_banner(second.nodes[0].address)
    with pytest.raises(LabError, match="no lab in"):
        lab_module.load(tmp_path)


def test_down_never_signals_a_recorded_pid_that_is_not_a_lab_node(lab: Lab, tmp_path: Path) -> None:
    with subprocess.Popen(["sleep", "60"]) as bystander:
        try:
            # A node record like any other, but for a process that is no lab node.
            record = asdict(replace(lab.nodes[0], pid=bystander.pid))
            state = {"version": 1, "state_dir": str(tmp_path), "owner": None, "nodes": [record]}
            (tmp_path / "lab.json").write_text(json.dumps(state))
            assert lab_module.down(tmp_path) == 0
            assert bystander.poll() is None
        finally:
            bystander.kill()


def test_up_reclaims_addresses_only_from_abandoned_labs(lab: Lab, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    at = _free_addresses(1, lab)
    held = lab_module.up(1, first, first=at)
    try:
        used = re.escape(f"{held.nodes[0].address} is used by the lab in {first}")
        with pytest.raises(LabError, match=used):
            lab_module.up(1, second, first=at)
        # Its owner (a test session, say) died without tearing it down.
        state = json.loads((first / "lab.json").read_text())
        state["owner"] = [_dead_pid(), 0]
        (first / "lab.json").write_text(json.dumps(state))
        taken = lab_module.up(1, second, first=at)
        assert not _alive(held.nodes[0].pid)
        assert taken.is_running(at)
    finally:
        lab_module.down(first)
        lab_module.down(second)


def test_up_names_the_process_holding_a_node_address(lab: Lab, tmp_path: Path) -> None:
    at = _free_addresses(1, lab)
    address = f"{NETWORK}{at}"
    with socket.socket() as squatter:
        squatter.bind((address, 22))
        squatter.listen()
        with pytest.raises(LabError, match=rf"{re.escape(address)}:22 is already in use by python"):
            lab_module.up(1, tmp_path, first=at)


def _free_addresses(count: int, lab: Lab) -> int:
    """First of ``count`` consecutive addresses 127.0.1.x where nothing listens, for a
    throw-away lab.

    Never in ``USER_BLOCK`` (a user's own lab may be started there at any time) nor
    in the session ``lab``'s block (its restarted nodes come back there): so between
    them and above the session lab, 33-100 and 109-250 for the session lab at 101-108.
    Labs of other sessions on this machine may use any other range.
    """
    taken = set(USER_BLOCK) | {n.index for n in lab.nodes}
    run = 0
    for i in range(LAST_ADDRESS, 0, -1):
        if i in taken:
            run = 0
            continue
        try:
            read_banner(f"{NETWORK}{i}", timeout=0.2)
            run = 0
        except ConnectionRefusedError:
            run += 1
            if run == count:
                return i
        except OSError:
            run = 0
    raise AssertionError(
        f"no {count} consecutive free addresses in {NETWORK}1-{LAST_ADDRESS} "
        f"outside {NETWORK}{USER_BLOCK[0]}-{USER_BLOCK[-1]} and the session lab"
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
