"""Host forms as OpenSSH and users write them: ``[v6addr]:port``, ids printed
``[::1]:2201``, local names without ``:``, zero-padded IPv4 octets refused."""

from __future__ import annotations

import pytest

from corunner.errors import HostRangeError, InventoryError
from corunner.hostrange import expand, fold
from corunner.inventory import Host, ad_hoc_entry, inventory_from_dict


def inv(*entries: str):
    return inventory_from_dict(
        {"defaults": {"user": "root"}, "groups": {"g": {"hosts": list(entries)}}}
    )


def test_bracketed_ipv6_entries_carry_user_and_port():
    hosts = inv("[::1]:2201", "deploy@[fd00::5]:2222", "[fd00::6]", "fd00::7").hosts
    assert [(h.user, h.name, h.port) for h in hosts] == [
        ("root", "::1", 2201),
        ("deploy", "fd00::5", 2222),
        ("root", "fd00::6", 22),
        ("root", "fd00::7", 22),
    ]
    assert [h.id for h in hosts] == ["[::1]:2201", "[fd00::5]:2222", "fd00::6", "fd00::7"]


def test_a_port_carrying_ipv6_host_is_selected_and_folded_as_written():
    inventory = inv("127.0.1.1", "[::1]:2201", "[::1]:2202")
    assert [h.id for h in inventory.select("[::1]:2201")] == ["[::1]:2201"]
    assert [h.id for h in inventory.select("root@[::1]:2202")] == ["[::1]:2202"]
    assert [h.id for h in inventory.select("::1")] == ["[::1]:2201", "[::1]:2202"]
    folded = fold(h.id for h in inventory.hosts)
    assert folded == "127.0.1.1,[::1]:2201,[::1]:2202"
    assert [h.id for h in inventory.select(folded)] == [h.id for h in inventory.hosts]


def test_an_ad_hoc_ipv6_host_with_a_port_round_trips_through_the_record():
    inventory = inv("127.0.1.1")
    (host,) = inventory.select("deploy@[::1]:2201")
    assert (host.user, host.name, host.port, host.id) == ("deploy", "::1", 2201, "[::1]:2201")
    assert ad_hoc_entry(host) == "deploy@[::1]:2201"
    again = inventory.with_ad_hoc([ad_hoc_entry(host)])
    assert again.host("[::1]:2201").user == "deploy"


def host(name: str, port: int) -> Host:
    return Host(name, "root", port, None, None, "/tmp/x", "python3", 5.0)


def test_local_names_have_no_colon_and_differ_for_every_host():
    cases = {
        ("127.0.1.3", 22): "127.0.1.3",
        ("gw.example.com", 2222): "gw.example.com+2222",
        ("::1", 2201): "++1+2201",
        ("::1", 22): "++1+22",
        ("::1:2201", 22): "++1+2201+22",
        ("fd00::5", 22): "fd00++5+22",
    }
    for (name, port), expected in cases.items():
        assert host(name, port).local_name == expected
    assert len(set(cases.values())) == len(cases)


@pytest.mark.parametrize("pattern", ["10.0.0.[001-010]", "10.0.0.010", "010.1.2.3"])
def test_zero_padded_ipv4_octets_are_refused_as_octal(pattern):
    with pytest.raises(HostRangeError, match="zero-padded octet .* reads it as octal"):
        expand(pattern)


def test_zero_padded_octets_are_refused_in_the_inventory_with_its_line():
    with pytest.raises(InventoryError, match=r"10\.0\.0\.001: zero-padded octet '001'"):
        inv("10.0.0.[001-010]")
    assert expand("10.0.0.[1-3]") == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert expand("node[001-002]") == ["node001", "node002"]  # names keep their padding
