"""cp --relay on the lab: one copy sent, every node's checked; faults mid-transfer.

The payloads are a few MiB, so that each run takes a few seconds. Faults are
made from the hook the chain's head feeder calls after each chunk: while it
runs, the controller sends nothing more, so the nodes broken there are
broken mid-transfer (they hold part of the payload, not all of it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import ssl
import tempfile
import threading
from pathlib import Path
from typing import Dict, List, Tuple

import jsonschema
from conftest import Cli, node_sh

from corunner import relay, relaynode, transfer
from corunner.errors import StalledError, TransferError
from corunner.inventory import Host
from corunner.loader import load_inventory
from corunner.testing.lab import Lab, Node

MIB = 1 << 20


def lab_hosts(lab: Lab) -> List[Host]:
    return load_inventory(str(lab.inventory)).select()


def write_random(path: Path, size: int) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha_on(lab: Lab, node: int, path: str) -> str:
    out = node_sh(lab, node, f"sha256sum {path} 2>/dev/null || echo missing")
    return out.split()[0] if out.strip() else "missing"


def leftovers(lab: Lab, node: int, directory: str) -> str:
    """Temporary files of a relay left in ``directory`` on a node ('' when none)."""
    return node_sh(
        lab, node, f"ls -a {directory} 2>/dev/null | grep corunner-relay || true"
    ).strip()


def knock(address: str, port: int) -> Dict[str, str]:
    """Try the relay port as strangers would; what each attempt got."""
    seen: Dict[str, str] = {}

    def attempt(name: str, wrap: object) -> None:
        try:
            with socket.create_connection((address, port), timeout=5) as raw:
                sock = wrap(raw) if callable(wrap) else raw
                sock.sendall(b"CRLY1 " + b"0" * 32 + b"\n")
                got = sock.recv(8)
                seen[name] = "answered" if got else "closed"
        except (OSError, ssl.SSLError) as exc:
            seen[name] = f"refused ({type(exc).__name__})"

    attempt("plain tcp", None)
    no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_cert.check_hostname = False
    no_cert.verify_mode = ssl.CERT_NONE
    attempt("tls without a certificate", lambda raw: no_cert.wrap_socket(raw))
    stranger = relay.credentials()  # a valid certificate, but not this transfer's
    _, other = relaynode.contexts(stranger.cert, stranger.key)
    other.verify_mode = ssl.CERT_NONE  # it would refuse the node's; see what the node does
    attempt("tls with another certificate", lambda raw: other.wrap_socket(raw))
    return seen


def test_a_tree_relayed_to_every_node_arrives_whole_and_strangers_are_refused(
    healthy_lab: Lab, tmp_path: Path
) -> None:
    lab = healthy_lab
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    big = write_random(tree / "sub" / "big.bin", 3 * MIB)
    (tree / "a.txt").write_text("hello\n")
    (tree / "sub" / "run.sh").write_text("#!/bin/sh\necho run\n")
    (tree / "sub" / "run.sh").chmod(0o750)
    (tree / "link").symlink_to("a.txt")
    knocked: Dict[str, Dict[str, str]] = {}

    def planned(ports: Dict[str, Tuple[str, int]]) -> None:
        host, (address, port) = sorted(ports.items())[3]
        knocked[host] = knock(address, port)

    with tempfile.TemporaryDirectory() as work:
        archive = transfer.build_archive(str(tree), work)
        outcomes = relay.push(lab_hosts(lab), archive, "/tmp/relayed/", planned=planned)
        size = os.path.getsize(archive.path)

    assert all(o.ok for o in outcomes.values()), {h: o.error for h, o in outcomes.items()}
    vias = sorted(o.value.via for o in outcomes.values() if o.value)
    assert vias == ["head"] + ["relay"] * 7
    sent = sum(o.value.bytes_sent for o in outcomes.values() if o.value)
    assert sent < 1.1 * size + 8 * 16_000  # once, plus boot and config
    (attempts,) = knocked.values()
    assert all(not v.startswith("answered") for v in attempts.values()), attempts
    listing = (
        "cd /tmp/relayed/tree && find . -printf '%M %p %l\\n' | sort && sha256sum sub/big.bin"
        " && cat a.txt && ls -a /tmp/relayed"
    )
    for node in lab.nodes:
        out = node_sh(lab, node.index, listing)
        assert "-rw-r--r-- ./a.txt" in out
        assert "-rwxr-x--- ./sub/run.sh" in out
        assert "lrwxrwxrwx ./link a.txt" in out
        assert big in out and "hello" in out, (node.address, out)
        assert "corunner-relay" not in out  # no temporary file left beside it


def test_cp_relay_on_the_command_line_sends_the_file_once(cli: Cli, tmp_path: Path) -> None:
    src = tmp_path / "data.bin"
    digest = write_random(src, 4 * MIB)
    done = cli("cp", "--relay", "--src", str(src), "--dest", "/tmp/relay-cli/", "--json")
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    schema = json.loads((Path(relay.__file__).parent / "schemas" / "cp.json").read_text())
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    assert doc["summary"] == {"succeeded": 8}
    assert sorted(h["via"] for h in doc["hosts"]) == ["head"] + ["relay"] * 7
    assert doc["relay"]["spread_seconds"] < 10
    assert doc["relay"]["bytes_sent"] < 1.1 * 4 * MIB
    assert "relay:" in done.stderr and "bytes sent from here" in done.stderr
    for node in cli.lab.nodes:
        assert sha_on(cli.lab, node.index, "/tmp/relay-cli/data.bin") == digest


def test_killed_frozen_and_unreachable_nodes_mid_relay(healthy_lab: Lab, tmp_path: Path) -> None:
    """One node killed and one frozen mid-transfer, one whose peers cannot reach it.

    The killed and the frozen node are reported (failed, stalled); their
    predecessors bypass them; the node that cannot listen for its peers
    (relay_address is no address of it) is served directly by the controller;
    every other node gets a whole, checked copy and no temporary file is left.
    """
    lab = healthy_lab
    hosts = lab_hosts(lab)
    # TEST-NET, no address of this machine: the node cannot bind it, so nobody is
    # told of it and nothing connects there. Where the kernel binds any address
    # (ip_nonlocal_bind), its peers would try: refuse to run rather than send traffic.
    nonlocal_bind = Path("/proc/sys/net/ipv4/ip_nonlocal_bind")
    assert not nonlocal_bind.exists() or nonlocal_bind.read_text().strip() == "0", (
        "net.ipv4.ip_nonlocal_bind is on: this test would send traffic off loopback"
    )
    hosts[7] = dataclasses.replace(hosts[7], relay_address="192.0.2.1")
    src = tmp_path / "payload.bin"
    digest = write_random(src, 6 * MIB)
    broken: List[int] = []
    chained = threading.Event()  # every node came up and joined the chain
    # The victims are picked by their place in the chain, known only once it formed
    # (nodes join as they come up): neither is its head (fed by the controller) or its
    # tail (nobody after it to go on to), nor next to the other, so each has a live
    # predecessor that must go around it.
    victims: List[Node] = []
    by_peer_address = {n.address: n for n in lab.nodes}

    def planned(chain: Dict[str, Tuple[str, int]]) -> None:
        order = [by_peer_address[address] for address, _ in chain.values()]
        assert len(order) == 7, order  # every node but the one that cannot listen
        victims.extend([order[2], order[4]])
        chained.set()

    def fed(offset: int) -> None:
        if offset >= MIB and not broken:
            assert chained.wait(60), "the chain never formed"
            broken.append(offset)
            lab.kill(victims[0].index)
            lab.freeze(victims[1].index)

    times = relay.Times(stall=1.0, serve_after=2.0, give_up=3.0)
    with tempfile.TemporaryDirectory() as work:
        archive = transfer.build_archive(str(src), work)
        outcomes = relay.push(hosts, archive, "/tmp/faults/", times=times, fed=fed, planned=planned)
    assert broken, "the payload never reached the hook"
    killed, frozen = victims

    by_address = {o.host.name: o for o in outcomes.values()}
    assert isinstance(by_address[killed.address].error, TransferError)
    assert "SSH session closed" in str(by_address[killed.address].error)
    assert isinstance(by_address[frozen.address].error, StalledError)
    assert "stalled" in str(by_address[frozen.address].error)
    whole = [n for n in lab.nodes if n not in (killed, frozen)]
    for node in whole:
        outcome = by_address[node.address]
        assert outcome.ok, (node.address, outcome.error)
    assert by_address[lab.nodes[7].address].value.via == "direct"
    # Their predecessors went around them.
    skips = [s for o in outcomes.values() if o.value for s in o.value.bypassed]
    assert any(killed.address in s for s in skips), skips
    assert any(frozen.address in s for s in skips), skips
    lab.thaw(frozen.index)
    for node in whole:
        assert sha_on(lab, node.index, "/tmp/faults/payload.bin") == digest, node.address
        assert leftovers(lab, node.index, "/tmp/faults") == ""
