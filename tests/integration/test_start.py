"""How a node starts a run: START_SCRIPT under ``sh``, the upload on its stdin,
exactly as the SSH session runs it on a node (minus SSH; the cluster tests
cover that). The boot code writes the executor, the executor unpacks the
rest (script, config, a tar of --files) and runs, detached or in the
foreground."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE
from typing import Any, Callable, Dict, Optional

import pytest
from helpers import free_port, python38, wait_until

from corunner import remote
from corunner.bootstrap import (
    HAVE_MARKER,
    NEED_MARKER,
    STAGED_PATH,
    START_SCRIPT,
    STDIN_PATH,
    Payload,
    boot_frame,
    executor_key,
    start_boot,
)
from corunner.executor import config_document
from corunner.listener import Listener
from corunner.spec import Program

RUN_ID = "20260101-120000-start"
HOST = "127.0.1.4"
SECRET = bytes.fromhex("5eed" * 16)


def config(listener: Optional[Listener], program: Program, heartbeat: bool = True) -> dict:
    return config_document(
        run_id=RUN_ID,
        host=HOST,
        interval=0.1,
        secret=SECRET,
        heartbeat=heartbeat,
        linger=10.0,
        controller=listener.addresses if listener else [],
        env={"CORUNNER_RUN_ID": RUN_ID},
        **program.config_for(None),  # type: ignore[arg-type]
    )


def start(
    run_dir: Path,
    upload: Dict[str, bytes],
    mode: str,
    python: str = sys.executable,
    cut: Callable[[bytes], bytes] = lambda data: data,
) -> subprocess.CompletedProcess:
    """Start as SshStarter does over SSH: the command's head, the boot code's answer
    (HAVE or NEED), then the upload for that answer (``cut`` short, to break it)."""
    # remote_dir: the run directory's parent, as for a host with run_dir(host, run id).
    command = remote.sh(START_SCRIPT, str(run_dir.parent), str(run_dir), python, mode)
    command = command.followed_by(boot_frame(start_boot()))
    argv = ["sh", "-c", command.line]
    proc = subprocess.Popen(argv, stdin=PIPE, stdout=PIPE, stderr=PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(command.head)
    proc.stdin.flush()
    out = b""
    while True:
        line = proc.stdout.readline()
        out += line
        if not line or line.strip() in (HAVE_MARKER.encode(), NEED_MARKER.encode()):
            break
    if line:
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(cut(upload[line.strip().decode()]))
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.close()
    out += proc.stdout.read()
    err = proc.stderr.read()
    return subprocess.CompletedProcess(argv, proc.wait(timeout=60), out, err)


@pytest.fixture
def listener() -> Iterator[Listener]:
    with Listener(RUN_ID, SECRET, [HOST]) as lst:
        lst.bind("127.0.0.1")
        yield lst


@pytest.fixture
def groups() -> Iterator[list]:
    """Process groups to kill at teardown (programs left waiting by a failed test)."""
    pgids: list = []
    yield pgids
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass


def payload_bytes(
    tmp_path: Path, program: Program, files: list, cfg: dict, staged_in: Optional[Path] = None
) -> Dict[str, bytes]:
    """The upload after each answer of the boot code (the executor only after NEED).

    ``staged_in``: a run directory to put the tar of ``files`` in first, as
    ``run --relay`` does; the upload then names it instead of carrying it.
    """
    payload = Payload(program, [str(f) for f in files], str(tmp_path))
    try:
        if staged_in is not None:
            assert payload.files_tar is not None
            (staged_in / ".corunner").mkdir(parents=True, mode=0o700)
            shutil.copy(payload.files_tar, staged_in / STAGED_PATH)
        reply = payload.reply(cfg, staged=staged_in is not None)
        return {said: b"".join(reply(said)) for said in (HAVE_MARKER, NEED_MARKER)}
    finally:
        payload.remove()


def test_detached_start_unpacks_everything_and_leaves_the_session(
    tmp_path: Path, listener: Listener, groups: list
) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\nwhile [ ! -e release ]; do sleep 0.02; done\nexit 5\n")
    tree = tmp_path / "data"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "tool").write_text("x")
    os.chmod(tree / "sub" / "tool", 0o751)
    os.symlink("sub/tool", tree / "link")
    single = tmp_path / "notes.txt"
    single.write_text("notes")
    program = Program.load(script=str(script))
    data = payload_bytes(tmp_path, program, [tree, single], config(listener, program))
    run_dir = tmp_path / "node" / "runs" / RUN_ID  # parents made as mkdir -p would

    done = start(run_dir, data, "bg")
    # run() returned while the program still waits: the executor let go of the pipes.
    assert done.returncode == 0, done.stderr
    pid = int(done.stdout.decode().split("CORUNNER-STARTED ", 1)[1].split()[0])
    status = wait_until(lambda: _status(run_dir), timeout=10)
    groups.append(status["pgid"])
    assert status["state"] == "running" and status["executor_pid"] == pid
    assert os.getsid(pid) == pid  # a session of its own
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        cmdline = fh.read()
    assert b"executor.py\0start" in cmdline and SECRET.hex().encode() not in cmdline

    dot = run_dir / ".corunner"
    assert _mode(run_dir) == _mode(dot) == 0o700
    assert _mode(dot / "config.json") == _mode(dot / "executor.py") == 0o600
    assert json.loads((dot / "config.json").read_text())["secret"] == SECRET.hex()
    assert (run_dir / "job.sh").read_bytes() == script.read_bytes()
    assert _mode(run_dir / "job.sh") == 0o755  # exact, whatever the umask
    assert (run_dir / "data" / "sub" / "tool").read_text() == "x"
    assert _mode(run_dir / "data" / "sub" / "tool") == 0o751
    assert os.readlink(run_dir / "data" / "link") == "sub/tool"
    assert (run_dir / "notes.txt").read_text() == "notes"

    (run_dir / "release").touch()
    finals: list = []
    wait_until(
        lambda: finals.extend(m for m, _ in listener.poll(0.05) if m.final) or finals, timeout=10
    )
    assert finals[0].exit_code == 5
    assert wait_until(lambda: (_status(run_dir) or {}).get("state") == "exited", timeout=10)


def test_foreground_start_runs_and_prints_the_status(tmp_path: Path) -> None:
    program = Program(cmd="echo out; exit 3")
    data = payload_bytes(tmp_path, program, [], config(None, program, heartbeat=False))
    run_dir = tmp_path / RUN_ID
    done = start(run_dir, data, "fg")
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.decode().splitlines() if ln.startswith("CORUNNER-STATUS "))
    status = json.loads(line.split(" ", 1)[1])
    assert (status["state"], status["exit_code"]) == ("exited", 3)
    assert (run_dir / "stdout").read_text() == "out\n"


def test_files_a_relay_left_in_the_run_directory_are_unpacked_there_and_their_tar_removed(
    tmp_path: Path,
) -> None:
    tree = tmp_path / "data"
    tree.mkdir()
    (tree / "tool").write_text("x")
    os.chmod(tree / "tool", 0o751)
    program = Program(cmd="cat data/tool; ls -a .corunner")
    run_dir = tmp_path / "node" / RUN_ID
    cfg = config(None, program, heartbeat=False)
    data = payload_bytes(tmp_path, program, [tree], cfg, staged_in=run_dir)
    assert len(data[HAVE_MARKER]) < os.path.getsize(run_dir / STAGED_PATH)  # the tar stays out
    done = start(run_dir, data, "fg")
    assert done.returncode == 0, done.stderr
    out = (run_dir / "stdout").read_text()
    assert out.startswith("x") and "files.tar" not in out  # unpacked, then removed
    assert _mode(run_dir / "data" / "tool") == 0o751


def test_a_staged_tar_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    tree = tmp_path / "data"
    tree.mkdir()
    (tree / "tool").write_text("x")
    program = Program(cmd="true")
    run_dir = tmp_path / "node" / RUN_ID
    cfg = config(None, program, heartbeat=False)
    data = payload_bytes(tmp_path, program, [tree], cfg, staged_in=run_dir)
    planted = tmp_path / "elsewhere.tar"
    os.replace(run_dir / STAGED_PATH, planted)
    os.symlink(planted, run_dir / STAGED_PATH)
    done = start(run_dir, data, "fg")
    assert done.returncode != 0
    assert b"cannot unpack the upload" in done.stderr, done.stderr
    assert not (run_dir / "data").exists() and planted.exists()


def test_start_works_on_python_3_8(tmp_path: Path, listener: Listener) -> None:
    python = python38()
    if python is None:
        pytest.skip("no Python 3.8 interpreter here")
    program = Program(cmd="exit 6")
    (tmp_path / "x").write_text("x")  # a --files entry: the tar path too
    data = payload_bytes(tmp_path, program, [tmp_path / "x"], config(listener, program))
    done = start(tmp_path / RUN_ID, data, "bg", python=python)
    assert done.returncode == 0, done.stderr
    finals: list = []
    wait_until(
        lambda: finals.extend(m for m, _ in listener.poll(0.05) if m.final) or finals, timeout=10
    )
    assert finals[0].exit_code == 6
    assert (tmp_path / RUN_ID / "x").read_text() == "x"


def test_start_failures_say_why_in_one_marked_line(tmp_path: Path) -> None:
    program = Program(cmd="true")
    data = payload_bytes(tmp_path, program, [], config(None, program, heartbeat=False))

    def error_of(done: subprocess.CompletedProcess) -> str:
        assert done.returncode != 0
        lines = [ln for ln in done.stderr.decode().splitlines() if "CORUNNER-ERROR" in ln]
        assert len(lines) == 1, done.stderr
        return lines[0]

    cut = error_of(start(tmp_path / "a", data, "bg", cut=lambda d: d[: len(d) // 2]))
    assert "the upload ended early" in cut
    blocker = tmp_path / "file"
    blocker.write_text("")
    blocked = error_of(start(blocker / "run", data, "bg"))
    assert f"refusing {blocker}: it is not a directory" in blocked
    no_python = error_of(start(tmp_path / "b", data, "bg", python="python3.99-missing"))
    assert "python interpreter 'python3.99-missing' not found" in no_python
    # A config cut short is caught by the executor, after the boot code.
    late = error_of(
        start(tmp_path / "c", data, "bg", cut=lambda d: d[: d.index(b'{"run_id"') + 10])
    )
    assert "cannot unpack the upload" in late and "ended early" in late


def _status(run_dir: Path) -> Optional[dict[str, Any]]:
    try:
        return json.loads((run_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_second_start_finds_the_executor_in_the_cache_and_needs_only_the_config(
    tmp_path: Path,
) -> None:
    program = Program(cmd="echo hi")
    upload = payload_bytes(tmp_path, program, [], config(None, program, heartbeat=False))
    top = tmp_path / "remote"
    first = start(top / "run1", upload, "fg")
    second = start(top / "run2", upload, "fg")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert NEED_MARKER.encode() + b"\n" in first.stdout
    assert HAVE_MARKER.encode() + b"\n" in second.stdout
    assert (top / "run1" / "stdout").read_text() == (top / "run2" / "stdout").read_text() == "hi\n"
    # Only the config and the program go after HAVE: about 1 KiB instead of ~150 KiB.
    assert len(upload[HAVE_MARKER]) < 2048 < 100_000 < len(upload[NEED_MARKER])
    cache = top / ".executor" / executor_key()
    assert _mode(cache) == _mode(cache / "__pycache__") == 0o700
    for run in ("run1", "run2"):  # each run directory holds the executor (linked, not copied)
        here = top / run / ".corunner" / "executor.py"
        assert os.stat(here).st_ino == os.stat(cache / "executor.py").st_ino


def test_an_executor_cache_others_can_write_to_is_refused(tmp_path: Path) -> None:
    program = Program(cmd="true")
    upload = payload_bytes(tmp_path, program, [], config(None, program, heartbeat=False))
    top = tmp_path / "remote"
    assert start(top / "run1", upload, "fg").returncode == 0
    cache = top / ".executor" / executor_key()
    cache.chmod(0o777)
    done = start(top / "run2", upload, "fg")
    assert done.returncode != 0 and HAVE_MARKER.encode() not in done.stdout
    assert f"refusing {cache}: it is writable by group or others (mode 777)" in done.stderr.decode()


def test_a_program_that_cannot_be_executed_says_why_on_the_start_command(tmp_path: Path) -> None:
    # Detached, nothing would carry the reason home but status.json: the start
    # command says it instead of a pid (the controller: failed, exit 126, error).
    data = tmp_path / "data.txt"
    data.write_text("not a program\n")
    cfg = config(None, Program(cmd="true"))
    cfg.update(argv=["./data.txt"], shell=None)
    upload = payload_bytes(tmp_path, Program(cmd="true"), [data], cfg)
    done = start(tmp_path / "remote" / RUN_ID, upload, "bg")
    assert done.returncode == 0, done.stderr
    assert b"CORUNNER-STARTED" not in done.stdout
    line = next(ln for ln in done.stdout.decode().splitlines() if ln.startswith("CORUNNER-STATUS "))
    status = json.loads(line.split(" ", 1)[1])
    assert (status["state"], status["exit_code"]) == ("error", 126)
    assert status["error"] == "cannot execute ./data.txt: Permission denied"
    assert _status(tmp_path / "remote" / RUN_ID) == status


def test_stdin_file_and_env_reach_the_program(tmp_path: Path) -> None:
    given = tmp_path / "input.txt"
    given.write_text("line one\nline two\n")
    program = Program(cmd='cat; printf "%s\\n" "$TOKEN"')
    cfg = config(None, program, heartbeat=False)
    cfg.update(stdin=STDIN_PATH, env={"TOKEN": "s3cr3t value"})
    payload = Payload(program, [], str(tmp_path), stdin=str(given))
    try:
        upload = {said: b"".join(payload.reply(cfg)(said)) for said in (HAVE_MARKER, NEED_MARKER)}
    finally:
        payload.remove()
    run_dir = tmp_path / "remote" / RUN_ID
    done = start(run_dir, upload, "fg")
    assert done.returncode == 0, done.stderr
    assert (run_dir / "stdout").read_text() == "line one\nline two\ns3cr3t value\n"
    assert _mode(run_dir / STDIN_PATH) == 0o600


@pytest.mark.skipif(shutil.which("sudo") is None or os.geteuid() != 0, reason="needs sudo, as root")
def test_become_runs_the_program_through_sudo_with_the_runs_environment(tmp_path: Path) -> None:
    program = Program(cmd='id -u; echo "$CORUNNER_RUN_ID $TOKEN"')
    cfg = config(None, program, heartbeat=False)
    cfg.update(become="root", env={"TOKEN": "kept"})
    done = start(tmp_path / "remote" / RUN_ID, payload_bytes(tmp_path, program, [], cfg), "fg")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "remote" / RUN_ID / "stdout").read_text() == f"0\n{RUN_ID} kept\n"
    cfg.update(become="no-such-user-here")
    done = start(tmp_path / "remote" / "r2", payload_bytes(tmp_path, program, [], cfg), "bg")
    line = next(ln for ln in done.stdout.decode().splitlines() if ln.startswith("CORUNNER-STATUS "))
    status = json.loads(line.split(" ", 1)[1])
    assert status["exit_code"] == 126
    assert status["error"].startswith("sudo -u no-such-user-here refused: sudo: unknown user")


def test_a_start_that_cannot_reach_the_controller_says_so_in_one_line(
    tmp_path: Path, listener: Listener, groups: list
) -> None:
    # Nothing listens on the first address; the listener on the second is reached:
    # the start says nothing then. With only the closed one, it says so in one line.
    closed = free_port()
    program = Program(cmd="sleep 0.5")
    for addrs, said in (
        ([["127.0.0.1", closed], *listener.addresses], None),
        ([["127.0.0.1", closed]], f"cannot reach the controller at 127.0.0.1:{closed}"),
    ):
        cfg = {**config(listener, program), "controller": addrs}
        data = payload_bytes(tmp_path, program, [], cfg)
        run_dir = tmp_path / "node" / f"runs-{len(addrs)}" / RUN_ID
        done = start(run_dir, data, "bg")
        assert done.returncode == 0, done.stderr
        assert b"CORUNNER-STARTED" in done.stdout
        line = remote.find_marked(done.stdout, "CORUNNER-NOREACH")
        if said is None:
            assert line is None, done.stdout
        else:
            assert (
                line == f"{said} (Connection refused); use --heartbeat-via tunnel or --no-heartbeat"
            )
        groups.append(wait_until(lambda d=run_dir: _status(d), timeout=10)["pgid"])
