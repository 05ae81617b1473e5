"""``--hosts`` and ``--exclude`` as cluster people write them: NodeSet operators,
@group, hosts not in the inventory, the hosts of the last run by outcome, and
errors that suggest the fix. Pure: inventory dicts in, host ids out."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, List, Optional

import pytest

from corunner.errors import HostRangeError, InventoryError, RecordError
from corunner.inventory import Inventory, ad_hoc_entry, inventory_from_dict
from corunner.record import RunRecord, run_outcomes
from corunner.report import RunOutcomes

WEB = {
    "defaults": {"user": "root", "key": "keys/id", "known_hosts": "kh", "connect_timeout": 3},
    "groups": {
        "lab": {"hosts": ["n[1-8]"]},
        "rack1": {"hosts": ["n[1-4]"]},
        "web": {"hosts": ["w[1-3]", "gw:2222", "deploy@db[1-2]"], "user": "www"},
        "spare": {"hosts": []},
    },
}

LAB = [f"n{i}" for i in range(1, 9)]

#: What the last run ended with, as the record says: n2 and n3 failed, n4
#: unreachable, n5 dead, n6 timed out, and bob@10.9.9.9 (named ad hoc) failed.
LAST_RUN = RunOutcomes(
    "20261126-081500-3fa2c1",
    (
        ("n1", "succeeded"),
        ("n2", "failed"),
        ("n3", "failed"),
        ("n4", "unreachable"),
        ("n5", "dead"),
        ("n6", "timeout"),
        ("10.9.9.9:2200", "failed"),
    ),
    ("bob@10.9.9.9:2200",),
)


def build(data: Any = WEB) -> Inventory:
    return inventory_from_dict(data, source="hosts.yaml", base_dir="/inv", local_user="alice")


def ids(selection: Optional[str], exclude: Optional[str] = None, inv: Any = None) -> List[str]:
    inventory = inv or build()
    return [h.id for h in inventory.select(selection, exclude, lambda: LAST_RUN)]


SELECTIONS = [
    # (--hosts, --exclude, the host ids selected, in order)
    (None, None, LAB + ["w1", "w2", "w3", "gw:2222", "db1", "db2"]),
    ("lab", None, LAB),
    ("@lab", None, LAB),
    ("lab,rack1", None, LAB),
    ("lab!n3", None, ["n1", "n2", "n4", "n5", "n6", "n7", "n8"]),
    ("lab,!n3", None, ["n1", "n2", "n4", "n5", "n6", "n7", "n8"]),
    ("lab,!n[2-7]", None, ["n1", "n8"]),
    ("lab&rack1", None, ["n1", "n2", "n3", "n4"]),
    ("lab,&rack1", None, ["n1", "n2", "n3", "n4"]),
    ("lab^rack1", None, ["n5", "n6", "n7", "n8"]),
    ("rack1^n[3-6]", None, ["n1", "n2", "n5", "n6"]),
    ("@lab!@rack1", None, ["n5", "n6", "n7", "n8"]),
    ("@rack[1]", None, ["n1", "n2", "n3", "n4"]),
    # left to right, as ClusterShell: a later union adds back what ! removed
    ("lab!n3,n3", None, LAB),
    ("lab,n3!n3", None, ["n1", "n2", "n4", "n5", "n6", "n7", "n8"]),
    ("lab!rack1&n[4-6]", None, ["n5", "n6"]),
    # a leading operator starts from every host
    ("!web", None, LAB),
    ("&rack1", None, ["n1", "n2", "n3", "n4"]),
    # --exclude: the same syntax, removed at the end
    ("lab", "rack1", ["n5", "n6", "n7", "n8"]),
    ("lab", "n[1-7]", ["n8"]),
    (None, "web", LAB),
    ("lab", "rack1!n2", ["n2", "n5", "n6", "n7", "n8"]),
    ("lab", "@failed", ["n1", "n4", "n5", "n6", "n7", "n8"]),
    # host patterns: by name, and by id for a host with a port
    ("n[7-9]", None, ["n7", "n8", "n9"]),
    ("gw", None, ["gw:2222"]),
    ("gw:2222", None, ["gw:2222"]),
    ("www@w1", None, ["w1"]),  # the inventory's own user may be spelt out
    ("n3,n1,lab,n1", None, LAB),  # inventory order, no duplicates
    # the last run's hosts by outcome
    ("@failed", None, ["n2", "n3", "10.9.9.9:2200"]),
    ("@unreachable", None, ["n4"]),
    ("@dead", None, ["n5"]),
    ("@timeout", None, ["n6"]),
    ("@not-succeeded", None, ["n2", "n3", "n4", "n5", "n6", "10.9.9.9:2200"]),
    ("@not-succeeded&lab", None, ["n2", "n3", "n4", "n5", "n6"]),
    ("lab!@not-succeeded", None, ["n1", "n7", "n8"]),
    ("@failed,@dead", "n3", ["n2", "n5", "10.9.9.9:2200"]),
    ("@stalled,n1", None, ["n1"]),  # no stalled host: adds nothing
]


@pytest.mark.parametrize("selection, exclude, expected", SELECTIONS)
def test_selection_algebra(
    selection: Optional[str], exclude: Optional[str], expected: List[str]
) -> None:
    assert ids(selection, exclude) == expected


AD_HOC = [
    # (--hosts, [(id, user, port)] of the hosts not in the inventory)
    ("10.0.0.5", [("10.0.0.5", "root", 22)]),
    ("10.0.0.[1-2]", [("10.0.0.1", "root", 22), ("10.0.0.2", "root", 22)]),
    ("bob@10.0.0.5", [("10.0.0.5", "bob", 22)]),
    ("10.0.0.5:2200", [("10.0.0.5:2200", "root", 2200)]),
    ("bob@box.example.com:2200", [("box.example.com:2200", "bob", 2200)]),
    ("n8:2200", [("n8:2200", "root", 2200)]),  # another port: another host
    ("lab,n9", [("n9", "root", 22)]),
    ("x1,x2,lab!x1", [("x2", "root", 22)]),  # ! removes a host named ad hoc before it
    ("n[8-9]^x1", [("n9", "root", 22), ("x1", "root", 22)]),
]


@pytest.mark.parametrize("selection, expected", AD_HOC)
def test_hosts_not_in_the_inventory_get_its_defaults(selection: str, expected: list) -> None:
    inv = build()
    hosts = inv.not_listed(inv.select(selection))
    assert [(h.id, h.user, h.port) for h in hosts] == expected
    for host in hosts:  # every other setting from defaults:, paths resolved as in the file
        assert host.key == "/inv/keys/id" and host.known_hosts == "/inv/kh"
        assert host.connect_timeout == 3.0 and host.remote_dir == f"/tmp/corunner-{host.user}"
        assert host.groups == ()


def test_hosts_not_in_the_inventory_come_after_its_own() -> None:
    assert ids("x1,n2,n1") == ["n1", "n2", "x1"]


def test_host_named_ad_hoc_without_any_user_takes_the_local_one() -> None:
    inv = build({"groups": {"g": {"hosts": ["a1"]}}})
    assert inv.select("b1")[0].user == "alice"


def test_ad_hoc_entry_round_trips_through_a_run_record() -> None:
    inv = build()
    ad_hoc = inv.not_listed(inv.select("bob@10.0.0.5:2200,10.0.0.6"))
    entries = [ad_hoc_entry(h) for h in ad_hoc]
    assert entries == ["bob@10.0.0.5:2200", "root@10.0.0.6:22"]
    again = inv.with_ad_hoc(entries)
    assert [again.host(h.id) for h in ad_hoc] == ad_hoc
    assert inv.with_ad_hoc([]) is inv


ERRORS = [
    # (--hosts, --exclude, the one-line message)
    ("lbs", None, "unknown group 'lbs' (did you mean 'lab'?)"),
    ("lab,wbe", None, "unknown group 'wbe' (did you mean 'web'?)"),
    ("@lbs", None, "unknown group '@lbs' (did you mean '@lab'?)"),
    ("@faild", None, "unknown group '@faild' (did you mean '@failed'?)"),
    ("@rack[1-2]", None, "unknown group '@rack2' (did you mean '@rack1'?)"),
    (
        "localhost",
        None,
        "unknown group 'localhost' (groups: lab, rack1, web, spare;"
        " a host not in hosts.yaml: localhost:22 or user@localhost)",
    ),
    ("lab!n9", None, "'n9' matches no host in hosts.yaml (nothing to remove)"),
    ("lab&x[1-3]", None, "'x[1-3]' matches no host in hosts.yaml (nothing to keep)"),
    ("lab", "n03", "'n03' matches no host in hosts.yaml (nothing to exclude)"),
    ("lab", "lbs", "unknown group 'lbs' (did you mean 'lab'?)"),
    (
        "deploy@n1",
        None,
        "'deploy@n1': n1 is in hosts.yaml with user root; drop 'deploy@' or change the inventory",
    ),
    (
        "bob@x1,carol@x1",
        None,
        "'carol@x1': x1 is named earlier with user bob; drop 'carol@' or change the inventory",
    ),
    ("rack1!rack1", None, "--hosts 'rack1!rack1' selects no host"),
    ("lab", "lab", "--hosts 'lab' --exclude 'lab' selects no host"),
    ("spare", None, "--hosts 'spare' selects no host (group 'spare' lists no host)"),
    (
        "@stalled",
        None,
        "--hosts '@stalled' selects no host (run 20261126-081500-3fa2c1 has no stalled host)",
    ),
    ("@", None, "'@' needs a group name after it (as in @lab)"),
]


@pytest.mark.parametrize("selection, exclude, message", ERRORS)
def test_selection_errors_say_what_to_write(
    selection: str, exclude: Optional[str], message: str
) -> None:
    with pytest.raises(InventoryError) as err:
        ids(selection, exclude)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "selection, reason",
    [
        ("lab,", "empty item in the comma list"),
        ("lab!", "'!' (set difference) needs a group or host pattern after it"),
        ("n[5-1]", "reversed range"),
        ("bob@", "no host name"),
        ("@n1", "unknown group '@n1'"),
        ("x1:99999", "port must be a number from 1 to 65535, not '99999'"),
        ("x1:ssh", "port must be a number from 1 to 65535, not 'ssh'"),
        ("n 1", "whitespace is not allowed"),
    ],
)
def test_malformed_selections_are_refused(selection: str, reason: str) -> None:
    with pytest.raises(InventoryError) as err:
        ids(selection)
    assert reason in str(err.value)


def test_a_malformed_pattern_is_a_host_range_error() -> None:
    with pytest.raises(HostRangeError):
        ids("n[1-")


def test_the_run_record_is_read_only_for_an_outcome_selector() -> None:
    def no_record() -> RunOutcomes:
        raise RecordError("no run recorded")

    inv = build()
    assert [h.id for h in inv.select("lab!n2", None, no_record)] == [
        "n1",
        "n3",
        "n4",
        "n5",
        "n6",
        "n7",
        "n8",
    ]
    with pytest.raises(RecordError):
        inv.select("@failed", None, no_record)


def test_a_host_of_the_run_gone_from_the_inventory_is_named() -> None:
    gone = RunOutcomes("R", (("old1", "failed"),))
    with pytest.raises(InventoryError, match="host old1 of run R is no longer in the inventory"):
        build().select("@failed", None, lambda: gone)


# --- @failed read from a run record on disk ----------------------------------


def record(root: Path, run_id: str, states: dict, ad_hoc: tuple = ()) -> None:
    rec = RunRecord(run_id, str(root))
    rec.create()
    rec.save(
        {
            "run_id": run_id,
            "finished": True,
            "ad_hoc": list(ad_hoc),
            "hosts": {h: {"state": s, "exit_code": 1} for h, s in states.items()},
        }
    )


def test_failed_hosts_come_from_the_latest_run_record(tmp_path: Path) -> None:
    record(tmp_path, "20261126-080000-aaaaaa", {"n1": "failed", "n2": "succeeded"})
    record(
        tmp_path,
        "20261126-090000-bbbbbb",
        {"n1": "succeeded", "n3": "failed", "x9": "unreachable"},
        ad_hoc=("carol@x9:22",),
    )
    inv = build()
    latest = functools.partial(run_outcomes, None, str(tmp_path))
    assert [h.id for h in inv.select("@failed", None, latest)] == ["n3"]
    picked = inv.select("@not-succeeded", None, latest)
    assert [(h.id, h.user) for h in picked] == [("n3", "root"), ("x9", "carol")]
    earlier = functools.partial(run_outcomes, "20261126-080000-aaaaaa", str(tmp_path))
    assert [h.id for h in inv.select("@failed", None, earlier)] == ["n1"]


def test_no_run_record_yet_says_so(tmp_path: Path) -> None:
    latest = functools.partial(run_outcomes, None, str(tmp_path / "none"))
    with pytest.raises(RecordError, match="no run recorded"):
        build().select("@failed", None, latest)
    assert not os.path.exists(tmp_path / "none")
