"""OpenSSH client config: read as ssh reads it, and resolved into inventory hosts."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import pytest

from corunner import loader, sshconfig
from corunner.errors import InventoryError, UsageError
from corunner.inventory import Host, inventory_from_dict
from corunner.sshconfig import SshConfig

HOME = "/home/alice"


def parse(text: str, path: str = f"{HOME}/.ssh/config") -> SshConfig:
    return sshconfig.parse(text, path, home=HOME, base=f"{HOME}/.ssh")


def look(text: str, name: str, **kwargs: Any) -> sshconfig.Resolved:
    return parse(text).lookup(name, local_user="alice", **kwargs)


def test_the_first_value_obtained_wins_top_to_bottom() -> None:
    found = look(
        "Host web1\n  User deploy\n  Port 2201\nHost *\n  User root\n  Port 22\n  HostName x\n",
        "web1",
    )
    assert (found.user, found.port, found.hostname) == ("deploy", 2201, "x")
    assert found.origin("user") == "~/.ssh/config line 2"
    assert found.origin("hostname") == "~/.ssh/config line 7"


def test_the_user_file_is_read_before_the_system_file(tmp_path: Path) -> None:
    user = tmp_path / "home" / ".ssh" / "config"
    user.parent.mkdir(parents=True)
    user.write_text("Host *\n  User mine\n")
    system = tmp_path / "ssh_config"
    system.write_text("Host *\n  User theirs\n  Port 2222\n")
    config = sshconfig.load(
        [str(user), str(system), str(tmp_path / "missing")], home=str(tmp_path / "home")
    )
    found = config.lookup("n1", local_user="alice")
    assert (found.user, found.port) == ("mine", 2222)
    assert found.origin("port") == f"{system} line 3"
    assert found.origin("user") == "~/.ssh/config line 2"


@pytest.mark.parametrize(
    "patterns, name, applies",
    [
        ("web1", "web1", True),
        ("web1", "WEB1", True),  # ssh lowers the name
        ("web?", "web12", False),
        ("web*", "web12", True),
        ("10.1.*", "10.1.2.3", True),
        ("10.1.*", "10.11.2.3", False),
        ("* !bastion", "bastion", False),
        ("* !bastion", "web1", True),
        ("!bastion", "web1", False),  # a negation alone matches nothing
        ("db web*", "db", True),
        ("node[1-2]", "node1", False),  # no [] classes in ssh patterns
        ("node[1-2]", "node[1-2]", True),
    ],
)
def test_host_patterns_match_as_ssh_matches_them(patterns: str, name: str, applies: bool) -> None:
    found = look(f"Host {patterns}\n  User u\n", name)
    assert (found.user == "u") is applies


def test_match_host_sees_the_hostname_and_originalhost_the_name_written() -> None:
    text = (
        "Host web1\n  HostName 10.1.0.7\n"
        "Match host 10.1.*\n  User by-address\n"
        "Match originalhost web1\n  Port 2201\n"
        "Match host web1\n  IdentityFile /never\n"
    )
    found = look(text, "web1")
    assert (found.user, found.port, found.identity_files) == ("by-address", 2201, ())


def test_match_user_all_and_negation() -> None:
    text = (
        "Match user deploy\n  Port 2201\n"
        "Match !user deploy host n*\n  Port 2202\n"
        "Match all\n  ConnectTimeout 7\n"
    )
    assert look(text, "n1", user="deploy").port == 2201
    assert look(text, "n1", user="root").port == 2202
    assert look(text, "n1").port == 2202  # no user given: the local user, alice
    assert look(text, "n1").connect_timeout == 7.0
    assert look("Match localuser alice\n  Port 3\n", "n1").port == 3


def test_match_final_blocks_apply_in_a_second_pass_where_host_sees_the_hostname() -> None:
    text = (
        "Host web1\n  HostName 10.1.0.7\n"
        "Host 10.1.0.7\n  User by-hostname\n"
        "Match final host 10.1.*\n  Port 2201\n"
        "Match canonical\n  IdentityFile /canonical\n"
    )
    found = look(text, "web1")
    assert (found.user, found.port) == ("by-hostname", 2201)
    assert found.identity_files == ("/canonical",)  # the final pass is canonical too
    # Without a Match final nothing is read twice: Host 10.1.0.7 never applies.
    assert look("Host web1\n  HostName 10.1.0.7\nHost 10.1.0.7\n  User u\n", "web1").user is None


def test_match_exec_is_warned_once_with_file_and_line_and_not_applied() -> None:
    found = look("Match exec true\n  User u\nHost *\n  Port 2\n", "n1")
    assert found.user is None and found.port == 2
    assert found.warnings == (
        "~/.ssh/config line 1: Match exec is not supported: this block is not applied",
    )
    # A block that would not apply anyway says nothing.
    assert look("Match host other exec true\n  User u\n", "n1").warnings == ()


def test_include_is_relative_to_dot_ssh_and_follows_its_block(tmp_path: Path) -> None:
    home = tmp_path
    (home / ".ssh" / "config.d").mkdir(parents=True)
    (home / ".ssh" / "config.d" / "a.conf").write_text("Host web*\n  User from-a\n")
    (home / ".ssh" / "config.d" / "b.conf").write_text("Host *\n  Port 2201\n")
    (home / ".ssh" / "never.conf").write_text("Host *\n  ConnectTimeout 3\n")
    (home / ".ssh" / "config").write_text(
        "Include config.d/*.conf\nHost db\n  Include never.conf\nHost *\n  User last\n"
    )
    config = sshconfig.load([str(home / ".ssh" / "config")], home=str(home))
    web = config.lookup("web1", local_user="alice")
    assert (web.user, web.port, web.connect_timeout) == ("from-a", 2201, None)
    assert web.origin("user") == "~/.ssh/config.d/a.conf line 2"
    assert config.lookup("db", local_user="alice").connect_timeout == 3.0
    assert config.lookup("other", local_user="alice").user == "last"


def test_tokens_and_tilde_in_paths() -> None:
    text = (
        "Host web1\n  HostName %h.example.com\n  Port 2201\n  User deploy\n"
        "  IdentityFile ~/.ssh/%r@%h:%p-%u-%n\n  IdentityFile %d/k%%\n"
        "  UserKnownHostsFile ~/kh/%h /etc/kh\n  ProxyCommand nc %h %p\n"
    )
    found = look(text, "web1")
    assert found.hostname == "web1.example.com"
    assert found.identity_files == (
        f"{HOME}/.ssh/deploy@web1.example.com:2201-alice-web1",
        f"{HOME}/k%",
    )
    assert found.known_hosts_files == (f"{HOME}/kh/web1.example.com", "/etc/kh")
    assert found.proxy_command == "nc web1.example.com 2201"
    # The inventory's user and port are what %r and %p say: they win.
    assert (
        look(text, "web1", user="root", port=22)
        .identity_files[0]
        .endswith("/root@web1.example.com:22-alice-web1")
    )


def test_an_unknown_token_drops_the_setting_with_a_warning() -> None:
    found = look("Host *\n  IdentityFile ~/.ssh/%C\n", "n1")
    assert found.identity_files == ()
    assert found.warnings == (
        "~/.ssh/config line 2: token %C is not supported: this setting is not applied",
    )


def test_environment_variables_in_paths() -> None:
    config = SshConfig(
        parse("Host *\n  IdentityFile ${KEYS}/id\n  UserKnownHostsFile ${NOPE}/kh\n").files,
        HOME,
        (("KEYS", "/keys"),),
    )
    found = config.lookup("n1", local_user="alice")
    assert found.identity_files == ("/keys/id",) and found.known_hosts_files is None
    assert found.warnings == (
        "~/.ssh/config line 3: ${NOPE} is not set: this setting is not applied",
    )


def test_identity_files_add_up_and_none_is_skipped() -> None:
    found = look(
        "Host n1\n  IdentityFile /a\n  IdentityFile none\nHost *\n  IdentityFile /b\n  IdentitiesOnly yes\n",
        "n1",
    )
    assert found.identity_files == ("/a", "/b") and found.identities_only is True
    assert found.origin("key") == "~/.ssh/config line 2"


def test_proxy_jump_chains_none_and_the_shared_slot_with_proxy_command() -> None:
    assert look("Host *\n  ProxyJump bastion,ops@gw:2222\n", "n1").jump == (
        "bastion",
        "ops@gw:2222",
    )
    assert look("Host *\n  ProxyJump ssh://ops@gw:2222\n", "n1").jump == ("ops@gw:2222",)
    none_first = look("Host n1\n  ProxyJump none\nHost *\n  ProxyJump bastion\n", "n1")
    assert none_first.jump == () and none_first.proxy_command is None
    command_first = look("Host n1\n  ProxyCommand nc %h 22\nHost *\n  ProxyJump bastion\n", "n1")
    assert command_first.jump == () and command_first.proxy_command == "nc n1 22"
    assert look("Host n1\n  ProxyCommand none\nHost *\n  ProxyJump b\n", "n1").jump == ()


def test_known_hosts_files_several_and_none() -> None:
    found = look("Host *\n  UserKnownHostsFile none\n  GlobalKnownHostsFile /g1 /g2\n", "n1")
    assert found.known_hosts_files == () and found.global_known_hosts_files == ("/g1", "/g2")


@pytest.mark.parametrize(
    "value, strict, warned",
    [
        ("yes", "yes", False),
        ("ask", "yes", False),
        ("accept-new", "accept-new", False),
        ("no", "no", True),
        ("off", "no", True),
    ],
)
def test_strict_host_key_checking(value: str, strict: str, warned: bool) -> None:
    found = look(f"Host *\n  StrictHostKeyChecking {value}\n", "n1")
    assert found.strict_host_keys == strict
    assert bool(found.warnings) is warned
    if warned:
        assert found.warnings[0].startswith("~/.ssh/config line 2: StrictHostKeyChecking")


def test_alive_settings_hash_and_times() -> None:
    found = look(
        "Host *\n  ServerAliveInterval 1m\n  ServerAliveCountMax 4\n  HashKnownHosts yes\n"
        "  ConnectTimeout 1m30s\n",
        "n1",
    )
    assert (found.alive_interval, found.alive_count_max) == (60.0, 4)
    assert found.hash_known_hosts is True and found.connect_timeout == 90.0
    off = look("Host *\n  ServerAliveInterval 0\n", "n1")
    assert off.alive_interval is None and "keeps its keepalives" in off.warnings[0]


def test_unsupported_keywords_that_change_reaching_warn_once_harmless_ones_are_silent() -> None:
    text = (
        "Host *\n  ForwardX11 yes\n  SendEnv LANG\n  GSSAPIAuthentication yes\n"
        "  CertificateFile ~/.ssh/id-cert.pub\n  HostKeyAlias other\n  ControlMaster auto\n"
        "  CanonicalizeHostname no\n  Hostnmae typo\n"
    )
    found = look(text, "n1")
    assert found.warnings == (
        "~/.ssh/config line 5: CertificateFile is not supported: SSH certificates are not offered",
        "~/.ssh/config line 6: HostKeyAlias is not supported: host keys are looked up under "
        "the host's name",
        "~/.ssh/config line 7: ControlMaster is not supported: connections are not shared "
        "through a control socket: corunner opens its own",
        "~/.ssh/config line 9: unknown keyword 'Hostnmae' ignored (ssh itself refuses it)",
    )
    # A line in a block that does not apply to the host says nothing.
    assert look("Host other\n  CertificateFile /c\n", "n1").warnings == ()


def test_syntax_quotes_equals_and_comments() -> None:
    found = look(
        '# comment\nHost=n1\n  User = deploy\n  IdentityFile "/keys/my key"  # the key\n'
        "  PORT=2201\n",
        "n1",
    )
    assert (found.user, found.port, found.identity_files) == ("deploy", 2201, ("/keys/my key",))


@pytest.mark.parametrize(
    "text, message",
    [
        ("Host *\n  Port http\n", "config:2: Port http: a port must be a number"),
        ("Match\n", "config:1: Match: needs criteria"),
        ("Match bogus x\n", "unknown Match criterion 'bogus'"),
        ("Match all host x\n", "Match all cannot be mixed"),
        ("Host *\n  StrictHostKeyChecking maybe\n", "wants yes, accept-new, no, off or ask"),
        ("Host *\n  ProxyJump a@\n", "bad jump host 'a@'"),
        ('Host *\n  IdentityFile "/a\n', "unterminated quote"),
    ],
)
def test_what_ssh_refuses_is_one_error_with_file_and_line(text: str, message: str) -> None:
    with pytest.raises(InventoryError) as err:
        parse(text)
    assert str(err.value).startswith("~/.ssh/config:")
    assert message in str(err.value)


# -- resolution into inventory hosts -----------------------------------------------

CONFIG = (
    "Host web1\n  HostName 127.0.1.101\n  User deploy\n  Port 2201\n  IdentityFile /k/web\n"
    "  ProxyJump bastion\n  ServerAliveInterval 2\n  ServerAliveCountMax 5\n"
    "  StrictHostKeyChecking accept-new\n  HashKnownHosts yes\n"
    "Host *\n  UserKnownHostsFile /kh/ssh\n  ConnectTimeout 3\n  GlobalKnownHostsFile none\n"
)


def build(data: Any, text: str = CONFIG, local_user: Optional[str] = "alice") -> Any:
    return inventory_from_dict(
        data, source="hosts.yaml", base_dir="/inv", local_user=local_user, ssh_config=parse(text)
    )


def test_ssh_config_wins_over_built_in_defaults_and_says_where() -> None:
    host = build({"groups": {"web": {"hosts": ["web1"]}}}).hosts[0]
    assert host.id == "web1:2201"  # the port is part of the id, whoever set it
    assert (host.name, host.address, host.user, host.port) == (
        "web1",
        "127.0.1.101",
        "deploy",
        2201,
    )
    assert (host.key, host.jump, host.connect_timeout) == ("/k/web", ("bastion",), 3.0)
    assert host.known_hosts_files == ("/kh/ssh",) and host.known_hosts == "/kh/ssh"
    assert host.global_known_hosts_files == ()
    assert (host.alive_interval, host.alive_count_max) == (2.0, 5)
    assert (host.strict_host_keys, host.hash_known_hosts) == ("accept-new", True)
    assert host.remote_dir == "/tmp/corunner-deploy"  # the per-user default follows ssh's user
    assert [host.origin(s) for s in ("address", "user", "port", "key", "jump")] == [
        "~/.ssh/config line 2",
        "~/.ssh/config line 3",
        "~/.ssh/config line 4",
        "~/.ssh/config line 5",
        "~/.ssh/config line 6",
    ]


def test_settings_written_in_the_inventory_win_over_ssh_config() -> None:
    data = {
        "defaults": {"connect_timeout": 9, "known_hosts": "kh"},
        "groups": {"web": {"hosts": ["root@web1:22"], "key": "/k/inv"}},
    }
    host = build(data).hosts[0]
    assert (host.user, host.port, host.key, host.connect_timeout) == ("root", 22, "/k/inv", 9.0)
    assert host.known_hosts_files == ("/inv/kh",)
    assert host.address == "127.0.1.101"  # what the inventory does not set still comes from ssh
    assert host.origin("user") == "inventory hosts.yaml:root@web1:22"
    assert host.origin("key") == "inventory hosts.yaml:group web"
    assert host.origin("connect_timeout") == "inventory hosts.yaml:defaults"


def test_hosts_no_block_names_keep_the_built_in_defaults() -> None:
    host = build({"groups": {"lab": {"hosts": ["n1"]}}}).hosts[0]
    assert (host.address, host.user, host.port, host.key, host.jump) == (
        "n1",
        "alice",
        22,
        None,
        (),
    )
    assert host.origin("address") == "default" and host.origin("user") == "default"
    assert (host.alive_interval, host.alive_count_max, host.strict_host_keys) == (5.0, 3, "yes")


def test_a_host_named_ad_hoc_is_resolved_through_ssh_config_too() -> None:
    inv = build({"groups": {"lab": {"hosts": ["n1"]}}})
    (host,) = inv.select("web1")
    assert (host.address, host.user, host.port) == ("127.0.1.101", "deploy", 2201)
    # The record keeps user@name:port; reading it back gives the same host.
    assert inv.with_ad_hoc(["deploy@web1:2201"]).host("web1:2201") == host


def test_the_inventory_user_is_what_match_user_and_percent_r_see() -> None:
    text = "Match user ops\n  IdentityFile /k/%r\nHost *\n  User ops\n"
    ops = build({"groups": {"g": {"hosts": ["n1"]}}}, text).hosts[0]
    root = build({"groups": {"g": {"hosts": ["root@n1"]}}}, text).hosts[0]
    assert ops.user == "ops" and ops.key is None  # ssh's own User comes after the Match
    assert root.key is None
    written = build({"defaults": {"user": "ops"}, "groups": {"g": {"hosts": ["n1"]}}}, text)
    assert written.hosts[0].key == "/k/ops"


def test_a_user_from_ssh_config_is_enough_without_a_local_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_user() -> str:
        raise KeyError("no passwd entry")

    monkeypatch.setattr("getpass.getuser", no_user)
    host = build({"groups": {"g": {"hosts": ["web1"]}}}, local_user=None).hosts[0]
    assert host.user == "deploy"


def test_warnings_travel_with_the_hosts_they_concern() -> None:
    text = "Host web*\n  CertificateFile /c\n"
    inv = build({"groups": {"g": {"hosts": ["web1", "db1"]}}}, text)
    assert [h.notes for h in inv.hosts] == [
        (
            "~/.ssh/config line 2: CertificateFile is not supported: SSH certificates are not offered",
        ),
        (),
    ]


def test_hosts_stay_hashable_and_origins_are_not_part_of_equality() -> None:
    host = build({"groups": {"g": {"hosts": ["web1"]}}}).hosts[0]
    assert {host: 1}[host] == 1
    other = Host(**{**host.__dict__, "origins": (), "notes": ()})
    assert other == host and hash(other) == hash(host)


def test_ssh_config_in_the_inventory_is_allowed_only_under_defaults() -> None:
    with pytest.raises(InventoryError, match="unknown key 'ssh_config'"):
        build({"groups": {"g": {"hosts": ["n1"], "ssh_config": False}}})
    with pytest.raises(InventoryError, match="ssh_config must be a file path or false"):
        build({"defaults": {"ssh_config": 3}, "groups": {"g": {"hosts": ["n1"]}}})


# -- which files: --ssh-config, CORUNNER_SSH_CONFIG, ssh_config:, ssh's own ---------------


def paths(option: Optional[str], env: dict, data: Any, base: str = "/inv") -> tuple:
    return loader.ssh_config_paths(
        option, env, data, {("defaults", "ssh_config"): 3}, "hosts.yaml", base
    )


def test_which_config_files_are_read(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.write_text("")
    theirs = tmp_path / "theirs"
    theirs.write_text("")
    listed = {"defaults": {"ssh_config": "theirs"}}
    assert paths(None, {}, {}) == ("~/.ssh/config", "/etc/ssh/ssh_config")
    assert paths(None, {}, listed, str(tmp_path)) == (str(theirs),)
    assert paths(None, {}, {"defaults": {"ssh_config": False}}) == ()
    assert paths(None, {}, {"defaults": {"ssh_config": True}}) == (
        "~/.ssh/config",
        "/etc/ssh/ssh_config",
    )
    env = {"CORUNNER_SSH_CONFIG": str(mine)}
    assert paths(None, env, listed, str(tmp_path)) == (str(mine),)
    assert paths(None, {"CORUNNER_SSH_CONFIG": "none"}, listed, str(tmp_path)) == ()
    assert paths(str(theirs), {"CORUNNER_SSH_CONFIG": "none"}, {}) == (str(theirs),)
    assert paths("NONE", env, listed, str(tmp_path)) == ()


def test_a_named_config_that_does_not_exist_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no ssh_config file at /nope \(from --ssh-config\)"):
        paths("/nope", {}, {})
    with pytest.raises(UsageError, match="from CORUNNER_SSH_CONFIG"):
        paths(None, {"CORUNNER_SSH_CONFIG": "/nope"}, {})
    with pytest.raises(InventoryError, match=r"hosts.yaml:3: ssh_config: no file at"):
        paths(None, {}, {"defaults": {"ssh_config": "missing"}}, str(tmp_path))


def test_the_test_session_reads_no_developer_config() -> None:
    assert os.environ["CORUNNER_SSH_CONFIG"] == "none"
