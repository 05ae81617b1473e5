"""Reading hosts.yaml: which file, YAML errors and validation errors with their line."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from corunner.errors import InventoryError
from corunner.loader import load_inventory, parse_yaml

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "hosts.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


def failure(tmp_path: Path, text: str) -> InventoryError:
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as err:
        load_inventory(path, env={})
    assert err.value.file == path
    return err.value


GOOD = """
defaults:
  user: root
  key: keys/id_ed25519
groups:
  lab:
    hosts: ["127.0.1.[1-2]"]
"""


def test_loads_file_and_resolves_paths_against_its_directory(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, GOOD), env={})
    assert [h.id for h in inv.hosts] == ["127.0.1.1", "127.0.1.2"]
    assert inv.hosts[0].key == str(tmp_path / "keys" / "id_ed25519")
    assert inv.source == str(tmp_path / "hosts.yaml")


def test_env_variable_names_the_file_when_no_path(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD, "other.yaml")
    inv = load_inventory(None, env={"CORUNNER_INVENTORY": path})
    assert inv.source == path


def test_path_argument_beats_env_variable(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    inv = load_inventory(path, env={"CORUNNER_INVENTORY": str(tmp_path / "nope.yaml")})
    assert inv.source == path


def test_default_is_hosts_yaml_in_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, GOOD)
    monkeypatch.chdir(tmp_path)
    inv = load_inventory(env={})
    assert inv.source == "./hosts.yaml"
    assert inv.hosts[0].key == str(tmp_path / "keys" / "id_ed25519")


def test_missing_default_file_says_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InventoryError) as err:
        load_inventory(env={})
    assert str(err.value) == (
        "no inventory at ./hosts.yaml: pass --inventory FILE or set CORUNNER_INVENTORY"
    )


def test_missing_file_from_env_says_where_the_name_came_from(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"nope.yaml \(from CORUNNER_INVENTORY\)"):
        load_inventory(env={"CORUNNER_INVENTORY": str(tmp_path / "nope.yaml")})


def test_directory_is_not_an_inventory(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match="is a directory"):
        load_inventory(str(tmp_path), env={})


def test_non_utf8_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_bytes(b"groups:\n  lab: {hosts: [\xff]}\n")
    with pytest.raises(InventoryError, match="not UTF-8"):
        load_inventory(str(path), env={})


@pytest.mark.parametrize(
    "text, line, message",
    [
        (
            """
            defaults:
              user: root
            groups:
              web:
                usr: deploy
                hosts: [a]
            """,
            5,
            "unknown key 'usr' in groups.web (did you mean 'user'?)",
        ),
        (
            """
            groups:
              web:
                hosts:
                  - a
                  - gw:ssh
            """,
            5,
            "port in host entry 'gw:ssh' must be a number",
        ),
        (
            """
            defaults:
              port: twenty-two
            groups:
              web: {hosts: [a]}
            """,
            2,
            "port must be a number from 1 to 65535, not 'twenty-two'",
        ),
        (
            """
            groups:
              web:
                hosts:
                  - "node[1-4]"
                  - "node[9-5]"
            """,
            5,
            "reversed range [9-5]",
        ),
        (
            """
            groups:
              web:
                hosts: ["node[1-4"]
            """,
            3,
            "unclosed '['",
        ),
        (
            """
            defaults:
              user: root
            """,
            1,
            "missing 'groups:'",
        ),
        (
            """
            # a comment first
            groups:
              web:
                user: deploy
            """,
            3,
            "group 'web' has no 'hosts:' list",
        ),
        (
            """
            groups:
              web:
                hosts:
                  a: 1
            """,
            3,
            "hosts of group 'web' must be a list, not a mapping",
        ),
        (
            """
            - a
            - b
            """,
            1,
            "the inventory must be a mapping",
        ),
        (
            """
            groups:
              lab:
                hosts: []
            """,
            1,
            "empty inventory: no group lists any host",
        ),
        (
            """
            defaults:
              connect_timeout: -1
            groups:
              web: {hosts: [a]}
            """,
            2,
            "connect_timeout must be a positive number",
        ),
    ],
)
def test_validation_errors_carry_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    err = failure(tmp_path, text)
    assert message in err.msg
    assert err.where == f"line {line}"


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n"])
def test_empty_file_is_an_empty_inventory(tmp_path: Path, text: str) -> None:
    path = tmp_path / "hosts.yaml"
    path.write_text(text)
    with pytest.raises(InventoryError, match="empty inventory") as err:
        load_inventory(str(path), env={})
    assert err.value.file == str(path)


@pytest.mark.parametrize(
    "text, line, problem",
    [
        (
            """
            groups:
              lab:
                hosts: ["a", "b"
            """,
            4,
            "YAML syntax error: ",
        ),
        (
            """
            groups:
              lab:
                hosts: [a]
               user: x
            """,
            4,
            "YAML syntax error: ",
        ),
        (
            """
            groups:
              lab: {hosts: [a]}
            key: "unterminated
            """,
            4,
            "YAML syntax error: ",
        ),
        ("a: 1\n---\nb: 2\n", 2, "expected a single document in the stream, but found another"),
        ("groups: !!python/object:os.system {}\n", 1, "YAML tag !!python/object:os.system is not"),
        ("groups: {lab: {hosts: [!!python/name:os.system a]}}\n", 1, "YAML tag !!python/name"),
        ("groups: !mine {}\n", 1, "YAML tag !mine is not supported in an inventory"),
        ("groups: &g {lab: *g}\n", 1, "recursive YAML alias"),
        ("groups:\n  ? [a, b]\n  : {hosts: [a]}\n", 2, "a mapping key must be a plain value"),
    ],
)
def test_yaml_problems_carry_their_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    err = failure(tmp_path, text)
    assert problem in err.msg
    assert err.where == f"line {line}"


def test_duplicate_key_is_an_error_with_both_lines(tmp_path: Path) -> None:
    err = failure(
        tmp_path,
        """
        groups:
          web:
            user: deploy
            hosts: [a]
            user: root
        """,
    )
    assert err.msg.startswith("duplicate key 'user' (first on line 3)")
    assert err.where == "line 5"


def test_duplicate_group_is_an_error(tmp_path: Path) -> None:
    err = failure(tmp_path, "groups:\n  lab: {hosts: [a]}\n  lab: {hosts: [b]}\n")
    assert "duplicate key 'lab' (first on line 2)" in err.msg
    assert err.where == "line 3"


def test_merge_keys_work_and_own_keys_win(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        defaults:
          user: root
        groups:
          base: &base {hosts: [a], user: deploy, port: 2222}
          copy:
            <<: *base
            hosts: [b]
            port: 2200
        """,
    )
    inv = load_inventory(path, env={})
    assert [(h.name, h.user, h.port) for h in inv.hosts] == [
        ("a", "deploy", 2222),
        ("b", "deploy", 2200),
    ]


