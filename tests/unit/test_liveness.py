"""Liveness rules, driven with explicit times: no clock, no sockets."""

from corunner.liveness import LIVE, Fleet, State

DEAD_AFTER = 5.0


def fleet(*hosts: str) -> Fleet:
    return Fleet.of(hosts or ("n1",), DEAD_AFTER, now=0.0)


def test_started_node_is_pending_until_first_heartbeat():
    f = fleet()
    f.started("n1", 1.0, 1.0)
    assert f.nodes["n1"].state is State.PENDING
    [change] = f.heartbeat("n1", 1.5)
    assert (change.old, change.new, change.reason) == (State.PENDING, State.ALIVE, "heartbeat")


def test_node_that_never_reports_turns_dead_after_dead_after_from_start():
    f = fleet()
    f.started("n1", 10.0, 10.0)
    assert f.tick(14.9) == []
    [change] = f.tick(15.0)
    assert change.new is State.DEAD


def test_node_not_yet_started_is_never_dead_by_silence():
    f = fleet()
    assert f.tick(1000.0) == []
    assert f.nodes["n1"].state is State.PENDING


def test_silent_node_turns_dead_then_alive_when_it_reports_again():
    f = fleet()
    f.started("n1", 0.0, 0.0)
    f.heartbeat("n1", 1.0)
    assert f.tick(5.9) == []
    [dead] = f.tick(6.0)
    assert dead.new is State.DEAD and dead.reason.startswith("silent for 5.0")
    [back] = f.heartbeat("n1", 9.0)
    assert (back.old, back.new, back.reason) == (State.DEAD, State.ALIVE, "reported again")
    [done] = f.exited("n1", 10.0, 0, None)
    assert done.new is State.SUCCEEDED
    assert [c.new for c in f.changes] == [State.ALIVE, State.DEAD, State.ALIVE, State.SUCCEEDED]


def test_heartbeats_keep_a_node_alive():
    f = fleet()
    f.started("n1", 0.0, 0.0)
    for t in range(1, 100):
        f.heartbeat("n1", float(t))
        assert f.tick(t + 0.9) == []
    assert f.nodes["n1"].state is State.ALIVE


def test_exit_codes_and_signals_decide_success():
    f = fleet("a", "b", "c")
    for h in "abc":
        f.started(h, 0.0, 0.0)
    f.exited("a", 1.0, 0, None)
    f.exited("b", 1.0, 3, None)
    f.exited("c", 1.0, None, 9)
    assert f.nodes["a"].state is State.SUCCEEDED
    assert (f.nodes["b"].state, f.nodes["b"].exit_code) == (State.FAILED, 3)
    assert (f.nodes["c"].state, f.nodes["c"].signal) == (State.FAILED, 9)
    assert f.changes[-1].reason == "signal 9"


def test_dead_node_can_still_report_its_exit():
    f = fleet()
    f.started("n1", 0.0, 0.0)
    f.tick(6.0)
    f.exited("n1", 7.0, 0, None)
    assert f.nodes["n1"].state is State.SUCCEEDED


def test_final_states_are_final():
    f = fleet()
    f.started("n1", 0.0, 0.0)
    f.exited("n1", 1.0, 0, None)
    assert f.heartbeat("n1", 2.0) == []
    assert f.exited("n1", 2.0, 1, None) == []
    assert f.tick(100.0) == [] and f.expire(100.0) == []
    assert f.nodes["n1"].state is State.SUCCEEDED


def test_unreachable_node_is_finished_with_its_error():
    f = fleet("a", "b")
    [change] = f.unreachable("a", 0.5, "connection refused")
    assert change.new is State.UNREACHABLE and f.nodes["a"].error == "connection refused"
    assert not f.finished
    f.started("b", 0.5, 0.5)
    f.exited("b", 1.0, 0, None)
    assert f.finished


def test_run_is_finished_when_only_dead_nodes_remain():
    f = fleet("a", "b")
    f.started("a", 0.0, 0.0)
    f.started("b", 0.0, 0.0)
    f.heartbeat("a", 1.0)
    f.exited("b", 2.0, 0, None)
    assert not f.finished
    f.tick(6.0)
    assert f.nodes["a"].state is State.DEAD and f.finished


def test_deadline_times_out_live_nodes_but_not_dead_or_finished_ones():
    f = fleet("live", "dead", "done")
    for h in ("live", "dead", "done"):
        f.started(h, 0.0, 0.0)
    f.heartbeat("live", 4.0)
    f.exited("done", 1.0, 0, None)
    f.tick(5.0)
    changes = f.expire(6.0)
    assert [(c.host, c.new) for c in changes] == [("live", State.TIMEOUT)]
    assert f.by_state() == {
        State.TIMEOUT: ["live"],
        State.DEAD: ["dead"],
        State.SUCCEEDED: ["done"],
    }


def test_next_check_is_the_earliest_silence_deadline():
    f = fleet("a", "b")
    assert f.next_check() is None
    f.started("a", 0.0, 0.0)
    f.started("b", 2.0, 2.0)
    f.heartbeat("a", 3.0)
    # A lower bound between scans (cheap to keep), exact after one.
    assert f.next_check() <= 7.0
    assert f.tick(f.next_check()) == []
    assert f.next_check() == 7.0


def test_tick_skips_the_scan_until_a_node_might_be_due_but_never_misses_one():
    f = fleet("a", "b")
    f.started("a", 0.0, 0.0)
    f.started("b", 0.0, 0.0)
    for t in range(1, 20):
        f.heartbeat("a", float(t))
        f.tick(t + 0.5)
    assert f.nodes["a"].state is State.ALIVE and f.nodes["b"].state is State.DEAD
    f.tick(100.0)
    assert f.nodes["a"].state is State.DEAD and f.next_check() is None
    f.heartbeat("b", 101.0)  # back from the dead: watched again
    assert f.tick(105.9) == [] and [c.host for c in f.tick(106.0)] == ["b"]


def test_lost_session_makes_a_live_node_dead_but_not_a_finished_one():
    f = fleet("a", "b")
    f.started("a", 0.0, 0.0)
    f.started("b", 0.0, 0.0)
    f.exited("b", 1.0, 0, None)
    [change] = f.lost("a", 2.0, "SSH session ended without a status")
    assert change.new is State.DEAD
    assert f.lost("b", 2.0, "late") == []


def test_finished_follows_every_change_without_scanning_the_fleet():
    f = Fleet.of(["a", "b", "c"], 5.0, 0.0)
    for h in "abc":
        f.started(h, 0.0, 0.0)
    assert not f.finished
    f.exited("a", 1.0, 0, None)
    f.heartbeat("b", 1.0)
    f.unreachable("c", 1.0, "refused")
    assert not f.finished  # b is alive
    f.tick(7.0)  # b silent: dead, and a dead node is not waited for
    assert f.finished
    f.heartbeat("b", 8.0)  # it reports again: the run waits for it again
    assert not f.finished
    f.exited("b", 9.0, 1, None)
    assert f.finished
    assert f.finished == (not any(n.state in LIVE for n in f.nodes.values()))


def test_a_silence_deadline_at_time_zero_is_still_a_deadline():
    # 0.0 is falsy: the earliest deadline must not be dropped for it.
    f = Fleet.of(["a"], 5.0, -5.0)
    f.started("a", -5.0, -5.0)  # silent since -5.0: due at exactly 0.0
    assert f.next_check() == 0.0
    (change,) = f.tick(0.0)
    assert change.new is State.DEAD
