"""Nodes as real fleets have them: a remote_dir every node shares (an NFS home; in
the lab, /var/tmp), several users on one node, and remote_dirs another user planted."""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import field
import yaml
from helpers import wait_until

from corunner.errors import EXIT_FAILED, EXIT_LOST, EXIT_OK

FAST = ("--interval", "0.2", "--dead-after", "10")


def test_nodes_sharing_remote_dir_keep_their_own_results(lab, cli, tmp_path):
    # Before: every node wrote <remote_dir>/<run id>, so one node's stdout and
    # status showed under every host.
    shared = Path(f"/var/tmp/corunner-shared-{secrets.token_hex(4)}")
    try:
        done, doc = cli.json(
            "run", "--cmd", "hostname; hostname > me.txt", "--remote-dir", str(shared), *FAST
        )
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        run_id = doc["run_id"]
        assert len({h["remote_dir"] for h in doc["hosts"]}) == 8
        assert sorted(p.name for p in (shared / run_id).iterdir()) == sorted(
            n.address for n in lab.nodes
        )
        done = cli("collect", "--run", run_id, "--dest", str(tmp_path / "got"), "--divide")
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        for node in lab.nodes:
            here = tmp_path / "got" / node.address
            assert (here / "stdout").read_text() == node.hostname + "\n"
            assert (here / "me.txt").read_text() == node.hostname + "\n"
            assert json.loads((here / "status.json").read_text())["host"] == node.address
        done, doc = cli.json("status", "--run", run_id, "--output")
        groups = doc["outputs"]["groups"]
        assert len(groups) == 8, groups
        done, doc = cli.json("status", "--run", run_id, "--refresh")
        assert {h["node"]["hostname"] for h in doc["hosts"].values()} == {
            n.hostname for n in lab.nodes
        }
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_two_users_on_one_node_each_get_their_own_default_remote_dir(
    lab, cli, field_users, tmp_path, on_node
):
    node = lab.nodes[4]
    # root's lab runs already made /tmp/corunner (0700) on the node: before, the
    # default remote_dir was that one for everybody, and every other user failed.
    on_node(node.index, "mkdir -p -m 700 /tmp/corunner")
    for user in ("cr-zsh", "cr-fish"):
        inventory = field.user_inventory(lab, tmp_path, user)
        done, doc = cli.json(
            "run", "--cmd", "id -un", "--inventory", str(inventory), "--hosts", node.address,
            *FAST,
        )  # fmt: skip
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        assert doc["hosts"][0]["remote_dir"].startswith(f"/tmp/corunner-{user}/")
        owner_mode = on_node(node.index, f"stat -c '%U %a' /tmp/corunner-{user}").split()
        assert owner_mode == [user, "700"]


def test_a_planted_or_open_remote_dir_is_refused_with_its_line(
    lab, cli, field_users, tmp_path, on_node
):
    link, theirs, open_dir, good = lab.nodes[:4]
    user = "cr-dash"
    token = secrets.token_hex(3)
    planted = f"/tmp/planted-{token}"
    # Another user's traps: a symlink (to a directory cr-dash could use!), a
    # directory of root's, and cr-dash's own directory left group-writable.
    on_node(
        link.index, f"mkdir -m 777 /tmp/elsewhere-{token} && ln -s /tmp/elsewhere-{token} {planted}"
    )
    on_node(theirs.index, f"mkdir -m 700 {planted}")
    on_node(open_dir.index, f"mkdir -m 775 {planted} && chown {user} {planted}")
    data = yaml.safe_load(field.user_inventory(lab, tmp_path, user).read_text())
    data["defaults"]["remote_dir"] = planted
    inventory = tmp_path / "planted.yaml"
    inventory.write_text(yaml.safe_dump(data))
    hosts = ",".join(n.address for n in (link, theirs, open_dir, good))
    done, doc = cli.json(
        "run", "--cmd", "true", "--inventory", str(inventory), "--hosts", hosts, *FAST
    )
    assert done.returncode == EXIT_LOST, done.stdout + done.stderr
    errors = {h["host"]: h["error"] for h in doc["hosts"]}
    fix = "(remove it, or choose another remote_dir)"
    assert errors[link.address] == (
        f"could not start the executor: refusing {planted}: it is a symbolic link {fix}"
    )
    assert errors[theirs.address] == (
        f"could not start the executor: refusing {planted}: it belongs to root, not {user} "
        f"(remove it, or choose a remote_dir of your own such as /tmp/corunner-{user})"
    )
    assert errors[open_dir.address] == (
        f"could not start the executor: refusing {planted}: it is writable by group or others "
        f"(mode 775) (chmod go-w {planted})"
    )
    assert errors[good.address] is None
    assert (
        f"{link.address}: pending -> unreachable (could not start the executor: refusing {planted}"
        in done.stderr
    )
    assert (
        on_node(link.index, f"ls -A /tmp/elsewhere-{token}") == ""
    )  # nothing went behind the link


