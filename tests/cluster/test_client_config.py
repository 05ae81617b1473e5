"""Hosts reached through an OpenSSH client config, as a new user's ``~/.ssh/config`` has them.

The inventory names the hosts only: no user, key or known_hosts. The config
the test writes gives ``web1`` (an alias: HostName, User, Port, IdentityFile,
UserKnownHostsFile) and a ``Host 127.0.1.*`` block giving two lab nodes their
key and known_hosts. Switched off, neither is known: the wildcard hosts fail
on their host key (HOME is a fresh directory, so ~/.ssh/known_hosts is
empty), each with one line. ``web1`` is not connected to with ssh_config off:
resolving that name would ask this machine's DNS server, and tests send
nothing off loopback; ``hosts`` shows instead that it would be dialled as is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corunner.errors import EXIT_LOST, EXIT_OK

FAST = ("--interval", "0.2", "--dead-after", "1.5")


@pytest.fixture(scope="module")
def setup(lab, tmp_path_factory):
    root = tmp_path_factory.mktemp("sshconfig")
    web, wild, proxied = lab.nodes[0], lab.nodes[2:4], lab.nodes[5]
    # A ProxyCommand that says it was used, then carries the connection.
    proxy = root / "proxy.sh"
    proxy.write_text(f'#!/bin/sh\necho "$1 $2" >> {root}/proxy.log\nexec socat - "TCP:$1:$2"\n')
    proxy.chmod(0o755)
    config = root / "ssh_config"
    config.write_text(
        "# a user's own config\n"
        "Host web1\n"
        f"  HostName {web.address}\n"
        "  User root\n"
        "  Port 22\n"
        f"  IdentityFile {lab.key}\n"
        f"  UserKnownHostsFile {lab.known_hosts}\n"
        "  ServerAliveInterval 2\n"
        "Host 127.0.1.*\n"
        "  User root\n"
        f"  IdentityFile {lab.key}\n"
        f"  UserKnownHostsFile {lab.known_hosts}\n"
        "  CertificateFile ~/.ssh/id_ed25519-cert.pub\n"
        "  ForwardX11 yes\n"
        "Host proxied\n"
        f"  HostName {proxied.address}\n"
        "  User root\n"
        f"  IdentityFile {lab.key}\n"
        f"  UserKnownHostsFile {lab.known_hosts}\n"
        f"  ProxyCommand {proxy} %h %p\n"
    )
    inventory = root / "hosts.yaml"
    inventory.write_text(
        "defaults:\n  connect_timeout: 5\n"
        "groups:\n"
        "  web:\n    hosts: [web1]\n"
        f"  wild:\n    hosts: [{wild[0].address}, {wild[1].address}]\n"
    )
    home = root / "home"
    home.mkdir()
    return {
        "config": config,
        "inventory": inventory,
        "home": home,
        "web": web,
        "wild": wild,
        "proxied": proxied,
        "proxy_log": root / "proxy.log",
    }


def test_an_alias_and_a_wildcard_block_reach_their_hosts_and_none_switches_them_off(
    lab, cli, setup
):
    env = {"CORUNNER_INVENTORY": str(setup["inventory"]), "HOME": str(setup["home"])}
    web, wild = setup["web"], setup["wild"]
    config = str(setup["config"])

    # What will really be used, and where it comes from (no node contacted).
    done = cli("hosts", "--json", env={**env, "CORUNNER_SSH_CONFIG": config})
    assert done.returncode == EXIT_OK, done.stderr
    doc = {h["id"]: h for h in json.loads(done.stdout)["hosts"]}
    assert doc["web1"]["address"] == web.address
    assert doc["web1"]["origins"]["address"] == f"{config} line 3"
    assert doc["web1"]["key"] == str(lab.key)
    assert doc[wild[0].address]["origins"]["key"] == f"{config} line 11"

    # One run through the config: the alias and the wildcard hosts all run.
    done, run = cli.json(
        "run", "--cmd", "hostname", "--show-output", "--ssh-config", config, *FAST, env=env
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert {h["host"]: h["state"] for h in run["hosts"]} == {
        "web1": "succeeded",
        wild[0].address: "succeeded",
        wild[1].address: "succeeded",
    }
    outputs = {tuple(g["hosts"]): g["output"] for g in run["outputs"]["groups"]}
    assert outputs[("web1",)].strip().splitlines()[-1] == web.hostname
    # The unsupported line that applies to two hosts is said once, with its file and line.
    warning = f"warning: {config} line 13: CertificateFile is not supported"
    assert done.stderr.count(warning) == 1, done.stderr
    assert "ForwardX11" not in done.stderr

    # Switched off: the alias would be dialled by its own name, the wildcard
    # hosts get no key and no known_hosts, and say so in one line each.
    done = cli("hosts", "--json", "--ssh-config", "none", env=env)
    web1 = next(h for h in json.loads(done.stdout)["hosts"] if h["name"] == "web1")
    assert (web1["address"], web1["origins"]["address"]) == ("web1", "default")
    done, off = cli.json(
        "run", "--cmd", "hostname", "--ssh-config", "none", "--hosts", "wild", *FAST, env=env
    )
    assert done.returncode == EXIT_LOST, done.stderr
    known = Path(setup["home"]) / ".ssh" / "known_hosts"
    for host in off["hosts"]:
        assert host["state"] == "unreachable"
        assert host["error"].startswith(f"host key not in {known}"), host["error"]
    assert "Traceback" not in done.stderr


def test_a_proxy_command_carries_every_connection_of_its_host(lab, cli, setup):
    env = {"CORUNNER_INVENTORY": str(setup["inventory"]), "HOME": str(setup["home"])}
    node, config = setup["proxied"], str(setup["config"])
    done, run = cli.json(
        "run",
        "--cmd",
        "hostname",
        "-H",
        "root@proxied",
        "--show-output",
        "--ssh-config",
        config,
        *FAST,
        env=env,
    )
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert [(h["host"], h["state"]) for h in run["hosts"]] == [("proxied", "succeeded")]
    (group,) = run["outputs"]["groups"]
    assert group["output"].strip().splitlines()[-1] == node.hostname
    # The start and the output's fetch: each went through the command, to the address.
    used = setup["proxy_log"].read_text().splitlines()
    assert len(used) >= 2 and set(used) == {f"{node.address} 22"}
