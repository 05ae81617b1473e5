"""Jump hosts in the inventory (``jump:``, ``heartbeat:``) and the chain's parsing."""

from __future__ import annotations

from typing import Any

import pytest

from corunner.errors import InventoryError
from corunner.inventory import Inventory, inventory_from_dict, parse_jump, split_hop


def build(data: Any) -> Inventory:
    return inventory_from_dict(data, source="hosts.yaml", base_dir="/inv", local_user="alice")


@pytest.mark.parametrize(
    "text, chain",
    [
        ("bastion", ("bastion",)),
        ("ops@bastion:2222", ("ops@bastion:2222",)),
        (" a , b@c:22 ,d ", ("a", "b@c:22", "d")),
        ("none", ()),
        ("NONE", ()),
        ("", ()),
        ("[::1]:2201", ("[::1]:2201",)),
        ("u@[fd00::7]", ("u@fd00::7",)),
    ],
)
def test_a_chain_is_hops_first_hop_first(text: str, chain: tuple) -> None:
    assert parse_jump(text) == chain


@pytest.mark.parametrize(
    "text, said",
    [
        ("a,,b", "empty hop"),
        ("a,", "empty hop"),
        ("a,none", "'none' cannot be part of a chain"),
        ("gw:99999", "port must be a number"),
        ("gw:x", "port must be a number"),
        ("node[1-3]", "one host, no pattern"),
        ("@gw", "bad user"),
        ("[::1", "IPv6"),
    ],
)
def test_a_bad_hop_says_what_is_wrong(text: str, said: str) -> None:
    with pytest.raises(ValueError, match=said.replace("[", r"\[")):
        parse_jump(text)


def test_split_hop_gives_user_host_and_port() -> None:
    assert split_hop("ops@gw:2222") == ("ops", "gw", 2222)
    assert split_hop("gw") == (None, "gw", None)
    assert split_hop("[::1]:2201") == (None, "::1", 2201)


def test_jump_at_defaults_group_and_entry_level_the_closest_wins() -> None:
    inv = build(
        {
            "defaults": {"user": "root", "jump": "gw1"},
            "groups": {
                "a": {"hosts": ["n1"]},
                "b": {"hosts": ["n2", {"host": "n3", "jump": "none"}], "jump": "ops@gw2:2222,gw3"},
                "c": {"hosts": [{"host": "deploy@n[4-5]:2200", "jump": ["gw4", "gw5"]}]},
            },
        }
    )
    jumps = {h.id: h.jump for h in inv.hosts}
    assert jumps == {
        "n1": ("gw1",),
        "n2": ("ops@gw2:2222", "gw3"),
        "n3": (),
        "n4:2200": ("gw4", "gw5"),
        "n5:2200": ("gw4", "gw5"),
    }
    assert inv.host("n4:2200").user == "deploy"


def test_heartbeat_auto_tunnels_behind_a_jump_host_only() -> None:
    inv = build(
        {
            "defaults": {"user": "root"},
            "groups": {
                "a": {"hosts": ["n1", {"host": "n2", "jump": "gw"}]},
                "b": {"hosts": ["n3"], "jump": "gw", "heartbeat": "direct"},
                "c": {"hosts": ["n4"], "heartbeat": "tunnel"},
            },
        }
    )
    via = {h.id: h.heartbeat_via() for h in inv.hosts}
    assert via == {"n1": "direct", "n2": "tunnel", "n3": "direct", "n4": "tunnel"}
    # --heartbeat-via wins over the inventory; auto leaves it to each host.
    assert inv.host("n3").heartbeat_via("tunnel") == "tunnel"
    assert inv.host("n2").heartbeat_via("direct") == "direct"
    assert inv.host("n3").heartbeat_via("auto") == "direct"


def test_a_host_named_ad_hoc_gets_the_defaults_jump() -> None:
    inv = build({"defaults": {"user": "root", "jump": "gw"}, "groups": {"a": {"hosts": ["n1"]}}})
    (extra,) = inv.not_listed(inv.select("n1,10.0.0.7"))
    assert extra.jump == ("gw",)


@pytest.mark.parametrize(
    "data, said",
    [
        ({"defaults": {"jump": 3}}, "jump must be [user@]host[:port]"),
        ({"defaults": {"jump": "a,,b"}}, "jump: empty hop"),
        ({"defaults": {"heartbeat": "ssh"}}, "heartbeat must be one of auto, direct, tunnel"),
        ({"defaults": {"jmp": "gw"}}, "did you mean 'jump'"),
        ({"groups": {"a": {"hosts": [{"jump": "gw"}]}}}, "needs 'host:'"),
        ({"groups": {"a": {"hosts": [{"host": "n1", "hosts": "x"}]}}}, "did you mean 'host'"),
    ],
)
def test_bad_jump_and_heartbeat_settings_are_one_line(data: dict, said: str) -> None:
    data = {"groups": {"g": {"hosts": ["n1"]}}, **data}
    data.setdefault("defaults", {})["user"] = "root"
    with pytest.raises(InventoryError) as err:
        build(data)
    assert said in str(err.value)


def test_hosts_behind_a_failed_jump_host_share_one_folded_line() -> None:
    from corunner import render

    cause = "gw (jump host for 3 hosts): connection refused on port 22 (is sshd running?)"
    lines = render.errors(
        [("n1", cause), ("n2", cause), ("web", "host key differs"), ("n3", cause)]
    )
    assert lines == [f"n[1-3]: {cause}", "web: host key differs"]


def test_a_hop_takes_what_it_does_not_say_from_its_target() -> None:
    from corunner.remote import chain_of

    inv = build(
        {
            "defaults": {"user": "deploy", "key": "id", "connect_timeout": 3},
            "groups": {"a": {"hosts": ["n1:2200"], "jump": "ops@gw1:2222,gw2"}},
        }
    )
    host = inv.hosts[0]
    first, second = chain_of(host)
    assert (first.name, first.address, first.user, first.port) == ("gw1", "gw1", "ops", 2222)
    assert first.key == "/inv/id"
    assert (second.id, second.user, second.jump, second.connect_timeout) == ("gw2", "deploy", (), 3)


def test_the_inventorys_jump_wins_over_ssh_configs_proxy_jump_and_proxy_command() -> None:
    from corunner import sshconfig

    config = sshconfig.parse(
        "Host n1\n  ProxyJump far\nHost n2\n  ProxyCommand nc %h %p\nHost *\n  ProxyJump gw\n",
        "/home/alice/.ssh/config",
        home="/home/alice",
        base="/home/alice/.ssh",
    )
    data = {
        "defaults": {"user": "root"},
        "groups": {
            "cfg": {"hosts": ["n1", "n2", "n3"]},
            "inv": {"hosts": ["n4", {"host": "n5", "jump": "none"}], "jump": "mine"},
        },
    }
    inv = inventory_from_dict(data, source="hosts.yaml", local_user="alice", ssh_config=config)
    got = {h.id: (h.jump, h.proxy_command, h.heartbeat_via()) for h in inv.hosts}
    assert got == {
        "n1": (("far",), None, "tunnel"),
        "n2": ((), "nc n2 22", "tunnel"),
        "n3": (("gw",), None, "tunnel"),
        "n4": (("mine",), None, "tunnel"),
        "n5": ((), None, "direct"),
    }
    assert dict(inv.host("n4").origins)["jump"] == "inventory hosts.yaml:group inv"
    assert dict(inv.host("n1").origins)["jump"] == "~/.ssh/config line 2"
