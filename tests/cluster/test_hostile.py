"""Faults and hostile input on the real cluster: host keys, quoting, pulls that
try to escape, nodes that cannot run us. Each fault hits one node; the others
must run to the end."""

from __future__ import annotations

import json
import os
import re
import signal
import string
from pathlib import Path

import yaml
from helpers import free_port, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corunner.errors import EXIT_INTERRUPTED, EXIT_LOST, EXIT_OK

FAST = ("--interval", "0.2", "--dead-after", "1.5")


def inventory_with(lab, tmp_path: Path, group_settings: dict, hosts: list, name="custom") -> Path:
    """An inventory: the lab's defaults, plus a group ``name`` with its own settings."""
    data = yaml.safe_load(lab.inventory.read_text())
    data["groups"][name] = {"hosts": hosts, **group_settings}
    data["groups"]["lab"]["hosts"] = [n.address for n in lab.nodes if n.address not in hosts]
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_unknown_host_key_is_refused_then_accepted_on_request(lab, cli, tmp_path):
    known = tmp_path / "known_hosts"
    lines = lab.known_hosts.read_text().splitlines()
    stranger = lab.nodes[0]
    known.write_text(
        "\n".join(ln for ln in lines if not ln.startswith(stranger.address + " ")) + "\n"
    )
    inv = inventory_with(lab, tmp_path, {"known_hosts": str(known)}, [stranger.address])
    done = cli("run", "--cmd", "true", "--inventory", str(inv), "--hosts", stranger.address, *FAST)
    assert done.returncode == EXIT_LOST
    row = rf"^{re.escape(stranger.address)} +unreachable +.*host key not in {re.escape(str(known))}"
    assert re.search(row, done.stdout, re.M), done.stdout
    assert "--accept-new-host-keys" in done.stdout
    done = cli(
        "run",
        "--cmd",
        "true",
        "--inventory",
        str(inv),
        "--hosts",
        stranger.address,
        "--accept-new-host-keys",
        *FAST,
    )
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert stranger.address in known.read_text()
    # accept-new never accepts a *changed* key
    other_key = next(ln for ln in lines if ln.startswith(lab.nodes[1].address + " ")).split(" ", 1)[
        1
    ]
    known.write_text(f"{stranger.address} {other_key}\n")
    done = cli(
        "cp",
        "--src",
        str(inv),
        "--dest",
        "/tmp/x",
        "--inventory",
        str(inv),
        "--hosts",
        stranger.address,
        "--accept-new-host-keys",
    )
    assert done.returncode == EXIT_LOST
    assert "host key differs" in done.stdout


def test_missing_python_unwritable_dir_and_wrong_key_fail_their_node_only(lab, cli, tmp_path):
    no_python, read_only, liar = (n.address for n in lab.nodes[:3])
    data = yaml.safe_load(lab.inventory.read_text())
    others = [n.address for n in lab.nodes[3:]]
    # A known_hosts in which the liar's line carries another node's key.
    lines = lab.known_hosts.read_text().splitlines()
    other_key = next(ln for ln in lines if ln.startswith(others[0] + " ")).split(" ", 1)[1]
    forged = tmp_path / "forged_known_hosts"
    forged.write_text(f"{liar} {other_key}\n")
    data["groups"] = {
        "lab": {"hosts": others},
        "nopy": {"hosts": [no_python], "python": "python3.99-missing"},
        "ro": {"hosts": [read_only], "remote_dir": "/proc/corunner"},
        "badkey": {"hosts": [liar], "known_hosts": str(forged)},
    }
    inv = tmp_path / "hosts.yaml"
    inv.write_text(yaml.safe_dump(data))
    done, doc = cli.json("run", "--cmd", "true", "--inventory", str(inv), *FAST)
    assert done.returncode == EXIT_LOST
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert hosts[no_python]["state"] == "unreachable"
    assert "python interpreter 'python3.99-missing' not found" in hosts[no_python]["error"]
    assert hosts[read_only]["state"] == "unreachable"
    assert "/proc/corunner" in hosts[read_only]["error"]
    assert hosts[liar]["state"] == "unreachable"
    assert "host key differs" in hosts[liar]["error"]
    assert all(hosts[h]["state"] == "succeeded" for h in others)


