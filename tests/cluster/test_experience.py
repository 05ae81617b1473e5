"""What a person and a CI job meet on the real cluster: the live view at a
terminal, plain lines elsewhere, grouped output, JSON documents that match
their schemas, and the original tool's corunner-run / corunner-cp."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pty
import re
import select
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import yaml
from conftest import Cli
from helpers import wait_until

import corunner
from corunner.errors import EXIT_FAILED, EXIT_LOST, EXIT_OK
from corunner.hostrange import fold
from corunner.testing import lab as lab_module

jsonschema = pytest.importorskip("jsonschema")

FAST = ("--interval", "0.2", "--dead-after", "1.5")
SCHEMAS = Path(corunner.__file__).parent / "schemas"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def under_a_terminal(cli, *args: str, rows: int = 30, cols: int = 120, timeout: float = 120):
    """Run ``python -m corunner ARGS`` with a pseudo-terminal as stdin, stdout and
    stderr; return (exit code, everything it wrote)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            os.chdir(cli.workdir)
            env = {**cli.env, "TERM": "xterm"}
            env.pop("NO_COLOR", None)
            os.execve(sys.executable, [sys.executable, "-m", "corunner", *args], env)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    data = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 65536)
            except OSError as exc:  # EIO: the child closed the terminal
                if exc.errno != errno.EIO:
                    raise
                break
            if not chunk:
                break
            data += chunk
        else:
            os.kill(pid, 9)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), data.decode("utf-8", "replace")


def visible_lines(screen_bytes: str) -> List[str]:
    """The lines that stay on the screen once the redraws settle (escapes removed)."""
    lines = ANSI.sub("", screen_bytes).replace("\r\n", "\n").split("\n")
    lines = [line.split("\r")[-1] for line in lines]  # a carriage return starts over
    return [line for line in lines if line.strip()]


