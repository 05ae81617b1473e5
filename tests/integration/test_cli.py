"""The command line as users and CI meet it, without a cluster: bad input
gets one line naming the file and line, and the documented exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from corunner.errors import EXIT_USAGE

REPO = Path(__file__).resolve().parents[2]


def corunner(*args: str, cwd: Path, env: dict = None):
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "CORUNNER_RUNS": str(cwd / "runs")}
    full_env.pop("CORUNNER_INVENTORY", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "corunner", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=60,
    )


GOOD = """\
defaults:
  user: root
groups:
  lab:
    hosts: ["127.0.1.[1-8]"]
  web:
    hosts: ["node[01-04]", "deploy@db1:2222"]
"""

BAD = {
    "yaml syntax": ('groups:\n  lab:\n    hosts: ["a"\n', ":4: YAML syntax error"),
    "unknown key": ("groups:\n  lab:\n    hosts: [a]\n    usr: root\n", ":4: unknown key 'usr'"),
    "reversed range": ('groups:\n  lab:\n    hosts: ["n[5-1]"]\n', ":3: bad host pattern 'n[5-1]'"),
    "unclosed bracket": ('groups:\n  lab:\n    hosts: ["n[1-5"]\n', ":3: bad host pattern"),
    "port not a number": (
        "defaults:\n  port: twenty\ngroups:\n  lab:\n    hosts: [a]\n",
        ":2: port must be a number",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inventory_is_one_line_with_file_and_line(tmp_path, case):
    text, where = BAD[case]
    (tmp_path / "hosts.yaml").write_text(text)
    done = corunner("hosts", cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("corunner: error: ./hosts.yaml:") and where in lines[0], lines[0]


@pytest.mark.parametrize(
    "selection, message",
    [("nosuchgroup", "unknown group 'nosuchgroup'"), ("other[1-3]", "matches no host")],
)
def test_bad_selection_is_one_line(tmp_path, selection, message):
    (tmp_path / "hosts.yaml").write_text(GOOD)
    done = corunner("hosts", "--hosts", selection, cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_missing_inventory_says_how_to_fix_it(tmp_path):
    done = corunner("hosts", cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert "--inventory" in done.stderr and "CORUNNER_INVENTORY" in done.stderr


def test_hosts_lists_expanded_hosts_and_folded_form(tmp_path):
    (tmp_path / "hosts.yaml").write_text(GOOD)
    done = corunner("hosts", cwd=tmp_path)
    assert done.returncode == 0
    assert "13 hosts: 127.0.1.[1-8],db1:2222,node[01-04]" in done.stdout
    assert "db1:2222   deploy  2222  web" in done.stdout
    done = corunner("hosts", "--hosts", "web", "--json", cwd=tmp_path)
    doc = json.loads(done.stdout)
    assert doc["count"] == 5
    assert [h["id"] for h in doc["hosts"]] == ["node01", "node02", "node03", "node04", "db1:2222"]


def test_inventory_from_the_environment(tmp_path):
    (tmp_path / "elsewhere.yaml").write_text(GOOD)
    done = corunner(
        "hosts", "--hosts", "lab", cwd=tmp_path, env={"CORUNNER_INVENTORY": "elsewhere.yaml"}
    )
    assert done.returncode == 0 and "8 hosts: 127.0.1.[1-8]" in done.stdout


def test_status_without_any_run_says_so(tmp_path):
    done = corunner("status", cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert "no run recorded" in done.stderr
    assert "start one with `corunner run`" in done.stderr  # the command that was typed


def test_run_needs_exactly_one_of_script_and_cmd(tmp_path):
    (tmp_path / "hosts.yaml").write_text(GOOD)
    done = corunner("run", "--hosts", "lab", cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert "exactly one of --script FILE or --cmd COMMAND" in done.stderr


def test_options_of_the_output_are_checked_before_anything_is_attempted(tmp_path):
    (tmp_path / "hosts.yaml").write_text(GOOD)
    done = corunner("run", "--cmd", "true", "--hosts", "lab", "--table", "some", cwd=tmp_path)
    assert done.returncode == EXIT_USAGE
    assert "--table wants problems or all, got 'some'" in done.stderr
    done = corunner("run", "--cmd", "true", "--hosts", "lab", "--quiet", "--diff", cwd=tmp_path)
    assert done.returncode == EXIT_USAGE and "--quiet prints no output" in done.stderr


def test_help_into_a_closed_pipe_ends_cleanly(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    line = f"{sys.executable} -m corunner --help | head -1; {sys.executable} -m corunner run --help | true"
    done = subprocess.run(
        ["sh", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.stdout.startswith("Usage: corunner")
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
