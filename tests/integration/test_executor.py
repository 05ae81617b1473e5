"""The executor as nodes run it: a subprocess under ``python -I`` in a run directory.

A real Listener on 127.0.0.1 receives its heartbeats; intervals are 0.1 s so
every test finishes in a few seconds. Processes are waited for with
wait_until, never bare sleeps, and every process group is killed at teardown.
The run directory is laid out as the boot code leaves it, so ``start`` reads
just the end of the upload (tests/integration/test_start.py covers the rest).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from helpers import python38, wait_until

import corunner.executor
from corunner.bootstrap import BOOT, executor_bytecode
from corunner.executor import END_MARKER, Heartbeat, ack_line, config_document, decode, main, stop
from corunner.listener import Listener

# The node's way to load the executor: bootstrap.BOOT, with the compiled
# executor shipped beside it (bootstrap.executor_bytecode).
EXECUTOR = Path(corunner.executor.__file__)
RUN_ID = "20260101-120000-exec"
HOST = "127.0.1.3"
SECRET = bytes.fromhex("c0ffee" * 10)
INTERVAL = 0.1
#: Waits for a program to begin waiting on the release file.
WAIT_FOR_RELEASE = "while [ ! -e release ]; do sleep 0.02; done; echo out; echo err >&2; exit 3"
STATUS_KEYS = {
    "run_id",
    "host",
    "hostname",
    "state",
    "pid",
    "pgid",
    "executor_pid",
    "exit_code",
    "signal",
    "started_at",
    "ended_at",
    "error",
}


class Detached:
    """An executor that ``start`` left running in a session of its own (not our child)."""

    def __init__(self, pid: int, log: Path) -> None:
        self.pid = pid
        self.log = log

    def running(self) -> bool:
        return _alive(self.pid)

    def wait(self, timeout: float = 10) -> None:
        """Wait for the executor to leave, and check it did without a traceback."""
        wait_until(lambda: not self.running(), timeout)
        assert "Traceback" not in self.log.read_text()

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


class Inbox:
    """Messages a Listener accepted, gathered while the test waits."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.messages: list[Heartbeat] = []

    def wait_for(self, cond: Callable[[list[Heartbeat]], bool], timeout: float = 10) -> None:
        def check() -> bool:
            self.messages.extend(hb for hb, _ in self.listener.poll(0.05))
            return cond(self.messages)

        wait_until(check, timeout, interval=0)

    def running(self) -> list[Heartbeat]:
        return [m for m in self.messages if not m.final]

    def finals(self) -> list[Heartbeat]:
        return [m for m in self.messages if m.final]