def validate(task: str, doc: Dict) -> None:
    schema = json.loads((SCHEMAS / f"{task}.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, f"{task} document does not match {task}.json:\n" + "\n".join(errors)
    assert doc["task"] == task and doc["schema_version"] == 1


def compat(cli, name: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the corunner-run / corunner-cp entry point as its console script would."""
    code = (
        f"import sys; from corunner.compat import {name.replace('corunner-', '')}_main as main; "
        f"sys.argv[0] = {name!r}; main()"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cli.workdir,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def differing_command(lab) -> Tuple[str, str, str]:
    """A command that prints the same on every node but two: (command, odd one, other one)."""
    odd, other = lab.nodes[2], lab.nodes[5]
    cmd = (
        "echo header; "
        f'case $(hostname) in {odd.hostname}) echo "count 12";; '
        f'{other.hostname}) echo "count 10"; echo extra;; *) echo "count 10";; esac; '
        "echo footer; echo oops >&2"
    )
    return cmd, odd.address, other.address


# -- the live view and plain output --------------------------------------------------
def test_live_view_at_a_terminal_shows_counts_and_progress_then_the_summary(lab, cli):
    code, screen = under_a_terminal(cli, "run", "--cmd", "sleep 2", "--deadline", "60", *FAST)
    assert code == EXIT_OK, screen
    assert "\x1b[" in screen  # it did draw
    plain = ANSI.sub("", screen)
    assert re.search(r"alive [1-8]", plain) and re.search(r"succeeded [1-8]", plain), plain
    assert re.search(r"\d/8 finished", plain) and "━" in plain  # the progress bar
    assert "of 60.0s (deadline)" in plain
    assert re.search(r"last alive \(\d\): 127\.0\.1\.", plain)
    # Once over, the live view is gone and the summary is what remains: the hosts
    # folded, no table (nothing failed), the (empty) output, the next steps.
    after = screen.split("\x1b[?25h", 1)[1]  # rich shows the cursor again when it stops
    lines = [ln for ln in visible_lines(after) if "fetching stdout" not in ln]
    assert lines[0] == f"succeeded (8): {fold(n.address for n in lab.nodes)}"
    assert not any(ln.startswith("HOST") for ln in lines)
    assert re.match(r"stdout of run \S+: empty on all 8 host\(s\)$", lines[-2]), lines
    assert re.match(
        r"run \S+ ended in [0-9.]+s; collect its results with: corunner collect", lines[-1]
    )


def test_live_view_keeps_a_line_for_a_node_that_cannot_be_reached(lab, cli, tmp_path):
    inventory = inventory_with_a_closed_port(lab, tmp_path)
    code, screen = under_a_terminal(cli, "run", "--cmd", "true", "--inventory", inventory, *FAST)
    assert code == EXIT_LOST, screen
    closed = f"{lab.nodes[0].address}:2222"
    line = next(ln for ln in visible_lines(screen) if "-> unreachable" in ln)
    assert re.match(rf"\d\d:\d\d:\d\d\.\d{{3}} {re.escape(closed)}: pending -> unreachable", line)
    assert "connection refused on port 2222" in line


def test_off_a_terminal_routine_changes_fold_into_counts_and_nothing_redraws(lab, cli):
    done = cli("run", "--cmd", "sleep 1", *FAST)
    assert done.returncode == EXIT_OK, done.stderr
    for stream in (done.stdout, done.stderr):
        assert "\x1b[" not in stream and "\r" not in stream
    assert " -> " not in done.stdout  # pending -> alive -> succeeded: routine, folded
    (ended,) = [ln for ln in done.stdout.splitlines() if " ended: " in ln]
    assert re.match(r"\d\d:\d\d:\d\d\.\d{3} ended: succeeded 8; elapsed [0-9.]+s$", ended)
    assert not re.search(r"succeeded +exit 0", done.stdout)  # no table of successes
    # --verbose: one plain, timestamped line per state change, as it happens.
    done = cli("run", "--cmd", "sleep 1", "--verbose", *FAST)
    assert done.returncode == EXIT_OK, done.stderr
    changes = [ln for ln in done.stdout.splitlines() if " -> " in ln]
    assert len([ln for ln in changes if "-> succeeded" in ln]) == 8
    for line in changes:
        assert re.match(r"\d\d:\d\d:\d\d\.\d{3} 127\.0\.1\.\d+: \w+ -> \w+ \(.+\)$", line), line


def test_with_json_progress_goes_to_stderr_and_stdout_is_one_document(lab, cli):
    done, doc = cli.json("run", "--cmd", "true", *FAST)
    assert done.returncode == EXIT_OK
    assert "\x1b[" not in done.stderr and "\r" not in done.stderr
    assert " ended: succeeded 8" in done.stderr and "succeeded (8)" in done.stderr
    assert "outputs" not in doc  # a document gets outputs only when asked (--show-output)
    validate("run", doc)


# -- grouped output -------------------------------------------------------------
def test_run_prints_identical_outputs_once_largest_group_first(lab, cli):
    cmd, odd, other = differing_command(lab)
    done = cli("run", "--cmd", cmd, *FAST)  # shown by default
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    out = done.stdout
    common = fold(n.address for n in lab.nodes if n.address not in (odd, other))
    section = out[out.index("stdout of run") :]
    assert "3 distinct output(s) from 8 host(s)" in section
    headers = [ln for ln in section.splitlines() if re.match(r"^\S+ \(\d+\)$", ln)]
    assert headers == [f"{common} (6)", f"{odd} (1)", f"{other} (1)"]  # ties: inventory order
    assert section.count("header\n") == 3  # each distinct output once
    assert "count 12" in section and "extra" in section


def test_long_output_is_cut_at_the_end_of_a_run_whole_in_status_and_quiet_prints_none(lab, cli):
    done = cli("run", "--cmd", "seq 1 500", *FAST)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    start = lines.index(f"{fold(n.address for n in lab.nodes)} (8)") + 2
    run_id = cli.latest_run_id()
    assert lines[start : start + 10] == [str(i) for i in range(1, 11)]
    assert lines[start + 10] == (
        f"... (480 lines cut here; all of it: corunner status --run {run_id} --output)"
    )
    assert lines[start + 11 : start + 21] == [str(i) for i in range(491, 501)]
    assert len(lines) < 40
    done = cli("status", "--run", run_id, "--output")
    assert done.stdout.splitlines().count("250") == 1  # whole, once for the 8 hosts
    done = cli("run", "--cmd", "seq 1 500", "--quiet", *FAST)
    assert done.returncode == EXIT_OK and "stdout of run" not in done.stdout
    assert "seq" in done.stdout and "\n250\n" not in done.stdout
    done = cli("run", "--cmd", "echo same", "--show-output", *FAST)  # kept for old scripts
    assert done.returncode == EXIT_OK and done.stdout.count("\nsame\n") == 1


#: Where the 32-node lab of the output-at-scale test lives: 127.0.6.1-32, clear of
#: the session lab (127.0.1.101-108), a user's own lab (127.0.1.1 and up) and the
#: benchmark's (index 255 and up, 1,000 nodes: 127.0.2.1-127.0.5.238).
WIDE_FIRST = 5 * 254 + 1
WIDE_NODES = 32


@pytest.fixture(scope="module")
def wide_lab(lab, tmp_path_factory):
    """A lab of 32 nodes for this module's scale test, beside the session's (whose lock it rides on)."""
    state_dir = tmp_path_factory.mktemp("wide-lab")
    try:
        yield lab_module.up(WIDE_NODES, state_dir, first=WIDE_FIRST, ephemeral=True)
    finally:
        lab_module.down(state_dir)


def test_off_a_terminal_a_failed_and_a_killed_node_stand_out_among_32(wide_lab, tmp_path):
    """32 nodes, one exits 3 and one is killed mid-run: off a terminal the
    output has fewer lines than nodes (no line per routine change, no table of
    successes) and both bad hosts appear in it with their cause."""
    lab = wide_lab
    cli = Cli(lab, tmp_path)
    failing, victim = lab.nodes[2], lab.nodes[20]  # CORUNNER_NODE_INDEX 2: inventory order
    # The victim is still running when it is killed, however long the starts take.
    cmd = 'case "$CORUNNER_NODE_INDEX" in 2) sleep 2; exit 3;; 20) sleep 60;; *) sleep 2;; esac'
    proc = cli.popen("run", "--cmd", cmd, *FAST)
    wait_until(lambda: cli.states().get(victim.address) == "alive", 60)
    lab.kill(victim.index)
    out, err = proc.communicate(timeout=90)
    print(out)  # what a CI log shows: seen with pytest -rP
    assert proc.returncode == EXIT_LOST, out + err
    assert "Traceback" not in err
    lines = out.splitlines()
    assert len(lines) < WIDE_NODES, out
    assert not re.search(r"succeeded +exit 0", out)
    good = fold(n.address for n in lab.nodes if n not in (failing, victim))
    assert f"succeeded (30): {good}" in lines
    assert f"failed (1): {failing.address}" in lines and f"dead (1): {victim.address}" in lines
    # As it happened: one line each.
    assert re.search(rf"^\S+ {re.escape(failing.address)}: alive -> failed \(exit 3\)$", out, re.M)
    assert re.search(rf"^\S+ {re.escape(victim.address)}: alive -> dead \(silent for", out, re.M)
    # At the end: one row each in the table, with the cause.
    rows = [ln for ln in lines if re.match(r"127\.0\.\d+\.\d+ +\w+ ", ln)]
    assert len(rows) == 2, out
    assert re.match(rf"{re.escape(failing.address)} +failed +exit 3 +[0-9.]+s", rows[0])
    assert re.match(
        rf"{re.escape(victim.address)} +dead +- +[0-9.]+s +[0-9.]+s +silent for", rows[1]
    )
    # The output of the nodes that were asked (not the dead one), once.
    assert re.search(r"stdout of run \S+: empty on all 31 host\(s\) \(not asked: dead ", out)


def _piped(cli, args: str, timeout: float = 120) -> Tuple[subprocess.CompletedProcess, int, float]:
    """``corunner ARGS | head -1`` through sh -c: (the pipeline, corunner's exit code, seconds)."""
    line = f"{{ {shlex.quote(sys.executable)} -m corunner {args}; echo corunner-rc=$? >&2; }} | head -1"
    began = time.monotonic()
    done = subprocess.run(
        ["sh", "-c", line],
        cwd=cli.workdir,
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    found = re.search(r"corunner-rc=(\d+)", done.stderr)
    assert found, done.stderr
    return done, int(found.group(1)), time.monotonic() - began


def _record(cli) -> Dict:
    return json.loads((cli.workdir / "runs" / str(cli.latest_run_id()) / "run.json").read_text())


def test_a_run_into_head_ends_cleanly_with_its_record_finished(lab, cli, on_node):
    fast = " ".join(FAST)
    done, code, _ = _piped(cli, f"run --cmd hostname {fast}")
    assert done.stdout.startswith("run ") and done.stdout.count("\n") == 1
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert code in (EXIT_OK, 141), done.stderr  # 0 if all of it fitted in the pipe first
    assert _record(cli)["finished"] is True
    # A run still going when the pipe closes: ended at the next line it prints
    # (counts every 5 s), recorded, its programs left running and said so.
    done, code, seconds = _piped(cli, f"run --cmd 'sleep 60' {fast}")
    run_id = cli.latest_run_id()
    assert code == 141, done.stderr
    assert seconds < 40
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert "corunner: its output was closed; the run record is in" in done.stderr
    assert (
        f"the programs keep running on the nodes; stop them with: corunner stop --run {run_id}"
        in done.stderr
    )
    record = _record(cli)
    assert record["finished"] is True and record["interrupted"] is True
    assert "sleep 60" in on_node(lab.nodes[0].index, "ps -eo args")
    done = cli("stop", "--run", run_id)
    assert done.returncode == EXIT_OK and "stopped (8)" in done.stdout, done.stdout


def test_sigterm_ends_a_run_cleanly_and_leaves_the_programs_running(lab, cli, on_node):
    proc = cli.popen("run", "--cmd", "sleep 60", *FAST)
    wait_until(lambda: len(cli.states()) == 8 and set(cli.states().values()) == {"alive"}, 30)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    run_id = cli.latest_run_id()
    assert proc.returncode == 143, err
    assert "Traceback" not in err
    assert "corunner: terminated (SIGTERM); the run record is in" in err
    assert f"stop them with: corunner stop --run {run_id}" in err
    assert " interrupted: alive 8" in out  # the last count line
    record = _record(cli)
    assert record["finished"] is True and record["interrupted"] is True
    assert "sleep 60" in on_node(lab.nodes[3].index, "ps -eo args")
    assert cli("stop", "--run", run_id).returncode == EXIT_OK


def test_status_output_diff_and_stderr(lab, cli):
    cmd, odd, other = differing_command(lab)
    done = cli("run", "--cmd", cmd, *FAST)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    done = cli("status", "--output", "--diff")
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    out = done.stdout
    assert f"{odd} (1): differs from" in out and f"{other} (1): differs from" in out
    assert "-count 10" in out and "+count 12" in out and "+extra" in out
    assert out.splitlines().count("footer") == 1  # the reference in full, once
    done = cli("status", "--stream", "stderr")
    assert done.returncode == EXIT_OK
    assert f"{fold(n.address for n in lab.nodes)} (8)\n---------------\noops\n" in done.stdout


def test_output_of_a_host_where_the_run_never_started_is_not_fetched(lab, cli, tmp_path):
    inventory = inventory_with_a_closed_port(lab, tmp_path)
    done = cli("run", "--cmd", "echo hi", "--inventory", inventory, "--show-output", *FAST)
    assert done.returncode == EXIT_LOST
    assert "1 distinct output(s) from 8 host(s)" in done.stdout
    assert f"{fold(n.address for n in lab.nodes)} (8)" in done.stdout


# -- JSON documents ---------------------------------------------------------------
def inventory_with_a_closed_port(lab, tmp_path: Path) -> str:
    """The lab inventory plus one host that refuses connections (a closed port)."""
    data = yaml.safe_load(Path(lab.inventory).read_text())
    data["groups"]["closed"] = {"hosts": [f"{lab.nodes[0].address}:2222"]}
    path = tmp_path / "with-closed.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_every_json_document_matches_its_schema(lab, cli, tmp_path):
    inventory = inventory_with_a_closed_port(lab, tmp_path)
    nine = ("--inventory", inventory)
    done, doc = cli.json("hosts", *nine)
    validate("hosts", doc)
    assert doc["count"] == 9

    one = lab.nodes[1]
    cmd = f'echo "$CORUNNER_HOST"; [ "$(hostname)" != {one.hostname} ]'
    done, doc = cli.json("run", "--cmd", cmd, "--show-output", *nine, *FAST)
    assert done.returncode == EXIT_LOST, done.stderr
    validate("run", doc)
    run_id = doc["run_id"]
    hosts = {h["host"]: h for h in doc["hosts"]}
    assert hosts[one.address]["state"] == "failed" and hosts[one.address]["exit_code"] == 1
    closed = hosts[f"{lab.nodes[0].address}:2222"]
    assert closed["state"] == "unreachable" and "connection refused" in closed["error"]
    assert all(h["run_id"] == run_id for h in doc["hosts"])
    assert len(doc["outputs"]["groups"]) == 8  # each host printed its own name

    done, doc = cli.json("status", "--inventory", inventory)
    assert done.returncode == EXIT_LOST  # status exits as the run did (one exit-code policy)
    validate("status", doc)
    assert doc["run_id"] == run_id and doc["exit_code"] == EXIT_LOST
    done, doc = cli.json("status", "--refresh", "--output", "--inventory", inventory)
    assert done.returncode == EXIT_LOST
    validate("status", doc)
    entry = doc["hosts"][one.address]
    assert entry["ended_at"] >= entry["started_at"] > 0

    done, doc = cli.json("collect", "--dest", str(tmp_path / "got"), "--inventory", inventory)
    assert done.returncode == EXIT_LOST  # the closed port
    validate("collect", doc)
    assert doc["run_id"] == run_id and doc["summary"] == {"succeeded": 8, "unreachable": 1}

    done, doc = cli.json("cp", "--src", str(tmp_path / "with-closed.yaml"), "--dest", "/tmp/x/")
    assert done.returncode == EXIT_OK
    validate("cp", doc)
    done, doc = cli.json(
        "cp", "--pull", "--src", "/tmp/x/with-closed.yaml", "--dest", str(tmp_path / "p")
    )
    validate("cp", doc)
    assert {h["files"] for h in doc["hosts"]} == {1}

    done, doc = cli.json("stop", "--run", run_id)
    validate("stop", doc)
    assert {h["stopped"] for h in doc["hosts"] if h["ok"]} == {False}  # it had ended


# -- the original tool's commands -----------------------------------------------------
SEED_SCRIPT = """\
import os, socket
os.makedirs("/tmp/corunner/output", exist_ok=True)
with open("/tmp/corunner/output/" + socket.gethostname() + ".txt", "w") as f:
    f.write(os.environ["CORUNNER_HOST"] + "\\n")
print("done on", socket.gethostname())
"""


def test_compat_seed_workflow_runs_a_script_then_gathers_one_directory_per_host(
    lab, cli, tmp_path, on_node
):
    for node in lab.nodes:
        on_node(node.index, "rm -rf /tmp/corunner/output")
    (cli.workdir / "script.py").write_text(SEED_SCRIPT)
    done = compat(
        cli,
        "corunner-run",
        "-n",
        "-f",
        "script.py",
        "-r",
        "/tmp/corunner",
        "-i",
        "1",
        "python3",
        "/tmp/corunner/script.py",
    )
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert "succeeded (8)" in done.stdout
    done = compat(
        cli,
        "corunner-cp",
        "--pull",
        "-s",
        "/tmp/corunner/output",
        "-d",
        str(tmp_path / "all"),
        "--divide",
    )
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert sorted(os.listdir(tmp_path / "all")) == sorted(n.address for n in lab.nodes)
    for node in lab.nodes:
        got = tmp_path / "all" / node.address / "output" / f"{node.hostname}.txt"
        assert got.read_text() == f"{node.address}\n"
    # The run directory lives under -r and holds its own copy of the file.
    run_id = cli.latest_run_id()
    listing = on_node(lab.nodes[0].index, f"ls /tmp/corunner/{run_id}/{lab.nodes[0].address}")
    assert "script.py" in listing.split() and "stdout" in listing.split()


def test_compat_exit_codes_and_usage_errors_are_those_of_the_tasks(lab, cli):
    two = ",".join(n.address for n in lab.nodes[:2])
    done = compat(cli, "corunner-run", "--hosts", two, "-i", "0.2", "false")
    assert done.returncode == EXIT_FAILED, done.stdout + done.stderr
    assert "failed (2)" in done.stdout
    done = compat(cli, "corunner-run", "-f", "missing.py", "-r", "/tmp/corunner", "true")
    assert done.returncode == 2 and "no such local file or directory" in done.stderr
    done = compat(cli, "corunner-cp", "-s", "x", "-d", "y", "--divide")
    assert done.returncode == 2 and "--divide only applies to --pull" in done.stderr
    done = compat(cli, "corunner-run", "-f", "a.py")
    assert done.returncode == 2 and "COMMAND is missing" in done.stderr
