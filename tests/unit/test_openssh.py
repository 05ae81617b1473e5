"""The OpenSSH push path's pure parts: which hosts it serves, with what options,
and the tar it streams for one file."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from dataclasses import replace

import pytest

from corunner import openssh, remote, transfer
from corunner.inventory import Host

BASE = Host("web1", "deploy", 2222, None, ("/k/known hosts",), "/tmp/x", "python3", 7.5)


def options(argv):
    return [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]


def test_a_direct_host_with_known_keys_gets_every_setting_of_its_own_and_no_config_file(tmp_path):
    key = tmp_path / "id_ed25519"
    key.write_text("k")
    host = replace(BASE, address="10.0.0.5", key=str(key), identities_only=True)
    argv = openssh.command(host, "/usr/bin/ssh", "LINE")
    assert argv[:3] == ["/usr/bin/ssh", "-F", "none"]
    assert argv[-3:] == ["--", "10.0.0.5", "LINE"]
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "deploy"
    assert argv[argv.index("-i") + 1] == str(key)
    opts = options(argv)
    for wanted in (
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        'UserKnownHostsFile="/k/known hosts"',
        "ConnectTimeout=8",
        "IdentitiesOnly=yes",
        "UpdateHostKeys=no",
    ):
        assert wanted in opts, (wanted, opts)


def test_no_known_hosts_files_means_none_and_a_global_file_is_passed_on():
    host = replace(BASE, known_hosts_files=(), global_known_hosts_files=("/g/a", "/g/b"))
    opts = options(openssh.command(host, "ssh", "LINE"))
    assert "UserKnownHostsFile=none" in opts
    assert 'GlobalKnownHostsFile="/g/a" "/g/b"' in opts


@pytest.mark.parametrize(
    "change",
    [
        {"jump": ("bastion",)},
        {"proxy_command": "nc %h %p"},
        {"strict_host_keys": "accept-new"},
        {"key": "/no/such/key"},
        {"known_hosts_files": ('/odd"name',)},
    ],
)
def test_what_only_the_paramiko_path_does_here_goes_that_way(change):
    assert openssh.command(replace(BASE, **change), "ssh", "LINE") is None


def test_it_is_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv(openssh.ENV, "0")
    assert openssh.program() is None


def test_one_file_streamed_as_a_tar_is_the_file_with_its_mode_and_time(tmp_path):
    src = tmp_path / "blob.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    src.chmod(0o640)
    os.utime(src, (1_700_000_000, 1_700_000_000))
    archive = transfer.build_archive(str(src), str(tmp_path / "work"))
    stream = b"".join(archive.streamed())
    assert len(stream) % 512 == 0 and abs(len(stream) - archive.tar_size) <= 2048
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        (member,) = tar.getmembers()
        assert (member.name, member.mode, int(member.mtime)) == ("payload", 0o640, 1_700_000_000)
        assert tar.extractfile(member).read() == data


def test_a_file_that_shrinks_while_it_is_streamed_stops_the_stream(tmp_path):
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024))
    archive = transfer.build_archive(str(src), str(tmp_path))
    chunks = archive.streamed()
    next(chunks)  # the header, with the size as it was
    os.truncate(src, 1024)
    with pytest.raises(OSError, match="shrank"):
        for _ in chunks:
            pass


def test_a_staged_push_is_the_head_then_the_tar_built_once_for_every_host(tmp_path):
    src = tmp_path / "blob.bin"
    data = os.urandom(1024 * 1024 + 5)
    src.write_bytes(data)
    (tmp_path / "work").mkdir()
    archive = transfer.build_archive(str(src), str(tmp_path / "work"))
    head = remote.sh(transfer.PUSH_SCRIPT, str(tmp_path / "dest") + "/", "blob.bin", "9").head
    path = archive.staged(head)
    assert path is not None and archive.staged(head) == path  # one file for every host
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    with open(path, "rb") as stdin:  # what ssh reads, run by the node's sh
        done = subprocess.run(["sh", "-c", remote.READER], stdin=stdin, capture_output=True)
    assert done.returncode == 0 and transfer.PUSHED.encode() in done.stdout, done.stderr
    assert (tmp_path / "dest" / "blob.bin").read_bytes() == data


def test_a_push_too_big_to_stage_is_piped_and_an_unreadable_one_is_an_error(tmp_path, monkeypatch):
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(4096))
    archive = transfer.build_archive(str(src), str(tmp_path))
    monkeypatch.setattr(transfer, "STAGE_LIMIT", 4096)
    assert archive.staged(b"head\n") is None
    monkeypatch.setattr(transfer, "STAGE_LIMIT", 1 << 30)
    src.unlink()  # gone after the archive was made: no host may get a copy
    with pytest.raises(FileNotFoundError):
        archive.staged(b"other head\n")
    assert [p for p in os.listdir(tmp_path) if p.endswith(".stream")] == []  # nothing half-written


def test_a_push_with_no_usable_work_directory_is_piped_not_called_unreadable(tmp_path):
    """A missing work directory is this machine's trouble, not the source's: the
    push goes through a pipe, which needs no room here, and nothing blames the file."""
    src = tmp_path / "blob.bin"
    src.write_bytes(os.urandom(4096))
    archive = transfer.build_archive(str(src), str(tmp_path / "missing"))
    assert archive.staged(b"head\n") is None
