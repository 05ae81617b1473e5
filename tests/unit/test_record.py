"""A run record read while the run goes on: run.json is written at the start and the
end, the event log at every change, so status reads both."""

from __future__ import annotations

import json

from corunner.record import RunRecord, with_events


def _record(tmp_path, finished: bool) -> RunRecord:
    record = RunRecord("20261202-080000-abcdef", str(tmp_path))
    record.create()
    hosts = {h: {"state": "pending"} for h in ("n1", "n2", "n3")}
    record.save({"run_id": record.run_id, "finished": finished, "hosts": hosts})
    return record


def test_a_run_still_going_shows_each_hosts_latest_state_from_its_events(tmp_path):
    record = _record(tmp_path, finished=False)
    record.event(host="n1", old="pending", new="alive", reason="heartbeat", at=10.0)
    record.event(host="n2", old="pending", new="alive", reason="heartbeat", at=10.1)
    record.event(host="n1", old="alive", new="failed", reason="exit 3", at=11.0)
    record.close()
    with open(record.events_path, "a") as f:
        f.write('{"host": "n3", "new": "al')  # cut short by a crash: skipped
    data = record.load_current()
    assert {h: e["state"] for h, e in data["hosts"].items()} == {
        "n1": "failed",
        "n2": "alive",
        "n3": "pending",
    }
    assert data["hosts"]["n1"]["reason"] == "exit 3"
    # Only shown: run.json itself is left as the controller wrote it.
    assert json.loads(open(record.path).read())["hosts"]["n1"]["state"] == "pending"


def test_a_finished_run_is_its_record_alone(tmp_path):
    record = _record(tmp_path, finished=True)
    record.event(host="n1", old="pending", new="alive", reason="heartbeat", at=10.0)
    record.close()
    assert record.load_current()["hosts"]["n1"]["state"] == "pending"


def test_what_a_refresh_heard_from_the_node_beats_older_events():
    data = {
        "finished": False,
        "hosts": {"n1": {"state": "succeeded", "refreshed_at": 20.0}, "n2": {"state": "pending"}},
    }
    events = [
        {"host": "n1", "new": "alive", "at": 15.0},
        {"host": "n2", "new": "dead", "at": 16.0, "reason": "silent for 5.0s"},
        {"host": "elsewhere", "new": "alive", "at": 1.0},  # not a host of the run
        {"host": "n2", "new": 7},  # not a state
    ]
    with_events(data, events)
    assert data["hosts"]["n1"]["state"] == "succeeded"
    assert data["hosts"]["n2"] == {"state": "dead", "reason": "silent for 5.0s"}
    assert "elsewhere" not in data["hosts"]
