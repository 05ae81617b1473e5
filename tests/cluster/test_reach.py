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


def free_v6_port() -> int:
    import socket

    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])


#: Index of the IPv6 node: outside the session lab (101-108) and ``inv lab.up``'s (1-8).
V6_INDEX = 240


@pytest.fixture(scope="module")
def v6_node(lab):
    """A node on ``[::1]:PORT`` whose sshd runs the external sftp-server (through
    the login shell, as a stock Debian sshd does)."""
    node = lab.extra_node(
        V6_INDEX, "::1", free_v6_port(), sftp_server="/usr/lib/openssh/sftp-server"
    )
    text = lab.known_hosts.read_text()
    port = int(text.rsplit("[::1]:", 1)[1].split()[0])
    try:
        yield node, port
    finally:
        lab.stop_extra(node)


def v6_inventory(lab, tmp_path: Path, port: int, user: str = "root") -> Path:
    data = yaml.safe_load(lab.inventory.read_text())
    data["groups"]["v6"] = {"hosts": [f"{user}@[::1]:{port}"]}
    if user != "root":
        data["defaults"].pop("remote_dir", None)
    path = tmp_path / f"hosts-v6-{user}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_an_ipv6_host_with_its_own_port_runs_and_collects(lab, cli, tmp_path, v6_node):
    _, port = v6_node
    host_id = f"[::1]:{port}"
    inv = str(v6_inventory(lab, tmp_path, port))
    done = cli("hosts", "--hosts", "v6", "--inventory", inv)
    assert done.returncode == EXIT_OK and host_id in done.stdout, done.stdout + done.stderr
    done, doc = cli.json(
        "run", "--cmd", "echo from-v6; hostname", "--hosts", host_id, "--inventory", inv, *FAST
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert [(h["host"], h["state"]) for h in doc["hosts"]] == [(host_id, "succeeded")]
    done = cli("collect", "--divide", "--dest", str(tmp_path / "res"), "--inventory", inv)
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    local = f"++1+{port}"  # Host.local_name: no ':' on the local side
    assert sorted(os.listdir(tmp_path / "res")) == [local]
    assert (tmp_path / "res" / local / "stdout").read_text() == f"from-v6\nnode{V6_INDEX}\n"


def test_sftp_broken_by_a_chatty_shell_falls_back_to_tar_with_a_note(
    lab, cli, tmp_path, v6_node, field_users
):
    _, port = v6_node
    host_id = f"[::1]:{port}"
    inv = str(v6_inventory(lab, tmp_path, port, user="cr-deploy"))  # .bashrc prints noise
    src = tmp_path / "one.bin"
    src.write_bytes(os.urandom(100_000))
    push = ("cp", "--src", str(src), "--hosts", "v6", "--inventory", inv)
    # The controller's ssh runs no SFTP: the noise is only noise to it.
    done = cli(*push, "--dest", "/tmp/ssh.bin")
    assert done.returncode == EXIT_OK and "note:" not in done.stdout, done.stdout + done.stderr
    # Paramiko's SFTP path (no ssh here) breaks on the noise and says so.
    cli.env["CORUNNER_OPENSSH"] = "0"
    done = cli(*push, "--dest", "/tmp/")
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    note = f"{host_id}: note: SFTP failed: Garbage packet received"
    assert note in done.stdout and "copied with tar instead" in done.stdout, done.stdout
    done = cli(
        "cp", "--pull", "--src", "/tmp/one.bin", "--dest", str(tmp_path / "back"), "--divide",
        "--hosts", "v6", "--inventory", inv,
    )  # fmt: skip
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert note in done.stdout, done.stdout
    assert (tmp_path / "back" / f"++1+{port}" / "one.bin").read_bytes() == src.read_bytes()
    done = cli(
        "cp", "--pull", "--src", "/tmp/ssh.bin", "--dest", str(tmp_path / "back2"), "--divide",
        "--hosts", "v6", "--inventory", inv,
    )  # fmt: skip
    assert (tmp_path / "back2" / f"++1+{port}" / "ssh.bin").read_bytes() == src.read_bytes()
    # When the tar path fails too, its error says why and keeps the SFTP cause.
    done, doc = cli.json(*push, "--dest", "/proc/no/such/dir/")
    assert done.returncode != EXIT_OK
    (error,) = [h["error"] for h in doc["hosts"]]
    assert error.startswith("copy to /proc/no/such/dir/ failed: "), error
    assert error.endswith("(after SFTP failed: Garbage packet received (does a start-up file "
                          "of the login shell print to stdout?))"), error  # fmt: skip


def test_known_hosts_with_odd_lines_and_a_global_file_as_openssh_reads_them(lab, cli, tmp_path):
    """Among the lab's real lines: hashed ones, a @revoked key (one node's own), a
    @cert-authority line (the only line of another node), corrupt lines; one node
    known only to the global file. Each node gets what OpenSSH would give it."""
    import base64
    import hashlib
    import hmac

    real = {}
    for line in lab.known_hosts.read_text().splitlines():
        name, kind, blob = line.split()[:3]
        real[name] = f"{kind} {blob}"
    addresses = [n.address for n in lab.nodes]
    hashed, revoked, global_only, cert_only = addresses[0], addresses[5], addresses[6], addresses[7]
    salt = os.urandom(20)
    digest = hmac.new(salt, hashed.encode(), hashlib.sha1).digest()
    b64 = base64.b64encode
    user_lines = [
        "# odd lines among real ones",
        f"|1|{b64(salt).decode()}|{b64(digest).decode()} {real[hashed]}",
        *(f"{a} {real[a]}" for a in addresses[1:6]),
        "this line is corrupt",
        f"@revoked * {real[revoked]}",
        f"@cert-authority {cert_only},*.example.com {real[hashed]}",
        "@bogus-marker x ssh-ed25519 AAAA",
    ]
    user = tmp_path / "known_hosts"
    user.write_text("\n".join(user_lines) + "\n")
    glob = tmp_path / "ssh_known_hosts"
    glob.write_text(f"{global_only} {real[global_only]}\n")
    data = yaml.safe_load(lab.inventory.read_text())
    data["defaults"]["known_hosts"] = str(user)
    inv = tmp_path / "hosts-kh.yaml"
    inv.write_text(yaml.safe_dump(data))
    src = tmp_path / "f.txt"
    src.write_text("x\n")
    done, doc = cli.json(
        "cp", "--src", str(src), "--dest", "/tmp/", "--inventory", str(inv),
        env={"CORUNNER_GLOBAL_KNOWN_HOSTS": str(glob)},
    )  # fmt: skip
    errors = {h["host"]: h["error"] for h in doc["hosts"]}
    assert done.returncode == EXIT_LOST, done.stderr
    assert errors.pop(revoked) == (
        f"host key is marked @revoked in {user} line 9: refusing it (the key was withdrawn: "
        "ask the host's admin for its new key)"
    )
    assert errors.pop(cert_only).startswith(
        f"host certificates are not supported: {user} line 10 vouches for {cert_only} only "
        "by @cert-authority; add the host's own key"
    )
    assert errors == {a: None for a in addresses if a not in (revoked, cert_only)}
    # The corrupt lines: one warning for the file, said once however many hosts read it.
    warning = f"warning: {user}: cannot parse known_hosts lines 8, 11; skipped them"
    assert done.stderr.count(warning) == 1, done.stderr
    assert done.stderr.count("warning:") == 1, done.stderr