def test_parse_yaml_maps_key_paths_to_lines() -> None:
    data, lines = parse_yaml(
        "defaults:\n  user: root\ngroups:\n  web:\n    hosts:\n      - a\n      - b\n", "f"
    )
    assert data == {"defaults": {"user": "root"}, "groups": {"web": {"hosts": ["a", "b"]}}}
    assert lines[()] == 1
    assert lines[("defaults", "user")] == 2
    assert lines[("groups", "web", "hosts")] == 5  # the key's line, not the block's
    assert lines[("groups", "web", "hosts", 1)] == 7


def test_scalars_are_typed_like_safe_load() -> None:
    data, _ = parse_yaml("a: 22\nb: '22'\nc: 2.5\nd: null\ne: yes\n", "f")
    assert data == {"a": 22, "b": "22", "c": 2.5, "d": None, "e": True}


def test_bundled_hosts_yaml_only_targets_loopback_lab() -> None:
    path = REPO / "hosts.yaml"
    inv = load_inventory(str(path), env={})
    assert list(inv.groups) == ["lab"]
    assert [h.name for h in inv.hosts] == [f"127.0.1.{i}" for i in range(1, 9)]
    for host in inv.hosts:
        assert host.user == "root"
        assert host.port == 22
        assert host.key == os.path.join(str(REPO), ".corunner", "lab", "id_ed25519")
        assert host.known_hosts == os.path.join(str(REPO), ".corunner", "lab", "known_hosts")
        assert host.remote_dir == "/tmp/corunner"
        assert host.connect_timeout == 5.0


def test_bundled_hosts_yaml_example_group_parses_when_uncommented(tmp_path: Path) -> None:
    out, inside = [], False
    for line in (REPO / "hosts.yaml").read_text().splitlines():
        inside = line == "  # web:" or (inside and line != "  #")
        out.append("  " + line[4:] if inside else line)
    path = tmp_path / "hosts.yaml"
    path.write_text("\n".join(out))
    inv = load_inventory(str(path), env={})
    web = inv.select("web")
    assert len(web) == 100 + 1 + 4
    assert inv.host("gw.example.com:2222").user == "deploy"
    assert inv.host("db01.example.com").user == "deploy"
