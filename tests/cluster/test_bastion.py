"""Targets only a bastion reaches (corunner.testing.bastion): jump hosts, heartbeats
through the SSH connection, and the faults behind a jump host.

One bastion setup for the module: the bastion (127.0.200.1, reachable through
a socat bridge) and three targets in a network namespace of their own.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from conftest import Cli
from helpers import wait_until

from corunner.errors import EXIT_LOST, EXIT_OK
from corunner.hostrange import fold
from corunner.testing import bastion as bastion_module
from corunner.testing import lab as lab_module
from corunner.testing.bastion import Bastion
from corunner.testing.lab import Lab

FAST = ("--interval", "0.2", "--dead-after", "1.5")
#: Nothing listens here, in either namespace: a jump host that is down.
DOWN_JUMP = "127.0.200.250"


@pytest.fixture(scope="module")
def behind(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bastion]:
    """The bastion and its three targets (``lab`` first: its session lock guards ours too)."""
    try:
        bastion_module.check_environment()
    except Exception as exc:  # a missing tool: say which, as the lab fixture does
        pytest.skip(f"the bastion cannot run here: {exc}")
    state_dir = tmp_path_factory.mktemp("bastion")
    the_bastion = bastion_module.up(state_dir, targets=3, ephemeral=True)
    try:
        yield the_bastion
    finally:
        bastion_module.down(state_dir)


def inventory(b: Bastion, path: Path, jump: str, **extra: object) -> Path:
    path.write_text(b.inventory_text(jump, **extra))
    return path


@pytest.fixture
def jcli(behind: Bastion, tmp_path: Path) -> Cli:
    runner = Cli(behind.lab, tmp_path)
    runner.env["CORUNNER_INVENTORY"] = str(
        inventory(behind, tmp_path / "hosts.yaml", behind.bastion.address)
    )
    return runner


def logins(b: Bastion) -> int:
    """Logins the bastion's sshd accepted so far (its log, LogLevel INFO)."""
    log = b.lab.state_dir / "nodes" / b.bastion.hostname / "sshd.log"
    return log.read_text(errors="replace").count("Accepted publickey")


def test_files_relayed_behind_the_bastion_share_its_one_connection(behind, jcli, tmp_path):
    """run --files --relay behind a jump host: the relay and the starts go
    through the run's one connection to the bastion, the chain's head is fed
    over SSH (the controller cannot reach its port), the targets pass the
    files to each other inside their network, and every program finds them."""
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(1 << 20))
    digest = hashlib.sha256(data.read_bytes()).hexdigest()
    before = logins(behind)
    done, doc = jcli.json(
        "run", "--cmd", "sha256sum data.bin", "--files", str(data), "--relay", "--quiet", *FAST
    )  # fmt: skip
    assert done.returncode == EXIT_OK, done.stderr
    assert logins(behind) == before + 1
    assert doc["relay"]["hosts"] == len(behind.targets) and not doc["relay"]["failed"]
    done, doc = jcli.json("status", "--run", doc["run_id"], "--output")
    (group,) = doc["outputs"]["groups"]
    assert group["output"].split()[0] == digest and len(group["hosts"]) == len(behind.targets)