class Node:
    """A run directory with the executor and its config, as the controller uploads it."""

    def __init__(self, root: Path) -> None:
        self.dir = root / RUN_ID
        (self.dir / ".corunner").mkdir(parents=True)
        shutil.copy(EXECUTOR, self.dir / ".corunner" / "executor.py")
        name, data = executor_bytecode()
        (self.dir / ".corunner" / "__pycache__").mkdir()
        (self.dir / ".corunner" / "__pycache__" / name).write_bytes(data)
        self.executors: list[Detached] = []

    def configure(
        self,
        controller: list[list[Any]],
        shell: Optional[str] = None,
        argv: Optional[list[str]] = None,
        heartbeat: bool = True,
        linger: float = 20.0,
    ) -> None:
        config = config_document(
            run_id=RUN_ID,
            host=HOST,
            argv=argv,
            shell=shell,
            controller=controller,
            interval=INTERVAL,
            secret=SECRET,
            heartbeat=heartbeat,
            linger=linger,
            env={},
        )
        path = self.dir / ".corunner" / "config.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(config, fh)

    def start(
        self,
        env: Optional[dict[str, str]] = None,
        python: str = sys.executable,
        flags: tuple[str, ...] = (),
    ) -> Detached:
        """``start RUN_DIR``: the executor, detached; what the start command said goes to its log."""
        log = self.dir / ".corunner" / "executor.log"
        with open(log, "ab") as errors:
            done = subprocess.run(
                [python, *flags, *self.boot, "start", str(self.dir)],
                cwd=self.dir,
                input=END_MARKER,
                stdout=subprocess.PIPE,
                stderr=errors,
                env=env,
                timeout=60,
            )
        assert done.returncode == 0, log.read_text()
        pid = done.stdout.decode().split("CORUNNER-STARTED ", 1)[1].split()[0]
        executor = Detached(int(pid), log)
        self.executors.append(executor)
        return executor

    @property
    def boot(self) -> list[str]:
        """The interpreter's options and arguments before the executor's own."""
        return ["-I", "-S", "-c", BOOT, str(self.dir / ".corunner" / "executor.py")]

    def call(
        self, *args: str, python: str = sys.executable, flags: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """Run an executor command to completion in the SSH session's way."""
        return subprocess.run(
            [python, *flags, *self.boot, *args],
            cwd=self.dir,
            input=END_MARKER.decode(),  # the upload's end, for start
            capture_output=True,
            text=True,
            timeout=60,
        )

    def marked(self, *args: str, marker: str) -> dict[str, Any]:
        done = self.call(*args)
        assert done.returncode == 0, done.stderr
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith(marker + " ")]
        assert len(lines) == 1, done.stdout
        return json.loads(lines[0][len(marker) + 1 :])

    def probe(self) -> dict[str, Any]:
        return self.marked("probe", str(self.dir), marker="CORUNNER-PROBE")

    def status(self) -> Optional[dict[str, Any]]:
        try:
            return json.loads((self.dir / "status.json").read_text())
        except FileNotFoundError:
            return None

    def wait_state(self, state: str, timeout: float = 10) -> dict[str, Any]:
        def check() -> Optional[dict[str, Any]]:
            status = self.status()
            return status if status and status["state"] == state else None

        return wait_until(check, timeout)

    def log(self) -> str:
        path = self.dir / ".corunner" / "executor.log"
        return path.read_text() if path.exists() else ""

    def cleanup(self) -> None:
        status = self.status()
        if status and status.get("pgid"):
            try:
                os.killpg(status["pgid"], signal.SIGKILL)
            except OSError:
                pass
        for executor in self.executors:
            executor.kill()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    the_node = Node(tmp_path)
    yield the_node
    the_node.cleanup()


@pytest.fixture
def listener() -> Iterator[Listener]:
    with Listener(RUN_ID, SECRET, [HOST]) as lst:
        lst.bind("127.0.0.1")
        yield lst


def _controller(listener: Listener) -> list[list[Any]]:
    return [list(addr) for addr in listener.addresses]


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with Listener(RUN_ID, SECRET, [HOST]) as probe_listener:
        return probe_listener.bind("127.0.0.1")[1]


def test_heartbeats_flow_while_running_and_final_reports_exit_code(
    node: Node, listener: Listener
) -> None:
    node.configure(_controller(listener), shell=WAIT_FOR_RELEASE)
    proc = node.start()
    inbox = Inbox(listener)
    inbox.wait_for(lambda msgs: len(msgs) >= 3)

    start = node.wait_state("running")
    assert set(start) == STATUS_KEYS
    assert start["run_id"] == RUN_ID and start["host"] == HOST
    assert start["executor_pid"] == proc.pid
    assert start["pid"] == start["pgid"] and _alive(start["pid"])
    assert os.getpgid(start["pid"]) == start["pgid"] != os.getpgid(proc.pid)
    assert start["exit_code"] is None and start["signal"] is None and start["error"] is None
    assert start["ended_at"] is None and start["started_at"] > 0
    with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
        assert SECRET.hex().encode() not in fh.read()  # the secret never hits a command line

    running = inbox.running()
    assert all(m.run_id == RUN_ID and m.host == HOST for m in running)
    assert [m.seq for m in running] == sorted({m.seq for m in running})
    (node.dir / "release").touch()
    inbox.wait_for(lambda msgs: any(m.final for m in msgs))
    final = inbox.finals()[0]
    assert (final.state, final.exit_code, final.signal) == ("exited", 3, None)
    assert final.seq > running[-1].seq
    proc.wait()  # acknowledged, so the executor leaves at once
    assert "final message acknowledged" in node.log()

    end = node.status()
    assert end is not None and set(end) == STATUS_KEYS
    assert (end["state"], end["exit_code"], end["signal"]) == ("exited", 3, None)
    assert end["started_at"] <= end["ended_at"]
    assert {k: end[k] for k in ("pid", "pgid", "started_at")} == {
        k: start[k] for k in ("pid", "pgid", "started_at")
    }
    assert (node.dir / "stdout").read_text() == "out\n"
    assert (node.dir / "stderr").read_text() == "err\n"


