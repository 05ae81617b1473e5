"""Inventory dicts in, resolved hosts out: precedence, paths, selection, errors."""

from __future__ import annotations

import os
import re
from typing import Any, Optional

import pytest

from corunner.errors import InventoryError
from corunner.inventory import Host, Inventory, inventory_from_dict


def build(data: Any, lines: Optional[dict] = None, base_dir: str = "/inv") -> Inventory:
    return inventory_from_dict(
        data, source="hosts.yaml", base_dir=base_dir, lines=lines, local_user="alice"
    )


def failure(data: Any, lines: Optional[dict] = None) -> InventoryError:
    with pytest.raises(InventoryError) as err:
        build(data, lines)
    return err.value


WEB = {
    "defaults": {"user": "root", "port": 22, "connect_timeout": 10},
    "groups": {
        "lab": {"hosts": ["127.0.1.[1-8]"]},
        "web": {
            "hosts": ["192.168.1.[101-200]", "gw.example.com:2222", "deploy@db[01-04].example.com"],
            "user": "deploy",
        },
    },
}


def test_builtin_defaults_apply_when_nothing_is_set() -> None:
    host = build({"groups": {"g": {"hosts": ["n1"]}}}).hosts[0]
    assert host == Host(
        name="n1",
        user="alice",
        port=22,
        key=None,
        known_hosts_files=(os.path.expanduser("~/.ssh/known_hosts"),),
        remote_dir="/tmp/corunner-alice",
        python="python3",
        connect_timeout=10.0,
        groups=("g",),
    )
    # Keepalives 5 s apart, 3 unanswered: a hung host is given up after 15 s.
    assert (host.alive_interval, host.alive_count_max) == (5.0, 3)


def test_local_user_comes_from_getpass_when_not_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("getpass.getuser", lambda: "bob")
    inv = inventory_from_dict({"groups": {"g": {"hosts": ["n1"]}}})
    assert inv.hosts[0].user == "bob"


def test_unknown_local_user_asks_for_user_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_user() -> str:
        raise OSError("no user")

    monkeypatch.setattr("getpass.getuser", no_user)
    with pytest.raises(InventoryError, match="set 'user:' under defaults"):
        inventory_from_dict({"groups": {"g": {"hosts": ["n1"]}}})
    # A user in the file means getpass is never asked.
    inv = inventory_from_dict({"defaults": {"user": "root"}, "groups": {"g": {"hosts": ["n1"]}}})
    assert inv.hosts[0].user == "root"


def test_precedence_builtin_defaults_group_entry() -> None:
    inv = build(
        {
            "defaults": {"user": "root", "port": 2200, "python": "python3.11"},
            "groups": {
                "g": {
                    "user": "deploy",
                    "hosts": ["a", "ops@b", "c:2222", "ops@d:2333"],
                },
            },
        }
    )
    got = {h.name: (h.user, h.port, h.python, h.remote_dir) for h in inv.hosts}
    assert got == {
        "a": ("deploy", 2200, "python3.11", "/tmp/corunner-deploy"),
        "b": ("ops", 2200, "python3.11", "/tmp/corunner-ops"),
        "c": ("deploy", 2222, "python3.11", "/tmp/corunner-deploy"),
        "d": ("ops", 2333, "python3.11", "/tmp/corunner-ops"),
    }


def test_example_inventory_expands_in_file_order() -> None:
    inv = build(WEB)
    assert len(inv.hosts) == 8 + 100 + 1 + 4
    assert inv.hosts[0].id == "127.0.1.1"
    assert inv.hosts[8].id == "192.168.1.101"
    assert inv.hosts[108].id == "gw.example.com:2222"
    assert inv.hosts[-1].id == "db04.example.com"
    assert inv.host("gw.example.com:2222").user == "deploy"
    assert inv.host("db01.example.com").user == "deploy"
    assert inv.host("127.0.1.3").user == "root"
    assert inv.groups["lab"] == tuple(f"127.0.1.{i}" for i in range(1, 9))
    assert list(inv.groups) == ["lab", "web"]
    assert inv.source == "hosts.yaml"


