"""Nodes that hang in the middle of an SSH exchange (every process SIGSTOPped
right when corunner asks something): that node is reported "stalled" once
it has answered no keepalive for remote.ALIVE_LIMIT seconds (so within
ALIVE_LIMIT + ALIVE_INTERVAL), the others finish, and nothing waits forever.
A node that is slow but answers (its command silent for longer than its
keepalive limit) is waited for, as clush and pssh wait.

The freeze is timed by wrapping the Paramiko call that asks the node, in
this process; the SSH servers, the exchange and the hang are real."""

from __future__ import annotations

import dataclasses
import re
import threading

import paramiko
import pytest
import yaml

from corunner import controller, fanout, remote, render, transfer
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


#: The documented bound for reporting a hung node, plus room for a loaded machine.
BOUND = remote.ALIVE_LIMIT + remote.ALIVE_INTERVAL + 15


def quick_keepalives(hosts):
    """The hosts with a 1 s x 3 keepalive limit, as ssh_config's ServerAliveInterval
    and ServerAliveCountMax set it: hung within seconds, not the default 15 s
    (tests/unit/test_inventory.py checks the default)."""
    return [dataclasses.replace(h, alive_interval=1.0, alive_count_max=3) for h in hosts]


def finish(work, timeout=BOUND):
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
    hosts = quick_keepalives(load_inventory(str(healthy_lab.inventory)).select(None))
    spec = RunSpec(Program(cmd="true"), interval=0.2, dead_after=1.5)
    report = finish(controller.Run(hosts, spec, records=str(tmp_path / "runs")).execute)
    states = {row.host: row for row in report.hosts}
    assert states[victim.address].state == "unreachable"
    assert re.fullmatch(
        r"stalled: no answer to keepalives for [3-9]s \(host hung or overloaded\)",
        states[victim.address].error,
    )
    assert all(r.state == "succeeded" for h, r in states.items() if h != victim.address)


def test_a_node_that_hangs_during_a_pull_fails_alone(healthy_lab, freeze_on, on_node, tmp_path):
    victim = healthy_lab.nodes[2]
    for node in healthy_lab.nodes[:4]:
        on_node(node.index, "mkdir -p /tmp/hung/tree && head -c 300000 /dev/urandom > /tmp/hung/f")
    hosts = quick_keepalives(load_inventory(str(healthy_lab.inventory)).select(None)[:4])
    # One file comes over SFTP: the node hangs before answering the first read.
    freeze_on(paramiko.SFTPClient, "getfo", victim)

    def pull_file():
        return fanout.on_each(
            hosts, lambda c, h: transfer.pull(c, h, "/tmp/hung/f", str(tmp_path / "f"), True)
        )

    outcomes = finish(pull_file)
    assert re.fullmatch(
        rf"{re.escape(victim.address)}: stalled: no answer to keepalives for [3-9]s "
        r"\(host hung or overloaded\)",
        str(outcomes[victim.address].error),
    )
    assert render.transfer_state(outcomes[victim.address]) == "stalled"
    assert sum(o.ok for o in outcomes.values()) == 3


def test_a_node_that_hangs_during_a_tree_pull_fails_alone(
    healthy_lab, freeze_on, on_node, tmp_path
):
    victim = healthy_lab.nodes[3]
    for node in healthy_lab.nodes[:4]:
        on_node(node.index, "mkdir -p /tmp/hung/tree && echo x > /tmp/hung/tree/x")
    hosts = quick_keepalives(load_inventory(str(healthy_lab.inventory)).select(None)[:4])
    freeze_on(paramiko.Channel, "exec_command", victim)  # the tar stream never starts
    outcomes = finish(
        lambda: fanout.on_each(
            hosts, lambda c, h: transfer.pull(c, h, "/tmp/hung/tree", str(tmp_path / "t"), True)
        )
    )
    assert "stalled: no answer to keepalives for" in str(outcomes[victim.address].error)
    assert sum(o.ok for o in outcomes.values()) == 3


