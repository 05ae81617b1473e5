"""The SSH shell's pure parts: connections built from many threads at once,
and the one-line error for an unexpected exception on one host."""

from __future__ import annotations

import dataclasses
import sys
import threading

import pytest

from corunner import remote
from corunner.errors import AuthError, ConnectError, InternalError, JumpError, StalledError
from corunner.inventory import Host


def host(name: str = "127.0.1.9", port: int = 22) -> Host:
    return Host(name, "root", port, None, None, "/tmp/corunner", "python3", 5.0)


def test_connections_built_in_many_threads_never_interfere():
    # Fabric's Connection writes into its config while it is built; with one
    # config shared between threads, some of these failed ("No attribute or
    # config key found for 'gateway'"), and a 64-node run then waited forever.
    errors: list = []
    built: list = []

    def build(port: int) -> None:
        for _ in range(100):
            try:
                conn = remote.connection(host(port=port))
                built.append((conn.host, conn.port, conn.user))
            except Exception as exc:  # noqa: BLE001 - any failure is the bug
                errors.append(repr(exc))

    threads = [threading.Thread(target=build, args=(2200 + i,)) for i in range(16)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: provoke the race
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert sorted(set(built)) == [("127.0.1.9", 2200 + i, "root") for i in range(16)]


def test_internal_error_names_the_host_the_exception_and_where():
    def deep() -> None:
        raise KeyError("gateway")

    try:
        deep()
    except KeyError as exc:
        error = InternalError.from_exception("127.0.1.9", exc)
    assert error.host == "127.0.1.9"
    assert str(error).startswith("127.0.1.9: internal error (KeyError at test_remote.py:")
    assert "'gateway'" in str(error) and "\n" not in str(error)
    assert error.exit_code == InternalError.exit_code


def test_a_connection_uses_what_ssh_config_resolved(tmp_path) -> None:
    key, other = tmp_path / "id_a", tmp_path / "id_b"
    key.write_text("k")
    resolved = Host(
        "web1",
        "deploy",
        2201,
        str(key),
        ("/kh/one", "/kh/two"),
        "/tmp/corunner",
        "python3",
        3.0,
        address="127.0.1.101",
        extra_keys=(str(other),),  # missing: ssh skips it, and so do we
        identities_only=True,
        global_known_hosts_files=("/kh/global",),
        strict_host_keys="accept-new",
        alive_interval=2.0,
        alive_count_max=4,
        origins=(("key", "~/.ssh/config line 5"),),
    )
    conn = remote.connection(resolved)
    assert (conn.host, conn.port, conn.user) == ("127.0.1.101", 2201, "deploy")
    kwargs = conn.connect_kwargs
    assert kwargs["key_filename"] == [str(key)]
    assert (kwargs["allow_agent"], kwargs["look_for_keys"], kwargs["timeout"]) == (
        False,
        False,
        3.0,
    )
    assert kwargs["transport_factory"].keywords == {"alive_interval": 2.0, "alive_count_max": 4}
    policy = conn.client._policy
    assert policy.paths == ("/kh/one", "/kh/two", "/kh/global")
    assert (policy.hostname, policy.write_path, policy.accept_new) == (
        "127.0.1.101",
        "/kh/one",
        True,
    )


def test_known_hosts_none_everywhere_still_builds_a_policy_that_refuses_unknown_keys() -> None:
    bare = Host("n1", "root", 22, None, (), "/tmp/x", "python3", 5.0, global_known_hosts_files=())
    policy = remote.connection(bare).client._policy
    assert policy.paths == () and policy.write_path is None and not policy.accept_new


def test_a_host_behind_a_jump_is_never_dialled_directly() -> None:
    behind = Host(
        "web1",
        "root",
        22,
        None,
        (),
        "/tmp/x",
        "python3",
        5.0,
        jump=("bastion",),
        origins=(("jump", "~/.ssh/config line 6"),),
    )
    # Jump hosts are reached through the command's Gateways (tests/cluster/test_bastion.py);
    # a caller without them gets an error, never a direct connection to the target.
    with pytest.raises(ValueError, match="reached through a jump host"):
        remote.connect(behind)


class _Transport:
    def is_active(self) -> bool:
        return True

    def open_channel(self, *args: object, **kwargs: object) -> str:
        return "channel"


class _Conn:
    class client:
        @staticmethod
        def get_transport() -> _Transport:
            return _Transport()

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    "error, tried_again",
    [
        (ConnectError("127.0.1.9", "connection refused on port 22 (is sshd running?)"), True),
        (StalledError("127.0.1.9", "stalled: no answer to keepalives for 15s"), True),
        (AuthError("127.0.1.9", "authentication failed for user nobody"), False),
    ],
)
def test_a_jump_host_that_could_not_be_reached_is_tried_again_after_a_while_but_not_one_that_refused(
    monkeypatch, error, tried_again
):
    """Hosts behind a dead jump host fail at once with its line; once HOP_RETRY has
    passed it is tried again (a rebooted bastion: its tunnels come back), unless it
    refused the login, which trying again would not change."""
    now = [0.0]
    answers = [error, _Conn()]
    tries = []

    def fake_open(hop: Host, accept_new: bool, sock: object) -> object:
        tries.append(now[0])
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(remote, "_open", fake_open)
    target = dataclasses.replace(host("127.0.2.1"), jump=("127.0.1.9",))
    gateways = remote.Gateways([target], clock=lambda: now[0])
    for at in (0.0, 1.0, remote.HOP_RETRY - 0.1):
        now[0] = at
        with pytest.raises(
            JumpError, match=r"^127\.0\.2\.1: 127\.0\.1\.9 \(jump host for 1 host\)"
        ):
            gateways.sock(target)
    assert tries == [0.0]  # one try while it is given up
    now[0] = remote.HOP_RETRY
    if tried_again:
        assert gateways.sock(target) == "channel" and tries == [0.0, remote.HOP_RETRY]
    else:
        with pytest.raises(JumpError):
            gateways.sock(target)
        assert tries == [0.0]