def test_host_id_adds_port_only_when_not_22() -> None:
    inv = build({"groups": {"g": {"hosts": ["a", "a:2222", "b:22"]}}})
    assert [h.id for h in inv.hosts] == ["a", "a:2222", "b"]


def test_host_in_two_groups_is_one_host_with_first_group_settings() -> None:
    inv = build(
        {
            "groups": {
                "first": {"user": "one", "hosts": ["n[1-2]"]},
                "second": {"user": "two", "hosts": ["n[2-3]", "n2"]},
            }
        }
    )
    assert [h.id for h in inv.hosts] == ["n1", "n2", "n3"]
    n2 = inv.host("n2")
    assert n2.user == "one"
    assert n2.groups == ("first", "second")
    assert inv.groups == {"first": ("n1", "n2"), "second": ("n2", "n3")}


def test_paths_expand_tilde_and_resolve_against_base_dir() -> None:
    inv = build(
        {
            "defaults": {"key": ".corunner/lab/id_ed25519", "known_hosts": "~/kh"},
            "groups": {
                "g": {"hosts": ["a"]},
                "h": {"hosts": ["b"], "key": "/etc/k", "known_hosts": "../kh"},
                "agent": {"hosts": ["c"], "key": None},
            },
        }
    )
    a, b, c = inv.hosts
    assert a.key == "/inv/.corunner/lab/id_ed25519"
    assert a.known_hosts == os.path.join(os.path.expanduser("~"), "kh")
    assert (b.key, b.known_hosts) == ("/etc/k", "/kh")
    assert c.key is None  # an explicit null goes back to the agent


def test_the_default_remote_dir_is_one_per_user() -> None:
    inv = build({"groups": {"g": {"hosts": ["a", "bob@b", "odd/us er@c"]}}})
    assert [h.remote_dir for h in inv.hosts] == [
        "/tmp/corunner-alice",
        "/tmp/corunner-bob",
        "/tmp/corunner-odd_us_er",
    ]


def test_remote_dir_is_normalised() -> None:
    inv = build({"defaults": {"remote_dir": "/scratch//run/"}, "groups": {"g": {"hosts": ["a"]}}})
    assert inv.hosts[0].remote_dir == "/scratch/run"


def test_port_may_be_quoted_and_timeout_may_be_fractional() -> None:
    inv = build(
        {"defaults": {"port": "2222", "connect_timeout": 2.5}, "groups": {"g": {"hosts": ["a"]}}}
    )
    assert (inv.hosts[0].port, inv.hosts[0].connect_timeout) == (2222, 2.5)


def test_ipv6_entry_has_no_port_part() -> None:
    inv = build({"groups": {"g": {"hosts": ["fe80::1", "::1"]}}})
    assert [(h.name, h.port) for h in inv.hosts] == [("fe80::1", 22), ("::1", 22)]


def test_empty_group_is_allowed_and_selecting_only_it_says_so() -> None:
    inv = build({"groups": {"g": {"hosts": ["a"]}, "spare": {"hosts": []}}})
    assert inv.groups["spare"] == ()
    assert [h.id for h in inv.select("g,spare")] == ["a"]
    with pytest.raises(InventoryError, match="selects no host .group 'spare' lists no host."):
        inv.select("spare")


def test_hosts_and_inventory_are_frozen() -> None:
    inv = build(WEB)
    with pytest.raises(AttributeError):
        inv.hosts[0].port = 23  # type: ignore[misc]
    with pytest.raises(TypeError):
        inv.groups["lab"] = ()  # type: ignore[index]
    assert hash(inv.hosts[0]) == hash(build(WEB).hosts[0])


# --- selection: tests/unit/test_selection.py ------------------------------


def test_host_lookup_by_id() -> None:
    inv = build(WEB)
    assert inv.host("127.0.1.8").name == "127.0.1.8"
    with pytest.raises(InventoryError, match="no host 'gw.example.com' in hosts.yaml"):
        inv.host("gw.example.com")


# --- validation: every error names the file and the closest line -----------

