"""Nodes that hang in the middle of an SSH exchange (every process SIGSTOPped
right when corunner asks something): that node is reported "stalled" after
remote.stall_limit (20 s with the lab's 5 s connect timeout), the others
finish, and nothing waits forever.

The freeze is timed by wrapping the Paramiko call that asks the node, in
this process; the SSH servers, the exchange and the hang are real."""

from __future__ import annotations

import threading

import paramiko
import pytest

from corunner import controller, fanout, remote, transfer
from corunner.loader import load_inventory
from corunner.spec import Program, RunSpec


@pytest.fixture
def freeze_on(healthy_lab, monkeypatch):
    """``freeze_on(owner, name, victim)``: freeze ``victim`` when its connection calls that method."""

    def arm(owner, name, victim):
        original = getattr(owner, name)

        def frozen_first(self, *args, **kwargs):
            channel = self.get_channel() if isinstance(self, paramiko.SFTPClient) else self
            if channel.get_transport().getpeername()[0] == victim.address:
                healthy_lab.freeze(victim.index)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(owner, name, frozen_first)

    return arm


def finish(work, timeout=90):
    """Run ``work`` in a thread; its result, or a failure (not a hang) if it waits on."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test below
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still waiting after {timeout} s for a hung node"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_a_node_that_hangs_as_the_run_starts_is_reported_and_the_run_ends(
    healthy_lab, freeze_on, tmp_path
):
    victim = healthy_lab.nodes[1]
    freeze_on(paramiko.Channel, "exec_command", victim)  # sshd never answers "exec"
    hosts = load_inventory(str(healthy_lab.inventory)).select(None)
    spec = RunSpec(Program(cmd="true"), interval=0.2, dead_after=1.5)
    report = finish(controller.Run(hosts, spec, records=str(tmp_path / "runs")).execute)
    states = {row.host: row for row in report.hosts}
    assert states[victim.address].state == "unreachable"
    assert states[victim.address].error == (
        "stalled: no answer to a request for 20s (host hung or overloaded)"
    )
    assert all(r.state == "succeeded" for h, r in states.items() if h != victim.address)


def test_a_node_that_hangs_during_a_pull_fails_alone(healthy_lab, freeze_on, on_node, tmp_path):
    victim = healthy_lab.nodes[2]
    for node in healthy_lab.nodes[:4]:
        on_node(node.index, "mkdir -p /tmp/hung/tree && head -c 300000 /dev/urandom > /tmp/hung/f")
    hosts = load_inventory(str(healthy_lab.inventory)).select(None)[:4]
    # One file comes over SFTP: the node hangs before answering the first read.
    freeze_on(paramiko.SFTPClient, "getfo", victim)

    def pull_file():
        return fanout.on_each(
            hosts, lambda c, h: transfer.pull(c, h, "/tmp/hung/f", str(tmp_path / "f"), True)
        )

    outcomes = finish(pull_file)
    assert str(outcomes[victim.address].error) == (
        f"{victim.address}: stalled: no progress for 20s (host hung or overloaded)"
    )
    assert sum(o.ok for o in outcomes.values()) == 3


def test_a_node_that_hangs_during_a_tree_pull_fails_alone(
    healthy_lab, freeze_on, on_node, tmp_path
):
    victim = healthy_lab.nodes[3]
    for node in healthy_lab.nodes[:4]:
        on_node(node.index, "mkdir -p /tmp/hung/tree && echo x > /tmp/hung/tree/x")
    hosts = load_inventory(str(healthy_lab.inventory)).select(None)[:4]
    freeze_on(paramiko.Channel, "exec_command", victim)  # the tar stream never starts
    outcomes = finish(
        lambda: fanout.on_each(
            hosts, lambda c, h: transfer.pull(c, h, "/tmp/hung/tree", str(tmp_path / "t"), True)
        )
    )
    assert "stalled: no answer to a request for 20s" in str(outcomes[victim.address].error)
    assert sum(o.ok for o in outcomes.values()) == 3


def test_stall_limit_follows_the_connect_timeout(healthy_lab):
    (host,) = load_inventory(str(healthy_lab.inventory)).select(healthy_lab.nodes[0].address)
    assert remote.stall_limit(host) == max(20.0, 2 * host.connect_timeout)
