"""The upload's framing (executor.frame, frame_header, the markers / unpack):
what a node reads on the start command's stdin before anything runs."""

from __future__ import annotations

import os
import stat
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corunner.executor import (
    END_MARKER,
    FRAME_END,
    FRAME_HEADER,
    FRAME_STAGED,
    FRAME_TAR,
    TAR_MARKER,
    frame,
    frame_header,
    parse_frame_header,
    unpack,
)


def feed(data: bytes) -> int:
    """A pipe's read end holding ``data`` (written from a thread: it may exceed the pipe)."""
    read_end, write_end = os.pipe()

    def write() -> None:
        with os.fdopen(write_end, "wb") as f:
            f.write(data)

    threading.Thread(target=write, daemon=True).start()
    return read_end


@given(
    kind=st.sampled_from(["F", "T", "S", "E"]),
    name=st.binary(max_size=300),
    size=st.integers(0, 10**15),
    mode=st.integers(0, 0o7777),
)
def test_a_header_reads_back_as_written(kind, name, size, mode):
    raw = frame_header(kind, name, size, mode)
    assert raw[FRAME_HEADER:] == name
    assert parse_frame_header(raw[:FRAME_HEADER]) == (kind, mode, size, len(name))


def test_a_file_piece_and_the_markers_are_headers_too():
    raw = frame("sub/x", b"data", 0o755)
    assert raw == frame_header("F", b"sub/x", 4, 0o755) + b"data"
    assert parse_frame_header(TAR_MARKER) == ("T", 0o600, 0, 0)
    assert parse_frame_header(END_MARKER) == ("E", 0o600, 0, 0)


@pytest.mark.parametrize(
    "header",
    [b"", b"X 600 1 1".ljust(39) + b"\n", b"F 600 1".ljust(39) + b"\n", b"F 600 -1 1".ljust(39) + b"\n",
     b"F 600 1 1".ljust(40), b"F 600 1 1\n"],
)  # fmt: skip
def test_anything_else_is_not_a_header(header):
    with pytest.raises(ValueError):
        parse_frame_header(header)


@settings(max_examples=30, deadline=None)
@given(
    files=st.dictionaries(
        st.text("abcdefgh .-_'$", min_size=1, max_size=8).filter(lambda n: n not in (".", "..")),
        st.tuples(st.binary(max_size=3000), st.sampled_from([0o600, 0o644, 0o755, 0o4711])),
        max_size=4,
    ),
    last=st.sampled_from(
        [
            (TAR_MARKER, (FRAME_TAR, b"")),
            (END_MARKER, (FRAME_END, b"")),
            (
                frame_header(FRAME_STAGED, b".corunner/files.tar"),
                (FRAME_STAGED, b".corunner/files.tar"),
            ),
        ]
    ),
)
def test_unpack_writes_each_file_with_its_exact_mode(tmp_path_factory, files, last):
    where = tmp_path_factory.mktemp("unpack")
    stream = b"".join(frame(n, data, mode) for n, (data, mode) in files.items())
    marker, says = last
    stream += marker + b"after"
    fd = feed(stream)
    old = os.umask(0o077)
    cwd = os.getcwd()
    try:
        os.chdir(where)
        assert unpack(fd) == says  # how the user's files come, if at all
        assert os.read(fd, 100) == b"after"  # nothing read past the last header
    finally:
        os.chdir(cwd)
        os.umask(old)
        os.close(fd)
    for name, (data, mode) in files.items():
        assert (where / name).read_bytes() == data
        assert stat.S_IMODE(os.stat(where / name).st_mode) == mode


def test_unpack_refuses_names_that_climb_out_and_short_streams(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("../evil", "/tmp/evil", "a/../../evil", ""):
        with pytest.raises(ValueError, match="unsafe name"):
            unpack(feed(frame(name, b"x")))
    for name in (
        b"../files.tar",
        b"/tmp/files.tar",
        b"",
    ):  # a staged tar: in the run directory only
        with pytest.raises(ValueError, match="unsafe name"):
            unpack(feed(frame_header(FRAME_STAGED, name)))
    with pytest.raises(ValueError, match="ended early"):
        unpack(feed(frame("short", b"0123456789")[:-3]))
    with pytest.raises(ValueError, match="ended early"):
        unpack(feed(frame("ok", b"1")))  # no end marker
    assert sorted(os.listdir(tmp_path)) == ["ok", "short"]  # nothing written outside
