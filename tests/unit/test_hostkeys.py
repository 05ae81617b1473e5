"""Host key checking as OpenSSH does it, each known_hosts file parsed once per process."""

from __future__ import annotations

import base64
import hmac
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import paramiko
import pytest

from corunner import hostkeys
from corunner.errors import HostKeyError
from corunner.hostkeys import HostKeyPolicy, Status, known_hosts_for, parse_lines

SSH_KEYGEN = shutil.which("ssh-keygen")


@pytest.fixture(scope="module")
def keys() -> Dict[str, paramiko.PKey]:
    """Real keys, generated once: a, b and c share a type, d has another one."""
    return {
        "a": paramiko.ECDSAKey.generate(),
        "b": paramiko.ECDSAKey.generate(),
        "c": paramiko.ECDSAKey.generate(),
        "d": paramiko.ECDSAKey.generate(bits=384),
        "rsa": paramiko.RSAKey.generate(1024),
    }


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    hostkeys.clear_cache()
    yield
    hostkeys.clear_cache()


def entry(hosts: str, key: paramiko.PKey) -> str:
    return f"{hosts} {key.get_name()} {key.get_base64()}\n"


def hashed(name: str, key: paramiko.PKey, salt: Optional[bytes] = None) -> str:
    salt = salt if salt is not None else os.urandom(20)
    digest = hmac.digest(salt, name.encode(), "sha1")
    b64 = base64.b64encode
    return entry(f"|1|{b64(salt).decode()}|{b64(digest).decode()}", key)


def write(path: Path, *lines: str) -> str:
    path.write_text("".join(lines))
    return str(path)


def status(paths: Sequence[str], host: str, port: int, key: paramiko.PKey) -> Status:
    return known_hosts_for(paths).check(host, port, key).status


# --- matching --------------------------------------------------------------------------


def test_plain_names_match_exactly_in_comma_lists_and_ignore_case(tmp_path, keys):
    f = write(tmp_path / "kh", entry("alpha.lab,10.0.0.1,Beta.Lab", keys["a"]))
    for name in ("alpha.lab", "10.0.0.1", "beta.lab", "ALPHA.lab"):
        assert status([f], name, 22, keys["a"]) is Status.KNOWN
    assert status([f], "gamma.lab", 22, keys["a"]) is Status.UNKNOWN
    assert status([f], "alpha", 22, keys["a"]) is Status.UNKNOWN


def test_bracketed_names_carry_the_port(tmp_path, keys):
    f = write(tmp_path / "kh", entry("[127.0.0.1]:2222", keys["a"]), entry("127.0.0.2", keys["b"]))
    assert status([f], "127.0.0.1", 2222, keys["a"]) is Status.KNOWN
    assert status([f], "[127.0.0.1]:2222", 2222, keys["a"]) is Status.KNOWN  # Paramiko's form
    assert status([f], "127.0.0.1", 22, keys["a"]) is Status.UNKNOWN
    assert status([f], "127.0.0.2", 22, keys["b"]) is Status.KNOWN
    assert status([f], "127.0.0.2", 2222, keys["b"]) is Status.UNKNOWN  # port 22 only


def test_hashed_names_match_as_openssh_hashes_them(tmp_path, keys):
    f = write(
        tmp_path / "kh",
        hashed("node1.lab", keys["a"]),
        hashed("[node2.lab]:2222", keys["b"]),
    )
    assert status([f], "node1.lab", 22, keys["a"]) is Status.KNOWN
    assert status([f], "NODE1.lab", 22, keys["a"]) is Status.KNOWN
    assert status([f], "node2.lab", 2222, keys["b"]) is Status.KNOWN
    assert status([f], "node2.lab", 22, keys["b"]) is Status.UNKNOWN
    assert status([f], "node1.lab", 2222, keys["a"]) is Status.UNKNOWN


@pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen is not installed")
def test_files_hashed_by_ssh_keygen_match(tmp_path, keys):
    f = write(tmp_path / "kh", entry("127.0.0.1", keys["a"]), entry("[127.0.0.1]:2222", keys["b"]))
    subprocess.run([SSH_KEYGEN, "-H", "-f", f], check=True, capture_output=True)
    assert "127.0.0.1" not in Path(f).read_text()
    assert status([f], "127.0.0.1", 22, keys["a"]) is Status.KNOWN
    assert status([f], "127.0.0.1", 2222, keys["b"]) is Status.KNOWN


def test_wildcards_match_as_openssh_match_pattern(tmp_path, keys):
    f = write(
        tmp_path / "kh",
        entry("*.example.com", keys["a"]),
        entry("10.0.0.?", keys["b"]),
        entry("[*.lab]:2222", keys["c"]),
    )
    assert status([f], "www.example.com", 22, keys["a"]) is Status.KNOWN
    assert status([f], "example.com", 22, keys["a"]) is Status.UNKNOWN
    assert status([f], "10.0.0.5", 22, keys["b"]) is Status.KNOWN
    assert status([f], "10.0.0.55", 22, keys["b"]) is Status.UNKNOWN
    assert status([f], "n1.lab", 2222, keys["c"]) is Status.KNOWN
    assert status([f], "n1.lab", 22, keys["c"]) is Status.UNKNOWN
    # "[" is literal, not a character class as in fnmatch
    assert status([f], "l", 2222, keys["c"]) is Status.UNKNOWN


def test_negated_patterns_veto_their_line(tmp_path, keys):
    f = write(
        tmp_path / "kh",
        entry("*.example.com,!bad.example.com", keys["a"]),
        entry("good.lab,!good.lab", keys["b"]),
        entry("x.bad,y.bad,!x.*", keys["c"]),
    )
    assert status([f], "ok.example.com", 22, keys["a"]) is Status.KNOWN
    assert status([f], "bad.example.com", 22, keys["a"]) is Status.UNKNOWN
    assert status([f], "good.lab", 22, keys["b"]) is Status.UNKNOWN
    assert status([f], "x.bad", 22, keys["c"]) is Status.UNKNOWN
    assert status([f], "y.bad", 22, keys["c"]) is Status.KNOWN


def test_rsa_keys_compare_by_blob(tmp_path, keys):
    f = write(tmp_path / "kh", entry("rsa.lab", keys["rsa"]))
    assert status([f], "rsa.lab", 22, keys["rsa"]) is Status.KNOWN
    assert status([f], "rsa.lab", 22, keys["a"]) is Status.UNKNOWN


# --- verdicts --------------------------------------------------------------------------


def test_changed_needs_a_key_of_the_same_type(tmp_path, keys):
    f = write(tmp_path / "kh", entry("node.lab", keys["a"]))
    verdict = known_hosts_for([f]).check("node.lab", 22, keys["b"])
    assert verdict == hostkeys.Verdict(Status.CHANGED, f, 1)
    assert status([f], "node.lab", 22, keys["d"]) is Status.UNKNOWN  # another type: new
    assert known_hosts_for([f]).key_types("node.lab") == ("ecdsa-sha2-nistp256",)


def test_a_matching_key_on_any_line_wins_over_a_differing_one(tmp_path, keys):
    f = write(tmp_path / "kh", entry("node.lab", keys["b"]), hashed("node.lab", keys["a"]))
    assert status([f], "node.lab", 22, keys["a"]) is Status.KNOWN


def test_revoked_beats_known_in_any_file_for_any_host(tmp_path, keys):
    user = write(tmp_path / "user", entry("node.lab", keys["a"]), entry("other.lab", keys["b"]))
    glob = write(tmp_path / "global", "@revoked some.other.host " + entry("", keys["a"]).lstrip())
    verdict = known_hosts_for([user, glob]).check("node.lab", 22, keys["a"])
    assert verdict == hostkeys.Verdict(Status.REVOKED, glob, 1)
    assert status([user, glob], "other.lab", 22, keys["b"]) is Status.KNOWN