def test_a_slow_node_that_still_answers_is_waited_for_not_called_stalled(
    healthy_lab, on_node, tmp_path
):
    # The node's python is a wrapper that sleeps 6 s before it starts: the
    # start exchange is silent for three times the host's keepalive limit
    # (1 s x 2, as ServerAliveInterval and ServerAliveCountMax would set it),
    # as a login shell on a loaded node can be, but sshd answers every
    # keepalive meanwhile.
    slow = healthy_lab.nodes[4]
    on_node(slow.index, "printf '#!/bin/sh\\nsleep 6\\nexec python3 \"$@\"\\n' > /tmp/slowpy")
    on_node(slow.index, "chmod +x /tmp/slowpy")
    inventory = tmp_path / "hosts.yaml"
    inventory.write_text(
        f"defaults:\n  user: root\n  key: {healthy_lab.key}\n"
        f"  known_hosts: {healthy_lab.known_hosts}\n  connect_timeout: 5\n"
        f"groups:\n  slow:\n    hosts: ['{slow.address}']\n    python: /tmp/slowpy\n"
    )
    hosts = [
        dataclasses.replace(h, alive_interval=1.0, alive_count_max=2)
        for h in load_inventory(str(inventory)).select("slow")
    ]
    spec = RunSpec(Program(cmd="echo hello"), interval=0.2, dead_after=1.5, heartbeat=False)
    report = finish(controller.Run(hosts, spec, records=str(tmp_path / "runs")).execute, 90)
    (row,) = report.hosts
    assert (row.state.value, row.error) == ("succeeded", None)
    assert row.seconds is not None and row.seconds >= 6


def test_a_hung_node_gets_one_line_and_paramikos_log_only_with_debug(healthy_lab, cli, tmp_path):
    """A node frozen before the SSH banner: Paramiko logs a traceback for it,
    which the user sees only with --debug (on stderr and in the run's debug.log)."""
    lab = healthy_lab
    victim, other = lab.nodes[3], lab.nodes[4]
    data = yaml.safe_load(lab.inventory.read_text())
    data["defaults"]["connect_timeout"] = 2
    inventory = tmp_path / "quick.yaml"
    inventory.write_text(yaml.safe_dump(data))
    cli.env["CORUNNER_INVENTORY"] = str(inventory)
    lab.freeze(victim.index)
    hosts = f"{victim.address},{other.address}"
    fast = ("--interval", "0.2", "--dead-after", "1.5")
    for debug in (False, True):
        done = cli("run", "--cmd", "true", "--hosts", hosts, *fast, *(["--debug"] if debug else []))
        assert done.returncode == 4, done.stdout + done.stderr
        assert f"{victim.address}: pending -> unreachable (no SSH answer within 2s" in done.stdout
        log = cli.workdir / "runs" / str(cli.latest_run_id()) / "debug.log"
        if not debug:
            assert "Traceback" not in done.stderr and "paramiko" not in done.stderr, done.stderr
            assert not log.exists()
        else:
            assert "paramiko.transport" in done.stderr and "Traceback" in done.stderr
            kept = log.read_text()
            assert f"corunner.remote DEBUG: {victim.address}:" in kept
            assert "Error reading SSH protocol banner" in kept
            assert log.stat().st_mode & 0o077 == 0


def test_a_node_that_hangs_during_a_push_through_ssh_is_stalled_once_and_alone(
    healthy_lab, monkeypatch, tmp_path
):
    """The controller's ssh leaves a hung node after its keepalives, and the host is
    reported stalled at once: not tried again the Paramiko way, which would wait as long."""
    from corunner import openssh

    victim = healthy_lab.nodes[1]
    # Keepalives 1 s apart, 2 unanswered: the host's own settings, as ssh_config would give.
    hosts = [
        dataclasses.replace(h, alive_interval=1.0, alive_count_max=2)
        for h in load_inventory(str(healthy_lab.inventory)).select(None)[:4]
    ]
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * (16 << 20))
    archive = transfer.build_archive(str(src), str(tmp_path / "work"))
    paramiko_tried = []
    run = openssh.run

    def freezing_run(host, argv, command, stdin, finished):
        def chunks():
            for n, chunk in enumerate(stdin):
                if n == 2 and host.address == victim.address:
                    # ssh has read the header and 1 MiB (the login is done): under way.
                    healthy_lab.freeze(victim.index)
                yield chunk

        return run(host, argv, command, chunks(), finished)

    monkeypatch.setattr(openssh, "run", freezing_run)
    # Through a pipe, so the freeze comes at a known point of the stream; a staged
    # push (ssh reading a file) meets a hang in the same openssh._run.
    monkeypatch.setattr(transfer, "STAGE_LIMIT", 0)
    outcomes = finish(
        lambda: fanout.on_each(
            hosts,
            lambda c, h: paramiko_tried.append(h.id),
            first=lambda h: transfer.push_with_openssh(h, archive, "/tmp/"),
        )
    )
    assert re.fullmatch(
        rf"{re.escape(victim.address)}: stalled: no answer to keepalives for 2s "
        r"\(host hung or overloaded\)",
        str(outcomes[victim.address].error),
    )
    assert paramiko_tried == []
    assert sum(o.ok for o in outcomes.values()) == 3