def test_a_repeated_run_finds_the_executor_in_the_nodes_cache(lab, cli, tmp_path, on_node):
    # Before, every run sent the executor and its bytecode (~155 KiB) to every node.
    remote_dir = f"/tmp/cache-{secrets.token_hex(3)}"

    def bytes_sent() -> set:
        record = json.loads((tmp_path / "runs" / cli.latest_run_id() / "run.json").read_text())
        return {h["bytes_sent"] for h in record["hosts"].values()}

    done = cli("run", "--cmd", "hostname", "--remote-dir", remote_dir, *FAST)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert all(n > 150_000 for n in bytes_sent()), bytes_sent()
    done = cli("run", "--cmd", "hostname", "--remote-dir", remote_dir, *FAST)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert all(n < 8_000 for n in bytes_sent()), bytes_sent()  # the boot code and the config
    listing = on_node(lab.nodes[0].index, f"stat -c '%a %U' {remote_dir}/.executor/*")
    assert listing.split() == ["700", "root"]


def test_a_full_disk_loses_no_outcome_and_says_what_it_could_not_write(
    healthy_lab, cli, tmp_path, on_node
):
    # Before: the live result said succeeded, status.json stayed "running", and
    # status --refresh turned the recorded outcome into dead.
    node = healthy_lab.nodes[5]
    tiny = f"/tmp/tiny-{secrets.token_hex(3)}"
    on_node(node.index, f"mkdir -p {tiny} && mount -t tmpfs -o size=1m tmpfs {tiny}")
    try:
        done, doc = cli.json(
            "run", "--cmd", "dd if=/dev/zero of=fill bs=64k; exit 0",
            "--remote-dir", f"{tiny}/rd", "--hosts", node.address, *FAST,
        )  # fmt: skip
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        # The program filled it: what is left is the executor's reserve, freed at the end.
        free_kib = int(on_node(node.index, f"df --output=avail -k {tiny}").split()[-1])
        assert free_kib <= 16
        done, doc = cli.json("status", "--refresh")
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        entry = doc["hosts"][node.address]
        assert (entry["state"], entry["exit_code"]) == ("succeeded", 0)
        assert (entry["node"]["state"], entry["node"]["exit_code"]) == ("exited", 0)
        assert entry["node"]["error"].startswith("the node's disk filled up during the run")
    finally:
        on_node(node.index, f"umount {tiny}")


def test_a_script_on_a_noexec_remote_dir_fails_with_the_reason(healthy_lab, cli, tmp_path, on_node):
    # Before: failed, exit 126, with an empty error and an empty stderr.
    node = healthy_lab.nodes[6]
    mount = f"/tmp/noexec-{secrets.token_hex(3)}"
    on_node(node.index, f"mkdir -p {mount} && mount -t tmpfs -o noexec tmpfs {mount}")
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\necho never\n")
    try:
        done, doc = cli.json(
            "run", "--script", str(script), "--remote-dir", f"{mount}/rd",
            "--hosts", node.address, *FAST,
        )  # fmt: skip
        assert done.returncode == EXIT_FAILED, done.stdout + done.stderr
        why = "cannot execute ./job.sh: Permission denied; is remote_dir on a noexec mount?"
        host = doc["hosts"][0]
        assert (host["state"], host["exit_code"], host["error"]) == ("failed", 126, why)
        assert why in done.stderr  # the error column, and one line
    finally:
        on_node(node.index, f"umount {mount}")


