"""The command line as users and CI meet it, without a cluster: bad input
gets one line naming the file and line, and the documented exit code."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from corunner.errors import EXIT_USAGE

REPO = Path(__file__).resolve().parents[2]


def corunner(*args: str, cwd: Path, env: dict = None):
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "CORUNNER_RUNS": str(cwd / "runs")}
    full_env.pop("CORUNNER_INVENTORY", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "corunner", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


GOOD = """\
defaults:
  user: root
groups:
  lab:
    hosts: ["127.0.1.[1-8]"]
  web:
    hosts: ["node[01-04]", "deploy@db1:2222"]
"""

BAD = {
    "yaml syntax": ('groups:\n  lab:\n    hosts: ["a"\n', ":4: YAML syntax error"),
    "unknown key": ("groups:\n  lab:\n    hosts: [a]\n    usr: root\n", ":4: unknown key 'usr'"),
    "reversed range": ('groups:\n  lab:\n    hosts: ["n[5-1]"]\n', ":3: bad host pattern 'n[5-1]'"),
    "unclosed bracket": ('groups:\n  lab:\n    hosts: ["n[1-5"]\n', ":3: bad host pattern"),
    "port not a number": (
        "defaults:\n  port: twenty\ngroups:\n  lab:\n    hosts: [a]\n",
        ":2: port must be a number",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inventory_is_one_line_with_file_and_line(tmp_path, case):
    text, where = BAD[case]
    (tmp_path / "hosts.yaml").write_text(text)
    done = corunner("hosts", cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("corunner: error: ./hosts.yaml:") and where in lines[0], lines[0]


@pytest.mark.parametrize(
    "selection, message",
    [
        ("nosuchgroup", "unknown group 'nosuchgroup'"),
        ("lba", "unknown group 'lba' (did you mean 'lab'?)"),
        ("lab!other3", "'other3' matches no host in ./hosts.yaml (nothing to remove)"),
        ("lab,", "empty item in the comma list"),
    ],
)
def test_bad_selection_is_one_line(tmp_path, selection, message):
    (tmp_path / "hosts.yaml").write_text(GOOD)
    done = corunner("hosts", "--hosts", selection, cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_missing_inventory_says_how_to_fix_it(tmp_path):
    done = corunner("hosts", cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert "--inventory" in done.stderr and "CORUNNER_INVENTORY" in done.stderr


def test_hosts_lists_expanded_hosts_and_folded_form(tmp_path):
    (tmp_path / "hosts.yaml").write_text(GOOD)
    done = corunner("hosts", cwd=tmp_path)
    assert done.returncode == 0
    assert "13 hosts: 127.0.1.[1-8],db1:2222,node[01-04]" in done.stdout
    assert "db1:2222   db1        deploy  2222  -     web" in done.stdout
    done = corunner("hosts", "--hosts", "web", "--json", cwd=tmp_path)
    doc = json.loads(done.stdout)
    assert doc["count"] == 5
    assert [h["id"] for h in doc["hosts"]] == ["node01", "node02", "node03", "node04", "db1:2222"]


def test_inventory_from_the_environment(tmp_path):
    (tmp_path / "elsewhere.yaml").write_text(GOOD)
    done = corunner(
        "hosts", "--hosts", "lab", cwd=tmp_path, env={"CORUNNER_INVENTORY": "elsewhere.yaml"}
    )
    assert done.returncode == 0 and "8 hosts: 127.0.1.[1-8]" in done.stdout


def test_status_without_any_run_says_so(tmp_path):
    done = corunner("status", cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert "no run recorded" in done.stderr
    assert "start one with `corunner run`" in done.stderr  # the command that was typed


def test_run_needs_exactly_one_of_script_and_cmd(tmp_path):
    (tmp_path / "hosts.yaml").write_text(GOOD)
    done = corunner("run", "--hosts", "lab", cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert "exactly one of --script FILE or --cmd COMMAND" in done.stderr


# --- the command line itself: only options that do something ------------------

#: Invoke's core options that change only how Invoke runs local shell commands.
INVOKE_ONLY = (
    "--dry",
    "--echo",
    "--pty",
    "--warn-only",
    "--command-timeout",
    "--prompt-for-sudo-password",
    "--hide",
    "--config",
    "--debug",
    "--write-pyc",
    "--list-depth",
    "--list-format",
)


def test_help_shows_only_corunners_own_core_options(tmp_path):
    done = corunner("--help", cwd=tmp_path)
    assert done.returncode == 0
    for option in INVOKE_ONLY:
        assert option not in done.stdout, option
    for option in ("-h [STRING], --help", "-V, --version", "-l [STRING], --list"):
        assert option in done.stdout
    assert "run " in done.stdout and "collect " in done.stdout


@pytest.mark.parametrize("option", ["--dry", "--pty", "--warn-only", "-T", "-e"])
def test_invoke_core_options_are_refused(tmp_path, option):
    done = corunner(option, "hosts", cwd=tmp_path)
    assert done.returncode == 1
    assert f"No idea what '{option}' is!" in done.stderr


@pytest.mark.parametrize("task", ["run", "cp", "hosts", "status", "stop", "collect"])
def test_dash_h_after_a_task_is_its_help(tmp_path, task):
    done = corunner(task, "-h", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Usage: corunner [--core-opts] {task} ")
    if task != "status":
        assert "-H STRING, --hosts=STRING" in done.stdout


@pytest.mark.parametrize(
    "argv, line",
    [
        (["run", "--cmnd", "true"], "No idea what '--cmnd' is! did you mean --cmd?"),
        (["cp", "--scr", "a", "--dest", "b"], "No idea what '--scr' is! did you mean --src?"),
        (["run", "--exlcude", "x"], "No idea what '--exlcude' is! did you mean --exclude?"),
        (["rnu"], "No idea what 'rnu' is! did you mean run?"),
        (["stauts"], "No idea what 'stauts' is! did you mean status?"),
        (["run", "-z"], "No idea what '-z' is! (corunner run --help lists its options)"),
    ],
)
def test_unknown_option_or_task_suggests_the_closest(tmp_path, argv, line):
    done = corunner(*argv, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == line


def test_hosts_not_in_the_inventory_are_said_once_on_stderr(tmp_path):
    (tmp_path / "hosts.yaml").write_text(GOOD)
    done = corunner("hosts", "-H", "lab!127.0.1.[2-8],other[1-2],deploy@x1:2200", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        done.stderr == "note: 3 hosts not in ./hosts.yaml, using its defaults: other[1-2],x1:2200\n"
    )
    assert "4 hosts: 127.0.1.1,other[1-2],x1:2200" in done.stdout
    assert "x1:2200    x1         deploy  2200" in done.stdout


def test_exclude_and_operators_in_hosts(tmp_path):
    (tmp_path / "hosts.yaml").write_text(GOOD)
    done = corunner("hosts", "--hosts", "lab,web", "--exclude", "web!db1", "--json", cwd=tmp_path)
    doc = json.loads(done.stdout)
    assert doc["folded"] == "127.0.1.[1-8],db1:2222"


# --- --dry: nothing reaches a node ---------------------------------------------


@pytest.fixture
def tripwire() -> Iterator[socket.socket]:
    """A listening socket on the loopback that stands in for a node: any
    connection corunner makes to it is waiting in its accept queue."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.setblocking(False)
    yield sock
    sock.close()


