"""What --dry prints: hosts folded by the SSH settings they would use, the
steps, the bytes; and one JSON document that matches corunner/schemas/plan.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import corunner
from corunner.inventory import inventory_from_dict
from corunner.plan import Plan, Step

SCHEMA = Path(corunner.__file__).parent / "schemas" / "plan.json"

INVENTORY = {
    "defaults": {"user": "root", "key": "/keys/lab", "known_hosts": "/keys/kh"},
    "groups": {
        "lab": {"hosts": ["n[1-4]"]},
        "gpu": {"hosts": ["deploy@g[1-2]:2222"], "python": "/opt/py/bin/python3"},
    },
}


def a_plan() -> Plan:
    inv = inventory_from_dict(INVENTORY, source="hosts.yaml", local_user="alice")
    hosts = inv.select("lab,gpu,x9")
    steps = (Step("run", "/bin/sh -c 'make test'"), Step("in", "<remote_dir>/<run id>/"))
    return Plan("run", steps, tuple(hosts), 150_000, tuple(h.id for h in inv.not_listed(hosts)))


def test_lines_fold_hosts_that_share_their_settings() -> None:
    assert a_plan().lines() == [
        "dry run of run: nothing was done, no node was contacted",
        "  run     /bin/sh -c 'make test'",
        "  in      <remote_dir>/<run id>/",
        "  upload  150,000 bytes to each host",
        "hosts (7): g[1-2]:2222,n[1-4],x9",
        "  n[1-4],x9: user root, port 22, key /keys/lab, known_hosts /keys/kh,"
        " connect_timeout 10s, python python3, remote_dir /tmp/corunner-root",
        "  g[1-2]:2222: user deploy, port 2222, key /keys/lab, known_hosts /keys/kh,"
        " connect_timeout 10s, python /opt/py/bin/python3, remote_dir /tmp/corunner-deploy",
        "  not in the inventory (its defaults): x9",
    ]


def test_a_host_without_key_says_how_it_would_authenticate() -> None:
    inv = inventory_from_dict({"groups": {"g": {"hosts": ["a1"]}}}, local_user="alice")
    line = Plan("stop", (), tuple(inv.hosts)).lines()[-1]
    assert "user alice, port 22, key the SSH agent and ~/.ssh/id_*" in line


def test_document_matches_its_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = a_plan().document()
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    assert doc["count"] == 7 and doc["upload_bytes"] == 150_000
    assert [h["in_inventory"] for h in doc["hosts"]][-1] is False
    assert json.loads(json.dumps(doc)) == doc


def test_a_relayed_run_counts_its_files_once_not_in_each_hosts_upload(tmp_path: Path) -> None:
    from corunner.plan import run_plan
    from corunner.spec import Program, RunSpec

    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * 200_000)
    hosts = tuple(inventory_from_dict(INVENTORY, local_user="alice").select("lab"))
    spec = RunSpec(program=Program(cmd="true"), files=(str(big),))
    direct = run_plan(hosts, spec)
    relayed = run_plan(hosts, RunSpec(program=Program(cmd="true"), files=(str(big),), relay=True))
    auto = run_plan(hosts, RunSpec(program=Program(cmd="true"), files=(str(big),), relay="auto"))
    assert direct.upload is not None and relayed.upload is not None
    assert direct.upload - relayed.upload > 200_000  # the tar: sent once, ahead of the starts
    assert [s.label for s in relayed.steps].count("relay") == 1
    assert "relay" not in [s.label for s in direct.steps]
    assert auto.upload == direct.upload  # 3 x 200 kB saved is far below auto's threshold
