"""The lab itself: real sshd nodes reached with real SSH, host keys checked."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import uuid
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple, TypeVar

import paramiko
import pytest
import yaml
from helpers import wait_until

from corunner.errors import LabError
from corunner.hostrange import expand
from corunner.inventory import inventory_from_dict
from corunner.testing import lab as lab_module
from corunner.testing.lab import MAX_INDEX, NETWORK, Lab, Node, node_address, read_banner

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


F = TypeVar("F", bound=Callable[..., None])


def pure(test: F) -> F:
    """A test of the lab's own logic that starts nothing: it runs without the session lab."""
    test.needs_no_lab = True  # type: ignore[attr-defined]
    return test


@pytest.fixture(autouse=True)
def _environment(request: pytest.FixtureRequest) -> None:
    """Every test here needs what the lab needs: skip or fail alike when it cannot run."""
    if not getattr(request.function, "needs_no_lab", False):
        request.getfixturevalue("lab")


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


@pure
def test_node_index_maps_to_an_address_254_per_block() -> None:
    expected = {
        1: "127.0.1.1",
        101: "127.0.1.101",
        254: "127.0.1.254",
        255: "127.0.2.1",
        508: "127.0.2.254",
        509: "127.0.3.1",
        1000: "127.0.4.238",
        2000: "127.0.8.222",
        MAX_INDEX: "127.0.254.254",
    }
    assert {i: node_address(i) for i in expected} == expected
    assert all(node_address(i) == f"{NETWORK}{i}" for i in range(1, 255))  # as it always was
    addresses = [node_address(i) for i in range(1, 2001)]
    assert len(set(addresses)) == 2000
    assert all(a.split(".")[3] not in ("0", "255") for a in addresses)
    for index in (0, -1, MAX_INDEX + 1):
        with pytest.raises(LabError, match="indices go from 1 to"):
            node_address(index)
    with pytest.raises(LabError, match="indices must stay within"):
        lab_module.up(2, Path("/nonexistent"), first=MAX_INDEX)  # refused before anything runs


@pure
@pytest.mark.parametrize(
    "first, count, patterns",
    [
        (101, 8, ["127.0.1.[101-108]"]),
        (5, 1, ["127.0.1.5"]),
        (250, 10, ["127.0.1.[250-254]", "127.0.2.[1-5]"]),
        (1, 1000, ["127.0.[1-3].[1-254]", "127.0.4.[1-238]"]),
        (254, 510, ["127.0.1.254", "127.0.[2-3].[1-254]", "127.0.4.1"]),
        (300, 2000, ["127.0.2.[46-254]", "127.0.[3-9].[1-254]", "127.0.10.[1-13]"]),
    ],
)
def test_inventory_folds_the_addresses_one_pattern_per_run_of_blocks(
    first: int, count: int, patterns: List[str], tmp_path: Path
) -> None:
    indices = list(range(first, first + count))
    text = lab_module._inventory_text(tmp_path, indices)
    data = yaml.safe_load(text)
    assert data["groups"]["lab"]["hosts"] == patterns
    addresses = [node_address(i) for i in indices]
    assert expand(",".join(patterns)) == addresses  # in node order
    inventory = inventory_from_dict(data)
    assert [h.name for h in inventory.hosts] == addresses
    config = lab_module._ssh_config_text(tmp_path, indices)
    blocks = sorted({a.rsplit(".", 1)[0] for a in addresses}, key=lambda b: int(b.split(".")[2]))
    assert f"Host {' '.join(b + '.*' for b in blocks)}\n" in config


def test_a_lab_across_a_block_boundary_answers_on_every_node_and_stops(
    lab: Lab, tmp_path: Path
) -> None:
    first = _free_block_boundary(10, lab)
    indices = list(range(first, first + 10))
    addresses = [node_address(i) for i in indices]
    if first == 250:
        assert addresses == [f"127.0.1.{i}" for i in range(250, 255)] + [
            f"127.0.2.{i}" for i in range(1, 6)
        ]
    # Addresses past the boundary are checked like the others before anything starts.
    with socket.socket() as squatter:
        squatter.bind((addresses[7], 22))
        squatter.listen()
        with pytest.raises(LabError, match=rf"{re.escape(addresses[7])}:22 is already in use"):
            lab_module.up(10, tmp_path / "crossing", first=first)

    crossing = lab_module.up(10, tmp_path / "crossing", first=first)
    try:
        assert [(n.index, n.address, n.hostname) for n in crossing.nodes] == [
            (i, a, f"node{i}") for i, a in zip(indices, addresses)
        ]
        known = crossing.known_hosts.read_text().splitlines()
        assert [line.split()[0] for line in known] == addresses
        hosts = yaml.safe_load(crossing.inventory.read_text())["groups"]["lab"]["hosts"]
        assert expand(",".join(hosts)) == addresses
        for node in crossing.nodes:
            with connect(crossing, node) as client:
                assert run(client, "hostname") == (0, node.hostname)
        if shutil.which("ssh"):  # the generated ssh_config reaches the second block too
            last = crossing.nodes[-1]
            done = subprocess.run(
                ["ssh", "-F", str(crossing.ssh_config), "-o", "BatchMode=yes", last.address]
                + ["hostname"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert (done.returncode, done.stdout.split()[-1:]) == (0, [last.hostname]), done.stderr
        used = crossing.memory()
        assert used.processes >= 20 and 0 < used.pss <= used.rss  # unshare + sshd per node
        # Another live lab may not take any of them, past the boundary either.
        with pytest.raises(LabError, match=re.escape(f"{addresses[6]} is used by the lab in")):
            lab_module.up(1, tmp_path / "other", first=indices[6])
    finally:
        stopped = lab_module.down(tmp_path / "crossing")
    assert stopped == 10
    assert not any(_alive(n.pid) for n in crossing.nodes)
    for address in addresses:
        with pytest.raises(ConnectionRefusedError):
            read_banner(address)


def _free_block_boundary(count: int, lab: Lab) -> int:
    """First of ``count`` free consecutive indices that cross from one /24 block into
    the next (127.0.1.250-254 then 127.0.2.1-5 for 10), clear of the user's lab and
    the session lab; the next boundaries if another lab is there."""
    taken = set(USER_BLOCK) | {n.index for n in lab.nodes}
    for block in range(1, 9):
        first = block * lab_module.BLOCK_SIZE - count // 2 + 1
        indices = range(first, first + count)
        if taken.isdisjoint(indices) and all(_refused(node_address(i)) for i in indices):
            return first
    raise AssertionError(f"no {count} free addresses across any of the first 8 block boundaries")


def _refused(address: str) -> bool:
    try:
        read_banner(address, timeout=0.2)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


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
