"""Every remote operation under every login shell: root (bash) and the field users
(dash, zsh, fish, tcsh, bash with sudo), with paths and arguments holding spaces,
quotes, ``$``, ``!`` and backslashes. Before, tcsh failed everything but
single-file copies (``Unmatched '''.``, ``fi: Command not found.``)."""

from __future__ import annotations

import json
import secrets
import shlex

from helpers import wait_until

from corunner.errors import EXIT_OK

SLOW_OK = ("--interval", "0.2", "--dead-after", "10")
#: A name part every shell would otherwise mangle: csh's !, fish's \, everybody's $ and quotes.
ODD = "sp ace 'q' \"dq\" $x !y !! \\b"
ARGS = ["a b", "it's", "$HOME", "!x !! !$", "back\\slash\\", 'say "hi"', "*", ""]


def odd_dir(login: str) -> str:
    return f"/tmp/{ODD} {login} {secrets.token_hex(3)}"


def test_run_status_output_collect_and_stop_work_under_every_login_shell(
    lab, user_cli, login, tmp_path
):
    cli = user_cli
    two = [n.address for n in lab.nodes[:2]]
    hosts = ("--hosts", ",".join(two))
    remote_dir = odd_dir(login)
    data = tmp_path / f"in {ODD}"
    data.write_text("input\n")
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/sh\n"
        'printf "%s\\n" "$@" > args.txt\n'
        f"cat {shlex.quote(data.name)} > copy.txt\n"
        "hostname\n"
    )
    done, doc = cli.json(
        "run", "--script", str(script), "--args", shlex.join(ARGS), "--files", str(data),
        "--remote-dir", remote_dir, *hosts, *SLOW_OK,
    )  # fmt: skip
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert {h["state"] for h in doc["hosts"]} == {"succeeded"}
    run_id = doc["run_id"]

    done, doc = cli.json("status", "--run", run_id, "--refresh")
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert {h["node"]["state"] for h in doc["hosts"].values()} == {"exited"}

    done = cli("status", "--run", run_id, "--output")
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    for node in lab.nodes[:2]:
        assert node.hostname in done.stdout

    done = cli("collect", "--run", run_id, "--dest", str(tmp_path / "got"), "--divide")
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    for address in two:
        here = tmp_path / "got" / address
        assert (here / "args.txt").read_text() == "".join(a + "\n" for a in ARGS)
        assert (here / "copy.txt").read_text() == "input\n"

    proc = cli.popen("run", "--cmd", "sleep 60", "--remote-dir", remote_dir, *hosts, *SLOW_OK)
    try:
        wait_until(lambda: len(cli.states()) == 2 and set(cli.states().values()) == {"alive"}, 60)
        done = cli("stop")
        assert done.returncode == EXIT_OK, done.stdout + done.stderr
        assert "stopped (2): " in done.stdout, done.stdout
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_copies_both_ways_work_under_every_login_shell(lab, user_cli, login, tmp_path):
    cli = user_cli
    node = lab.nodes[2]
    hosts = ("--hosts", node.address)
    dest = odd_dir(login)
    tree = tmp_path / f"tree {ODD}"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / f"f {ODD}").write_text("tree file\n")
    single = tmp_path / f"one {ODD}"
    single.write_text("single\n")

    for src, to in ((tree, dest + "/"), (single, f"{dest}/new dir {ODD}/"), (single, dest)):
        done = cli("cp", "--src", str(src), "--dest", to, *hosts)
        assert done.returncode == EXIT_OK, (src, to, done.stdout + done.stderr)

    done = cli("cp", "--pull", "--src", dest, "--dest", str(tmp_path / "back"), "--divide", *hosts)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    back = tmp_path / "back" / node.address / dest.rsplit("/", 1)[1]
    assert (back / tree.name / "sub" / f"f {ODD}").read_text() == "tree file\n"
    assert (back / f"new dir {ODD}" / single.name).read_text() == "single\n"
    assert (back / single.name).read_text() == "single\n"

    one = f"{dest}/{single.name}"
    done, doc = cli.json("cp", "--pull", "--src", one, "--dest", str(tmp_path / "f"), *hosts)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert (tmp_path / "f" / f"{single.name}.{node.address}").read_text() == "single\n"
    assert json.dumps(doc)  # one JSON document