def test_full_disk_fails_the_copy_with_its_cause(healthy_lab, cli, tmp_path, on_node):
    lab = healthy_lab
    full = lab.nodes[2]
    on_node(full.index, "mkdir -p /tmp/small && mount -t tmpfs -o size=64k tmpfs /tmp/small")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(1 << 20))
    try:
        done = cli("cp", "--src", str(big), "--dest", "/tmp/small/")
        assert done.returncode != 0
        assert f"{full.address}: copy to /tmp/small/ failed" in done.stdout
        assert "not enough space in /tmp/small" in done.stdout
        assert "ok (7)" in done.stdout
        # A run whose remote directory is on the full disk: that node only is unreachable.
        inv = inventory_with(lab, tmp_path, {"remote_dir": "/tmp/small/runs"}, [full.address])
        done, doc = cli.json(
            "run", "--cmd", "true", "--files", str(big), "--inventory", str(inv), *FAST
        )
        hosts = {h["host"]: h for h in doc["hosts"]}
        assert hosts[full.address]["state"] == "unreachable"
        assert "could not start the executor" in hosts[full.address]["error"]
        assert sum(h["state"] == "succeeded" for h in doc["hosts"]) == 7
    finally:
        on_node(full.index, "umount /tmp/small")


NAME_CHARS = string.ascii_letters + string.digits + " '\"$;*&|<>(){}[]!#~`\\\t\n-_.=%"


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    names=st.lists(
        st.text(NAME_CHARS, min_size=1, max_size=12).filter(lambda s: s not in (".", "..")),
        min_size=1,
        max_size=4,
        unique=True,
    ),
    arg=st.text(NAME_CHARS, min_size=0, max_size=16),
)
def test_names_and_arguments_reach_the_node_literally(lab, cli, tmp_path_factory, names, arg):
    node = lab.nodes[3]
    root = tmp_path_factory.mktemp("q")
    tree = root / "tree with 'quotes' $HOME;*"
    tree.mkdir()
    for i, name in enumerate(names):
        (tree / name).write_text(str(i))
    dest = f"/tmp/q $x;`*'\"/{root.name}/"  # a fresh directory per example: copies merge
    done = cli("cp", "--src", str(tree), "--dest", dest, "--hosts", node.address)
    assert done.returncode == 0, done.stdout + done.stderr
    script = root / "show.py"
    script.write_text(
        "import json, os, sys\n"
        "d = sys.argv[1]\n"
        "print(json.dumps({'arg': sys.argv[2], 'files': {n: open(os.path.join(d, n)).read()"
        " for n in os.listdir(d)}}))\n"
    )
    import shlex

    args = shlex.join([dest + tree.name, arg])
    done, doc = cli.json(
        "run", "--script", str(script), "--args", args, "--hosts", node.address, *FAST
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = cli("collect", "--run", doc["run_id"], "--dest", str(root / "got"), "--divide")
    assert out.returncode == 0
    shown = json.loads((root / "got" / node.address / "stdout").read_text())
    assert shown == {"arg": arg, "files": {n: str(i) for i, n in enumerate(names)}}


def test_pull_never_follows_links_out_of_the_tree(lab, cli, tmp_path, on_node):
    node = lab.nodes[4]
    on_node(
        node.index,
        "rm -rf /tmp/trap && mkdir -p /tmp/trap/sub && echo ok > /tmp/trap/sub/real"
        " && ln -s /etc /tmp/trap/abs && ln -s ../../../.. /tmp/trap/sub/up"
        " && ln -s real /tmp/trap/sub/inner && ln -s loop2 /tmp/trap/loop1 && ln -s loop1 /tmp/trap/loop2",
    )
    dest = tmp_path / "got"
    done = cli(
        "cp",
        "--pull",
        "--src",
        "/tmp/trap",
        "--dest",
        str(dest),
        "--divide",
        "--hosts",
        node.address,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    here = dest / node.address / "trap"
    assert (here / "sub" / "real").read_text() == "ok\n"
    assert os.readlink(here / "sub" / "inner") == "real"
    assert not os.path.lexists(here / "abs") and not os.path.lexists(here / "sub" / "up")
    assert "refused unsafe entry trap/abs" in done.stdout
    assert os.readlink(here / "loop1") == "loop2"  # kept as a link, never followed
    for path, _, files in os.walk(dest):
        for f in files:
            assert os.path.realpath(os.path.join(path, f)).startswith(str(dest)) or os.path.islink(
                os.path.join(path, f)
            )


def test_two_runs_at_once_do_not_collide(lab, cli, tmp_path):
    one = cli.popen("run", "--cmd", "echo one > who; sleep 1", "--json", *FAST)
    two = cli.popen("run", "--cmd", "echo two > who; sleep 1", "--json", *FAST)
    out1, _ = one.communicate(timeout=60)
    out2, _ = two.communicate(timeout=60)
    assert one.returncode == two.returncode == EXIT_OK
    ids = [json.loads(out1)["run_id"], json.loads(out2)["run_id"]]
    assert ids[0] != ids[1]
    for run_id, word in zip(ids, ("one", "two")):
        got = tmp_path / run_id
        assert cli("collect", "--run", run_id, "--dest", str(got), "--divide").returncode == 0
        assert {(got / n.address / "who").read_text() for n in lab.nodes} == {word + "\n"}


def test_ctrl_c_off_a_terminal_leaves_programs_running_and_says_how_to_stop(lab, cli, on_node):
    proc = cli.popen("run", "--cmd", "sleep 120", *FAST)

    def started():
        return cli.latest_run_id() if len(cli.events()) >= len(lab.nodes) else None

    run_id = wait_until(started, timeout=30)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == EXIT_INTERRUPTED
    assert f"stop them with: corunner stop --run {run_id}" in out  # the command that was typed
    record = json.loads((cli.workdir / "runs" / run_id / "run.json").read_text())
    assert record["interrupted"] is True and record["finished"] is True
    assert "sleep 120" in on_node(lab.nodes[0].index, "ps -eo args")
    assert cli("stop", "--run", run_id).returncode == 0


def test_program_that_forks_and_exits_succeeds_and_stop_ends_its_children(lab, cli, on_node):
    node = lab.nodes[5]
    done, doc = cli.json(
        "run", "--cmd", "sleep 271 & sleep 272 & echo forked", "--hosts", node.address, *FAST
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert doc["hosts"][0]["state"] == "succeeded"
    assert "sleep 271" in on_node(node.index, "ps -eo args")
    done = cli("stop", "--run", doc["run_id"])
    assert done.returncode == 0 and f"stopped (1): {node.address}" in done.stdout
    wait_until(lambda: "sleep 27" not in on_node(node.index, "ps -eo args"), timeout=10)


def test_killed_executor_turns_the_node_dead_and_refresh_says_what_is_known(
    healthy_lab, cli, on_node
):
    node = healthy_lab.nodes[6]
    proc = cli.popen("run", "--cmd", "sleep 30", "--hosts", node.address, "--json", *FAST)

    def executor_pid():
        # This run's executor: executors of earlier runs may still linger on the node.
        run_id = cli.latest_run_id()
        if run_id is None:
            return None
        out = on_node(
            node.index,
            "for p in $(pgrep -f '[e]xecutor.py start'); do"
            f" case $(readlink /proc/$p/cwd) in *{run_id}*) echo $p;; esac; done",
        ).split()
        return out[0] if out else None

    pid = wait_until(executor_pid, timeout=30)
    on_node(node.index, f"kill -KILL {pid}")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_LOST
    assert json.loads(out)["hosts"][0]["state"] == "dead"
    # The program still runs, its executor does not: refresh says exactly that.
    done, doc = cli.json("status", "--refresh")
    node_view = doc["hosts"][node.address]["node"]
    assert (node_view["state"], node_view["program_alive"], node_view["executor_alive"]) == (
        "running",
        True,
        False,
    )
    assert doc["hosts"][node.address]["state"] == "alive"
    # Once the program is gone too, nobody will write its end: the node says "lost".
    on_node(node.index, "pkill -KILL -f '[s]leep 30' || true")
    done, doc = cli.json("status", "--refresh")
    assert doc["hosts"][node.address]["node"]["state"] == "lost"
    assert doc["hosts"][node.address]["state"] == "dead"


def test_garbage_on_the_heartbeat_port_harms_no_real_node(lab, cli):
    import socket
    import threading

    port = free_port()
    proc = cli.popen(
        "run",
        "--cmd",
        "sleep 3",
        "--listen",
        f"127.0.0.1:{port}",
        "--json",
        "--interval",
        "0.2",
        "--dead-after",
        "2",
    )
    stop = threading.Event()

    def attack():
        silent = []
        while not stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(os.urandom(4096) + b"\n")
                    s.sendall(b"CR1 run host 1 running - - 1.0 " + b"0" * 64 + b"\n")
                    s.sendall(b"x" * (10 << 20))  # a 10 MB line
            except OSError:
                pass
            try:
                silent.append(socket.create_connection(("127.0.0.1", port), timeout=1))
            except OSError:
                pass
            if len(silent) > 300:
                for s in silent:
                    s.close()
                silent.clear()
        for s in silent:
            s.close()

    attacker = threading.Thread(target=attack, daemon=True)
    wait_until(lambda: _port_open(port), timeout=30)
    attacker.start()
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        stop.set()
        attacker.join(10)
    assert proc.returncode == EXIT_OK, err
    doc = json.loads(out)
    assert {h["state"] for h in doc["hosts"]} == {"succeeded"}
    record = json.loads((cli.workdir / "runs" / doc["run_id"] / "run.json").read_text())
    assert record["rejected"].get("oversize", 0) >= 1
    assert sum(record["rejected"].values()) >= 3
    dead = [
        e
        for e in (cli.workdir / "runs" / doc["run_id"] / "events.jsonl").read_text().splitlines()
        if '"new": "dead"' in e
    ]
    assert dead == []


def _port_open(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_ctrl_c_at_a_terminal_asks_and_stops_the_programs(lab, cli, on_node, tmp_path):
    """Ctrl-C lands while one node's start is still in flight (its python waits 3 s):
    that start is let finish, so the stop reaches its program too."""
    import pty
    import select
    import subprocess
    import sys

    slow = lab.nodes[3]
    on_node(slow.index, "printf '#!/bin/sh\\nsleep 3\\nexec python3 \"$@\"\\n' >/tmp/slowpy")
    on_node(slow.index, "chmod +x /tmp/slowpy")
    inv = inventory_with(lab, tmp_path, {"python": "/tmp/slowpy"}, [slow.address])
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "corunner", "run", "--cmd", "sleep 181", "--inventory", str(inv)]
        + list(FAST),
        cwd=cli.workdir,
        env={**cli.env, "TERM": "xterm"},
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    seen = b""

    def read_until(text: bytes, timeout: float) -> bytes:
        nonlocal seen
        import time

        end = time.monotonic() + timeout
        while text not in seen and time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        return seen

    try:
        wait_until(lambda: "sleep 181" in on_node(lab.nodes[-1].index, "ps -eo args"), timeout=60)
        read_until(b"alive", 10)
        assert "sleep 181" not in on_node(slow.index, "ps -eo args")  # still starting
        proc.send_signal(signal.SIGINT)
        assert b"Stop the programs on the nodes? [y/N]" in read_until(b"[y/N]", 30)
        os.write(master, b"y\n")
        proc.wait(timeout=60)
        read_until(b"stopped (8)", 5)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    assert proc.returncode == EXIT_INTERRUPTED
    assert b"stopped (8)" in seen
    for node in lab.nodes:
        wait_until(lambda n=node: "sleep 181" not in on_node(n.index, "ps -eo args"), timeout=15)


def test_controller_paused_longer_than_the_program_still_gets_every_final_state(lab, cli):
    """The listener unreachable for a while (here: the controller stopped with
    SIGSTOP): programs run on, executors keep their final message until it is
    acknowledged, and nothing is lost."""
    proc = cli.popen("run", "--cmd", "sleep 2", "--json", "--interval", "0.2", "--dead-after", "30")
    try:
        wait_until(lambda: _all_alive(cli, len(lab.nodes)), timeout=30)
        proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: all_programs_done(lab), timeout=30, interval=0.5)
    finally:
        proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_OK, err
    assert {h["state"] for h in json.loads(out)["hosts"]} == {"succeeded"}


def _all_alive(cli, count: int) -> bool:
    return len({e["host"] for e in cli.events() if e["new"] == "alive"}) == count


def all_programs_done(lab) -> bool:
    from conftest import node_sh  # tests/cluster/conftest.py

    return all("sleep 2" not in node_sh(lab, n.index, "ps -eo args") for n in lab.nodes)


def test_without_a_key_setting_the_default_keys_are_used_like_ssh(lab, cli, tmp_path):
    # No `key:` in the inventory: like ssh, the agent and ~/.ssh/id_* are tried.
    data = yaml.safe_load(lab.inventory.read_text())
    del data["defaults"]["key"]
    inv = tmp_path / "hosts.yaml"
    inv.write_text(yaml.safe_dump(data))
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_bytes(lab.key.read_bytes())
    os.chmod(home / ".ssh" / "id_ed25519", 0o600)
    with_key = {"HOME": str(home), "SSH_AUTH_SOCK": ""}
    done, doc = cli.json("run", "--cmd", "true", "--inventory", str(inv), *FAST, env=with_key)
    assert done.returncode == EXIT_OK, done.stderr
    assert {h["state"] for h in doc["hosts"]} == {"succeeded"}
    # Without any key to offer, each node fails with one line saying so.
    (home / ".ssh" / "id_ed25519").unlink()
    done, doc = cli.json("run", "--cmd", "true", "--inventory", str(inv), *FAST, env=with_key)
    assert done.returncode == EXIT_LOST
    assert {h["state"] for h in doc["hosts"]} == {"unreachable"}
    assert {h["error"] for h in doc["hosts"]} == {
        "authentication failed for user root: no key to offer (no SSH agent, no ~/.ssh/id_* "
        "key); set key: in the inventory"
    }
    for node in lab.nodes:  # one row per node in the table of problems, naming it and why
        rows = re.findall(
            rf"^{re.escape(node.address)} +unreachable +.*authentication failed for user root",
            done.stderr,
            re.M,
        )
        assert len(rows) == 1, done.stderr