LINES = {
    (): 1,
    ("defaults",): 1,
    ("defaults", "port"): 3,
    ("defaults", "connect_timeout"): 4,
    ("groups",): 5,
    ("groups", "web"): 6,
    ("groups", "web", "usr"): 7,
    ("groups", "web", "user"): 7,
    ("groups", "web", "hosts"): 8,
    ("groups", "web", "hosts", 0): 9,
    ("groups", "web", "hosts", 1): 10,
    ("groups", "web", "hosts", 2): 11,
}

ERRORS = [
    # (data, expected message, expected line)
    (
        {"groups": {"web": {"usr": "x", "hosts": ["a"]}}},
        "unknown key 'usr' in groups.web (did you mean 'user'?)",
        7,
    ),
    (
        {"defualts": {}, "groups": {"web": {"hosts": ["a"]}}},
        "unknown key 'defualts' in the top level (did you mean 'defaults'?)",
        1,
    ),
    (
        {"defaults": {"port": "ssh"}, "groups": {"web": {"hosts": ["a"]}}},
        "port must be a number from 1 to 65535, not 'ssh'",
        3,
    ),
    (
        {"defaults": {"port": 70000}, "groups": {"web": {"hosts": ["a"]}}},
        "port must be from 1 to 65535, not 70000",
        3,
    ),
    (
        {"defaults": {"port": True}, "groups": {"web": {"hosts": ["a"]}}},
        "port must be a number",
        3,
    ),
    (
        {"groups": {"web": {"hosts": ["a", "b", "gw:ssh"]}}},
        "port in host entry 'gw:ssh' must be a number from 1 to 65535, not 'ssh'",
        11,
    ),
    (
        {"groups": {"web": {"hosts": ["a", "b", "gw:0"]}}},
        "port in host entry 'gw:0' must be from 1 to 65535, not 0",
        11,
    ),
    (
        {"groups": {"web": {"hosts": ["a", "node[5-1]"]}}},
        "bad host pattern 'node[5-1]': reversed range [5-1]",
        10,
    ),
    (
        {"groups": {"web": {"hosts": ["node[1-3"]}}},
        "bad host pattern 'node[1-3': unclosed '['",
        9,
    ),
    (
        {"groups": {"web": {"hosts": ["n[01-100]"]}}},
        "padding mismatch in [01-100]",
        9,
    ),
    ({"defaults": {"user": "root"}}, "missing 'groups:'", 1),
    ({"groups": {"web": {"user": "x"}}}, "group 'web' has no 'hosts:' list", 6),
    ({"groups": {"web": {"hosts": "a,b"}}}, "hosts of group 'web' must be a list, not 'a,b'", 8),
    ({"groups": {"web": {"hosts": ["a", 42]}}}, "a host entry must be a string, not 42", 10),
    ({"groups": {"web": ["a"]}}, "group 'web' must be a mapping with 'hosts:', not a list", 6),
    ({"groups": ["web"]}, "groups must be a mapping of group names, not a list", 5),
    ({"groups": {}}, "empty inventory", 5),
    ({"groups": {"web": {"hosts": []}}}, "empty inventory: no group lists any host", 5),
    (["a", "b"], "the inventory must be a mapping with 'groups:', not a list", 1),
    (None, "empty inventory", 1),
    ({"defaults": ["x"], "groups": {}}, "defaults must be a mapping, not a list", 1),
    (
        {"defaults": {"connect_timeout": 0}, "groups": {"web": {"hosts": ["a"]}}},
        "connect_timeout must be a positive number of seconds, not 0",
        4,
    ),
    (
        {"defaults": {"connect_timeout": "5s"}, "groups": {"web": {"hosts": ["a"]}}},
        "connect_timeout must be a positive number of seconds, not '5s'",
        4,
    ),
    (
        {"groups": {"web": {"user": 5, "hosts": ["a"]}}},
        "user must be a user name, not 5",
        7,
    ),
    (
        {"groups": {"web": {"hosts": ["@a"]}}},
        "empty user before '@' in host entry '@a'",
        9,
    ),
    (
        {"groups": {"web": {"hosts": ["u@"]}}},
        "no host name in host entry 'u@'",
        9,
    ),
    (
        {"groups": {"web": {"hosts": ["web"]}}},
        "group 'web' has the same name as a host; rename one",
        6,
    ),
]


