"""The run loop (controller.Run.drive) without SSH: an injected starter, watch and clock.

The fake clock moves only when the loop waits on the watch with nothing to
hear, so each test is a script in fake seconds; starters that must be "in
flight" block (in their worker thread) until fake time or a flag says so.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import pytest

from corunner import remote
from corunner.controller import NOT_STARTED, Run
from corunner.dispatch import Event, Exited, Heard, SessionWatch, Started
from corunner.errors import EXIT_FAILED, EXIT_LOST, EXIT_OK, ConnectError
from corunner.inventory import Host
from corunner.spec import Program, RunSpec


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeWatch:
    """Events posted by starters or tests; time passes when there is nothing to hear."""

    def __init__(self, clock: FakeClock, interrupt_at: Optional[float] = None) -> None:
        self.clock = clock
        self.events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.woken = threading.Event()
        self.interrupt_at = interrupt_at
        self.interrupted = threading.Event()
        self.watched: List[str] = []
        self.closed = False

    def started(self, started: Started) -> None:
        self.watched.append(started.host)

    def poll(self, timeout: float) -> Sequence[Event]:
        if self.interrupt_at is not None and self.clock() >= self.interrupt_at:
            self.interrupted.set()
            raise KeyboardInterrupt
        got: List[Event] = []
        while True:
            try:
                got.append(self.events.get_nowait())
            except queue.Empty:
                break
        if not got:
            if self.woken.wait(0.002):
                self.woken.clear()
            else:
                self.clock.advance(max(timeout, 0.01))
        return got

    def wakeup(self) -> None:
        self.woken.set()

    def rejected(self) -> Dict[str, int]:
        return {"replay": 2}

    def close(self) -> None:
        self.closed = True


def hosts(*names: str) -> List[Host]:
    return [Host(n, "root", 22, None, None, "/tmp/corunner", "python3", 10.0) for n in names]


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Block a fake starter (in its worker thread) until ``condition``, within real ``seconds``."""
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition never came true")
        time.sleep(0.001)


def make_run(tmp_path: Path, names: Sequence[str], clock: FakeClock, **spec: object) -> Run:
    settings: Dict[str, object] = {"interval": 1.0, "dead_after": 5.0, **spec}
    return Run(
        hosts(*names),
        RunSpec(Program(cmd="true"), **settings),  # type: ignore[arg-type]
        records=str(tmp_path / "runs"),
        clock=clock,
    )


def recorded(run: Run) -> dict:
    return json.loads(Path(run.record.path).read_text())


def test_hosts_still_queued_at_the_deadline_are_unreachable_not_timed_out(tmp_path):
    clock = FakeClock()
    t0 = clock()
    run = make_run(tmp_path, ["a", "b", "c"], clock, parallel=1, deadline=10.0, heartbeat=False)
    watch = FakeWatch(clock)
    called: List[str] = []

    def start(host: Host) -> Started:
        called.append(host.id)
        sent = clock()
        if host.id == "b":  # in flight when the deadline passes
            wait_for(lambda: clock() >= t0 + 10.0)
        return Started(host.id, sent, pid=100 + len(called))

    report = run.drive(start, watch)
    rows = {h.host: h for h in report.hosts}
    assert called == ["a", "b"]  # c never began
    assert rows["a"].state == "timeout"
    assert rows["b"].state == "timeout" and rows["b"].pid == 102  # started, so stoppable
    assert rows["c"].state == "unreachable" and rows["c"].error == NOT_STARTED
    assert report.exit_code == EXIT_LOST
    assert recorded(run)["hosts"]["c"]["error"] == NOT_STARTED
    assert watch.closed


def test_ctrl_c_lets_a_start_in_flight_finish_and_never_starts_a_queued_host(tmp_path):
    clock = FakeClock()
    run = make_run(tmp_path, ["a", "b"], clock, parallel=1, heartbeat=False)
    watch = FakeWatch(clock, interrupt_at=clock() + 2.0)
    called: List[str] = []

    def start(host: Host) -> Started:
        called.append(host.id)
        wait_for(watch.interrupted.is_set)  # a is in flight; b waits behind it
        return Started(host.id, clock(), pid=7)

    with pytest.raises(KeyboardInterrupt):
        run.drive(start, watch)
    data = recorded(run)
    assert called == ["a"]
    assert data["hosts"]["a"]["pid"] == 7
    assert data["hosts"]["b"]["state"] == "pending" and data["hosts"]["b"]["pid"] is None


