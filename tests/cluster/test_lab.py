"""The lab itself: real sshd nodes reached with real SSH, host keys checked."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Iterator, Optional, Tuple

import paramiko
import pytest
import yaml
from helpers import wait_until

from corunner import lab as lab_module
from corunner.errors import LabError
from corunner.lab import Lab, Node, read_banner


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
    with connect(lab, lab.node(1)) as client:
        yield client


def test_every_node_answers_with_its_hostname_over_checked_ssh(lab: Lab) -> None:
    assert [n.address for n in lab.nodes] == [f"127.0.1.{i}" for i in range(1, 9)]
    for node in lab.nodes:
        with connect(lab, node) as client:
            assert run(client, "hostname") == (0, f"node{node.index}")


def test_each_node_has_its_own_host_key_and_a_wrong_one_is_refused(
    lab: Lab, tmp_path: Path
) -> None:
    lines = lab.known_hosts.read_text().splitlines()
    assert [line.split()[0] for line in lines] == [n.address for n in lab.nodes]
    assert len({line.split()[2] for line in lines}) == len(lab.nodes)
    node2_key = lines[1].split(None, 1)[1]
    swapped = tmp_path / "known_hosts"
    swapped.write_text(f"127.0.1.1 {node2_key}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        connect(lab, lab.node(1), host_keys=swapped)
    (tmp_path / "empty").write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        connect(lab, lab.node(1), host_keys=tmp_path / "empty")


def test_tmp_is_private_to_each_node(lab: Lab, client1: paramiko.SSHClient) -> None:
    path = f"/tmp/lab-marker-{uuid.uuid4().hex}"
    with client1.open_sftp() as sftp:
        with sftp.open(path, "w") as f:
            f.write("node1 only")
    assert run(client1, f"cat {path}") == (0, "node1 only")
    with connect(lab, lab.node(2)) as client2:
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
            "python": "python3",
            "connect_timeout": 5,
        },
        "groups": {"lab": {"hosts": ["127.0.1.[1-8]"]}},
    }
    assert lab.key.is_absolute() and (lab.key.stat().st_mode & 0o077) == 0


def test_frozen_node_gives_no_banner_until_thawed(healthy_lab: Lab) -> None:
    lab = healthy_lab
    lab.freeze(3)
    assert lab.is_frozen(3) and lab.is_running(3)
    with pytest.raises(socket.timeout):
        read_banner("127.0.1.3", timeout=1.0)
    assert read_banner("127.0.1.2", timeout=1.0).startswith("SSH-2.0-")
    lab.thaw(3)
    assert not lab.is_frozen(3)
    assert wait_until(lambda: read_banner("127.0.1.3", timeout=1.0), timeout=5).startswith("SSH-")


def test_killed_node_refuses_connections_then_restarts_like_a_reboot(healthy_lab: Lab) -> None:
    lab = healthy_lab
    old = lab.node(4)
    with connect(lab, old) as client:
        assert run(client, "touch /tmp/before-kill && echo ok") == (0, "ok")
        lab.kill(4)
        assert not lab.is_running(4)
        # The dead node's sessions are closed by the kernel, not left hanging.
        wait_until(lambda: not client.get_transport().is_active(), timeout=5)
    with pytest.raises(ConnectionRefusedError):
        read_banner("127.0.1.4", timeout=1.0)

    lab.restart(4)
    assert lab.is_running(4) and lab.node(4).pid != old.pid
    assert lab_module.load(lab.state_dir).node(4) == lab.node(4)
    with connect(lab, lab.node(4)) as client:  # same host key as in known_hosts
        assert run(client, "hostname") == (0, "node4")
        assert run(client, "test -e /tmp/before-kill; echo $?") == (0, "1")


def test_up_replaces_a_crashed_lab_and_down_leaves_nothing(tmp_path: Path) -> None:
    # Left behind by a crash: a state file whose nodes still run.
    first = _free_addresses(2)
    crashed = lab_module.up(2, tmp_path, first=first)
    (tmp_path / "lab.json").write_text("{")  # damaged too: found by their command lines
    second = lab_module.up(2, tmp_path, first=first)
    assert all(not _alive(n.pid) for n in crashed.nodes)
    assert all(second.is_running(n.index) for n in second.nodes)
    assert read_banner(f"127.0.1.{first + 1}").startswith("SSH-")

    assert lab_module.down(tmp_path) == 2
    assert lab_module.down(tmp_path) == 0
    with pytest.raises(ConnectionRefusedError):
        read_banner(f"127.0.1.{first}")
    with pytest.raises(LabError, match="no lab in"):
        lab_module.load(tmp_path)


def test_down_never_signals_a_recorded_pid_that_is_not_a_lab_node(tmp_path: Path) -> None:
    with subprocess.Popen(["sleep", "60"]) as bystander:
        try:
            state = {"version": 1, "state_dir": str(tmp_path), "owner": None, "nodes": [
                {"index": 1, "address": "127.0.1.1", "hostname": "node1", "pid": bystander.pid}
            ]}  # fmt: skip
            (tmp_path / "lab.json").write_text(json.dumps(state))
            assert lab_module.down(tmp_path) == 0
            assert bystander.poll() is None
        finally:
            bystander.kill()


def test_up_reclaims_addresses_only_from_abandoned_labs(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    at = _free_addresses(1)
    held = lab_module.up(1, first, first=at)
    try:
        with pytest.raises(LabError, match=f"127.0.1.{at} is used by the lab in {first}"):
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


def test_up_names_the_process_holding_a_node_address(tmp_path: Path) -> None:
    at = _free_addresses(1)
    with socket.socket() as squatter:
        squatter.bind((f"127.0.1.{at}", 22))
        squatter.listen()
        with pytest.raises(LabError, match=rf"127\.0\.1\.{at}:22 is already in use by python"):
            lab_module.up(1, tmp_path, first=at)


def _free_addresses(count: int) -> int:
    """First of ``count`` addresses 127.0.1.x where nothing listens: labs of other
    sessions on this machine may use any range."""
    run = 0
    for i in range(250, 8, -1):
        try:
            read_banner(f"127.0.1.{i}", timeout=0.2)
            run = 0
        except ConnectionRefusedError:
            run += 1
            if run == count:
                return i
        except OSError:
            run = 0
    raise AssertionError(f"no {count} free addresses in 127.0.1.9-250")


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
