"""config.json: what the controller builds (dispatch.SshStarter.config, through
executor.config_document) is what the executor accepts (executor.parse_config),
and nothing else is."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from corunner.dispatch import SshStarter
from corunner.executor import Config, config_document, json_loads, parse_config
from corunner.inventory import Host
from corunner.spec import Program, RunSpec

SECRET = bytes.fromhex("ab" * 32)
HOSTS = [
    Host("n1", "root", 22, None, None, "/tmp/corunner", "python3", 5.0),
    Host("n2", "root", 2222, None, None, "/tmp/corunner", "/opt/py/bin/python3", 5.0),
]


def built(program: Program, **settings: Any) -> dict[str, Any]:
    """What the controller writes for host n2 (a fixed --listen: no connection needed)."""
    spec = RunSpec(program=program, listen=("10.0.0.1", 4000), **settings)
    starter = SshStarter("run-1", SECRET, HOSTS, spec, None, time.monotonic, None)  # type: ignore[arg-type]
    return starter.config(None, HOSTS[1])  # type: ignore[arg-type]


def on_the_node(doc: dict[str, Any]) -> Config:
    """The document as the executor reads it: JSON text, its own loader."""
    return parse_config(json_loads(json.dumps(doc)))


def test_what_the_controller_builds_parses_on_the_node(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("print(1)\n")
    program = Program.load(script=str(script), args=("a b",))
    cfg = on_the_node(built(program, interval=0.5, linger=7.0))
    assert cfg == Config(
        run_id="run-1",
        host="n2:2222",
        argv=["/opt/py/bin/python3", "job.py", "a b"],
        shell=None,
        controller=[("10.0.0.1", 4000)],
        interval=0.5,
        secret=SECRET,
        heartbeat=True,
        linger=7.0,
        env={
            "CORUNNER_RUN_ID": "run-1",
            "CORUNNER_HOST": "n2:2222",
            "CORUNNER_NODE_INDEX": "1",
            "CORUNNER_NODE_COUNT": "2",
        },
    )


def test_a_command_without_heartbeats_parses_too() -> None:
    cfg = on_the_node(built(Program(cmd="echo hi"), heartbeat=False))
    assert (cfg.argv, cfg.shell, cfg.heartbeat, cfg.controller) == (None, "echo hi", False, [])


def test_the_document_has_the_config_fields_in_order() -> None:
    assert tuple(built(Program(cmd="true"))) == Config.__match_args__


@pytest.mark.parametrize("key", Config.__match_args__)
def test_a_missing_key_is_refused(key: str) -> None:
    doc = built(Program(cmd="true"))
    del doc[key]
    with pytest.raises(ValueError, match=f"config lacks {key}"):
        on_the_node(doc)


def test_an_unknown_key_is_refused() -> None:
    doc = built(Program(cmd="true"))
    doc["grace"] = 5
    with pytest.raises(ValueError, match="unknown config key 'grace'"):
        on_the_node(doc)


def document(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        run_id="r",
        host="h",
        argv=None,
        shell="true",
        controller=[("", 1)],
        interval=1.0,
        secret=SECRET,
        heartbeat=True,
        linger=0.0,
        env={},
    )
    fields.update(changes)
    return config_document(**fields)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"run_id": "a b"}, "run_id must match"),
        ({"host": ""}, "host must match"),
        ({"argv": ["x"]}, "exactly one of argv and shell"),
        ({"shell": None}, "exactly one of argv and shell"),
        ({"argv": [], "shell": None}, "argv must be a non-empty list"),
        ({"controller": [("h", 0)]}, "controller must be a list"),
        ({"interval": 0}, "interval must be > 0"),
        ({"linger": -1}, "linger >= 0"),
        ({"env": {"A": 1}}, "env must map strings to strings"),
    ],
)
def test_bad_values_are_refused_naming_the_key(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        on_the_node(document(**changes))


def test_bad_documents_are_refused_naming_the_key() -> None:
    for key, value in (("controller", None), ("secret", "xyz"), ("env", None)):
        doc = document()
        doc[key] = value
        with pytest.raises(ValueError, match=key):
            on_the_node(doc)
    with pytest.raises(ValueError, match="JSON object"):
        parse_config([])