def test_a_heartbeat_that_arrives_before_the_start_is_confirmed_keeps_the_run_time(tmp_path):
    clock = FakeClock()
    run = make_run(tmp_path, ["a"], clock)
    watch = FakeWatch(clock)

    def start(host: Host) -> Started:
        sent = clock()
        # The executor is quicker than the worker: its heartbeat and its end
        # reach the loop before the worker posts the start.
        watch.events.put(Heard("a", sent + 0.5))
        watch.events.put(Exited("a", sent + 2.0, 0, None))
        return Started("a", sent, pid=5)

    report = run.drive(start, watch)
    (row,) = report.hosts
    assert row.state == "succeeded"
    assert row.seconds == 2.0
    assert report.exit_code == EXIT_OK


def test_a_final_message_before_the_start_is_confirmed_keeps_the_outcome_and_time(tmp_path):
    clock = FakeClock()
    run = make_run(tmp_path, ["a"], clock)
    watch = FakeWatch(clock)

    def start(host: Host) -> Started:
        sent = clock()
        watch.events.put(Exited("a", sent + 1.0, 3, None))
        return Started("a", sent, pid=5)

    report = run.drive(start, watch)
    (row,) = report.hosts
    assert (row.state, row.exit_code, row.seconds) == ("failed", 3, 1.0)
    assert report.exit_code == EXIT_FAILED


def test_a_silent_node_turns_dead_and_the_run_does_not_wait_for_it(tmp_path):
    clock = FakeClock()
    run = make_run(tmp_path, ["a", "b"], clock, dead_after=5.0)
    watch = FakeWatch(clock)

    def start(host: Host) -> Started:
        sent = clock()
        if host.id == "a":
            watch.events.put(Exited("a", sent + 1.0, 0, None))
        return Started(host.id, sent)

    began = clock()
    report = run.drive(start, watch)
    rows = {h.host: h for h in report.hosts}
    assert rows["a"].state == "succeeded"
    assert rows["b"].state == "dead"
    assert 5.0 <= clock() - began < 7.0
    assert report.rejected == {"replay": 2}


def test_a_start_that_fails_or_crashes_ends_only_that_host(tmp_path):
    clock = FakeClock()
    run = make_run(tmp_path, ["a", "b", "c"], clock)
    watch = FakeWatch(clock)

    def start(host: Host) -> Started:
        if host.id == "a":
            raise ConnectError("a", "connection refused on port 22 (is sshd running?)")
        if host.id == "b":
            raise RuntimeError("boom")
        sent = clock()
        watch.events.put(Exited("c", sent, 0, None))
        return Started("c", sent)

    report = run.drive(start, watch)
    rows = {h.host: h for h in report.hosts}
    assert rows["a"].state == "unreachable" and "refused" in (rows["a"].error or "")
    assert rows["b"].state == "unreachable"
    assert (rows["b"].error or "").startswith("internal error (RuntimeError at test_run_loop.py:")
    assert rows["c"].state == "succeeded"


def test_the_loop_ticks_while_it_waits_and_a_closed_output_ends_the_run_recorded(tmp_path):
    """A view's tick runs in the loop's thread; an Interrupted it raises (stdout
    closed, SIGTERM) ends the run as Ctrl-C does: the record final and interrupted."""
    import signal

    from corunner.interrupts import Interrupted

    clock = FakeClock()
    run = make_run(tmp_path, ["a", "b"], clock)
    watch = FakeWatch(clock)
    ticks: List[float] = []

    def tick() -> None:
        ticks.append(clock())
        if clock() >= 1003.0:
            raise Interrupted(signal.SIGPIPE)

    run.on_tick = tick

    def start(host: Host) -> Started:
        watch.events.put(Heard(host.id, clock()))
        return Started(host.id, clock(), pid=9)

    with pytest.raises(Interrupted):
        run.drive(start, watch)
    assert len(ticks) >= 3 and ticks[-1] >= 1003.0  # at least once a (fake) second
    data = recorded(run)
    assert data["finished"] is True and data["interrupted"] is True
    assert {h["state"] for h in data["hosts"].values()} == {"alive"}
    assert {h["pid"] for h in data["hosts"].values()} == {9}
    assert watch.closed


def test_a_dead_host_keeps_why_it_turned_dead(tmp_path):
    clock = FakeClock()
    run = make_run(tmp_path, ["a"], clock, dead_after=5.0)
    watch = FakeWatch(clock)

    def start(host: Host) -> Started:
        watch.events.put(Heard("a", clock()))
        return Started("a", clock())

    (row,) = run.drive(start, watch).hosts
    assert row.state == "dead" and row.reason == "silent for 5.0s"
    assert recorded(run)["hosts"]["a"]["reason"] == "silent for 5.0s"


