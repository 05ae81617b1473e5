"""The wire protocol: round trips, every rejection reason, and garbage never escapes."""

from __future__ import annotations

import hmac
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corunner import executor
from corunner.executor import (
    MAX_LINE,
    PROTOCOL,
    Heartbeat,
    ProtocolError,
    ack_line,
    decode,
    encode,
    parse_ack,
)

FIELDS = ("run_id", "host", "seq", "state", "exit_code", "signal", "sent_at")


def replace(hb: Heartbeat, **changes: Any) -> Heartbeat:
    """``hb`` with some fields changed, as dataclasses.replace did before the executor dropped dataclasses."""
    return Heartbeat(**{**{name: getattr(hb, name) for name in FIELDS}, **changes})


SECRET = bytes.fromhex("00112233445566778899aabbccddeeff")
RUNNING = Heartbeat("20260101-120000-ab12", "127.0.1.3", 7, "running", None, None, 1700000000.125)
EXITED = replace(RUNNING, seq=8, state="exited", exit_code=3)
KILLED = replace(RUNNING, seq=9, state="exited", signal=9)


def _reason(line: bytes, secret: bytes = SECRET) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(line, secret)
    return info.value.reason


def _resign(body: bytes, secret: bytes = SECRET) -> bytes:
    """A correctly signed line around an arbitrary body."""
    return body + b" " + hmac.digest(secret, body, "sha256").hex().encode() + b"\n"


@pytest.mark.parametrize("hb", [RUNNING, EXITED, KILLED], ids=["running", "exit", "signal"])
def test_round_trip_keeps_every_field(hb: Heartbeat) -> None:
    line = encode(hb, SECRET)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert line.startswith(PROTOCOL.encode() + b" ")
    assert decode(line, SECRET) == hb
    assert decode(line.rstrip(b"\n"), SECRET) == hb  # the listener strips newlines


def test_final_is_true_only_for_exited() -> None:
    assert not RUNNING.final
    assert EXITED.final and KILLED.final


def test_line_format_is_the_documented_one() -> None:
    line = encode(EXITED, SECRET).decode()
    fields = line.rstrip("\n").split(" ")
    assert fields[:8] == [
        "CR1",
        "20260101-120000-ab12",
        "127.0.1.3",
        "8",
        "exited",
        "3",
        "-",
        "1700000000.125",
    ]
    body = line.rsplit(" ", 1)[0].encode()
    assert fields[8] == hmac.digest(SECRET, body, "sha256").hex()


def test_sent_at_travels_with_millisecond_precision() -> None:
    hb = replace(RUNNING, sent_at=1700000000.123456)
    assert decode(encode(hb, SECRET), SECRET).sent_at == 1700000000.123


def test_longest_valid_message_fits_max_line() -> None:
    hb = Heartbeat("r" * 128, "h" * 128, 10**19 - 1, "exited", -(10**9), None, 10**12 - 1.0)
    line = encode(hb, SECRET)
    assert len(line) <= MAX_LINE
    assert decode(line, SECRET) == hb


@pytest.mark.parametrize(
    "changes",
    [
        {1: b"other-run"},
        {2: b"127.0.1.4"},
        {3: b"10"},
        {4: b"running", 6: b"-"},
        {5: b"0", 6: b"-"},
        {6: b"15"},
        {7: b"1700000001.125"},
    ],
    ids=["run_id", "host", "seq", "state", "exit_code", "signal", "sent_at"],
)
def test_tampering_with_any_field_breaks_the_mac(changes: dict[int, bytes]) -> None:
    fields = encode(KILLED, SECRET).rstrip(b"\n").split(b" ")
    for index, value in changes.items():
        assert fields[index] != value
        fields[index] = value
    assert _reason(b" ".join(fields) + b"\n") == "bad_mac"


def test_tampering_with_the_mac_itself_is_bad_mac() -> None:
    line = bytearray(encode(RUNNING, SECRET))
    line[-2] = ord("0") if line[-2] != ord("0") else ord("1")
    assert _reason(bytes(line)) == "bad_mac"