def test_program_killed_by_sigkill_reports_signal_9(node: Node, listener: Listener) -> None:
    node.configure(_controller(listener), shell="exec sleep 60")
    proc = node.start()
    status = node.wait_state("running")
    inbox = Inbox(listener)
    inbox.wait_for(lambda msgs: len(msgs) >= 1)
    os.kill(status["pid"], signal.SIGKILL)
    inbox.wait_for(lambda msgs: any(m.final for m in msgs))
    final = inbox.finals()[0]
    assert (final.exit_code, final.signal) == (None, 9)
    proc.wait()
    end = node.status()
    assert end is not None
    assert (end["state"], end["exit_code"], end["signal"]) == ("exited", None, 9)


def test_foreground_prints_the_status_detached_writes(tmp_path: Path, listener: Listener) -> None:
    detached, foreground = Node(tmp_path / "bg"), Node(tmp_path / "fg")
    try:
        detached.configure(_controller(listener), shell="exit 3")
        foreground.configure(_controller(listener), shell="echo noise; exit 3")
        detached.start()
        inbox = Inbox(listener)
        inbox.wait_for(lambda msgs: any(m.final for m in msgs))
        printed = foreground.marked(
            "start", str(foreground.dir), "--foreground", marker="CORUNNER-STATUS"
        )
        assert printed == foreground.status()
        bg = detached.wait_state("exited")
        assert set(printed) == set(bg) == STATUS_KEYS
        for key in ("run_id", "host", "hostname", "state", "exit_code", "signal", "error"):
            assert printed[key] == bg[key], key
        assert (foreground.dir / "stdout").read_text() == "noise\n"
        inbox.wait_for(lambda msgs: True)
        assert len(inbox.messages) == 1  # the foreground run sent nothing
    finally:
        detached.cleanup()
        foreground.cleanup()


