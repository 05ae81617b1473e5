"""Helpers for tests on the real cluster: the CLI as a user runs it, and a
plain SSH command to check what landed on a node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple

import field
import paramiko
import pytest

from corunner.testing.lab import Lab

REPO = Path(__file__).resolve().parents[2]


class Cli:
    """Runs ``python -m corunner`` in a work directory with the lab inventory."""

    def __init__(self, lab: Lab, workdir: Path):
        self.lab = lab
        self.workdir = workdir
        self.env = dict(os.environ)
        self.env.update(
            CORUNNER_INVENTORY=str(lab.inventory),
            CORUNNER_RUNS=str(workdir / "runs"),
            PYTHONPATH=str(REPO),
        )

    def __call__(self, *args: str, timeout: float = 120, env: Optional[Dict[str, str]] = None):
        return subprocess.run(
            [sys.executable, "-m", "corunner", *args],
            cwd=self.workdir,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "corunner", *args],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def latest_run_id(self) -> Optional[str]:
        """The id of the last run started from this work directory, or None yet."""
        try:
            return json.loads((self.workdir / "runs" / "latest.json").read_text())["run_id"]
        except (OSError, ValueError, KeyError):
            return None

    def events(self) -> list:
        """The state changes of the last run so far (its events.jsonl), [] if none yet."""
        run_id = self.latest_run_id()
        try:
            lines = (self.workdir / "runs" / str(run_id) / "events.jsonl").read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def states(self) -> dict:
        """Each host's current state in the last run, from its events."""
        return {event["host"]: event["new"] for event in self.events()}

    def json(self, *args: str, **kwargs):
        done = self(*args, "--json", **kwargs)
        try:
            return done, json.loads(done.stdout)
        except ValueError:
            raise AssertionError(f"no JSON on stdout:\n{done.stdout}\n{done.stderr}") from None


@pytest.fixture
def cli(lab: Lab, tmp_path: Path) -> Cli:
    return Cli(lab, tmp_path)


def node_sh(lab: Lab, node: int, command: str) -> str:
    """Run ``command`` on a lab node over SSH (host key checked); return its stdout."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(lab.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        lab.node(node).address,
        username="root",
        key_filename=str(lab.key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        _, out, _ = client.exec_command(command, timeout=30)
        return out.read().decode()
    finally:
        client.close()


@pytest.fixture
def on_node(lab: Lab) -> Callable[[int, str], str]:
    return lambda node, command: node_sh(lab, node, command)


@pytest.fixture(scope="session")
def field_users(lab: Lab) -> Iterator[Dict[str, field.User]]:
    """The field users (one per login shell, and cr-deploy with sudo), for the session.

    Their shells come from `.ci/setup`; without them the tests are skipped
    (failed on CI, as the lab is).
    """
    missing = field.missing_shells()
    if missing:
        message = f"field users need {', '.join(missing)}: run .ci/setup"
        if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    users = field.ensure_users(lab)
    try:
        yield users
    finally:
        field.remove_users(lab)


@pytest.fixture(params=field.LOGINS)
def login(request: pytest.FixtureRequest, field_users: Dict[str, field.User]) -> str:
    """Each node user in turn: root (bash) and every field user."""
    return str(request.param)


@pytest.fixture
def user_cli(lab: Lab, tmp_path: Path, login: str) -> Cli:
    """The CLI with an inventory whose nodes are reached as ``login``."""
    runner = Cli(lab, tmp_path)
    runner.env["CORUNNER_INVENTORY"] = str(field.user_inventory(lab, tmp_path, login))
    runner.user = login  # type: ignore[attr-defined]
    return runner


def node_sh_as(lab: Lab, node: int, user: str, command: str) -> Tuple[int, str, str]:
    """Run ``command`` on a lab node as ``user`` through its login shell: (status, out, err)."""
    client = paramiko.SSHClient()
    client.load_host_keys(str(lab.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        lab.node(node).address,
        username=user,
        key_filename=str(lab.key),
        look_for_keys=False,
        allow_agent=False,
        timeout=10,
    )
    try:
        _, out, err = client.exec_command(command, timeout=30)
        text, errors = out.read().decode(), err.read().decode()
        return out.channel.recv_exit_status(), text, errors
    finally:
        client.close()
