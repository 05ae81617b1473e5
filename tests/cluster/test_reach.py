"""Reach nodes as ``ssh`` does: a passphrase key held by ssh-agent, known_hosts
files as OpenSSH reads them, an IPv6 node with its own port, SFTP that breaks
on a chatty login shell."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from helpers import wait_until

from corunner.errors import EXIT_LOST, EXIT_OK

FAST = ("--interval", "0.2", "--dead-after", "1.5")
PASSPHRASE = "correct horse battery staple"


class Agent:
    """An ssh-agent of the test's own, on a socket in a temporary directory."""

    def __init__(self, directory: Path):
        self.sock = directory / "agent.sock"
        self.proc = subprocess.Popen(
            ["ssh-agent", "-D", "-a", str(self.sock)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.sock.exists, timeout=10)

    def add(self, key: Path, passphrase_file: Path) -> None:
        """``ssh-add KEY`` with the passphrase from a file through SSH_ASKPASS (never argv)."""
        askpass = passphrase_file.with_name("askpass.sh")
        askpass.write_text(f"#!/bin/sh\ncat {passphrase_file}\n")
        askpass.chmod(0o700)
        env = {
            "PATH": os.environ["PATH"],
            "SSH_AUTH_SOCK": str(self.sock),
            "SSH_ASKPASS": str(askpass),
            "SSH_ASKPASS_REQUIRE": "force",
            "DISPLAY": ":0",
        }
        done = subprocess.run(
            ["ssh-add", str(key)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=20,
            start_new_session=True,  # no terminal: ssh-add must use SSH_ASKPASS
        )
        assert done.returncode == 0, done.stderr

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def passphrase_key(lab, tmp_path_factory) -> Iterator[Path]:
    """An encrypted ed25519 key (made by cryptography, so no passphrase on a command
    line), authorised on every node for this module and unauthorised after."""
    directory = tmp_path_factory.mktemp("passkey")
    private = ed25519.Ed25519PrivateKey.generate()
    key = directory / "id_pass"
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.BestAvailableEncryption(PASSPHRASE.encode()),
        )
    )
    key.chmod(0o600)
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    # No key.pub on purpose: the public half is read from the key file's clear header.
    authorized = Path(str(lab.key) + ".pub")  # the lab's AuthorizedKeysFile, every node
    before = authorized.read_bytes()
    authorized.write_bytes(before.rstrip(b"\n") + b"\n" + public + b" corunner-test-pass\n")
    try:
        yield key
    finally:
        authorized.write_bytes(before)


def keyed_inventory(lab, tmp_path: Path, key) -> Path:
    data = yaml.safe_load(lab.inventory.read_text())
    if key is None:
        del data["defaults"]["key"]
    else:
        data["defaults"]["key"] = str(key)
    path = tmp_path / "hosts-keyed.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_passphrase_key_signs_through_the_agent_and_fails_in_one_line_without(
    lab, cli, tmp_path, passphrase_key
):
    hosts = f"{lab.nodes[0].address},{lab.nodes[1].address}"
    passphrase_file = tmp_path / "passphrase"
    passphrase_file.write_text(PASSPHRASE + "\n")
    passphrase_file.chmod(0o600)
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)  # no default keys: only the agent can sign
    src = tmp_path / "one.txt"
    src.write_text("one\n")
    inv = keyed_inventory(lab, tmp_path, passphrase_key)
    copy = ("cp", "--src", str(src), "--dest", "/tmp/", "--hosts", hosts, "--inventory", str(inv))

    # No agent at all: one line per host saying ssh-add, at once, no prompt.
    done, doc = cli.json(*copy, env={"HOME": str(home), "SSH_AUTH_SOCK": ""}, timeout=30)
    assert done.returncode == EXIT_LOST, done.stderr
    line = f"key {passphrase_key} is encrypted and not in ssh-agent: run ssh-add {passphrase_key}"
    assert {h["error"].split(" (SSH_AUTH_SOCK")[0] for h in doc["hosts"]} == {line}
    assert "eval $(ssh-agent)" in doc["hosts"][0]["error"]

    agent = Agent(tmp_path)
    try:
        with_agent = {"HOME": str(home), "SSH_AUTH_SOCK": str(agent.sock)}
        # An agent without the key: the same line, without the hint to start one.
        done, doc = cli.json(*copy, env=with_agent, timeout=30)
        assert done.returncode == EXIT_LOST, done.stderr
        assert {h["error"] for h in doc["hosts"]} == {line}

        agent.add(passphrase_key, passphrase_file)
        # key: set and the key in the agent: the agent's copy signs.
        done, doc = cli.json(
            "run", "--cmd", "true", "--hosts", hosts, "--inventory", str(inv), *FAST, env=with_agent
        )
        assert done.returncode == EXIT_OK, done.stderr
        assert {h["state"] for h in doc["hosts"]} == {"succeeded"}
        # No key: at all: the agent's keys, as ssh offers them.
        bare = keyed_inventory(lab, tmp_path, None)
        done, doc = cli.json(
            "cp", "--src", str(src), "--dest", "/tmp/", "--hosts", hosts, "--inventory",
            str(bare), env=with_agent,
        )  # fmt: skip
        assert done.returncode == EXIT_OK, done.stderr
    finally:
        agent.close()
