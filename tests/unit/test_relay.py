"""The relay's pure parts: frames, status lines, offsets, the chain, resuming, TLS pinning."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from corunner import relay, relaynode
from corunner.errors import StalledError
from corunner.inventory import Host


def test_frames_round_trip_and_garbage_is_refused() -> None:
    stream = io.BytesIO(
        relaynode.frame("C", {"size": 3})
        + relaynode.frame("N", [["127.0.0.1", 4242]])
        + relaynode.data_header(7, 3)
        + b"abc"
        + relaynode.frame("Q")
    )
    assert relaynode._read_frame(stream) == ("C", 0, b'{"size": 3}')
    assert relaynode._read_frame(stream) == ("N", 0, b'[["127.0.0.1", 4242]]')
    assert relaynode._read_frame(stream) == ("D", 7, b"abc")
    assert relaynode._read_frame(stream)[0] == "Q"
    assert relaynode._read_frame(stream)[0] == "Q"  # the end of stdin is the end too
    for bad in (b"X 1\n", b"D 1\n", b"C -1\n", b"D 1 2", b"C 1 2\n", b"D " + b"9" * 80 + b" 1\n"):
        with pytest.raises(ValueError):
            relaynode.parse_header(bad)
    with pytest.raises(ValueError):
        relaynode.frame("D", {})


def test_a_data_frame_cut_short_ends_the_stream() -> None:
    stream = io.BytesIO(relaynode.data_header(0, 10) + b"abc")
    assert relaynode._read_frame(stream)[0] == "Q"


def test_status_lines_survive_shell_noise_and_stay_one_line() -> None:
    line = relaynode.status_line("FAIL", "cannot write\nin /tmp:  No space")
    assert line == b"CORUNNER-RELAY FAIL cannot write in /tmp: No space\n"
    assert relaynode.parse_status(line) == ("FAIL", "cannot write in /tmp: No space")
    assert relaynode.parse_status(b"CORUNNER-RELAY PORT 4242\n") == ("PORT", "4242")
    assert relaynode.parse_status(b"Welcome to node3! CORUNNER-RELAY DONE\n") is None
    assert relaynode.parse_status(b"CORUNNER-RELAY \n") is None


def test_acknowledged_offsets_are_read_whole_and_the_last_wins() -> None:
    buffer = bytearray(relaynode.encode_offset(5) + relaynode.encode_offset(9)[:3])
    assert relaynode.decode_offsets(buffer) == 5
    assert relaynode.decode_offsets(buffer) is None  # 3 bytes of the next: not yet
    buffer += relaynode.encode_offset(9)[3:] + relaynode.encode_offset(12)
    assert relaynode.decode_offsets(buffer) == 12
    assert buffer == bytearray()


def test_target_path_follows_the_cp_rules() -> None:
    dirs = {"/data", "/data/"}
    assert relaynode.target_path("/data", "f.bin", dirs.__contains__) == "/data/f.bin"
    assert relaynode.target_path("/new/", "f.bin", dirs.__contains__) == "/new/f.bin"
    assert relaynode.target_path("/new", "f.bin", dirs.__contains__) == "/new"
    assert relaynode.target_path("/", "f.bin", lambda p: True) == "/f.bin"


def test_the_chain_grows_as_nodes_come_up_and_serves_the_others_directly() -> None:
    chain = relay.Chain()
    assert chain.join("a", True) == ()  # the first listener: the head
    assert chain.join("b", False) == ()  # cannot listen: served directly, told to nobody
    assert chain.join("c", True) == ("a",)
    assert chain.join("d", True) == ("a", "c")
    assert (chain.order, chain.direct) == (["a", "c", "d"], ["b"])
    long = relay.plan_chain([(str(i), True) for i in range(100)])
    told = long.join("new", True)  # the last BYPASS_DEPTH: its feeder and those that bypass to it
    assert told == tuple(str(i) for i in range(100 - relay.BYPASS_DEPTH, 100))


def test_resume_offsets_stay_within_the_payload() -> None:
    assert relay.resume_offset(0, 100) == 0
    assert relay.resume_offset(40, 100) == 40
    assert relay.resume_offset(140, 100) == 100
    assert relay.resume_offset(-1, 100) == 0


def test_relay_auto_follows_the_measured_thresholds() -> None:
    saved, few = relay.AUTO_MIN_SAVED, relay.AUTO_MIN_HOSTS
    seventh = -(-saved // 7)  # 8 hosts: 7 copies saved
    assert relay.wanted("auto", seventh, 8)
    assert not relay.wanted("auto", seventh - 1, 8)
    assert relay.wanted("auto", saved, few)
    assert not relay.wanted("auto", 10 * saved, few - 1)
    assert relay.wanted(True, 1, 1)
    assert not relay.wanted(None, saved, 100)


@pytest.fixture(scope="module")
def creds() -> relay.Credentials:
    return relay.credentials()


def _node(tmp_path: Path, creds: relay.Credentials, data: bytes) -> relaynode.Relay:
    cfg: Dict[str, Any] = {
        "id": "0" * 32,
        "cert": creds.cert,
        "key": creds.key,
        "pin": creds.pin,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "kind": "file",
        "name": "f.bin",
        "dest": str(tmp_path) + "/",
        "mode": 0o640,
        "mtime": 1_000_000.0,
        "bind": "127.0.0.1",
        "stall": 1.0,
        "script": "",
    }
    node = relaynode.Relay(cfg, io.BytesIO())
    node.prepare()
    return node


def test_bytes_from_any_source_are_written_once_in_order(
    tmp_path: Path, creds: relay.Credentials
) -> None:
    data = os.urandom(1000)
    node = _node(tmp_path, creds, data)
    node.write(0, data[:300])
    node.write(100, data[100:500])  # overlaps: only what is new is kept
    node.write(700, data[700:900])  # a gap: dropped, never written out of order
    assert node.have == 500
    node.write(500, data[500:])
    assert node.have == 1000
    deadline = threading.Event()
    for _ in range(100):
        if node.finished:
            break
        deadline.wait(0.02)
    target = tmp_path / "f.bin"
    assert target.read_bytes() == data
    assert oct(target.stat().st_mode & 0o777) == oct(0o640)
    assert target.stat().st_mtime == 1_000_000.0
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # the temporary name is gone
    assert b"CORUNNER-RELAY DONE" in node.out.getvalue()  # type: ignore[attr-defined]


def test_tls_between_nodes_needs_the_transfers_certificate(creds: relay.Credentials) -> None:
    server, client = relaynode.contexts(creds.cert, creds.key)
    other = relay.credentials()
    _, stranger = relaynode.contexts(other.cert, other.key)

    def handshake(client_ctx: ssl.SSLContext) -> str:
        a, b = socket.socketpair()
        result: Dict[str, str] = {}

        def serve() -> None:
            try:
                s = server.wrap_socket(a, server_side=True)
                result["server"] = "ok" if relaynode.pinned(s, creds.pin) else "not pinned"
                s.close()
            except (ssl.SSLError, OSError) as exc:
                result["server"] = type(exc).__name__
                a.close()

        thread = threading.Thread(target=serve)
        thread.start()
        try:
            c = client_ctx.wrap_socket(b)
            c.recv(1)  # TLS 1.3: the server's verdict on our certificate comes after
            c.close()
        except (ssl.SSLError, OSError):
            b.close()
        thread.join(5)
        return result.get("server", "none")

    assert handshake(client) == "ok"
    assert handshake(stranger) == "SSLError"
    assert creds.key not in creds.cert and "PRIVATE KEY" in creds.key


def test_relay_address_comes_from_the_inventory_and_is_checked() -> None:
    from corunner.errors import InventoryError
    from corunner.inventory import inventory_from_dict

    inv = inventory_from_dict(
        {
            "defaults": {"user": "root"},
            "groups": {
                "a": {"hosts": ["n1"], "relay_address": "10.9.0.1"},
                "b": {"hosts": ["n2"], "relay_address": "[fd00::2]"},
                "c": {"hosts": ["n3"]},
            },
        }
    )
    assert [h.relay_address for h in inv.hosts] == ["10.9.0.1", "fd00::2", None]
    with pytest.raises(InventoryError, match="relay_address must be"):
        inventory_from_dict({"defaults": {"user": "root", "relay_address": 7}, "groups": {}})


def test_a_dry_relay_says_it_sends_once_and_counts_no_bytes_per_host(tmp_path: Path) -> None:
    from corunner import plan
    from corunner.inventory import inventory_from_dict

    src = tmp_path / "f.bin"
    src.write_bytes(b"x" * 100)
    hosts = inventory_from_dict({"defaults": {"user": "r"}, "groups": {"g": {"hosts": ["n[1-4]"]}}})
    relayed = plan.copy_plan(hosts.hosts, str(src), "/d/", False, False, relay=True)
    assert "sent once" in " ".join(relayed.lines())
    small = plan.copy_plan(hosts.hosts, str(src), "/d/", False, False, relay="auto")
    assert "SFTP" in " ".join(small.lines())  # 100 bytes: auto copies directly


def _watched(haves: Dict[str, int], age: float, direct: Tuple[str, ...] = ("a",)) -> Any:
    """Nodes of chain a, b, c with these offsets, silent for ``age`` seconds."""
    now = time.monotonic()
    nodes = {}
    for name, have in haves.items():
        host = Host(name, "u", 22, None, None, "/tmp/x", "python3", 5.0)
        node = relay._Node(host, None, None, name, "/dest")  # type: ignore[arg-type]
        node.have, node.progress_at, node.direct = have, now - age, name in direct
        nodes[name] = node
    return nodes, relay.plan_chain([(name, True) for name in haves])


def test_the_first_node_behind_its_predecessors_is_served_and_a_slow_fleet_is_left_alone() -> None:
    times = relay.Times(stall=1, serve_after=5, give_up=10)
    served: List[str] = []
    ended: Dict[str, Any] = {}

    def serve(node: Any) -> None:
        served.append(node.host.name)

    def finish(node: Any, error: Any) -> None:
        ended[node.host.name] = error
        node.error = error

    nodes, chain = _watched({"a": 100, "b": 10, "c": 10}, age=6)
    relay._watch(nodes, chain, times, serve, finish)
    assert served == ["b"]  # only the first: c waits on b
    served.clear()
    nodes, chain = _watched({"a": 10, "b": 10, "c": 10}, age=6)
    relay._watch(nodes, chain, times, serve, finish)
    assert served == [] and ended == {}  # all slow alike: nobody is stalled
    nodes, chain = _watched({"a": 10, "b": 10, "c": 10}, age=11)
    relay._watch(nodes, chain, times, serve, finish)
    assert isinstance(ended["a"], StalledError)  # the head, fed directly, made no progress
    assert served == ["b"]  # and b, with nothing before it left, is served at once
