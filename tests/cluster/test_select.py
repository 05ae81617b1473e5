"""Selections on the real cluster: --dry logs in nowhere (each node's own sshd
log says so), set operators and --exclude run on exactly the hosts they name,
@failed re-runs only the hosts that failed, a host not in the inventory runs
with its defaults."""

from __future__ import annotations

import uuid
from typing import Dict, List

import yaml
from helpers import wait_until

from corunner.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from corunner.testing.lab import Lab

FAST = ("--interval", "0.2", "--dead-after", "1.5")


def sshd_log(lab: Lab, index: int) -> str:
    """Node ``lab.nodes[index]``'s sshd log (LogLevel INFO: a line per connection)."""
    path = lab.state_dir / "nodes" / lab.nodes[index].hostname / "sshd.log"
    return path.read_text(errors="replace")


def connections(lab: Lab) -> Dict[str, int]:
    """Connections each node's sshd has logged so far (logins and pre-auth closes)."""
    return {n.address: sshd_log(lab, i).count("127.0.0.1 port") for i, n in enumerate(lab.nodes)}


def settled(lab: Lab) -> bool:
    """Every sshd start's readiness probe (a banner read, then close) is in its log."""
    logs = [sshd_log(lab, i) for i in range(len(lab.nodes))]
    return all(log.count("[preauth]") >= log.count("Server listening") for log in logs)


def holders(lab: Lab, on_node, path: str) -> List[str]:
    """The addresses of the nodes where ``path`` exists (each node has its own /tmp)."""
    return [n.address for n in lab.nodes if on_node(n.index, f"test -e {path} && echo yes").strip()]


def test_dry_reaches_no_node(lab, cli, on_node, tmp_path):
    marker = f"/tmp/dry-{uuid.uuid4().hex}"
    (tmp_path / "payload.txt").write_text("x" * 5000)
    wait_until(lambda: settled(lab), timeout=10)
    before = connections(lab)
    dry_runs = [
        ("run", "--dry", "--cmd", f"touch {marker}", "--remote-dir", marker, *FAST),
        ("run", "--dry", "-c", f"touch {marker}", "-H", "lab", "-x", lab.nodes[0].address, "-j"),
        ("cp", "--dry", "--src", str(tmp_path / "payload.txt"), "--dest", marker),
        ("cp", "--dry", "--pull", "--src", "/etc/hostname", "--dest", str(tmp_path / "got")),
        ("collect", "--dry", "--src", "/etc/hostname", "--hosts", "lab"),
    ]
    for argv in dry_runs:
        done = cli(*argv)
        assert done.returncode == EXIT_OK, (argv, done.stdout, done.stderr)
        if "-j" not in argv:
            assert done.stdout.startswith(f"dry run of {argv[0]}: nothing was done")
            assert f"key {lab.key}, known_hosts {lab.known_hosts}" in done.stdout
    assert connections(lab) == before, "a dry run reached a node's sshd"
    assert cli.latest_run_id() is None and not (tmp_path / "got").exists()
    # The check can fail: a real run of one node is in that node's log, and only there.
    done = cli("run", "--cmd", "true", "--hosts", lab.nodes[1].address, *FAST)
    assert done.returncode == EXIT_OK, done.stderr
    after = connections(lab)
    assert [address for address in after if after[address] != before[address]] == [
        lab.nodes[1].address
    ]
    assert "Accepted publickey for root from 127.0.0.1" in sshd_log(lab, 1)
    assert holders(lab, on_node, marker) == []


def test_operators_and_exclude_run_on_exactly_the_hosts_they_name(lab, cli, on_node):
    marker = f"/tmp/sel-{uuid.uuid4().hex}"
    a = [n.address for n in lab.nodes]
    done, doc = cli.json(
        "run", "-c", f"touch {marker}", "-H", f"lab,!{a[2]}", "-x", f"{a[5]},{a[6]}", *FAST
    )
    assert done.returncode == EXIT_OK, done.stderr
    expected = [a[0], a[1], a[3], a[4], a[7]]
    assert [h["host"] for h in doc["hosts"]] == expected
    assert holders(lab, on_node, marker) == expected
    done, doc = cli.json("run", "-c", f"rm {marker}", "--hosts", f"lab&{a[0]},{a[1]}^{a[1]}", *FAST)
    assert done.returncode == EXIT_OK, done.stderr
    assert [h["host"] for h in doc["hosts"]] == [a[0]]  # (lab & a0, a1) ^ a1: a0 alone
    assert holders(lab, on_node, marker) == [a[1], a[3], a[4], a[7]]


def test_failed_hosts_are_rerun_and_only_they(lab, cli, on_node):
    marker = f"/tmp/again-{uuid.uuid4().hex}"
    a = [n.address for n in lab.nodes]
    fail_on = f'case "$CORUNNER_HOST" in {a[1]}|{a[4]}) exit 7;; esac'
    done, doc = cli.json("run", "--cmd", fail_on, *FAST)
    assert done.returncode == EXIT_FAILED, done.stderr
    first = doc["run_id"]
    done, doc = cli.json("run", "--cmd", f"touch {marker}", "--hosts", "@failed", *FAST)
    assert done.returncode == EXIT_OK, done.stderr
    assert [h["host"] for h in doc["hosts"]] == [a[1], a[4]]
    assert holders(lab, on_node, marker) == [a[1], a[4]]
    # Now the latest run failed nowhere: saying so beats running on nothing.
    done = cli("run", "--cmd", "true", "--hosts", "@failed", *FAST)
    assert done.returncode == EXIT_USAGE
    assert f"--hosts '@failed' selects no host (run {doc['run_id']} has no failed host)" in (
        done.stderr
    )
    # stop and collect read @failed of their --run.
    done, pulled = cli.json("collect", "--run", first, "--hosts", "@failed", "--dest", "res")
    assert done.returncode == EXIT_OK, done.stderr
    assert sorted(h["host"] for h in pulled["hosts"]) == [a[1], a[4]]


def test_a_host_not_in_the_inventory_runs_with_its_defaults(lab, cli, tmp_path):
    inventory = yaml.safe_load(lab.inventory.read_text())
    inventory["groups"] = {"first": {"hosts": [n.address for n in lab.nodes[:2]]}}
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(inventory))
    extra = lab.nodes[5].address
    done, doc = cli.json(
        "run", "-I", str(small), "-c", "hostname", "-H", f"first,root@{extra}", *FAST
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stderr.count("note: ") == 1
    assert f"note: 1 host not in {small}, using its defaults: {extra}" in done.stderr
    assert [h["host"] for h in doc["hosts"]] == [lab.nodes[0].address, lab.nodes[1].address, extra]
    # The record remembers it: status --refresh asks it again with the same settings.
    done, status = cli.json("status", "--refresh", "-I", str(small))
    assert done.returncode == EXIT_OK, done.stderr
    assert status["hosts"][extra]["state"] == "succeeded"