def test_probe_reports_running_finished_lost_and_missing(
    tmp_path: Path, node: Node, listener: Listener
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    missing = node.marked("probe", str(empty), marker="CORUNNER-PROBE")
    assert missing["state"] == "missing"

    node.configure(_controller(listener), shell=WAIT_FOR_RELEASE)
    proc = node.start()
    node.wait_state("running")
    running = node.probe()
    assert running["state"] == "running"
    assert running["program_alive"] and running["executor_alive"]

    (node.dir / "release").touch()
    Inbox(listener).wait_for(lambda msgs: any(m.final for m in msgs))
    proc.wait()
    finished = node.probe()
    assert (finished["state"], finished["exit_code"]) == ("exited", 3)
    assert not finished["program_alive"] and not finished["executor_alive"]


def test_probe_reports_lost_when_executor_and_program_died(node: Node, listener: Listener) -> None:
    node.configure(_controller(listener), shell="exec sleep 60")
    proc = node.start()
    status = node.wait_state("running")
    proc.kill()
    proc.wait()
    alive_program = node.probe()
    assert alive_program["state"] == "running"
    assert alive_program["program_alive"] and not alive_program["executor_alive"]
    os.kill(status["pid"], signal.SIGKILL)
    wait_until(lambda: not _alive(status["pid"]), 10)
    lost = node.probe()
    assert lost["state"] == "lost"
    assert not lost["program_alive"] and not lost["executor_alive"]


def test_stop_kills_the_whole_group_including_a_forked_child(
    node: Node, listener: Listener
) -> None:
    node.configure(_controller(listener), shell="sleep 100 & echo $! > child.pid; sleep 100")
    proc = node.start()
    status = node.wait_state("running")
    child = int(wait_until(lambda: (node.dir / "child.pid").read_text().strip(), 10))
    assert os.getpgid(child) == status["pgid"]

    stopped = node.marked("stop", str(node.dir), marker="CORUNNER-STOP")
    assert stopped == {"stopped": True, "pgid": status["pgid"], "state": "exited"}
    assert not _alive(status["pid"]) and not _alive(child)
    inbox = Inbox(listener)
    inbox.wait_for(lambda msgs: any(m.final for m in msgs))
    final = inbox.finals()[0]
    assert (final.state, final.signal) == ("stopped", signal.SIGTERM)  # not a failure
    proc.wait()
    end = node.status()
    assert end is not None and (end["state"], end["signal"]) == ("exited", signal.SIGTERM)
    assert end["stopped"] is True
    assert (node.dir / "stop-requested").exists()

    again = node.marked("stop", str(node.dir), marker="CORUNNER-STOP")
    assert again == {"stopped": False, "pgid": status["pgid"], "state": "exited"}


@pytest.mark.parametrize("program_end", ["sleep 100", "true"], ids=["running", "exited"])
def test_stop_ends_daemons_and_setsid_children_while_running_and_after_the_exit(
    node: Node, listener: Listener, program_end: str
) -> None:
    # A double-forked daemon and a setsid child leave the program's group and
    # session: killpg misses them. They keep the run's id in their environment.
    node.configure(
        _controller(listener),
        shell="(setsid sh -c 'echo $$ > daemon.tmp; mv daemon.tmp daemon.pid; exec sleep 100' &);"
        " setsid sh -c 'echo $$ > session.tmp; mv session.tmp session.pid; exec sleep 100' & "
        + program_end,
    )
    node.start()

    def pid_in(name: str) -> int:
        try:
            return int((node.dir / name).read_text())
        except (OSError, ValueError):
            return 0

    pids = [wait_until(lambda n=n: pid_in(n), 10) for n in ("daemon.pid", "session.pid")]
    try:
        assert all(os.getsid(p) == p for p in pids)  # sessions of their own
        if program_end == "true":
            node.wait_state("exited")
        stopped = node.marked("stop", str(node.dir), marker="CORUNNER-STOP")
        assert stopped["stopped"] and stopped["state"] == "exited", stopped
        wait_until(lambda: not any(_alive(p) for p in pids), 10)
    finally:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_stop_escalates_to_sigkill_after_the_grace(node: Node, listener: Listener) -> None:
    node.configure(
        _controller(listener),
        shell="trap '' TERM; echo ready > ready; while :; do sleep 0.05; done",
    )
    node.start()
    status = node.wait_state("running")
    wait_until(lambda: (node.dir / "ready").exists(), 10)
    stopped = stop(str(node.dir), grace=0.3)  # the command's grace is 5 s
    assert stopped["stopped"] and stopped["state"] == "exited"
    end = node.wait_state("exited")
    assert end["signal"] == signal.SIGKILL and not _alive(status["pid"])


def test_final_message_gets_through_once_the_controller_appears(node: Node) -> None:
    port = _closed_port()
    node.configure([["127.0.0.1", port]], shell="exit 3", linger=30)
    proc = node.start()
    end = node.wait_state("exited")  # the program never waited for the controller
    assert (end["exit_code"], end["signal"]) == (3, None)
    assert proc.running()  # still trying to deliver the final message
    with Listener(RUN_ID, SECRET, [HOST]) as late:
        late.bind("127.0.0.1", port)
        inbox = Inbox(late)
        inbox.wait_for(lambda msgs: any(m.final for m in msgs), timeout=15)
        assert inbox.finals()[0].exit_code == 3
        proc.wait()
    assert "Connection refused" in node.log()


def _messages(conn: socket.socket, until: Callable[[list[Heartbeat]], bool]) -> list[Heartbeat]:
    """Read messages from ``conn`` until ``until`` holds; whole lines only, nothing after."""
    got: list[Heartbeat] = []
    pending = b""
    while not until(got):
        chunk = conn.recv(4096)
        assert chunk, got
        *complete, pending = (pending + chunk).split(b"\n")
        got.extend(decode(line, SECRET) for line in complete)
    assert pending == b""
    return got


def test_an_unacknowledged_final_message_goes_again_on_a_new_connection(node: Node) -> None:
    """Heartbeats, then the final message once per connection; no ACK: a new one, a new seq."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        node.configure([["127.0.0.1", server.getsockname()[1]]], shell=WAIT_FOR_RELEASE)
        proc = node.start()
        first, _ = server.accept()
        with first:
            first.settimeout(10)
            beats = _messages(first, lambda got: len(got) >= 2)
            assert not any(m.final for m in beats)
            (node.dir / "release").touch()
            sent = _messages(first, lambda got: any(m.final for m in got))
            assert [m.final for m in sent].count(True) == 1 and sent[-1].exit_code == 3
            assert first.recv(4096) == b""  # dropped after ack_wait (2 s), nothing more sent
        second, _ = server.accept()
        with second:
            second.settimeout(10)
            (again,) = _messages(second, lambda got: len(got) >= 1)
            assert again.final and again.exit_code == 3 and again.seq > sent[-1].seq
            second.sendall(ack_line(again.seq))
            proc.wait()
    log = node.log()
    assert "no ACK for the final message" in log and "final message acknowledged" in log


def test_heartbeats_start_when_the_controller_comes_up(node: Node) -> None:
    port = _closed_port()
    node.configure([["127.0.0.1", port]], shell=WAIT_FOR_RELEASE)
    node.start()
    node.wait_state("running")
    wait_until(lambda: "Connection refused" in node.log(), 10)
    with Listener(RUN_ID, SECRET, [HOST]) as late:
        late.bind("127.0.0.1", port)
        inbox = Inbox(late)
        inbox.wait_for(lambda msgs: len(msgs) >= 2, timeout=15)
        assert node.probe()["state"] == "running"
        (node.dir / "release").touch()
        inbox.wait_for(lambda msgs: any(m.final for m in msgs))


def test_addresses_are_tried_in_order_and_empty_host_means_ssh_client(
    node: Node, listener: Listener
) -> None:
    port = listener.addresses[0][1]
    env = dict(os.environ, SSH_CONNECTION="127.0.0.1 50022 127.0.0.1 22")
    node.configure([["127.0.0.1", _closed_port()], ["", port]], shell=WAIT_FOR_RELEASE)
    node.start(env=env)
    inbox = Inbox(listener)
    inbox.wait_for(lambda msgs: len(msgs) >= 2)
    (node.dir / "release").touch()
    inbox.wait_for(lambda msgs: any(m.final for m in msgs))


def test_executor_gives_up_after_linger_and_exits(node: Node) -> None:
    node.configure([["127.0.0.1", _closed_port()]], shell="exit 0", linger=0.5)
    proc = node.start()
    proc.wait()
    end = node.status()
    assert end is not None and (end["state"], end["exit_code"]) == ("exited", 0)
    assert "not acknowledged" in node.log()


def test_program_not_found_is_state_error(node: Node, listener: Listener) -> None:
    # Said by the start command itself, before detaching: no heartbeat would say why.
    node.configure(_controller(listener), argv=["./no-such-program", "x"])
    said = node.marked("start", str(node.dir), marker="CORUNNER-STATUS")
    assert said == node.status()
    status = node.status()
    assert status is not None and set(status) == STATUS_KEYS
    assert (status["state"], status["exit_code"], status["pid"]) == ("error", 127, None)
    assert status["error"] == "cannot execute ./no-such-program: No such file or directory"
    assert node.probe()["state"] == "error"
    inbox = Inbox(listener)
    inbox.wait_for(lambda msgs: True)
    assert inbox.messages == []  # nothing was started, nothing reports


def test_argv_program_gets_its_arguments_in_the_run_directory(
    node: Node, listener: Listener
) -> None:
    script = 'printf "%s|" "$@" > args.txt; pwd > cwd.txt; echo "$CORUNNER_HOST" > host.txt'
    node.configure(_controller(listener), argv=["sh", "-c", script, "sh", "a b", "*", ""])
    proc = node.start()
    Inbox(listener).wait_for(lambda msgs: any(m.final for m in msgs))
    proc.wait()
    assert (node.dir / "args.txt").read_text() == "a b|*||"
    assert Path((node.dir / "cwd.txt").read_text().strip()).resolve() == node.dir.resolve()
    assert (node.dir / "host.txt").read_text() == HOST + "\n"


def test_no_heartbeat_config_sends_nothing(node: Node, listener: Listener) -> None:
    node.configure(_controller(listener), shell="exit 5", heartbeat=False)
    proc = node.start()
    proc.wait()
    assert node.wait_state("exited")["exit_code"] == 5
    inbox = Inbox(listener)
    inbox.wait_for(lambda msgs: True)
    assert inbox.messages == []


def test_bad_config_exits_2_without_running_anything(node: Node) -> None:
    node.configure([], shell="touch ran", argv=["touch", "ran"])
    done = node.call("start", str(node.dir), "--foreground")
    assert done.returncode == 2
    assert "exactly one of argv and shell" in done.stderr
    assert not (node.dir / "ran").exists() and node.status() is None


def test_executor_runs_on_python_3_8(node: Node, listener: Listener) -> None:
    python = python38()
    if python is None:
        pytest.skip("no Python 3.8 interpreter here")
    node.configure(_controller(listener), shell="exit 3")
    proc = node.start(python=python)
    inbox = Inbox(listener)
    inbox.wait_for(lambda msgs: any(m.final for m in msgs))
    assert inbox.finals()[0].exit_code == 3
    proc.wait()
    done = node.call("start", str(node.dir), "--foreground", python=python)
    assert done.returncode == 0, done.stderr
    assert "CORUNNER-STATUS " in done.stdout
    probe = node.call("probe", str(node.dir), python=python)
    assert '"state": "exited"' in probe.stdout


def test_the_node_loads_the_shipped_bytecode_instead_of_compiling(node: Node) -> None:
    node.configure([], shell="true", heartbeat=False)
    done = node.call("start", str(node.dir), "--foreground", flags=("-v",))
    assert done.returncode == 0, done.stderr
    name, _ = executor_bytecode()
    assert f"code object from '{node.dir / '.corunner' / '__pycache__' / name}'" in done.stderr


def test_the_run_path_imports_only_lean_modules(node: Node, listener: Listener) -> None:
    """json, re, socket, subprocess, hashlib and friends cost ~25 ms per node and run."""
    node.configure(_controller(listener), shell="exit 4")
    proc = node.start(flags=("-X", "importtime"))
    inbox = Inbox(listener)
    inbox.wait_for(lambda msgs: any(m.final for m in msgs))  # heartbeats and the final went out
    assert inbox.finals()[0].exit_code == 4
    proc.wait()
    imported = {ln.rsplit("|", 1)[1].strip() for ln in node.log().splitlines() if "|" in ln}
    assert "executor" in imported
    heavy = {"json", "re", "enum", "socket", "selectors", "subprocess", "signal", "hashlib", "hmac"}
    assert imported & heavy == set()


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["start"],
        ["start", "--foreground", "DIR"],
        ["start", "DIR", "--fore"],
        ["start", "DIR", "--foreground", "x"],
        ["run", ".corunner/config.json"],
        ["run", "--foreground", ".corunner/config.json"],
        ["probe"],
        ["probe", "DIR", "x"],
        ["stop", "DIR", "--grace", "5"],
        ["stop", "DIR", "--foreground"],
    ],
)
def test_any_other_command_line_is_one_line_of_usage_and_status_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: executor.py start RUN_DIR")
    assert err.count("\n") == 1


def test_a_bad_command_line_runs_nothing_on_the_node(node: Node) -> None:
    node.configure([], shell="touch ran", heartbeat=False)
    done = node.call("run", ".corunner/config.json")
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.count("\n") == 1 and "usage: executor.py" in done.stderr
    assert not (node.dir / "ran").exists() and node.status() is None
