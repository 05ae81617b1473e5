"""`inv run` end to end on the real cluster: heartbeats, liveness, faults, and
everything collectable afterwards."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import yaml
from helpers import free_port, wait_until

from corunner.errors import EXIT_FAILED, EXIT_LOST, EXIT_OK
from corunner.hostrange import fold

FAST = ("--interval", "0.2", "--dead-after", "1.5")


def all_alive(cli, count: int = 8) -> bool:
    now = cli.states()
    return len(now) == count and all(s == "alive" for s in now.values())


def test_script_results_collect_into_one_directory_per_host(lab, cli, tmp_path):
    script = tmp_path / "whoami.sh"
    script.write_text('#!/bin/sh\nhostname > me.txt\necho "args: $*"\n')
    done, doc = cli.json("run", "--script", str(script), "--args", "a 'b c'", *FAST)
    assert done.returncode == EXIT_OK, done.stderr
    assert {h["state"] for h in doc["hosts"]} == {"succeeded"}
    done = cli("collect", "--run", doc["run_id"], "--dest", str(tmp_path / "all"), "--divide")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(os.listdir(tmp_path / "all")) == [n.address for n in lab.nodes]
    for node in lab.nodes:
        here = tmp_path / "all" / node.address
        assert (here / "me.txt").read_text().strip() == node.hostname
        assert (here / "stdout").read_text() == "args: a b c\n"
        status = json.loads((here / "status.json").read_text())
        assert (status["state"], status["exit_code"], status["host"]) == ("exited", 0, node.address)
        assert not (here / ".corunner" / "config.json").exists()  # the secret stays on the node


def test_python_script_without_shebang_runs_with_inventory_python(lab, cli, tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import os, sys\nprint(os.environ['CORUNNER_NODE_INDEX'], sys.argv[1:])\n")
    two = [n.address for n in lab.nodes[:2]]
    done = cli("run", "--script", str(script), "--args", "x", "--hosts", ",".join(two), *FAST)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    done = cli("collect", "--dest", str(tmp_path / "r"), "--divide")
    assert (tmp_path / "r" / two[1] / "stdout").read_text() == "1 ['x']\n"


def test_failures_report_exit_code_and_signal(lab, cli):
    one, two, three = lab.nodes[:3]
    cmd = f"case $(hostname) in {one.hostname}) exit 3;; {two.hostname}) kill -KILL $$;; *) true;; esac"
    done, doc = cli.json("run", "--cmd", cmd, *FAST)
    assert done.returncode == EXIT_FAILED, done.stderr
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert (hosts[one.address]["state"], hosts[one.address]["exit_code"]) == ("failed", 3)
    assert (hosts[two.address]["state"], hosts[two.address]["signal"]) == ("failed", 9)
    assert hosts[three.address]["state"] == "succeeded"
    assert doc["summary"]["failed"] == fold([one.address, two.address])


def test_killed_node_turns_dead_and_the_run_does_not_wait_for_it(healthy_lab, cli):
    lab = healthy_lab
    proc = cli.popen("run", "--cmd", "sleep 4", "--json", *FAST)
    wait_until(lambda: all_alive(cli), timeout=30)
    victim = lab.nodes[3]
    lab.kill(victim.index)
    killed_at = time.time()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_LOST, err
    doc = json.loads(out)
    hosts = {h["host"]: h["state"] for h in doc["hosts"]}
    assert hosts.pop(victim.address) == "dead"
    assert set(hosts.values()) == {"succeeded"}
    dead = [e for e in cli.events() if e["host"] == victim.address and e["new"] == "dead"]
    assert len(dead) == 1
    # Marked dead within dead-after (1.5 s) plus one interval (0.2 s) of the kill, with
    # a margin for this loaded 2-core machine: the event's time is the controller's.
    assert dead[0]["at"] - killed_at <= 1.5 + 0.2 + 1.0


def test_frozen_node_turns_dead_then_alive_then_succeeds(healthy_lab, cli):
    lab = healthy_lab
    proc = cli.popen("run", "--cmd", "sleep 6", "--json", *FAST)
    wait_until(lambda: all_alive(cli), timeout=30)
    frozen = lab.nodes[1]
    lab.freeze(frozen.index)
    wait_until(lambda: cli.states().get(frozen.address) == "dead", timeout=10)
    lab.thaw(frozen.index)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_OK, err
    changes = [(e["old"], e["new"]) for e in cli.events() if e["host"] == frozen.address]
    assert changes == [
        ("pending", "alive"),
        ("alive", "dead"),
        ("dead", "alive"),
        ("alive", "succeeded"),
    ]


def test_deadline_times_out_and_stop_ends_the_remote_programs(lab, cli, on_node, tmp_path):
    # One node is still starting at the deadline (its python waits 4 s): that
    # start is let finish, so its program too is recorded, timed out and stopped.
    import yaml

    slow = lab.nodes[5]
    on_node(slow.index, "printf '#!/bin/sh\\nsleep 4\\nexec python3 \"$@\"\\n' >/tmp/slowpy")
    on_node(slow.index, "chmod +x /tmp/slowpy")
    data = yaml.safe_load(lab.inventory.read_text())
    data["groups"]["lab"]["hosts"] = [n.address for n in lab.nodes if n is not slow]
    data["groups"]["slow"] = {"hosts": [slow.address], "python": "/tmp/slowpy"}
    inv = tmp_path / "hosts.yaml"
    inv.write_text(yaml.safe_dump(data))
    cli.env["CORUNNER_INVENTORY"] = str(inv)
    done, doc = cli.json("run", "--cmd", "sleep 300", "--deadline", "2", *FAST)
    assert done.returncode == EXIT_LOST
    assert {h["state"] for h in doc["hosts"]} == {"timeout"}
    assert all(h["pid"] for h in doc["hosts"])  # the slow node's start was waited for
    run_id = doc["run_id"]
    assert "sleep 300" in on_node(lab.nodes[0].index, "ps -eo args")
    # The slow python has made its point: stop and status --refresh run it too.
    on_node(slow.index, "printf '#!/bin/sh\\nexec python3 \"$@\"\\n' >/tmp/slowpy")
    done = cli("stop", "--run", run_id)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"stopped (8): {fold(n.address for n in lab.nodes)}" in done.stdout
    assert len(done.stdout.splitlines()) == 1  # one folded line, not one per host
    for node in lab.nodes:
        wait_until(lambda n=node: "sleep 300" not in on_node(n.index, "ps -eo args"), timeout=10)
    done, doc = cli.json("status", "--run", run_id, "--refresh")
    assert {h["state"] for h in doc["hosts"].values()} == {"stopped"}
    assert {h["signal"] for h in doc["hosts"].values()} == {signal.SIGTERM}


def test_controller_killed_midrun_loses_nothing(lab, cli, tmp_path):
    proc = cli.popen("run", "--cmd", "sleep 2; hostname > out.txt; exit 5", *FAST)
    wait_until(lambda: all_alive(cli), timeout=30)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def refreshed():
        done, doc = cli.json("status", "--refresh")
        return {h["state"] for h in doc["hosts"].values()} == {"failed"} and doc

    doc = wait_until(refreshed, timeout=30, interval=0.5)
    assert {h["exit_code"] for h in doc["hosts"].values()} == {5}
    done = cli("collect", "--dest", str(tmp_path / "got"), "--divide")
    assert done.returncode == 0, done.stdout + done.stderr
    for node in lab.nodes:
        assert (tmp_path / "got" / node.address / "out.txt").read_text().strip() == node.hostname


def test_no_heartbeat_gives_the_same_final_states(lab, cli):
    one, two = lab.nodes[:2]
    cmd = f"case $(hostname) in {one.hostname}) exit 3;; {two.hostname}) kill -TERM $$;; *) sleep 1;; esac"
    beat, with_hb = cli.json("run", "--cmd", cmd, *FAST)
    quiet, without = cli.json("run", "--cmd", cmd, "--no-heartbeat", *FAST)
    assert beat.returncode == quiet.returncode == EXIT_FAILED

    def outcome(doc):
        return {h["host"]: (h["state"], h["exit_code"], h["signal"]) for h in doc["hosts"]}

    assert outcome(with_hb) == outcome(without)
    assert outcome(without)[two.address] == ("failed", None, signal.SIGTERM)


def test_unreachable_node_is_reported_and_others_run(healthy_lab, cli):
    victim = healthy_lab.nodes[6]
    healthy_lab.kill(victim.index)
    done, doc = cli.json("run", "--cmd", "true", *FAST)
    assert done.returncode == EXIT_LOST
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert hosts[victim.address]["state"] == "unreachable"
    assert "connection refused" in hosts[victim.address]["error"]
    assert sum(h["state"] == "succeeded" for h in doc["hosts"]) == 7


def test_runs_leave_a_record_with_an_event_log(lab, cli):
    first = lab.nodes[0].address
    done, doc = cli.json("run", "--cmd", "sleep 0.5", "--hosts", first, *FAST)
    record = Path(cli.workdir / "runs" / doc["run_id"])
    data = json.loads((record / "run.json").read_text())
    assert data["exit_code"] == 0 and data["hosts"][first]["state"] == "succeeded"
    assert [e["new"] for e in cli.events()] == ["alive", "succeeded"]


def test_no_heartbeat_node_killed_midrun_is_dead(healthy_lab, cli):
    lab = healthy_lab
    victim = lab.nodes[5]
    proc = cli.popen("run", "--cmd", "sleep 5", "--no-heartbeat", "--json", *FAST)
    wait_until(lambda: "sleep 5" in _ps(lab, victim), timeout=30)
    lab.kill(victim.index)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_LOST, err
    hosts = {h["host"]: h["state"] for h in json.loads(out)["hosts"]}
    assert hosts.pop(victim.address) == "dead"
    assert set(hosts.values()) == {"succeeded"}


def _ps(lab, node) -> str:
    from conftest import node_sh

    try:
        return node_sh(lab, node.index, "ps -eo args")
    except Exception:  # noqa: BLE001 - a node still starting up: not yet
        return ""


def test_listen_on_every_interface_reaches_the_nodes_by_their_ssh_address(lab, cli, on_node):
    port = free_port()
    done, doc = cli.json(
        "run",
        "--cmd",
        "true",
        "--listen",
        f"0.0.0.0:{port}",
        "--hosts",
        lab.nodes[0].address,
        *FAST,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert doc["hosts"][0]["state"] == "succeeded"
    # The node was told to call back the address its SSH session came from, not 0.0.0.0.
    config = json.loads(
        on_node(lab.nodes[0].index, f"cat {doc['hosts'][0]['remote_dir']}/.corunner/config.json")
    )
    assert config["controller"] == [["", port]]


def test_an_unexpected_error_on_one_host_ends_that_host_not_the_run(lab, tmp_path, monkeypatch):
    # A bug hit while starting one node (here: a crash inside connect) must end
    # that node with a one-line error; before, the node stayed pending and
    # the run waited forever.
    from corunner import controller, dispatch
    from corunner.loader import load_inventory
    from corunner.spec import Program, RunSpec

    victim = lab.nodes[2].address
    connect = dispatch.remote.connect

    def crashing_connect(host, *args):
        if host.name == victim:
            raise RuntimeError("boom\nsecond line")
        return connect(host, *args)

    monkeypatch.setattr(dispatch.remote, "connect", crashing_connect)
    hosts = load_inventory(str(lab.inventory)).select(None)
    spec = RunSpec(Program(cmd="true"), interval=0.2, dead_after=1.5)
    report = controller.Run(hosts, spec, records=str(tmp_path / "runs")).execute()
    states = {row.host: row for row in report.hosts}
    assert states[victim].state == "unreachable"
    assert states[victim].error.startswith("internal error (RuntimeError at test_run.py:")
    assert states[victim].error.endswith(": boom); please report it to the corunner developers")
    assert all(row.state == "succeeded" for host, row in states.items() if host != victim)


def test_stop_says_which_nodes_have_nothing_to_stop(lab, cli, on_node):
    ran, gone = lab.nodes[:2]
    done, doc = cli.json("run", "--cmd", "true", "--hosts", f"{ran.address},{gone.address}", *FAST)
    assert done.returncode == EXIT_OK, done.stderr
    remote_dir = {h["host"]: h["remote_dir"] for h in doc["hosts"]}[gone.address]
    on_node(gone.index, f"rm -rf {remote_dir}")  # cleaned up by someone since
    done = cli("stop", "--run", doc["run_id"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"not running (exited) (1): {ran.address}" in done.stdout
    assert f"not running (missing) (1): {gone.address}" in done.stdout


def test_refresh_accepts_new_host_keys_only_when_asked_and_then_forgets_the_old_error(
    lab, cli, tmp_path
):
    done, doc = cli.json("run", "--cmd", "exit 4", *FAST)
    assert done.returncode == EXIT_FAILED, done.stdout + done.stderr
    run_id = doc["run_id"]
    # The same nodes through a known_hosts that knows none of them yet.
    data = yaml.safe_load(lab.inventory.read_text())
    fresh = tmp_path / "ssh" / "known_hosts"
    data["defaults"]["known_hosts"] = str(fresh)
    inventory = tmp_path / "fresh.yaml"
    inventory.write_text(yaml.safe_dump(data))

    done, doc = cli.json("status", "--run", run_id, "--refresh", "--inventory", str(inventory))
    assert done.returncode == EXIT_LOST  # the nodes could not be asked
    errors = {h: e["refresh_error"] for h, e in doc["hosts"].items()}
    assert all("not in" in str(e) and "--accept-new-host-keys" in str(e) for e in errors.values())
    assert {e["state"] for e in doc["hosts"].values()} == {"failed"}  # the outcome is kept
    assert not fresh.exists()

    done, doc = cli.json(
        "status", "--run", run_id, "--refresh", "--inventory", str(inventory),
        "--accept-new-host-keys",
    )  # fmt: skip
    assert done.returncode == EXIT_FAILED, done.stdout + done.stderr
    assert [e.get("refresh_error") for e in doc["hosts"].values()] == [None] * len(lab.nodes)
    assert {e["exit_code"] for e in doc["hosts"].values()} == {4}
    assert len(fresh.read_text().splitlines()) == len(lab.nodes)


def test_status_mid_run_reads_the_event_log_and_a_stop_is_stopped_not_failed(lab, cli):
    two = [n.address for n in lab.nodes[:2]]
    proc = cli.popen("run", "--cmd", "sleep 60", "--hosts", ",".join(two), *FAST)
    wait_until(lambda: all_alive(cli, 2), timeout=30)
    run_id = cli.latest_run_id()
    # run.json still says pending; the event log knows better, and status says so.
    done, doc = cli.json("status")
    assert done.returncode == EXIT_LOST  # still going: no result yet
    assert {h: e["state"] for h, e in doc["hosts"].items()} == dict.fromkeys(two, "alive")
    done = cli("stop", "--run", run_id)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_FAILED, out + err
    assert f"stopped (2): {fold(two)}" in out.splitlines()
    assert re.search(rf"{re.escape(two[0])} +stopped +signal 15 +[0-9.]+s", out), out
    assert "see why it failed" not in out  # nothing failed: the user ended it
    assert "re-run just those hosts with: " in out and "--hosts @not-succeeded" in out
    done, doc = cli.json("status")
    assert {e["state"] for e in doc["hosts"].values()} == {"stopped"}
    assert all(e["seconds"] for e in doc["hosts"].values())
    done, doc = cli.json("run", "--cmd", "true", "--hosts", "@stopped", *FAST)
    assert [h["host"] for h in doc["hosts"]] == two
