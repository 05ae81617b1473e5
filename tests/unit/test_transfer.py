"""Pure parts of the copy path: tar extraction that never escapes its
destination, markers found among shell noise, quoting of remote commands."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corunner import remote, transfer


def tar_of(*members: tuple) -> io.BytesIO:
    """A tar stream of (name, kind, payload) members; kind: file, dir, sym, link."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
                continue
            if kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, payload
            tar.addfile(info)
    buf.seek(0)
    return buf


def test_extract_keeps_a_tree_and_inner_links(tmp_path):
    stream = tar_of(
        ("out", "dir", None),
        ("out/a.txt", "file", b"a"),
        ("out/inner", "sym", "a.txt"),
    )
    pulled = transfer.extract(stream, str(tmp_path))
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"a"
    assert os.readlink(tmp_path / "out" / "inner") == "a.txt"
    assert (pulled.files, pulled.bytes, pulled.skipped) == (1, 1, [])


def test_extract_refuses_every_way_out(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    stream = tar_of(
        ("out", "dir", None),
        ("out/../../escape.txt", "file", b"x"),
        ("/abs.txt", "file", b"x"),
        ("out/etc", "sym", "/etc"),
        ("out/up", "sym", "../../.."),
        ("out/hard", "link", "/etc/passwd"),
        ("out/ok.txt", "file", b"fine"),
    )
    pulled = transfer.extract(stream, str(dest))
    assert not (tmp_path / "escape.txt").exists()
    assert not os.path.lexists(dest / "out" / "etc")
    assert not os.path.lexists(dest / "out" / "up")
    assert not os.path.lexists(dest / "out" / "hard")
    assert (dest / "out" / "ok.txt").read_bytes() == b"fine"
    assert len(pulled.skipped) == 4
    # an absolute name is made relative, never written at /
    assert not os.path.exists("/abs.txt")


def test_extract_renames_the_top_entry(tmp_path):
    stream = tar_of(("out", "dir", None), ("out/f", "file", b"1"), ("out/g", "link", "out/f"))
    transfer.extract(stream, str(tmp_path), rename_top="out.node3")
    assert (tmp_path / "out.node3" / "f").read_bytes() == b"1"
    assert (tmp_path / "out.node3" / "g").read_bytes() == b"1"


def test_marker_is_found_after_shell_noise():
    noise = b"pyenv: warning\nCORUNNER-STARTED not-this\nCORUNNER-STARTED 4242\n"
    assert remote.find_marked(noise, "CORUNNER-STARTED") == "4242"
    assert remote.find_marked(b"CORUNNER-STARTEDX 1\n", "CORUNNER-STARTED") is None


class FakeChannel:
    """stdout parts, each preceded by what stderr holds by then; then EOF."""

    def __init__(self, parts, stderr=()):
        self.parts = list(parts)
        self.stderr = list(stderr)
        self.eof_received = False
        self.closed = False

    def recv_stderr_ready(self):
        return bool(self.stderr)

    def recv_stderr(self, n):
        return self.stderr.pop(0)

    def recv_ready(self):
        return True  # data, or the end (recv then returns b"")

    def recv(self, n):
        if not self.parts:
            self.eof_received = True
            return b""
        return self.parts.pop(0)


def test_marked_stream_skips_noise_before_the_marker():
    chan = FakeChannel([b"noise\nMARK", b"\nDATA", b"MORE"])
    stream = remote.MarkedStream(chan, b"MARK")  # type: ignore[arg-type]
    assert stream.read() == b"DATAMORE"


def test_marked_stream_reads_stderr_as_it_comes():
    # stdout and stderr share one SSH window: stderr left unread would stop stdout.
    chan = FakeChannel([b"MARK\n", b"DATA"], stderr=[b"tar: warning 1\n", b"tar: warning 2\n"])
    stream = remote.MarkedStream(chan, b"MARK")  # type: ignore[arg-type]
    assert stream.read() == b"DATA"
    assert b"".join(stream.stderr) == b"tar: warning 1\ntar: warning 2\n"


def test_error_line_prefers_our_marker():
    done = remote.Completed(1, b"", b"CORUNNER-ERROR python missing\nbash: noise\n")
    assert done.error_line() == "python missing"
    assert remote.Completed(2, b"", b"").error_line() == "exit status 2"


@settings(deadline=None)  # runs a shell per example: slow on a loaded machine
@given(
    st.lists(
        st.text(
            alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
            max_size=20,
        ),
        max_size=4,
    )
)
def test_sh_passes_arguments_literally(args):
    command = remote.sh('for a in "$@"; do printf "%s\\0" "$a"; done', *args)
    done = subprocess.run(
        ["sh", "-c", command.line], input=command.head, capture_output=True, check=True
    )
    assert done.stdout.split(b"\0")[:-1] == [a.encode() for a in args]
    assert command.line == remote.READER  # nothing of the arguments on the command line


#: Login shells a node user may have; those installed here (.ci/setup installs them all).
LOGIN_SHELLS = [
    "/bin/sh",
    "/bin/dash",
    "/bin/bash",
    "/usr/bin/zsh",
    "/usr/bin/fish",
    "/usr/bin/tcsh",
    "/bin/csh",
]


@pytest.mark.parametrize("shell", LOGIN_SHELLS)
def test_every_login_shell_runs_the_same_script_and_leaves_the_rest_of_stdin(shell):
    # What sshd does with a command: SHELL -c LINE. csh expands ! even in single
    # quotes and refuses multi-line quotes; fish reads backslashes in them.
    if not os.access(shell, os.X_OK):
        pytest.skip(f"{shell} is not installed")
    args = [
        "a b",
        "it's",
        "$HOME",
        "!x !! ^y !$",
        "back\\slash\\",
        "new\nline",
        '"q"',
        "*",
        "~",
        "=ls",
        "",
    ]
    command = remote.sh('for a in "$@"; do printf "[%s]" "$a"; done; exec head -c 3', *args)
    done = subprocess.run(
        [shell, "-c", command.line], input=command.head + b"ABCDEF", capture_output=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "".join(f"[{a}]" for a in args).encode() + b"ABC"


def test_a_head_cut_short_exits_98_without_running_half_a_script():
    command = remote.sh("echo ran")
    done = subprocess.run(["sh", "-c", command.line], input=command.head[:3], capture_output=True)
    assert (done.returncode, done.stdout) == (98, b"")


def test_one_file_is_archived_only_when_a_host_needs_the_tar(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * 100_000)
    archive = transfer.build_archive(str(src), str(work))
    assert archive.file == str(src) and os.listdir(work) == []  # no copy up front
    with tarfile.open(archive.path) as tar:  # the tar path builds it once, on demand
        assert tar.getnames() == ["payload"]
    assert archive.path == archive.path and len(os.listdir(work)) == 1


def test_a_tree_is_archived_at_once_and_a_missing_source_is_a_usage_error(tmp_path):
    import pytest

    from corunner.errors import UsageError

    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f").write_text("f")
    (tmp_path / "work").mkdir()
    archive = transfer.build_archive(str(tmp_path / "tree"), str(tmp_path / "work"))
    assert archive.file is None and len(os.listdir(tmp_path / "work")) == 1
    with tarfile.open(archive.path) as tar:
        assert sorted(tar.getnames()) == ["payload", "payload/sub", "payload/sub/f"]
    with pytest.raises(UsageError, match="no such local file or directory"):
        transfer.build_archive(str(tmp_path / "missing"), str(tmp_path / "work"))


def test_pull_leaves_out_exactly_the_paths_named(tmp_path):
    run = tmp_path / "run"
    for name in (".corunner/executor.py", ".corunner/log", "in*put", "input2", "sub/input2", "out"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(name)
    command = remote.sh(
        transfer.PULL_SCRIPT, str(run), "MARK", ".corunner/executor.py", "in*put", "input2"
    )
    done = subprocess.run(["sh", "-c", command.line], input=command.head, capture_output=True)
    assert done.returncode == 0, done.stderr
    archive = done.stdout.split(b"MARK\n", 1)[1]
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert names == ["run/.corunner/log", "run/out", "run/sub/input2"]


def test_a_conversation_waits_for_its_marker_on_a_line_of_its_own_after_the_noise():
    chan = FakeChannel([b"noise CORUNNER-NEED\nCORUNNER-", b"NEED\n"], stderr=[b"warning\n"])
    said, out, err = remote.await_marker(chan, ["CORUNNER-HAVE", "CORUNNER-NEED"])  # type: ignore[arg-type]
    assert (said, out, err) == (
        "CORUNNER-NEED",
        b"noise CORUNNER-NEED\nCORUNNER-NEED\n",
        b"warning\n",
    )
    ended = FakeChannel([b"CORUNNER-ERROR python missing\n"])
    assert remote.await_marker(ended, ["CORUNNER-HAVE"])[0] is None  # type: ignore[arg-type]