def connections(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            conn, _ = sock.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def trap_inventory(tmp_path: Path, sock: socket.socket) -> None:
    port = sock.getsockname()[1]
    (tmp_path / "hosts.yaml").write_text(
        "defaults:\n  user: root\n  connect_timeout: 2\n"
        f"groups:\n  trap:\n    hosts: ['127.0.0.1:{port}']\n"
    )
    (tmp_path / "payload.txt").write_text("x" * 1000)


DRY = [
    ["run", "--dry", "--cmd", "touch /tmp/corunner-dry-must-not-exist"],
    ["run", "--dry", "--script", "payload.txt", "--files", "payload.txt", "-n"],
    ["cp", "--dry", "--src", "payload.txt", "--dest", "/tmp/"],
    ["cp", "--dry", "--pull", "--src", "/etc/hostname", "--dest", "pulled"],
    ["collect", "--dry", "--src", "/etc/hostname", "--hosts", "trap"],
]


@pytest.mark.parametrize("argv", DRY, ids=lambda argv: " ".join(argv[:2]))
def test_dry_prints_the_plan_and_connects_to_nothing(tmp_path, tripwire, argv):
    trap_inventory(tmp_path, tripwire)
    done = corunner(*argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"dry run of {argv[0]}: nothing was done")
    port = tripwire.getsockname()[1]
    assert f"hosts (1): 127.0.0.1:{port}" in done.stdout
    assert f"user root, port {port}, key the SSH agent" in done.stdout
    assert connections(tripwire) == 0
    assert not (tmp_path / "runs").exists() and not (tmp_path / "pulled").exists()


def test_dry_run_says_what_it_would_run_and_upload(tmp_path, tripwire):
    trap_inventory(tmp_path, tripwire)
    done = corunner("run", "--dry", "-c", "echo 'a b'", "-j", cwd=tmp_path)
    doc = json.loads(done.stdout)
    assert doc["dry"] is True and doc["task"] == "run" and doc["count"] == 1
    steps = {s["label"]: s["text"] for s in doc["steps"]}
    assert steps["run"] == "/bin/sh -c 'echo '\"'\"'a b'\"'\"''"
    assert doc["upload_bytes"] > 10_000  # the executor travels with every run
    assert connections(tripwire) == 0


def test_the_tripwire_sees_a_real_copy(tmp_path, tripwire):
    """The control for the dry tests: without --dry, the same command connects."""
    trap_inventory(tmp_path, tripwire)
    done = corunner("cp", "--src", "payload.txt", "--dest", "/tmp/", cwd=tmp_path)
    assert done.returncode != 0
    assert connections(tripwire) >= 1


def test_inv_core_dry_never_runs_a_task(tmp_path, tripwire):
    """``inv --dry`` (Invoke's own option) turns into each task's --dry, or refuses."""
    trap_inventory(tmp_path, tripwire)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CORUNNER_RUNS": str(tmp_path / "runs")}
    inv = [sys.executable, "-m", "invoke", "--search-root", str(REPO), "--dry"]
    done = subprocess.run(
        [*inv, "run", "--cmd", "touch /tmp/x", "--inventory", "hosts.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("dry run of run: nothing was done")
    refused = subprocess.run(
        [*inv, "lab.kill", "3"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == EXIT_USAGE
    assert refused.stderr.strip() == "corunner: kill has no --dry of its own, so it did nothing"
    assert connections(tripwire) == 0 and not (tmp_path / "runs").exists()


def test_options_of_the_output_are_checked_before_anything_is_attempted(tmp_path):
    (tmp_path / "hosts.yaml").write_text(GOOD)
    done = corunner("run", "--cmd", "true", "--hosts", "lab", "--table", "some", cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert "--table wants problems or all, got 'some'" in done.stderr
    done = corunner("run", "--cmd", "true", "--hosts", "lab", "--quiet", "--diff", cwd=tmp_path)
    assert done.returncode == EXIT_USAGE and "--quiet prints no output" in done.stderr


def test_help_into_a_closed_pipe_ends_cleanly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    line = f"{sys.executable} -m corunner --help | head -1; {sys.executable} -m corunner run --help | true"
    done = subprocess.run(
        ["sh", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.startswith("Usage: corunner")
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--cmd", "true", "--files", "nosuch.txt"], "no such file to upload: nosuch.txt"),
        (["--cmd", "cat", "--stdin", "nosuch.txt"], "no such file for --stdin: nosuch.txt"),
        (["--script", "nosuch.sh"], "no such script: nosuch.sh"),
    ],
)
def test_a_run_that_cannot_start_prints_and_records_nothing(tmp_path, argv, message):
    (tmp_path / "hosts.yaml").write_text(GOOD)
    done = corunner("run", *argv, cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert done.stderr.strip() == f"corunner: error: {message}"
    assert done.stdout == ""  # no run header, no "interrupted" count line
    assert not (tmp_path / "runs").exists()  # so nothing can pick it as the latest run
    done = corunner("status", cwd=tmp_path)
    assert "no run recorded" in done.stderr