@pytest.mark.parametrize("data, message, line", ERRORS)
def test_validation_error_names_file_and_line(data: Any, message: str, line: int) -> None:
    err = failure(data, LINES)
    assert message in err.msg
    assert err.file == "hosts.yaml"
    assert err.where == f"line {line}"
    assert str(err).startswith(f"hosts.yaml:{line}: ")


@pytest.mark.parametrize(
    "data, message, where",
    [
        (
            {"groups": {"web": {"usr": "x", "hosts": ["a"]}}},
            "did you mean 'user'?",
            "groups.web.usr",
        ),
        ({"groups": {"web": {"hosts": ["a", "b[2-1]"]}}}, "reversed", "groups.web.hosts[1]"),
        ({"groups": {"web": {"hosts": "a"}}}, "must be a list", "groups.web.hosts"),
        ([], "must be a mapping", None),
    ],
)
def test_without_lines_errors_name_the_key_path(data: Any, message: str, where: Any) -> None:
    err = failure(data)
    assert message in err.msg
    assert err.where == where


@pytest.mark.parametrize(
    "data, message",
    [
        ({"defaults": {"remote_dir": "tmp/x"}}, "remote_dir must be an absolute path"),
        ({"defaults": {"remote_dir": "/"}}, "remote_dir must not be '/'"),
        ({"defaults": {"key": 3}}, "key must be a file path, not 3"),
        ({"defaults": {"known_hosts": None}}, "known_hosts must be a file path, not empty"),
        ({"defaults": {"python": ""}}, "python must be a command"),
        ({"defaults": {"connect_timeout": float("nan")}}, "connect_timeout must be a positive"),
        ({"defaults": {"port": 22.5}}, "port must be a number"),
        ({"defaults": {"colour": "red"}}, "unknown key 'colour' in defaults (known: user,"),
    ],
)
def test_settings_are_type_checked(data: dict, message: str) -> None:
    data = {**data, "groups": {"g": {"hosts": ["a"]}}}
    assert message in failure(data).msg


@pytest.mark.parametrize("name", ["a b", "x,y", "n[1-2]", "", 5])
def test_group_names_must_be_selectable(name: Any) -> None:
    assert "bad group name" in failure({"groups": {name: {"hosts": ["a"]}}}).msg


def test_env_of_a_group_adds_to_the_defaults_and_wins() -> None:
    inv = build(
        {
            "defaults": {"env": {"A": "1", "B": "from defaults"}},
            "groups": {
                "g": {"hosts": ["a"], "env": {"B": "from g", "C": 3}},
                "h": {"hosts": ["b"]},
            },
        }
    )
    assert dict(inv.host("a").env) == {"A": "1", "B": "from g", "C": "3"}
    assert dict(inv.host("b").env) == {"A": "1", "B": "from defaults"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (["A=1"], "env must be a mapping of NAME: value"),
        ({"1A": "x"}, "env: '1A' is not a variable name"),
        ({"A-B": "x"}, "env: 'A-B' is not a variable name"),
        ({"A": ["x"]}, "env: A must be a string or a number, not a list"),
    ],
)
def test_bad_env_is_one_error_naming_the_variable(env: object, message: str) -> None:
    with pytest.raises(InventoryError, match=re.escape(message)):
        build({"defaults": {"env": env}, "groups": {"g": {"hosts": ["a"]}}})


def test_become_and_become_user_pick_the_user_sudo_runs_the_program_as() -> None:
    inv = build(
        {
            "defaults": {"become": True},
            "groups": {
                "g": {"hosts": ["a"]},
                "h": {"hosts": ["b"], "become_user": "postgres"},
                "i": {"hosts": ["c"], "become": False},
            },
        }
    )
    assert [h.become for h in inv.hosts] == ["root", "postgres", None]
    with pytest.raises(InventoryError, match="become must be true or false"):
        build({"defaults": {"become": "yes"}, "groups": {"g": {"hosts": ["a"]}}})