def test_stop_ends_daemons_and_setsid_children_on_every_node(lab, cli, on_node):
    # Before: stop said "stopped" (or "not running") and the daemons lived on.
    spawn = (
        "(setsid sleep 3131 &); setsid sleep 3132 & sleep 0.5; "
        'if [ "$CORUNNER_NODE_INDEX" = 0 ]; then exit 0; fi; sleep 3133'
    )
    proc = cli.popen("run", "--cmd", spawn, *FAST)
    try:

        def spawned() -> bool:
            return all(
                on_node(n.index, "ps -eo args").count("sleep 313")
                >= (2 if n.index == lab.nodes[0].index else 3)
                for n in lab.nodes
            )

        wait_until(spawned, 60, interval=0.5)
        wait_until(lambda: cli.states().get(lab.nodes[0].address) == "succeeded", 30)
        done = cli("stop")
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        assert "stopped (8): " in done.stdout, done.stdout
        for node in lab.nodes:
            wait_until(lambda n=node: "sleep 313" not in on_node(n.index, "ps -eo args"), 15)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_env_and_stdin_reach_every_program_and_no_command_line(lab, cli, tmp_path, on_node):
    secret = f"s3cr3t-{secrets.token_hex(4)}"
    given = tmp_path / "input.txt"
    given.write_text("the same input\n")
    data = yaml.safe_load(lab.inventory.read_text())
    data["defaults"]["env"] = {"FROM_INVENTORY": "inv", "TOKEN": "overridden"}
    inventory = tmp_path / "env.yaml"
    inventory.write_text(yaml.safe_dump(data))
    proc = cli.popen(
        "run", "--cmd", 'cat; echo "$FROM_INVENTORY $TOKEN"; sleep 3', "--env", f"TOKEN={secret}",
        "--stdin", str(given), "--inventory", str(inventory), *FAST,
    )  # fmt: skip
    try:
        wait_until(lambda: len(cli.states()) == 8, 60)
        for node in lab.nodes:
            assert secret not in on_node(node.index, "ps -eo args")
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == EXIT_OK, out + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    done, doc = cli.json("status", "--output")
    assert [g["output"] for g in doc["outputs"]["groups"]] == [f"the same input\ninv {secret}\n"]


def test_collect_brings_results_not_inputs_unless_asked(lab, cli, tmp_path):
    # Before: collect brought the executor, its bytecode, the script and every --files back.
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\ncp data.txt result.txt\n")
    data = tmp_path / "data.txt"
    data.write_text("input\n")
    one = ("--hosts", lab.nodes[0].address)
    done = cli("run", "--script", str(script), "--files", str(data), *one, *FAST)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    for flags, inputs in (((), False), (("--with-inputs",), True)):
        dest = tmp_path / f"got-{inputs}"
        done = cli("collect", "--dest", str(dest), "--divide", *flags)
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        here = dest / lab.nodes[0].address
        assert (here / "result.txt").read_text() == "input\n"
        assert {"stdout", "stderr", "status.json"} <= {p.name for p in here.iterdir()}
        for path in ("job.sh", "data.txt", ".corunner/executor.py"):
            assert (here / path).exists() == inputs, path
        assert not (here / ".corunner" / "config.json").exists()  # the secret, never


def test_sudo_runs_the_program_as_root_and_stop_still_ends_it(
    lab, cli, field_users, tmp_path, on_node
):
    # Before: no way but --cmd 'sudo -n ...', which --script cannot do.
    two = ",".join(n.address for n in lab.nodes[:2])
    deploy = field.user_inventory(lab, tmp_path, "cr-deploy")
    done, doc = cli.json(
        "run", "--cmd", 'id -un; echo "$TOKEN"', "--sudo", "--env", "TOKEN=kept",
        "--inventory", str(deploy), "--hosts", two, *FAST,
    )  # fmt: skip
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    done, doc = cli.json("status", "--output")
    assert [g["output"] for g in doc["outputs"]["groups"]] == ["root\nkept\n"]

    data = yaml.safe_load(deploy.read_text())
    data["defaults"]["become"] = True
    become = tmp_path / "become.yaml"
    become.write_text(yaml.safe_dump(data))
    proc = cli.popen(
        "run", "--cmd", "sleep 3141", "--inventory", str(become), "--hosts", two, *FAST
    )
    try:
        for node in lab.nodes[:2]:
            wait_until(lambda n=node: ["root", "sleep", "3141"] in _processes(lab, n), 60)
        done = cli("stop")
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        assert "stopped (2): " in done.stdout, done.stdout
        for node in lab.nodes[:2]:
            wait_until(lambda n=node: "sleep 3141" not in on_node(n.index, "ps -eo args"), 15)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_sudo_that_would_ask_for_a_password_says_so_in_one_line(lab, cli, field_users, tmp_path):
    node = lab.nodes[3]
    inventory = field.user_inventory(lab, tmp_path, "cr-zsh")
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nid -u\n")
    done, doc = cli.json(
        "run", "--script", str(script), "--sudo", "--inventory", str(inventory),
        "--hosts", node.address, *FAST,
    )  # fmt: skip
    assert done.returncode == EXIT_FAILED, done.stdout + done.stderr
    host = doc["hosts"][0]
    assert (host["state"], host["exit_code"]) == ("failed", 126)
    assert host["error"] == "needs passwordless sudo (NOPASSWD) for root"


def _processes(lab, node) -> list:
    """Each process of ``node`` as [user, arg, arg, ...]."""
    from conftest import node_sh

    return [line.split() for line in node_sh(lab, node.index, "ps -eo user=,args=").splitlines()]