def test_targets_are_reached_only_through_the_bastion(behind, jcli, tmp_path):
    targets = behind.targets
    everyone = fold(t.address for t in targets)
    # The test's own check: no direct path from here, and yet each target runs
    # (it answers from inside its namespace).
    for target in targets:
        with pytest.raises(ConnectionRefusedError):  # nothing listens there, in our namespace
            socket.create_connection((target.address, 22), timeout=5).close()
        inside = lab_module.in_netns(
            behind.netns, lambda t=target: lab_module.read_banner(t.address, timeout=10)
        )
        assert inside.startswith("SSH-")

    # run --cmd with heartbeats: the tunnel is chosen for hosts behind a jump host.
    data = tmp_path / "data.txt"
    data.write_text("uploaded\n")
    before = logins(behind)
    done, doc = jcli.json(
        "run", "--cmd", "sleep 1; cat data.txt; hostname", "--files", str(data), "--quiet", *FAST
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert logins(behind) == before + 1  # every target through ONE connection to the bastion
    assert {h["state"] for h in doc["hosts"]} == {"succeeded"}
    run_id = doc["run_id"]
    changes = {(e["host"], e["old"], e["new"]) for e in jcli.events()}
    for target in targets:  # heard from while running: heartbeats came through the tunnel
        assert (target.address, "pending", "alive") in changes
    done, doc = jcli.json("status", "--run", run_id, "--output")
    outputs = {tuple(sorted(g["hosts"])): g["output"].strip() for g in doc["outputs"]["groups"]}
    assert outputs == {(t.address,): f"uploaded\n{t.hostname}" for t in targets}

    # cp push (a tree) and pull (one file), collect --divide, status --refresh.
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "a.txt").write_text("through the bastion\n")
    done = jcli("cp", "--src", str(tree), "--dest", "/tmp/pushed/")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"ok (3): {everyone}" in done.stdout
    done = jcli(
        "cp", "--pull", "--src", "/tmp/pushed/tree/sub/a.txt", "--dest", str(tmp_path / "p")
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for target in targets:
        assert (tmp_path / "p" / f"a.txt.{target.address}").read_text() == "through the bastion\n"
    done = jcli("collect", "--run", run_id, "--divide", "--dest", str(tmp_path / "all"))
    assert done.returncode == 0, done.stdout + done.stderr
    for target in targets:
        status = json.loads((tmp_path / "all" / target.address / "status.json").read_text())
        assert (status["state"], status["exit_code"]) == ("exited", 0)
    done, doc = jcli.json("status", "--run", run_id, "--refresh")
    assert {h["state"] for h in doc["hosts"].values()} == {"succeeded"}


def test_heartbeat_direct_behind_the_bastion_says_it_cannot_reach_the_controller(
    behind, jcli, tmp_path
):
    jcli.env["CORUNNER_INVENTORY"] = str(
        inventory(behind, tmp_path / "direct.yaml", behind.bastion.address, heartbeat="direct")
    )
    done, doc = jcli.json("run", "--cmd", "sleep 30", "--quiet", *FAST, timeout=60)
    assert done.returncode == EXIT_LOST
    for host in doc["hosts"]:
        assert host["state"] == "dead"
        assert "cannot reach the controller at 127.0.0.1:" in host["error"]
        assert host["error"].endswith("; use --heartbeat-via tunnel or --no-heartbeat")
    assert doc["ended_at"] - doc["started_at"] < 15  # said at the start, not waited for
    # --heartbeat-via wins over the inventory: the same hosts succeed through the tunnel,
    # and with no heartbeats at all (the SSH session through the bastion is the sign of life).
    done = jcli("stop", "--run", doc["run_id"])
    assert done.returncode == 0, done.stdout + done.stderr
    for way in (("--heartbeat-via", "tunnel"), ("--no-heartbeat",)):
        done, doc = jcli.json("run", "--cmd", "true", "--quiet", *way, *FAST)
        assert done.returncode == EXIT_OK, done.stderr
        assert {h["state"] for h in doc["hosts"]} == {"succeeded"}

    # --jump, as ssh -J, for an inventory that names none; the run's record keeps it.
    jcli.env["CORUNNER_INVENTORY"] = str(inventory(behind, tmp_path / "none.yaml", "none"))
    bastion = behind.bastion.address
    done, doc = jcli.json("run", "--cmd", "true", "--quiet", "--jump", bastion, *FAST)
    assert done.returncode == EXIT_OK, done.stderr
    done, doc = jcli.json("status", "--run", doc["run_id"], "--refresh")
    assert {h["state"] for h in doc["hosts"].values()} == {"succeeded"}


def test_a_jump_host_that_is_down_is_named_once_on_every_host_behind_it(behind, jcli, tmp_path):
    jcli.env["CORUNNER_INVENTORY"] = str(inventory(behind, tmp_path / "down.yaml", DOWN_JUMP))
    line = f"{DOWN_JUMP} (jump host for 3 hosts): connection refused on port 22 (is sshd running?)"
    done, doc = jcli.json("run", "--cmd", "true", *FAST)
    assert done.returncode == EXIT_LOST
    assert {(h["state"], h["error"]) for h in doc["hosts"]} == {("unreachable", line)}
    assert "Traceback" not in done.stderr
    done = jcli("cp", "--src", str(jcli.env["CORUNNER_INVENTORY"]), "--dest", "/tmp/")
    assert done.returncode != 0
    everyone = fold(t.address for t in behind.targets)
    assert f"{everyone}: {line}" in done.stdout.splitlines()  # one line for the three

    # A jump host that refuses the key, or whose host key is unknown, is named the same way;
    # its host key is checked as any host's is.
    bastion = behind.bastion.address
    jcli.env["CORUNNER_INVENTORY"] = str(
        inventory(behind, tmp_path / "u.yaml", f"nobody@{bastion}")
    )
    done, doc = jcli.json("run", "--cmd", "true", *FAST)
    assert {h["state"] for h in doc["hosts"]} == {"unreachable"}
    assert {h["error"].split(":")[0] for h in doc["hosts"]} == {
        f"{bastion} (jump host for 3 hosts)"
    }
    assert "authentication failed for user nobody" in doc["hosts"][0]["error"]
    known = tmp_path / "known_hosts"
    known.write_text(
        "".join(
            ln for ln in behind.lab.known_hosts.read_text().splitlines(True) if bastion not in ln
        )
    )
    path = inventory(behind, tmp_path / "k.yaml", bastion)
    data = yaml.safe_load(path.read_text())
    data["defaults"]["known_hosts"] = str(known)
    path.write_text(yaml.safe_dump(data))
    jcli.env["CORUNNER_INVENTORY"] = str(path)
    done, doc = jcli.json("run", "--cmd", "true", *FAST)
    assert {h["state"] for h in doc["hosts"]} == {"unreachable"}
    assert all(
        h["error"].startswith(f"{bastion} (jump host for 3 hosts): host key not in {known}")
        for h in doc["hosts"]
    ), doc["hosts"]


def test_a_killed_and_a_frozen_target_behind_the_bastion(behind, jcli):
    steady, killed, frozen = behind.targets
    lab = behind.lab
    script = 'if [ "$CORUNNER_NODE_INDEX" = 0 ]; then sleep 7; else sleep 4; fi'
    proc = jcli.popen("run", "--cmd", script, "--json", "--quiet", *FAST)
    try:
        wait_until(
            lambda: jcli.states() == {t.address: "alive" for t in behind.targets}, timeout=30
        )
        lab.kill(killed.index)
        lab.freeze(frozen.index)
        wait_until(lambda: jcli.states().get(frozen.address) == "dead", timeout=10)
        lab.thaw(frozen.index)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        lab.thaw(frozen.index) if lab.is_frozen(frozen.index) else None
        lab.restart(killed.index)
    assert proc.returncode == EXIT_LOST, err
    hosts = {h["host"]: h for h in json.loads(out)["hosts"]}
    assert hosts[steady.address]["state"] == "succeeded"
    assert hosts[killed.address]["state"] == "dead"
    assert hosts[killed.address]["error"].startswith("silent for ")
    # The frozen target came back through its tunnel: dead -> alive, then its outcome.
    assert hosts[frozen.address]["state"] == "succeeded"
    changes = [(e["old"], e["new"]) for e in jcli.events() if e["host"] == frozen.address]
    assert changes == [("pending", "alive"), ("alive", "dead"), ("dead", "alive"),
                       ("alive", "succeeded")]  # fmt: skip


def test_a_target_frozen_past_its_keepalive_limit_comes_back_through_a_new_tunnel(behind, tmp_path):
    """Frozen longer than its keepalives allow, a target loses its SSH connection and
    the heartbeat port forwarded over it; thawed, it is logged in to again, the same
    port is forwarded, and the node turns alive again and reports its outcome."""
    steady, _, frozen = behind.targets
    lab = behind.lab
    cli = Cli(lab, tmp_path)
    cli.env["CORUNNER_INVENTORY"] = str(
        inventory(behind, tmp_path / "hosts.yaml", behind.bastion.address)
    )
    config = tmp_path / "ssh_config"  # keepalives 1 s apart, 2 unanswered: given up after 2 s
    config.write_text(
        f"Host {' '.join(t.address for t in behind.targets)}\n"
        "  ServerAliveInterval 1\n  ServerAliveCountMax 2\n"
    )
    cli.env["CORUNNER_SSH_CONFIG"] = str(config)
    sshd_log = lab.state_dir / "nodes" / frozen.hostname / "sshd.log"
    before = sshd_log.read_text(errors="replace").count("Accepted publickey")
    script = f'if [ "$CORUNNER_HOST" = {frozen.address} ]; then sleep 8; else sleep 10; fi'
    proc = cli.popen("run", "--cmd", script, "--json", "--quiet", *FAST)
    try:
        wait_until(lambda: cli.states() == {t.address: "alive" for t in behind.targets}, 30)
        lab.freeze(frozen.index)
        wait_until(lambda: cli.states().get(frozen.address) == "dead", timeout=10)
        time.sleep(3)  # past the 2 s the controller waits for keepalive answers
        lab.thaw(frozen.index)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        lab.thaw(frozen.index) if lab.is_frozen(frozen.index) else None
    assert proc.returncode == EXIT_OK, err
    hosts = {h["host"]: h for h in json.loads(out)["hosts"]}
    assert {h["state"] for h in hosts.values()} == {"succeeded"}, hosts
    changes = [(e["old"], e["new"]) for e in cli.events() if e["host"] == frozen.address]
    assert changes == [("pending", "alive"), ("alive", "dead"), ("dead", "alive"),
                       ("alive", "succeeded")]  # fmt: skip
    # Its start, then the new connection that carries the tunnel again.
    assert sshd_log.read_text(errors="replace").count("Accepted publickey") == before + 2
    assert steady.address in hosts


def test_a_bastion_that_restarts_mid_run_brings_every_tunnel_back(behind, lab, tmp_path):
    """The bastion dies under a run (every target's connection and tunnel with it) and
    comes back: it is tried again a while later, each target is logged in to through it
    again with its heartbeat port forwarded anew, and every target reports its outcome.
    A node reached directly keeps the run going meanwhile (with every node dead, a run
    ends: it never waits for the dead)."""
    direct = lab.nodes[0]
    data = json.loads(behind.inventory_text().split("\n", 1)[1])
    data["groups"]["direct"] = {
        "hosts": [direct.address], "jump": "none",
        "key": str(lab.key), "known_hosts": str(lab.known_hosts),
    }  # fmt: skip
    cli = Cli(behind.lab, tmp_path)
    cli.env["CORUNNER_INVENTORY"] = str(tmp_path / "hosts.yaml")
    (tmp_path / "hosts.yaml").write_text(json.dumps(data))
    script = f'if [ "$CORUNNER_HOST" = {direct.address} ]; then sleep 16; else sleep 14; fi'
    everyone = [direct.address, *(t.address for t in behind.targets)]
    proc = cli.popen("run", "--cmd", script, "--json", "--quiet", *FAST)
    try:
        wait_until(lambda: cli.states() == {a: "alive" for a in everyone}, 30)
        behind.lab.kill(behind.bastion.index)
        wait_until(lambda: {cli.states()[t.address] for t in behind.targets} == {"dead"}, 10)
        time.sleep(1)  # the first reopens meet no bastion: it is given up for a while
        behind.lab.restart(behind.bastion.index)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        if not behind.lab.is_running(behind.bastion.index):
            behind.lab.restart(behind.bastion.index)
    assert proc.returncode == EXIT_OK, err
    assert {h["host"]: h["state"] for h in json.loads(out)["hosts"]} == dict.fromkeys(
        everyone, "succeeded"
    )
    for target in behind.targets:
        changes = [(e["old"], e["new"]) for e in cli.events() if e["host"] == target.address]
        assert changes == [("pending", "alive"), ("alive", "dead"), ("dead", "alive"),
                           ("alive", "succeeded")]  # fmt: skip


def test_a_jump_host_known_only_by_its_ssh_config_alias(behind, tmp_path):
    """``jump: gw`` where only ``Host gw`` in ssh_config says where gw is, as with ssh -J."""
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host gw\n  HostName {behind.bastion.address}\n  User root\n  IdentityFile {behind.lab.key}\n"
    )
    cli = Cli(behind.lab, tmp_path)
    cli.env["CORUNNER_INVENTORY"] = str(inventory(behind, tmp_path / "hosts.yaml", "gw"))
    cli.env["CORUNNER_SSH_CONFIG"] = str(config)
    done, doc = cli.json("run", "--cmd", "hostname", *FAST)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert {h["state"] for h in doc["hosts"]} == {"succeeded"}
    assert len(doc["hosts"]) == len(behind.targets)