@pytest.mark.parametrize("length", [0, 1, 32, 63, 64, 65, 200])
def test_mac_is_hmac_sha256_for_secrets_of_any_length(length: int) -> None:
    secret = bytes(range(7, 7 + length % 256)) + bytes(max(0, length - 256))
    body = b"CR1 run host 1 exited - 9 12.345"
    expected = Heartbeat("run", "host", 1, "exited", None, 9, 12.345)
    assert decode(_resign(body, secret), secret) == expected
    assert encode(expected, secret) == _resign(body, secret)


def test_wrong_secret_is_bad_mac() -> None:
    assert _reason(encode(RUNNING, SECRET), secret=b"another secret") == "bad_mac"


def test_oversize_line_is_rejected_before_anything_else() -> None:
    assert _reason(b"x" * (MAX_LINE + 1)) == "oversize"
    assert _reason(encode(RUNNING, SECRET).rstrip(b"\n") + b" " * MAX_LINE) == "oversize"


@pytest.mark.parametrize("head", [b"CR2", b"CR0", b"CR10"])
def test_other_protocol_versions_are_version(head: bytes) -> None:
    line = encode(RUNNING, SECRET).replace(b"CR1", head, 1)
    assert _reason(line) == "version"


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"\n",
        b"hello\n",
        b"CR1\n",
        b"CR1 \n",
        b"CR1 a b c\n",
        b"\xff\xfe\x00\n",
        b"cr1 lower case is not the protocol\n",
    ],
)
def test_garbage_is_malformed(line: bytes) -> None:
    assert _reason(line) == "malformed"


@pytest.mark.parametrize(
    "body",
    [
        b"CR1 run host 0 running - - 1.000",  # seq must be positive
        b"CR1 run host 01 running - - 1.000",  # no leading zeros
        b"CR1 run host 1 sleeping - - 1.000",  # unknown state
        b"CR1 run host 1 running 0 - 1.000",  # running carries no outcome
        b"CR1 run host 1 exited - - 1.000",  # exited needs an exit code or a signal
        b"CR1 run host 1 exited 1 9 1.000",  # ... but not both
        b"CR1 run host 1 running - - 1.5",  # three decimals
        b"CR1 run ho/st 1 running - - 1.000",  # bad host characters
        b"CR1 run  host 1 running - - 1.000",  # empty field
        b"CR1 run host 1 running - - 1.000 extra",
        b"CR1 run host\t1 running - - 1.000",
    ],
)
def test_authentic_but_malformed_fields_are_malformed(body: bytes) -> None:
    assert _reason(_resign(body)) == "malformed"


def test_mac_of_the_wrong_length_is_malformed() -> None:
    assert _reason(b"CR1 run host 1 running - - 1.000 abcd\n") == "malformed"


def test_decode_accepts_bytearray_and_rejects_str() -> None:
    line = encode(RUNNING, SECRET)
    assert decode(bytearray(line), SECRET) == RUNNING
    assert decode(memoryview(line), SECRET) == RUNNING
    with pytest.raises(ProtocolError):
        decode(line.decode(), SECRET)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "hb",
    [
        replace(RUNNING, run_id="has space"),
        replace(RUNNING, host=""),
        replace(RUNNING, host="h" * 129),
        replace(RUNNING, host="nœud"),
        replace(RUNNING, seq=0),
        replace(RUNNING, seq=1.5),
        replace(RUNNING, state="lost"),
        replace(RUNNING, exit_code=0),
        replace(EXITED, signal=9),
        replace(RUNNING, sent_at=-1.0),
        replace(RUNNING, sent_at="now"),
    ],
)
def test_encode_refuses_what_decode_would_reject(hb: Heartbeat) -> None:
    with pytest.raises(ProtocolError) as info:
        encode(hb, SECRET)
    assert info.value.reason == "malformed"


def test_protocol_error_is_a_value_error_with_a_reason() -> None:
    err = ProtocolError("bad_mac")
    assert isinstance(err, ValueError)
    assert err.reason == "bad_mac" and str(err) == "bad_mac"


def test_ack_line_round_trips() -> None:
    assert ack_line(42) == b"ACK 42\n"
    assert parse_ack(ack_line(42)) == 42
    assert parse_ack(b"ACK -1\n") is None
    assert parse_ack(b"NAK 1\n") is None
    assert parse_ack(b"ACK 1 2\n") is None


NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@-"
names = st.text(alphabet=NAME_CHARS, min_size=1, max_size=128)
heartbeats = st.one_of(
    st.builds(
        Heartbeat,
        names,
        names,
        st.integers(1, 10**19 - 1),
        st.just("running"),
        st.none(),
        st.none(),
        st.integers(0, 10**12 - 1).map(lambda ms: ms / 1000),
    ),
    st.builds(
        Heartbeat,
        names,
        names,
        st.integers(1, 10**19 - 1),
        st.just("exited"),
        st.integers(-255, 255),
        st.none(),
        st.integers(0, 10**9).map(lambda ms: ms / 1000),
    ),
    st.builds(
        Heartbeat,
        names,
        names,
        st.integers(1, 10**19 - 1),
        st.just("exited"),
        st.none(),
        st.integers(1, 64),
        st.integers(0, 10**9).map(lambda ms: ms / 1000),
    ),
)


@given(heartbeats, st.binary(max_size=100))
def test_every_valid_heartbeat_round_trips(hb: Heartbeat, secret: bytes) -> None:
    line = encode(hb, secret)
    assert len(line) <= MAX_LINE
    assert decode(line, secret) == hb


@given(st.binary(max_size=2 * MAX_LINE))
def test_decode_of_arbitrary_bytes_returns_or_raises_protocol_error(line: bytes) -> None:
    try:
        result = decode(line, SECRET)
    except ProtocolError as exc:
        assert exc.reason in {"malformed", "bad_mac", "oversize", "version"}
    else:
        assert isinstance(result, Heartbeat)


@given(heartbeats, st.integers(0, 400), st.binary(min_size=1, max_size=3))
def test_decode_of_a_mangled_valid_line_never_escapes(
    hb: Heartbeat, position: int, junk: bytes
) -> None:
    line = encode(hb, SECRET)
    position %= len(line)
    mangled = line[:position] + junk + line[position + 1 :]
    try:
        result = decode(mangled, SECRET)
    except ProtocolError:
        return
    assert result == hb  # only a no-op change can still verify


# -- the executor's lean JSON and field checks (no json or re on the node) -----

_SCALARS = st.one_of(st.none(), st.booleans(), st.text(), st.integers(), st.floats())


@given(st.dictionaries(st.text(), _SCALARS))
def test_json_dumps_writes_what_json_dumps_writes(doc: dict[str, Any]) -> None:
    assert executor.json_dumps(doc) == json.dumps(doc, sort_keys=True)


@given(st.recursive(_SCALARS, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner)))
def test_json_loads_reads_what_json_loads_reads(value: Any) -> None:
    text = json.dumps(value)
    assert json.dumps(executor.json_loads(text)) == json.dumps(json.loads(text))
    assert json.dumps(executor.json_loads(f" {text}\n")) == json.dumps(json.loads(text))


@pytest.mark.parametrize("text", ["", "{", "[1,]", "nul", "{} x", "1 2", '{"a": 1,}'])
def test_json_loads_raises_what_json_loads_raises(text: str) -> None:
    with pytest.raises(ValueError):
        executor.json_loads(text)


_FIELD = st.one_of(
    st.text(max_size=4),
    st.sampled_from(
        [
            "-",
            "0",
            "-0",
            "7",
            "-1",
            "1234567890",
            "12345678901",
            "999",
            "1000",
            "running",
            "exited",
            "h",
            "1.000",
            "123456789012.345",
            "1234567890123.456",
            "\u0661",
            "1e5",
        ]
    ),
)


@given(st.tuples(*[_FIELD] * 7))
def test_encode_admits_exactly_the_fields_decode_admits(fields: tuple[str, ...]) -> None:
    """encode checks fields by hand (the executor does not import re); decode uses the pattern."""
    pattern = re.compile(executor._BODY_PATTERN)
    match = pattern.fullmatch("CR1 " + " ".join(fields))
    expected = match is not None and match.groups() == fields and executor._consistent(*fields[3:6])
    assert executor._body_fields_ok(*fields) == expected