def test_sessions_are_handed_to_the_watch_only_when_there_is_one(tmp_path):
    clock = FakeClock()
    run = make_run(tmp_path, ["a", "b"], clock, heartbeat=False)
    watch = FakeWatch(clock)

    def start(host: Host) -> Started:
        sent = clock()
        watch.events.put(Exited(host.id, sent + 1, 0, None))
        return Started(host.id, sent, session=("chan", "conn") if host.id == "a" else None)

    run.drive(start, watch)
    assert watch.watched == ["a"]


class FakeChannels:
    def __init__(self, ended: List[tuple]) -> None:
        self.ended = ended

    def poll(self, timeout: float) -> List[tuple]:
        ended, self.ended = self.ended, []
        return ended


@pytest.mark.parametrize(
    "output",
    [
        b"CORUNNER-STATUS [1]\n",
        b"CORUNNER-STATUS {not json\n",
        b'CORUNNER-STATUS {"exit_code": "0"}\n',
        b'CORUNNER-STATUS {"exit_code": 0, "signal": 9}\n',
        b'CORUNNER-STATUS {"exit_code": true}\n',
        b"CORUNNER-STATUS \xff\xfe\n",
        b"",
    ],
)
def test_hostile_or_broken_session_output_is_a_lost_node_never_a_crash(output):
    clock = FakeClock()
    watch = SessionWatch(clock)
    watch.channels.close()
    watch.channels = FakeChannels([("a", output)])  # type: ignore[assignment]
    (event,) = watch.poll(0)
    assert type(event).__name__ == "Lost" and event.host == "a"


def test_the_last_valid_status_line_of_a_session_is_its_outcome():
    clock = FakeClock()
    watch = SessionWatch(clock)
    watch.channels.close()
    noise = b'pyenv: warning\nCORUNNER-STATUS {"exit_code": 1}\n'
    watch.channels = FakeChannels(  # type: ignore[assignment]
        [("a", noise + b'CORUNNER-STATUS {"exit_code": null, "signal": 15}\n')]
    )
    (event,) = watch.poll(0)
    assert event == Exited("a", clock(), None, 15)


def test_a_session_keeps_only_the_tail_of_its_output_as_a_whole():
    kept = b""
    for _ in range(100):
        kept = remote.keep_tail(kept, b"x" * 10_000, cap=65536)
    assert len(kept) == 65536
    assert remote.keep_tail(b"ab", b"cd", cap=3) == b"bcd"


def test_a_program_that_cannot_start_fails_with_the_nodes_reason_and_its_bytes_counted(tmp_path):
    clock = FakeClock()
    run = make_run(tmp_path, ["a", "b"], clock)
    why = "cannot execute ./job.sh: Permission denied; is remote_dir on a noexec mount?"
    watch = FakeWatch(clock)

    def start(host: Host) -> Started:
        if host.id == "a":
            return Started("a", clock(), sent=6000, ended=(126, None, why))
        watch.events.put(Exited("b", clock(), 0, None))
        return Started("b", clock(), pid=9, sent=160_000)

    report = run.drive(start, watch)
    rows = {h.host: h for h in report.hosts}
    assert (rows["a"].state, rows["a"].exit_code, rows["a"].error) == ("failed", 126, why)
    assert rows["b"].state == "succeeded"
    assert report.exit_code == EXIT_FAILED
    hosts_recorded = recorded(run)["hosts"]
    assert hosts_recorded["a"]["error"] == why
    assert (hosts_recorded["a"]["bytes_sent"], hosts_recorded["b"]["bytes_sent"]) == (6000, 160_000)
    assert watch.watched == []  # nothing to watch: a's program never ran


def test_the_preparation_runs_once_with_the_record_made_and_before_any_start(tmp_path):
    clock = FakeClock()
    run = make_run(tmp_path, ["a", "b"], clock, heartbeat=False)
    watch = FakeWatch(clock)
    order: List[str] = []

    def prepare() -> None:  # the relay of --files: every start comes after it
        order.append("prepare")
        assert recorded(run)["finished"] is False  # a Ctrl-C here still leaves a record

    def start(host: Host) -> Started:
        order.append(host.id)
        watch.events.put(Exited(host.id, clock(), 0, None))
        return Started(host.id, clock())

    report = run.drive(start, watch, prepare)
    assert order[0] == "prepare" and sorted(order[1:]) == ["a", "b"]
    assert {h.state for h in report.hosts} == {"succeeded"}