def test_cert_authority_and_corrupt_lines_are_skipped_and_counted(tmp_path, keys):
    a = keys["a"]
    text = [
        "# a comment\n",
        "\n",
        "   \t \n",
        f"@cert-authority *.lab {a.get_name()} {a.get_base64()}\n",  # 4
        f"@bogus node.lab {a.get_name()} {a.get_base64()}\n",  # 5: unknown marker
        "node.lab\n",  # 6: no key
        f"node.lab {a.get_name()}\n",  # 7: no base64
        f"node.lab {a.get_name()} !!notbase64!!\n",  # 8
        "node.lab 2048 65537 1234567890\n",  # 9: SSH1 RSA
        f"node.lab ssh-ed25519 {a.get_base64()}\n",  # 10: type disagrees with blob
        f"|1|bad|bad {a.get_name()} {a.get_base64()}\n",  # 11: bad hash
        f"|2|{'A' * 28}|{'A' * 28} {a.get_name()} {a.get_base64()}\n",  # 12
        f"@revoked {a.get_name()} {a.get_base64()}\n",  # 13: no host field
        "\x00\xff garbage \x7f\n",  # 14
        entry("node.lab", a).rstrip("\n") + " # trailing comment\n",  # 15: fine
        entry("other.lab", keys["b"]).rstrip("\n") + " a comment\n",  # 16: fine
    ]
    f = write(tmp_path / "kh", *text)
    kh = known_hosts_for([f])
    (parsed,) = kh.files
    assert parsed.cert_authority == [4]
    assert parsed.corrupt == [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    assert kh.corrupt == tuple((f, n) for n in parsed.corrupt)
    assert parsed.lines == 16
    assert kh.check("node.lab", 22, a) == hostkeys.Verdict(Status.KNOWN, f, 15)
    assert kh.check("other.lab", 22, keys["b"]).status is Status.KNOWN
    # The CA line grants nothing, and says why: host certificates are not checked.
    assert kh.check("x.lab", 22, a) == hostkeys.Verdict(Status.CERT_ONLY, f, 4)
    assert kh.check("x.other", 22, a).status is Status.UNKNOWN


def test_parse_lines_is_pure_and_never_raises(keys):
    parsed = parse_lines(["node.lab", "\x00", entry("n.lab", keys["a"]), "@"], "mem")
    assert parsed.corrupt == [1, 2, 4]
    assert list(parsed.plain) == ["n.lab"]


def test_missing_files_are_empty(tmp_path, keys):
    kh = known_hosts_for([str(tmp_path / "nope"), str(tmp_path / "no" / "dir")])
    assert kh.check("node.lab", 22, keys["a"]).status is Status.UNKNOWN


def test_the_global_file_is_read(tmp_path, keys, monkeypatch):
    glob = write(tmp_path / "ssh_known_hosts", entry("node.lab", keys["a"]))
    monkeypatch.setattr(hostkeys, "GLOBAL_KNOWN_HOSTS_FILES", (glob,))
    user = str(tmp_path / "known_hosts")  # missing
    paths = hostkeys.default_paths([user])
    assert paths == (user, glob)
    assert status(paths, "node.lab", 22, keys["a"]) is Status.KNOWN
    assert hostkeys.default_paths(["x"])[-1] == glob
    monkeypatch.undo()
    assert hostkeys.default_paths(["x"]) == ("x", "/etc/ssh/ssh_known_hosts")


def test_known_hosts_name_is_openssh_s():
    name = hostkeys.known_hosts_name
    assert name("Node.Lab", 22) == "node.lab"
    assert name("node.lab", 2222) == "[node.lab]:2222"
    assert name("[node.lab]:2222", 2222) == "[node.lab]:2222"
    assert name("[node.lab]:22", 22) == "node.lab"
    assert name("::1", 2222) == "[::1]:2222"


# --- the policy ------------------------------------------------------------------------


def policy(paths: Sequence[str], port: int = 2222, accept_new: bool = False) -> HostKeyPolicy:
    return HostKeyPolicy("node7", "127.0.0.1", port, paths, accept_new, paths[0])


def refusal(pol: HostKeyPolicy, hostname: str, key: paramiko.PKey) -> str:
    with pytest.raises(HostKeyError) as info:
        pol.missing_host_key(paramiko.SSHClient(), hostname, key)
    assert info.value.host == "node7"
    return info.value.cause


def test_policy_accepts_known_keys_in_both_name_forms(tmp_path, keys):
    f = write(tmp_path / "kh", entry("[127.0.0.1]:2222", keys["a"]))
    pol = policy([f])
    pol.missing_host_key(paramiko.SSHClient(), "[127.0.0.1]:2222", keys["a"])
    pol.missing_host_key(paramiko.SSHClient(), "127.0.0.1", keys["a"])


def test_policy_refuses_unknown_changed_and_revoked_keys(tmp_path, keys):
    user = write(tmp_path / "user", entry("[127.0.0.1]:2222", keys["a"]))
    glob = write(tmp_path / "global", "@revoked * " + entry("", keys["c"]).lstrip())
    pol = policy([user, glob])
    assert refusal(pol, "[127.0.0.1]:2222", keys["d"]) == (
        f"host key not in {user} or {glob} (add it with ssh-keyscan -p 2222 127.0.0.1 "
        f">> {user}, or pass --accept-new-host-keys)"
    )
    assert refusal(pol, "[127.0.0.1]:2222", keys["b"]) == (
        f"host key differs from the one in {user}: possible man-in-the-middle; if the host "
        f"was reinstalled, run ssh-keygen -R [127.0.0.1]:2222 -f {user}"
    )
    assert refusal(pol, "[127.0.0.1]:2222", keys["c"]) == (
        f"host key is marked @revoked in {glob} line 1: refusing it (the key was withdrawn: "
        "ask the host's admin for its new key)"
    )
    assert str(HostKeyError("node7", "x")) == "node7: x"


def test_changed_message_names_the_plain_host_on_port_22(tmp_path, keys):
    f = write(tmp_path / "kh", entry("127.0.0.1", keys["a"]))
    cause = refusal(policy([f], port=22, accept_new=True), "127.0.0.1", keys["b"])
    assert "run ssh-keygen -R 127.0.0.1 -f " in cause


def test_accept_new_appends_an_openssh_line_seen_without_a_new_parse(tmp_path, keys):
    f = write(tmp_path / "kh", entry("other.lab", keys["b"]))
    pol = policy([f], accept_new=True)
    pol.missing_host_key(paramiko.SSHClient(), "[127.0.0.1]:2222", keys["a"])
    assert Path(f).read_text().splitlines()[1] == (
        f"[127.0.0.1]:2222 {keys['a'].get_name()} {keys['a'].get_base64()}"
    )
    assert hostkeys.parse_count(f) == 1
    verdict = known_hosts_for([f]).check("127.0.0.1", 2222, keys["a"])
    assert verdict == hostkeys.Verdict(Status.KNOWN, f, 2)
    pol.missing_host_key(paramiko.SSHClient(), "127.0.0.1", keys["a"])
    assert hostkeys.parse_count(f) == 1  # our own append did not invalidate the file
    assert len(Path(f).read_text().splitlines()) == 2
    if SSH_KEYGEN is not None:
        found = subprocess.run(
            [SSH_KEYGEN, "-F", "[127.0.0.1]:2222", "-f", f], capture_output=True, text=True
        )
        assert found.returncode == 0, found.stderr
        assert keys["a"].get_base64() in found.stdout
    hostkeys.clear_cache()  # and a fresh process parses it the same way
    assert status([f], "127.0.0.1", 2222, keys["a"]) is Status.KNOWN


def test_accept_new_still_refuses_a_changed_key(tmp_path, keys):
    f = write(tmp_path / "kh", entry("[127.0.0.1]:2222", keys["a"]))
    before = Path(f).read_text()
    cause = refusal(policy([f], accept_new=True), "[127.0.0.1]:2222", keys["b"])
    assert cause.startswith(f"host key differs from the one in {f}")
    assert Path(f).read_text() == before


def test_accept_new_creates_the_directory_and_ends_a_last_line_without_newline(tmp_path, keys):
    f = str(tmp_path / "new" / "ssh" / "known_hosts")
    policy([f], accept_new=True).missing_host_key(paramiko.SSHClient(), "127.0.0.1", keys["a"])
    assert stat.S_IMODE(os.stat(os.path.dirname(f)).st_mode) & 0o077 == 0
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert status([f], "127.0.0.1", 2222, keys["a"]) is Status.KNOWN
    g = tmp_path / "g"
    g.write_text(entry("x.lab", keys["b"]).rstrip("\n"))
    policy([str(g)], accept_new=True).missing_host_key(paramiko.SSHClient(), "127.0.0.1", keys["a"])
    assert len(g.read_text().splitlines()) == 2
    hostkeys.clear_cache()
    assert status([str(g)], "x.lab", 22, keys["b"]) is Status.KNOWN
    assert status([str(g)], "127.0.0.1", 2222, keys["a"]) is Status.KNOWN


def test_accept_new_from_many_threads_writes_whole_lines(tmp_path, keys):
    f = str(tmp_path / "kh")
    errors: List[BaseException] = []

    def accept(i: int) -> None:
        try:
            pol = HostKeyPolicy(f"n{i}", f"10.1.0.{i}", 2222, [f], True, f)
            pol.missing_host_key(paramiko.SSHClient(), f"[10.1.0.{i}]:2222", keys["a"])
        except BaseException as exc:  # noqa: BLE001 - any failure fails the test
            errors.append(exc)

    run_threads(32, accept)
    assert errors == []
    assert len(Path(f).read_text().splitlines()) == 32
    assert hostkeys.parse_count(f) == 1
    for i in range(32):
        assert status([f], f"10.1.0.{i}", 2222, keys["a"]) is Status.KNOWN
    hostkeys.clear_cache()
    kh = known_hosts_for([f])
    assert kh.files[0].corrupt == []
    assert all(kh.check(f"10.1.0.{i}", 2222, keys["a"]).status is Status.KNOWN for i in range(32))


# --- once per process ------------------------------------------------------------------


def run_threads(n: int, target: Callable[[int], None]) -> None:
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        target(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_one_parse_per_file_however_many_hosts_connect(tmp_path, keys, monkeypatch):
    names = [f"node{i:04d}.lab" for i in range(1000)]
    lines = [entry(n if i % 2 else f"[{n}]:2222", keys["a"]) for i, n in enumerate(names)]
    salt = os.urandom(20)
    lines += [hashed(f"unrelated{i}.example.net", keys["b"], salt) for i in range(5000)]
    f = write(tmp_path / "kh", *lines)
    parses: List[str] = []
    real_parse = hostkeys.parse_lines

    def counting(text: object, path: str = "") -> hostkeys.KnownHostsFile:
        parses.append(path)
        return real_parse(text, path)  # type: ignore[arg-type]

    monkeypatch.setattr(hostkeys, "parse_lines", counting)
    verdicts: Dict[str, Status] = {}

    def connect(t: int) -> None:
        for i in range(t, len(names), 64):
            port = 22 if i % 2 else 2222
            pol = HostKeyPolicy(names[i], names[i], port, [f, str(tmp_path / "global")])
            pol.missing_host_key(paramiko.SSHClient(), names[i], keys["a"])
            verdicts[names[i]] = known_hosts_for([f]).check(names[i], port, keys["a"]).status

    run_threads(64, connect)
    assert verdicts == {n: Status.KNOWN for n in names}
    assert parses == [f]
    assert hostkeys.parse_count(f) == 1
    assert status([f], "unrelated7.example.net", 22, keys["b"]) is Status.KNOWN
    assert status([f], "stranger.lab", 22, keys["a"]) is Status.UNKNOWN
    assert parses == [f]

    st = os.stat(f)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    def look(t: int) -> None:
        known_hosts_for([f]).check(names[1], 22, keys["a"])

    run_threads(16, look)
    assert parses == [f, f]
    assert status([f], names[1], 22, keys["a"]) is Status.KNOWN
    assert hostkeys.parse_count(f) == 2


def test_a_host_known_only_by_a_cert_authority_line_gets_a_clear_refusal(tmp_path, keys):
    a, b = keys["a"], keys["b"]
    f = write(
        tmp_path / "kh",
        f"@cert-authority *.lab,!plain.lab {a.get_name()} {a.get_base64()}\n",
        entry("plain.lab", b),
    )
    for accept_new in (False, True):  # accept-new never takes a key a CA was meant to vouch for
        pol = HostKeyPolicy("node7", "node.lab", 22, [f], accept_new, f)
        assert refusal(pol, "node.lab", b) == (
            f"host certificates are not supported: {f} line 1 vouches for node.lab only by "
            f"@cert-authority; add the host's own key (ssh-keyscan -p 22 node.lab >> {f})"
        )
        assert Path(f).read_text().count("\n") == 2
    assert status([f], "plain.lab", 22, b) is Status.KNOWN  # other hosts are not affected


def test_corrupt_lines_are_warned_of_once_per_process_naming_file_and_line(tmp_path, keys):
    said: List[str] = []
    hostkeys.warn_with(said.append)
    try:
        one = write(tmp_path / "one", entry("a.lab", keys["a"]), "garbage\n")
        many = write(tmp_path / "many", *["junk\n"] * 7, entry("b.lab", keys["b"]))
        for _ in range(3):  # many hosts, many lookups: one warning per file
            known_hosts_for([one, many]).check("a.lab", 22, keys["a"])
        assert said == [
            f"warning: {one}:2: cannot parse this known_hosts line; skipped it",
            f"warning: {many}: cannot parse known_hosts lines 1, 2, 3, 4, 5 and 2 more; "
            "skipped them",
        ]
        Path(one).write_text(Path(one).read_text() + "more garbage\n")  # a new bad line
        known_hosts_for([one]).check("a.lab", 22, keys["a"])
        assert said[2:] == [f"warning: {one}:3: cannot parse this known_hosts line; skipped it"]
    finally:
        hostkeys.warn_with(None)


def test_accept_new_writes_hashed_names_when_asked_and_finds_them_again(tmp_path, keys):
    home = tmp_path / "home"
    f = str(home / ".ssh" / "known_hosts")
    pol = hostkeys.HostKeyPolicy("n", "node.lab", 2222, [f], accept_new=True, hash_names=True)
    assert status([f], "node.lab", 2222, keys["a"]) is Status.UNKNOWN  # cache the empty scan
    pol.missing_host_key(paramiko.SSHClient(), "node.lab", keys["a"])
    assert stat.S_IMODE(os.stat(home / ".ssh").st_mode) == 0o700
    (line,) = Path(f).read_text().splitlines()
    assert line.startswith("|1|") and "node.lab" not in line
    assert status([f], "node.lab", 2222, keys["a"]) is Status.KNOWN  # the cache learnt it
    pol.missing_host_key(paramiko.SSHClient(), "node.lab", keys["a"])  # known: nothing added
    assert len(Path(f).read_text().splitlines()) == 1
    hostkeys.clear_cache()
    assert status([f], "[node.lab]:2222", 2222, keys["a"]) is Status.KNOWN  # as parsed
    assert status([f], "node.lab", 22, keys["a"]) is Status.UNKNOWN


def test_the_global_file_can_be_moved_for_tests(tmp_path, keys, monkeypatch):
    glob = write(tmp_path / "ssh_known_hosts", entry("node.lab", keys["a"]))
    monkeypatch.setenv(hostkeys.GLOBAL_ENV, glob)
    user = str(tmp_path / "known_hosts")  # missing
    assert hostkeys.default_paths([user]) == (user, glob)
    assert status(hostkeys.default_paths([user]), "node.lab", 22, keys["a"]) is Status.KNOWN


def test_known_hosts_none_refuses_unknown_keys_or_accepts_them_unrecorded(keys):
    key = keys["rsa"]
    strict = HostKeyPolicy("n1", "127.0.1.9", 22, ())
    with pytest.raises(
        HostKeyError, match=r"host key not in any known_hosts file \(all set to none\)"
    ):
        strict.missing_host_key(paramiko.SSHClient(), "127.0.1.9", key)
    # UserKnownHostsFile none with accept-new: ssh connects and records nothing; so do we.
    HostKeyPolicy("n1", "127.0.1.9", 22, (), accept_new=True).missing_host_key(
        paramiko.SSHClient(), "127.0.1.9", key
    )
