"""The executor: shipped to every node to run the user's program, and the wire protocol.

One stdlib-only file (Python 3.8+, no corunner imports) so it can be copied into
the run directory and started as ``python3 .corunner/executor.py`` (or imported
from there, to use the bytecode the controller ships beside it); the
controller imports the same file for :func:`encode` and :func:`decode`, so both
sides share one definition of the protocol.

Commands, exactly as corunner.bootstrap's scripts send them (each prints one
marker line the controller searches for, since remote shells may print noise
around it):

- ``start RUN_DIR [--foreground]``: how the controller starts a run (see
  :func:`cmd_start`): unpack the rest of the upload from stdin, then run the
  program, keep ``status.json`` and send heartbeats to the controller until
  the final message is acknowledged; detached (printing ``CORUNNER-STARTED
  <pid>``), or in the foreground without heartbeats (printing
  ``CORUNNER-STATUS <json>`` at the end).
- ``probe RUN_DIR``: print ``CORUNNER-PROBE <json>``.
- ``stop RUN_DIR``: stop the program's process group and print
  ``CORUNNER-STOP <json>``.
"""

from __future__ import annotations

# Lean imports: this file is loaded and started on every node for every run, so
# what ``start`` imports is paid per node. Measured on a 2-core Debian node against
# ~8 ms for the bare interpreter: json (with re and enum) ~12 ms, subprocess
# ~5 ms, hmac ~4 ms, socket ~4 ms; argparse, dataclasses and typing ~20 ms. So
# the run path uses the C modules behind them (_json, _socket, _sha256 or _sha2,
# select, os.posix_spawn) and falls back to the public modules on interpreters
# without them; every other path imports what it needs where it needs it.
import errno
import os
import sys
import time
from operator import itemgetter

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

# --------------------------------------------------------------------------
# Wire protocol: pure functions, the one source of truth for both sides.
# --------------------------------------------------------------------------

PROTOCOL = "CR1"
MAX_LINE = 512  # bytes, including the trailing newline

STATE_RUNNING = "running"
STATE_EXITED = "exited"
#: The final state of a program that ``stop`` ended (its exit code or signal is kept).
STATE_STOPPED = "stopped"
#: Written into the run directory by ``stop`` before it signals anything, so
#: the executor records the end it sees as a stop, not as a failure.
STOP_MARKER = "stop-requested"

#: Run ids and host ids; brackets for an IPv6 host with a port (``[::1]:2201``).
_NAME = r"[A-Za-z0-9._:@\[\]-]{1,128}"
_NAME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@[]-"
# Everything before " <mac>", as text. Explicit ASCII classes only, and bounded
# fields, so a match is pure ASCII and a valid line always fits MAX_LINE.
# Compiled by the first decode (the controller's side): encode checks its
# fields by hand, so the executor never imports re.
_BODY_PATTERN = (
    r"CR1 (" + _NAME + r") (" + _NAME + r") ([1-9][0-9]{0,18}) (running|exited|stopped)"
    r" (-|-?[0-9]{1,10}) (-|[0-9]{1,3}) ([0-9]{1,12}\.[0-9]{3})"
)
_BODY_RE: Any = None
_MAC_LEN = 64  # hex digits of HMAC-SHA256


class ProtocolError(ValueError):
    """A line that is not a valid, authentic message; ``reason`` is one short word.

    Reasons: ``malformed``, ``bad_mac``, ``oversize``, ``version``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Frozen:
    """A value whose fields are named by ``__match_args__``, as @dataclass(frozen=True) makes it.

    Equal to another of the same class with equal fields, hashed on its fields,
    printed with them, and read-only (assignment raises AttributeError). Hand
    written because importing dataclasses costs ~8 ms (inspect, ast) per start.
    """

    __match_args__: Tuple[str, ...] = ()
    _values: Callable[[Dict[str, Any]], Tuple[Any, ...]]

    def __init_subclass__(cls) -> None:
        # The field values, in order, from an instance's __dict__ (two fields or more).
        cls._values = itemgetter(*cls.__match_args__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._values(self.__dict__) == self._values(other.__dict__)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values(self.__dict__))

    def __repr__(self) -> str:
        values = self._values(self.__dict__)
        fields = ", ".join(f"{name}={value!r}" for name, value in zip(self.__match_args__, values))
        return f"{self.__class__.__qualname__}({fields})"

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")


class Heartbeat(tuple):
    """One message from an executor: the program's state at ``sent_at`` (unix seconds).

    A tuple of its fields, like a namedtuple (whose import costs the executor
    ~2 ms): the listener builds thousands a second, and a tuple is built in one
    C call where an object with a __dict__ takes several.
    """

    __slots__ = ()
    __match_args__ = ("run_id", "host", "seq", "state", "exit_code", "signal", "sent_at")
    run_id: str
    host: str
    seq: int
    state: str
    exit_code: Optional[int]
    signal: Optional[int]
    sent_at: float

    def __new__(
        cls,
        run_id: str,
        host: str,
        seq: int,
        state: str,
        exit_code: Optional[int],
        signal: Optional[int],
        sent_at: float,
    ) -> Heartbeat:
        return _tuple_new(cls, (run_id, host, seq, state, exit_code, signal, sent_at))

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={value!r}" for name, value in zip(self.__match_args__, self))
        return f"Heartbeat({fields})"

    @property
    def final(self) -> bool:
        """True for the last message of a run (the program has ended)."""
        return self[3] in (STATE_EXITED, STATE_STOPPED)


_tuple_new = tuple.__new__
for _index, _name in enumerate(Heartbeat.__match_args__):
    setattr(Heartbeat, _name, property(itemgetter(_index), doc=f"Field {_index} of the message."))
del _index, _name


def _consistent(state: str, exit_code: str, sig: str) -> bool:
    """Running carries no outcome; exited carries exactly one of exit code or signal."""
    if state == STATE_RUNNING:
        return exit_code == "-" and sig == "-"
    return (exit_code == "-") != (sig == "-")


def _digits(text: str, most: int) -> bool:
    """Whether ``text`` is 1 to ``most`` ASCII digits."""
    return 0 < len(text) <= most and text.isascii() and text.isdigit()


def _body_fields_ok(
    run_id: Any, host: Any, seq: str, state: Any, code: str, sig: str, sent_at: str
) -> bool:
    """What _BODY_PATTERN admits, field by field, without importing re."""
    return (
        valid_name(run_id)
        and valid_name(host)
        and _digits(seq, 19)
        and seq[0] != "0"
        and state in (STATE_RUNNING, STATE_EXITED, STATE_STOPPED)
        and (code == "-" or _digits(code[1:] if code[:1] == "-" else code, 10))
        and (sig == "-" or _digits(sig, 3))
        and sent_at[-4:-3] == "."
        and _digits(sent_at[:-4], 12)
        and _digits(sent_at[-3:], 3)
        and _consistent(state, code, sig)
    )


def encode(hb: Heartbeat, secret: bytes) -> bytes:
    """Serialise and sign one message as a newline-terminated ASCII line.

    Raises ProtocolError("malformed") if a field cannot be represented (bad
    name characters, non-positive seq, inconsistent outcome).
    """
    code = "-" if hb.exit_code is None else str(hb.exit_code)
    sig = "-" if hb.signal is None else str(hb.signal)
    try:
        if not isinstance(hb.seq, int):
            raise TypeError("seq must be an int")
        seq, sent_at = f"{hb.seq:d}", f"{hb.sent_at:.3f}"
    except (TypeError, ValueError):
        raise ProtocolError("malformed") from None
    if not _body_fields_ok(hb.run_id, hb.host, seq, hb.state, code, sig, sent_at):
        raise ProtocolError("malformed")
    text = f"{PROTOCOL} {hb.run_id} {hb.host} {seq} {hb.state} {code} {sig} {sent_at}"
    body = text.encode("ascii")
    return body + b" " + _signer(secret)(body) + b"\n"


def _lean_sha256() -> Callable[..., Any]:
    """SHA-256 from CPython's built-in module when present: hashlib loads OpenSSL (~3 ms)."""
    try:
        from _sha2 import sha256  # type: ignore[import-not-found,unused-ignore]  # 3.12+, no stub
    except ImportError:
        try:
            from _sha256 import sha256  # type: ignore[import-not-found,unused-ignore]  # 3.8-3.11
        except ImportError:
            from hashlib import sha256
    return sha256  # type: ignore[no-any-return,unused-ignore]


def _hmac_sha256(secret: bytes, sha256: Callable[..., Any]) -> Callable[[bytes], bytes]:
    """``mac(body)``: the hex HMAC-SHA256 of body under ``secret``, as hmac.digest gives it.

    Starts from the SHA-256 states after the inner and outer key blocks (RFC
    2104), computed here once: hmac.digest() re-derives them on every call and
    an hmac.HMAC copy adds four Python-level calls, so this costs half as much.
    The tests pin it to hmac.digest for keys of every length.
    """
    key = sha256(secret).digest() if len(secret) > 64 else secret
    key = key.ljust(64, b"\0")
    inner_pad = sha256(bytes(b ^ 0x36 for b in key))
    outer_pad = sha256(bytes(b ^ 0x5C for b in key))

    def mac(body: bytes) -> bytes:
        inner = inner_pad.copy()
        inner.update(body)
        outer = outer_pad.copy()
        outer.update(inner.digest())
        return outer.hexdigest().encode("ascii")

    return mac


# secret -> its sign(body) -> hex MAC, made by _signer (the executor signs with one secret).
_signers: Dict[bytes, Callable[[bytes], bytes]] = {}


def _signer(secret: bytes) -> Callable[[bytes], bytes]:
    """Cache and return ``sign(body)``: the hex HMAC-SHA256 of body under ``secret``."""
    sign = _signers.get(secret)
    if sign is None:
        sign = _hmac_sha256(secret, _lean_sha256())
        if len(_signers) >= 64:
            _signers.clear()
        _signers[secret] = sign
    return sign


def decode(line: bytes, secret: bytes) -> Heartbeat:
    """Parse and authenticate one line (with or without its newline).

    The MAC is checked before any field is interpreted. Raises ProtocolError,
    and nothing else, for any input that is not an authentic message.
    """
    if type(line) is not bytes:
        if not isinstance(line, (bytes, bytearray, memoryview)):
            raise ProtocolError("malformed")
        line = bytes(line)
    return decoder(bytes(secret))(line)


# secret -> its decode(line), made by decoder.
_decoders: Dict[bytes, Callable[[bytes], Heartbeat]] = {}


def decoder(secret: bytes) -> Callable[[bytes], Heartbeat]:
    """``decode`` bound to one secret, for a caller with many lines (the listener).

    Decoding is the listener's hot path, so all it can is done once per secret
    here: the MAC's key pads, the pattern and the lookups. Takes bytes only.
    """
    cached = _decoders.get(secret)
    if cached is not None:
        return cached
    import hashlib
    import hmac

    # OpenSSL's SHA-256 here: the listener checks thousands of messages a second.
    expected_mac = _hmac_sha256(secret, hashlib.sha256)
    compare = hmac.compare_digest
    fullmatch = (_BODY_RE or _compile_body()).fullmatch
    consistent, new, kind = _consistent, _tuple_new, Heartbeat

    def decode_line(line: bytes) -> Heartbeat:
        if len(line) > MAX_LINE:
            raise ProtocolError("oversize")
        if line[-1:] == b"\n":
            line = line[:-1]
        if not line.startswith(b"CR1 "):
            raise ProtocolError(_unknown_version(line))
        body, _, mac = line.rpartition(b" ")
        if len(mac) != _MAC_LEN or not body:
            raise ProtocolError("malformed")
        if not compare(expected_mac(body), mac):
            raise ProtocolError("bad_mac")
        m = fullmatch(body.decode("latin-1"))  # latin-1 never fails
        if m is None:
            raise ProtocolError("malformed")
        run_id, host, seq, state, code, sig, sent_at = m.groups()
        if not consistent(state, code, sig):
            raise ProtocolError("malformed")
        exit_code = None if code == "-" else int(code)
        signal = None if sig == "-" else int(sig)
        # tuple.__new__ directly: no Python-level __new__ call for the busiest object.
        return new(kind, (run_id, host, int(seq), state, exit_code, signal, float(sent_at)))

    if len(_decoders) >= 64:
        _decoders.clear()
    _decoders[secret] = decode_line
    return decode_line


def _unknown_version(line: bytes) -> str:
    """The reason to reject a line that does not start with ``CR1 ``."""
    space = line.find(b" ")
    version = line[2:space].decode("latin-1") if line.startswith(b"CR") else ""
    return "version" if _digits(version, MAX_LINE) else "malformed"


def _compile_body() -> Any:
    global _BODY_RE
    import re

    _BODY_RE = re.compile(_BODY_PATTERN)
    return _BODY_RE


def ack_line(seq: int) -> bytes:
    """The controller's reply to an accepted final message."""
    return b"ACK %d\n" % seq


def parse_ack(line: bytes) -> Optional[int]:
    """The seq of an ``ACK <seq>`` line, or None for anything else."""
    parts = line.strip().split(b" ")
    if len(parts) == 2 and parts[0] == b"ACK" and parts[1].isdigit() and len(parts[1]) < 20:
        return int(parts[1])
    return None


def valid_name(name: object) -> bool:
    """Whether ``name`` can travel as a run id or host field."""
    return isinstance(name, str) and 0 < len(name) <= 128 and not name.strip(_NAME_CHARS)


# --------------------------------------------------------------------------
# JSON for config.json and status.json, without importing json on the run path.
# --------------------------------------------------------------------------


class _ScanContext:
    """The settings _json.make_scanner reads from a json.JSONDecoder: json.loads's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}.get


def json_loads(text: str) -> Any:
    """json.loads(text), by CPython's C scanner when it parses ``text`` cleanly.

    Anything else (no C scanner, bad input) goes to json.loads itself, which
    gives the real result or the real error (a ValueError).
    """
    try:
        from _json import make_scanner

        value, end = make_scanner(_ScanContext)(text, 0)  # type: ignore[arg-type]
        if end == len(text) or text[end:].isspace():
            return value
    except Exception:  # noqa: BLE001 - whatever went wrong, json.loads decides
        pass
    import json

    return json.loads(text)


def json_dumps(doc: Dict[str, Any]) -> str:
    """json.dumps(doc, sort_keys=True) for a flat object, by CPython's C string quoting.

    Other documents (nested values, non-finite floats, no C module) go to json.dumps.
    """
    quote: Optional[Callable[[str], str]]
    try:
        from _json import encode_basestring_ascii as quote
    except ImportError:
        quote = None
    if quote is not None and all(type(key) is str for key in doc):
        items = []
        for key in sorted(doc):
            text = _json_scalar(doc[key], quote)
            if text is None:
                break
            items.append(f"{quote(key)}: {text}")
        else:
            return "{" + ", ".join(items) + "}"
    import json

    return json.dumps(doc, sort_keys=True)


def _json_scalar(value: Any, quote: Callable[[str], str]) -> Optional[str]:
    """``value`` as json.dumps writes it, for null, booleans, strings and finite numbers."""
    kind = type(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is str:
        return quote(value)
    if kind is int or (kind is float and value - value == 0):  # inf - inf and nan are nan
        return repr(value)
    return None


# --------------------------------------------------------------------------
# Configuration and status (pure, plus small file helpers).
# --------------------------------------------------------------------------


class Config(_Frozen):
    """The parsed ``config.json`` written by the controller."""

    __match_args__ = (
        "run_id",
        "host",
        "argv",
        "shell",
        "controller",
        "interval",
        "secret",
        "heartbeat",
        "linger",
        "env",
        "stdin",
        "become",
    )
    run_id: str
    host: str
    argv: Optional[List[str]]
    shell: Optional[str]
    controller: List[Tuple[str, int]]
    interval: float
    secret: bytes
    heartbeat: bool
    linger: float
    env: Dict[str, str]
    stdin: Optional[str]
    become: Optional[str]

    def __init__(
        self,
        run_id: str,
        host: str,
        argv: Optional[List[str]],
        shell: Optional[str],
        controller: List[Tuple[str, int]],
        interval: float,
        secret: bytes,
        heartbeat: bool,
        linger: float,
        env: Dict[str, str],
        stdin: Optional[str] = None,
        become: Optional[str] = None,
    ) -> None:
        self.__dict__.update(
            run_id=run_id,
            host=host,
            argv=argv,
            shell=shell,
            controller=controller,
            interval=interval,
            secret=secret,
            heartbeat=heartbeat,
            linger=linger,
            env=env,
            stdin=stdin,
            become=become,
        )


def config_document(
    *,
    run_id: str,
    host: str,
    argv: Optional[List[str]],
    shell: Optional[str],
    controller: Sequence[Sequence[Any]],
    interval: float,
    secret: bytes,
    heartbeat: bool,
    linger: float,
    env: Dict[str, str],
    stdin: Optional[str] = None,
    become: Optional[str] = None,
) -> Dict[str, Any]:
    """config.json as the controller writes it, for :func:`parse_config` on the node.

    Its keys are the fields of :class:`Config`, in order; ``controller`` is a
    list of (host, port), host "" for the SSH client's address; ``stdin`` the
    file in the run directory the program reads as its stdin (None: /dev/null);
    ``become`` the user the program runs as through ``sudo -n`` (None: ours).
    """
    return {
        "run_id": run_id,
        "host": host,
        "argv": argv,
        "shell": shell,
        "controller": [[address, port] for address, port in controller],
        "interval": interval,
        "secret": secret.hex(),
        "heartbeat": heartbeat,
        "linger": linger,
        "env": env,
        "stdin": stdin,
        "become": become,
    }


def parse_config(data: Any) -> Config:
    """Validate the decoded JSON of config.json; raises ValueError naming the bad key.

    Every key of :func:`config_document` must be there, and no other.
    """
    if not isinstance(data, dict):
        raise ValueError("config must be a JSON object")
    keys = Config.__match_args__
    for key in keys:
        if key not in data:
            raise ValueError(f"config lacks {key}")
    for key in data:
        if key not in keys:
            raise ValueError(f"unknown config key {key!r}")
    for key in ("run_id", "host"):
        if not valid_name(data[key]):
            raise ValueError(f"{key} must match {_NAME}")
    argv, shell = data["argv"], data["shell"]
    if (argv is None) == (shell is None):
        raise ValueError("exactly one of argv and shell must be set")
    if argv is not None and (
        not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv)
    ):
        raise ValueError("argv must be a non-empty list of strings")
    if shell is not None and not isinstance(shell, str):
        raise ValueError("shell must be a string")
    controller = data["controller"]
    if not isinstance(controller, list):
        raise ValueError("controller must be a list of [host, port]")
    addrs = []
    for item in controller:
        if (
            not isinstance(item, (list, tuple))
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], int)
            or not 0 < item[1] < 65536
        ):
            raise ValueError("controller must be a list of [host, port]")
        addrs.append((item[0], item[1]))
    try:
        interval = float(data["interval"])
        linger = float(data["linger"])
        secret = bytes.fromhex(data["secret"])
    except (TypeError, ValueError):
        raise ValueError("interval, linger must be numbers and secret a hex string") from None
    if not interval > 0 or not linger >= 0:
        raise ValueError("interval must be > 0 and linger >= 0")
    env = data["env"]
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError("env must map strings to strings")
    stdin = data["stdin"]
    if stdin is not None and (
        not isinstance(stdin, str) or not stdin or stdin.startswith("/") or ".." in stdin.split("/")
    ):
        raise ValueError("stdin must be null or a relative path in the run directory")
    become = data["become"]
    if become is not None and (not isinstance(become, str) or not become or become[0] == "-"):
        raise ValueError("become must be null or a user name")
    return Config(
        run_id=data["run_id"],
        host=data["host"],
        argv=argv,
        shell=shell,
        controller=addrs,
        interval=interval,
        secret=secret,
        heartbeat=bool(data["heartbeat"]),
        linger=linger,
        env=dict(env),
        stdin=stdin,
        become=become,
    )


def new_status(cfg: Config, started_at: float) -> Dict[str, Any]:
    """The status.json document before the program starts."""
    return {
        "run_id": cfg.run_id,
        "host": cfg.host,
        "hostname": os.uname().nodename,  # socket.gethostname(), without socket
        "state": "running",
        "pid": None,
        "pgid": None,
        "executor_pid": os.getpid(),
        "exit_code": None,
        "signal": None,
        "started_at": started_at,
        "ended_at": None,
        "error": None,
    }


def outcome(returncode: int) -> Tuple[Optional[int], Optional[int]]:
    """(exit_code, signal) from a Popen return code (negative means killed by a signal)."""
    if returncode < 0:
        return None, -returncode
    return returncode, None


def write_status(run_dir: str, status: Dict[str, Any]) -> None:
    """Atomically replace RUN_DIR/status.json, so readers never see half a file."""
    path = os.path.join(run_dir, "status.json")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as fh:
            fh.write(json_dumps(status) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)  # half a file on a full disk holds the space we need
        except OSError:
            pass
        raise


#: Space kept for the last status.json, in the run directory: a program that
#: fills the disk must not cost the run its outcome (see _try_write_status).
RESERVE_PATH = ".corunner/status.reserve"
RESERVE_SIZE = 16384  # bytes: a few pages, for status.json and its temporary copy


def _reserve(run_dir: str) -> None:
    try:
        fd = os.open(os.path.join(run_dir, RESERVE_PATH), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.write(fd, bytes(RESERVE_SIZE))
        finally:
            os.close(fd)
    except OSError:
        pass  # no room even now: the final message still tells the controller


def program_env(cfg: Config, run_dir: str) -> Dict[str, str]:
    """The program's environment: the executor's, the config's, and the run's names."""
    env = dict(os.environ)
    env.update(cfg.env)
    env.update(CORUNNER_RUN_ID=cfg.run_id, CORUNNER_HOST=cfg.host, CORUNNER_RUN_DIR=run_dir)
    return env


def program_argv(cfg: Config) -> List[str]:
    """What the executor runs: the script's argv, or the command under /bin/sh -c."""
    argv = cfg.argv if cfg.argv is not None else ["/bin/sh", "-c", cfg.shell or ""]
    if cfg.become:
        # -E keeps the run's environment (CORUNNER_*, --env): stop finds the
        # program by it, and its values never go on a command line.
        return ["sudo", "-n", "-E", "-u", cfg.become, "--", *argv]
    return argv


def cannot_become(cfg: Config, env: Dict[str, str]) -> Optional[str]:
    """Why ``sudo -n -E -u USER`` would not run the program, or None (no sudo, or it works).

    ``-n``: sudo never asks for a password; a host that would need one says so.
    """
    if not cfg.become:
        return None
    import subprocess

    try:
        done = subprocess.run(
            ["sudo", "-n", "-E", "-u", cfg.become, "--", "true"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run sudo: {exc}"
    if done.returncode == 0:
        return None
    said = done.stderr.decode("utf-8", "replace").strip().splitlines()
    if any("password" in line for line in said):
        return f"needs passwordless sudo (NOPASSWD) for {cfg.become}"
    # sudo's first line is the cause; later ones are its plugins giving up.
    return f"sudo -u {cfg.become} refused: {said[0] if said else f'exit {done.returncode}'}"


def cannot_execute(argv: List[str], env: Dict[str, str]) -> Optional[str]:
    """Why ``argv[0]`` could not be started, as the spawn would fail; None if it can be.

    Asked before the executor detaches, so that the start command itself
    carries the reason to the controller (a noexec remote_dir, say).
    """
    try:
        path = _executable(argv[0], env)
    except FileNotFoundError:
        path = ""
    if not path or not os.path.exists(path):
        return f"cannot execute {argv[0]}: No such file or directory"
    if os.access(path, os.X_OK):
        return None
    return _exec_error(argv[0], path, "Permission denied")


def _exec_error(name: str, path: str, why: str) -> str:
    """The one line for a program that cannot be executed, with the likely cause."""
    text = f"cannot execute {name}: {why}"
    try:
        noexec = bool(os.statvfs(path).f_flag & getattr(os, "ST_NOEXEC", 0))
    except OSError:
        noexec = False
    return text + "; is remote_dir on a noexec mount?" if noexec else text


def read_status(run_dir: str) -> Optional[Dict[str, Any]]:
    """RUN_DIR/status.json, or None if there is none; raises ValueError if unreadable."""
    try:
        with open(os.path.join(run_dir, "status.json")) as fh:
            data = json_loads(fh.read())
    except FileNotFoundError:
        return None
    if not isinstance(data, dict):
        raise ValueError("status.json is not an object")
    return data


# --------------------------------------------------------------------------
# Process inspection (Linux /proc when present; plain kill(0) otherwise).
# --------------------------------------------------------------------------


def _proc_stat(pid: int) -> Optional[Tuple[str, int]]:
    """(state letter, pgrp) of a process from /proc, or None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return None
    fields = raw.rsplit(b")", 1)[-1].split()
    try:
        return fields[0].decode("ascii"), int(fields[2])
    except (IndexError, ValueError, UnicodeDecodeError):
        return None


def pid_alive(pid: Optional[int]) -> bool:
    """Whether a process exists and is not a zombie (an unreaped corpse runs nothing)."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    return stat is None or stat[0] not in "ZX"


def group_alive(pgid: Optional[int]) -> bool:
    """Whether any live (non-zombie) process remains in process group ``pgid``."""
    if not pgid or pgid <= 0:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[1] == pgid and stat[0] not in "ZX":
                return True
    return False


def executor_alive(pid: Optional[int]) -> bool:
    """Whether ``pid`` is still an executor (guards against a recycled pid)."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"executor.py" in fh.read()
    except OSError:
        return True


# --------------------------------------------------------------------------
# The link to the controller: one non-blocking TCP connection, never blocks.
# --------------------------------------------------------------------------


def resolve_controllers(
    addrs: List[Tuple[str, int]], ssh_connection: Optional[str]
) -> List[Tuple[str, int]]:
    """Replace host "" by the SSH client's address (first field of $SSH_CONNECTION).

    An empty host without $SSH_CONNECTION is dropped: there is nothing to try.
    """
    client = (ssh_connection or "").split()
    out = []
    for host, port in addrs:
        if host == "":
            if not client:
                continue
            host = client[0]
        out.append((host, port))
    return out


#: What a node says when no controller address answers (the run's error column).
NOREACH_MARKER = "CORUNNER-NOREACH"


def unreachable_line(addrs: List[Tuple[str, int]], why: str) -> str:
    """The one line for a node that cannot reach the controller at any of ``addrs``."""
    where = " or ".join(f"{h}:{p}" for h, p in dict.fromkeys(addrs)) or "no address"
    return (
        f"cannot reach the controller at {where} ({why}); "
        "use --heartbeat-via tunnel or --no-heartbeat"
    )


def _socket_module() -> Any:
    """CPython's C socket module, which has all the executor uses; socket.py adds ~4 ms of enums."""
    try:
        import _socket as socket
    except ImportError:
        import socket  # type: ignore[no-redef]
    return socket


def _signal_module() -> Any:
    """CPython's C signal module; signal.py adds its enums (~4 ms) and nothing the executor uses."""
    try:
        import _signal as signal  # type: ignore[import-not-found,unused-ignore]  # no stub
    except ImportError:
        import signal
    return signal


#: Readiness bits of Poller (as selectors.EVENT_READ and EVENT_WRITE).
READ, WRITE = 1, 2


class Poller:
    """The part of a selectors selector the executor uses, over select.poll.

    selectors costs ~2 ms per start in imports. Descriptors are registered with
    the object their events go to; like selectors' PollSelector, an error or a
    hangup on a descriptor reports it both readable and writable.
    """

    def __init__(self) -> None:
        import select

        self._poll = select.poll()
        self._in, self._out = select.POLLIN, select.POLLOUT
        self._targets: Dict[int, Any] = {}

    def register(self, fd: int, events: int, target: Any) -> None:
        self._poll.register(fd, self._mask(events))
        self._targets[fd] = target

    def modify(self, fd: int, events: int, target: Any) -> None:
        self._poll.modify(fd, self._mask(events))
        self._targets[fd] = target

    def unregister(self, fd: int) -> None:
        """Forget ``fd``; nothing happens if it was not registered."""
        self._targets.pop(fd, None)
        try:
            self._poll.unregister(fd)
        except (KeyError, ValueError):
            pass

    def select(self, timeout: float) -> List[Tuple[Any, int]]:
        """(target, READ|WRITE bits) of each ready descriptor, within ``timeout`` seconds."""
        ms = max(0, int(timeout * 1000 + 0.999))  # round up: never spin just short of a deadline
        out = []
        for fd, event in self._poll.poll(ms):
            target = self._targets.get(fd)
            if target is not None:
                readable = READ if event & ~self._out else 0
                out.append((target, readable | (WRITE if event & ~self._in else 0)))
        return out

    def _mask(self, events: int) -> int:
        return (self._in if events & READ else 0) | (self._out if events & WRITE else 0)


class Link:
    """A persistent connection to the first reachable controller address.

    Connects without blocking (the run loop's selector watches the socket), and
    after a failure waits with jittered exponential backoff, from ``interval`` up
    to ``10 * interval``, so a dead controller never delays the program's wait.
    """

    def __init__(
        self, addrs: List[Tuple[str, int]], interval: float, sel: Poller, verdict_fd: int = -1
    ) -> None:
        self.addrs = addrs
        #: Told once how the first round of tries went (cmd_start reads it), then closed.
        self.verdict_fd = verdict_fd
        self.interval = interval
        self.sel = sel
        self.backoff = interval
        self.cap = 10 * interval
        self.connect_timeout = min(5.0, max(1.0, 2 * interval))
        self.sock: Optional[socket.socket] = None
        self.fd = -1  # the socket's descriptor while it is registered
        self.connected = False
        self.fresh = False  # set on connect; Session.serve clears it
        self.index = 0
        self.deadline = 0.0  # connect timeout while connecting
        self.next_attempt = 0.0
        self.out = bytearray()
        self.inbuf = b""
        self.acked = 0  # highest ACK seq received
        self.last_error = ""
        self.ever_connected = False
        self.said_unreachable = False

    def wake_at(self) -> float:
        """The monotonic time at which tick() has something to do."""
        if self.sock is None:
            return self.next_attempt
        if not self.connected:
            return self.deadline
        return float("inf")

    def tick(self, now: float) -> None:
        """Start a connection attempt or give up on a slow one, as time dictates."""
        if self.sock is None:
            if now >= self.next_attempt:
                self._attempt(now)
        elif not self.connected and now >= self.deadline:
            self._next_address(now, "connect timeout")

    def _attempt(self, now: float) -> None:
        socket = _socket_module()
        while self.index < len(self.addrs):
            host, port = self.addrs[self.index]
            try:
                # An ASCII name goes as bytes: a str one loads the idna codec (~8 ms, with re).
                name = host.encode("ascii") if host.isascii() else host
                family, kind, proto, _, sockaddr = socket.getaddrinfo(
                    name, port, type=socket.SOCK_STREAM
                )[0]
                sock = socket.socket(family, kind, proto)
            except OSError as exc:
                self._note(f"{host}:{port}: {exc}")
                self.index += 1
                continue
            sock.setblocking(False)
            err = sock.connect_ex(sockaddr)
            if err in (0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EALREADY):
                self.sock = sock
                self.deadline = now + self.connect_timeout
                self.fd = sock.fileno()
                self.sel.register(self.fd, WRITE, self)
                return
            sock.close()
            self._note(f"{host}:{port}: {os.strerror(err)}")
            self.index += 1
        self._schedule(now)

    def _schedule(self, now: float) -> None:
        """Every address failed: wait, then start again from the first."""
        import random

        if not self.ever_connected and not self.said_unreachable:
            self.said_unreachable = True
            line = unreachable_line(self.addrs, self.last_error.rsplit(": ", 1)[-1] or "no answer")
            _log(line)
            self._tell(line)
        self.index = 0
        self.next_attempt = now + self.backoff * random.uniform(0.75, 1.25)
        self.backoff = min(self.backoff * 2, self.cap)

    def _next_address(self, now: float, why: str) -> None:
        host, port = self.addrs[self.index]
        self._note(f"{host}:{port}: {why}")
        self._close_socket()
        self.index += 1
        self._attempt(now)

    def _tell(self, verdict: str) -> None:
        if self.verdict_fd >= 0:
            _tell(self.verdict_fd, verdict)
            self.verdict_fd = -1

    def _note(self, msg: str) -> None:
        if msg != self.last_error:
            self.last_error = msg
            _log(f"controller {msg}")

    def _close_socket(self) -> None:
        if self.sock is not None:
            self.sel.unregister(self.fd)
            self.sock.close()
        self.sock = None
        self.connected = False
        self.out = bytearray()
        self.inbuf = b""

    def drop(self, now: float, why: str) -> None:
        """Abandon the current connection and reconnect after the backoff."""
        if self.sock is not None and self.index < len(self.addrs):
            host, port = self.addrs[self.index]
            self._note(f"{host}:{port}: {why}")
        self._close_socket()
        self._schedule(now)

    def close(self) -> None:
        self._close_socket()

    def on_event(self, mask: int, now: float) -> None:
        """Handle readiness of our socket: connect completion, ACKs, pending output."""
        socket = _socket_module()
        sock = self.sock
        if sock is None:
            return
        if not self.connected:
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._next_address(now, os.strerror(err))
                return
            self.connected = True
            self.ever_connected = True
            self._tell("connected")
            self.fresh = True
            self.backoff = self.interval
            self.last_error = ""
            _tune(sock, self.interval)
            self._interest()
            return
        if mask & READ:
            try:
                data = sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError as exc:
                self.drop(now, str(exc))
                return
            if data is not None:
                if not data:
                    self.drop(now, "closed by controller")
                    return
                self._on_data(data)
                if len(self.inbuf) > MAX_LINE:
                    self.drop(now, "garbage from controller")
                    return
        if mask & WRITE:
            self._flush(now)

    def _on_data(self, data: bytes) -> None:
        *lines, self.inbuf = (self.inbuf + data).split(b"\n")
        for line in lines:
            seq = parse_ack(line)
            if seq is not None and seq > self.acked:
                self.acked = seq

    def send(self, line: bytes, now: float) -> bool:
        """Queue one line on the live connection; False if not connected or backed up."""
        if not self.connected or len(self.out) > 4 * MAX_LINE:
            return False
        self.out += line
        self._flush(now)
        return True

    def _flush(self, now: float) -> None:
        if self.sock is None or not self.out:
            return
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.drop(now, str(exc))
            return
        del self.out[:sent]
        self._interest()

    def _interest(self) -> None:
        if self.sock is not None:
            self.sel.modify(self.fd, READ | (WRITE if self.out else 0), self)


def _tell(fd: int, verdict: str) -> None:
    """Write one verdict line to the start's pipe and close it; a start gone is no error."""
    try:
        os.write(fd, verdict.encode("utf-8", "replace")[:4000] + b"\n")
    except OSError:
        pass
    finally:
        os.close(fd)


def _tune(sock: socket.socket, interval: float) -> None:
    """Small writes go out at once; a silently dead peer errors out instead of hanging."""
    socket = _socket_module()
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
        if user_timeout is not None:
            ms = int(max(10.0, 10 * interval) * 1000)
            sock.setsockopt(socket.IPPROTO_TCP, user_timeout, ms)
    except OSError:
        pass


# --------------------------------------------------------------------------
# run: the program's life, status.json and the messages.
# --------------------------------------------------------------------------


def _log(msg: str) -> None:
    try:
        sys.stderr.write(f"corunner-executor: {msg}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Session:
    """One run of the program on this node, driven by a single poll loop.

    The loop wakes for the link's socket, the program's exit (a pidfd, or
    SIGCHLD through a wakeup pipe where there is none) and its timers.
    """

    def __init__(self, cfg: Config, run_dir: str, foreground: bool, verdict_fd: int = -1) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.foreground = foreground
        self.sel = Poller()
        # Seq starts from the wall clock in ms so that an executor restarted for
        # the same run still sends seqs above the ones the listener has seen.
        self.seq = max(1, int(time.time() * 1000))
        self.link: Optional[Link] = None
        addrs = resolve_controllers(cfg.controller, os.environ.get("SSH_CONNECTION"))
        if cfg.heartbeat and not foreground and addrs:
            self.link = Link(addrs, cfg.interval, self.sel, verdict_fd)
        elif verdict_fd >= 0:
            _tell(verdict_fd, unreachable_line(addrs, "no address to try"))
        self.pid = 0  # the program's, once started
        self.wake_fds: Tuple[int, ...] = ()  # the pidfd, or the SIGCHLD wakeup pipe

    def message(self, state: str, exit_code: Optional[int], sig: Optional[int]) -> bytes:
        self.seq += 1
        hb = Heartbeat(self.cfg.run_id, self.cfg.host, self.seq, state, exit_code, sig, time.time())
        return encode(hb, self.cfg.secret)

    def wait(self, timeout: float) -> None:
        """Block until I/O, the program's exit or ``timeout`` seconds, and serve the link."""
        for target, mask in self.sel.select(max(0.0, timeout)):
            if target is _EXIT:
                _drain(self.wake_fds[0])
            elif self.link is not None:
                self.link.on_event(mask, time.monotonic())

    def start(self) -> Dict[str, Any]:
        """Start the program in its own session; on failure the status says error.

        The executor's working directory is the run directory (cmd_start), which
        the program inherits.
        """
        cfg = self.cfg
        status = new_status(cfg, time.time())
        env = program_env(cfg, self.run_dir)
        argv = program_argv(cfg)
        why = cannot_become(cfg, env) if self.foreground else None  # detached: cmd_start asked
        if why:
            status.update(state="error", exit_code=126, ended_at=time.time(), error=why)
            return status
        try:
            out = open(os.path.join(self.run_dir, "stdout"), "wb")
            err = open(os.path.join(self.run_dir, "stderr"), "wb")
        except OSError as exc:
            status.update(state="error", exit_code=127, ended_at=time.time(), error=str(exc))
            return status
        _reserve(self.run_dir)
        try:
            with out, err:
                self.pid = _spawn(argv, env, out.fileno(), err.fileno(), cfg.stdin or os.devnull)
        except OSError as exc:
            code = 126 if isinstance(exc, PermissionError) else 127
            why = _exec_error(argv[0], argv[0], exc.strerror or str(exc))
            status.update(state="error", exit_code=code, ended_at=time.time(), error=why)
            return status
        self._watch_exit()
        status.update(pid=self.pid, pgid=self.pid)
        return status

    def _watch_exit(self) -> None:
        """Make the program's exit wake the loop: a pidfd (Linux 5.3+), else SIGCHLD."""
        try:
            self.wake_fds = (os.pidfd_open(self.pid),)
        except (AttributeError, OSError):
            signal = _signal_module()
            read_end, write_end = os.pipe()
            os.set_blocking(read_end, False)
            os.set_blocking(write_end, False)
            self.wake_fds = (read_end, write_end)
            signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
            signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.sel.register(self.wake_fds[0], READ, _EXIT)

    def _unwatch_exit(self) -> None:
        if len(self.wake_fds) == 2:
            signal = _signal_module()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.set_wakeup_fd(-1)
        if self.wake_fds:
            self.sel.unregister(self.wake_fds[0])
        for fd in self.wake_fds:
            os.close(fd)
        self.wake_fds = ()

    def returncode(self) -> Optional[int]:
        """The program's return code (negative: killed by that signal), None while it runs."""
        pid, wait_status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return None
        if os.WIFSIGNALED(wait_status):
            return -os.WTERMSIG(wait_status)
        return os.WEXITSTATUS(wait_status)

    def serve(self, status: Dict[str, Any]) -> bool:
        """The event loop, from the program's start to its final message's ACK.

        While the program runs, a heartbeat goes out as soon as a connection is
        up and every interval after; when it ends, ``status`` records how. Then
        the final message goes out once on each new connection until one is
        acknowledged (True) or ``linger`` seconds pass (False; at once without
        a link). A connection that brings no ACK within ``ack_wait`` is dropped
        and the next carries a fresh seq, so a lost ACK or a half-dead
        connection never leaves the listener rejecting a replay.
        """
        link, cfg = self.link, self.cfg
        ack_wait = max(2.0, 4 * cfg.interval)
        running = self.pid != 0
        now = time.monotonic()
        end = float("inf") if running else now + cfg.linger  # then the final message is late
        due = now  # running: the next heartbeat; ended: the final message's ACK deadline
        pending = True  # ended: the current connection has not carried the final message
        first_seq = 0  # ended: the seq of the first final message sent
        while True:
            if running:
                rc = self.returncode()
                if rc is not None:
                    self._ended(status, rc)
                    running, now = False, time.monotonic()
                    end, due = now + cfg.linger, float("inf")
            if not running and (link is None or now >= end):
                break
            wake = now + 1.0 if running else end  # running: in case an exit wakeup is missed
            if link is not None:
                link.tick(now)
                fresh, link.fresh = link.fresh, False
                if running:
                    if fresh:
                        due = now
                    if now >= due:
                        if link.connected:
                            link.send(self.message(STATE_RUNNING, None, None), now)
                        due = max(due + cfg.interval, now)
                else:
                    pending = pending or fresh
                    if pending and link.connected:
                        word = STATE_STOPPED if status.get("stopped") else STATE_EXITED
                        final = self.message(word, status["exit_code"], status["signal"])
                        if link.send(final, now):
                            pending, due = False, now + ack_wait
                            first_seq = first_seq or self.seq
                    if first_seq and link.acked >= first_seq:
                        link.close()
                        return True
                    if now >= due:
                        due = float("inf")
                        if link.connected:
                            link.drop(now, "no ACK for the final message")
                wake = min(wake, due, link.wake_at())
            self.wait(wake - now)
            now = time.monotonic()
        if link is not None:
            link.close()
        return False

    def _ended(self, status: Dict[str, Any], returncode: int) -> None:
        """Record the program's end in ``status`` and status.json."""
        self._unwatch_exit()
        exit_code, sig = outcome(returncode)
        status.update(state="exited", exit_code=exit_code, signal=sig, ended_at=time.time())
        if stop_requested(self.run_dir):
            status["stopped"] = True
        _try_write_status(self.run_dir, status)

    def run(self) -> Dict[str, Any]:
        """Start the program and serve its run; its last status."""
        status = self.start()
        _try_write_status(self.run_dir, status)
        if self.serve(status):
            _log("final message acknowledged")
        elif self.link is not None:
            _log(f"final message not acknowledged after {self.cfg.linger:.1f}s")
        return status


_EXIT = object()  # the Poller target of the program's exit wakeup


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except OSError:
        pass  # empty (EAGAIN), or a pidfd, which has nothing to read


def _spawn(
    argv: List[str], env: Dict[str, str], stdout: int, stderr: int, stdin: str = os.devnull
) -> int:
    """Start ``argv`` in a session of its own, stdin from the file ``stdin``; its pid.

    os.posix_spawn where it can set up a session, subprocess otherwise (~5 ms
    more to import). Either way the program is looked up in ``env``'s PATH and
    gets SIGPIPE and SIGXFSZ back at their defaults, as subprocess does, while
    SIGHUP stays ignored. Raises OSError if it cannot be started.
    """
    spawn = getattr(os, "posix_spawn", None)
    if spawn is not None:
        signal = _signal_module()
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, stdin, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, stdout, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
        ]
        restore = [getattr(signal, n) for n in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, n)]
        try:
            return spawn(
                _executable(argv[0], env),
                argv,
                env,
                file_actions=actions,
                setsid=True,
                setsigdef=restore,
            )
        except NotImplementedError:
            pass  # this Python cannot make posix_spawn start a session
    import subprocess

    with open(stdin, "rb") as source:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=source,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    proc.returncode = 0  # the Session reaps it: keep Popen from trying
    return proc.pid


def _executable(name: str, env: Dict[str, str]) -> str:
    """The path of program ``name`` as execvpe would find it in ``env``'s PATH."""
    if "/" in name:
        return name
    for folder in os.get_exec_path(env):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def _try_write_status(run_dir: str, status: Dict[str, Any]) -> None:
    """Write status.json; on a full disk, from the space reserved at the start.

    If even that fails, ``status`` says so in its error (for the foreground
    status line) and the final message still carries the outcome.
    """
    try:
        write_status(run_dir, status)
        return
    except OSError as exc:
        error = exc
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        try:
            os.unlink(os.path.join(run_dir, RESERVE_PATH))
        except OSError:
            pass
        else:
            note = (
                f"the node's disk filled up during the run ({error.strerror}): status.json "
                "was written in corunner's reserve; the program's own files may be cut short"
            )
            status["error"] = status.get("error") or note
            try:
                write_status(run_dir, status)
                return
            except OSError as again:
                error = again
    status["error"] = status.get("error") or f"cannot write status.json: {error.strerror or error}"
    _log(f"cannot write status.json: {error}")


def cmd_run(foreground: bool, verdict_fd: int = -1) -> int:
    """Run the program as the config says, in the run directory (the working directory).

    ``verdict_fd``: where the first try at the controller is told (see cmd_start).
    """
    signal = _signal_module()
    try:
        with open(CONFIG_PATH) as fh:
            cfg = parse_config(json_loads(fh.read()))
    except (OSError, ValueError) as exc:
        _log(f"bad config {CONFIG_PATH}: {exc}")
        return 2
    run_dir = os.getcwd()
    # The program must outlive the SSH session: a hangup or a closed pipe is not a stop.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    status = Session(cfg, run_dir, foreground, verdict_fd).run()
    if foreground:
        _emit("CORUNNER-STATUS", status)
    return 0


def _emit(marker: str, doc: Dict[str, Any]) -> None:
    try:
        sys.stdout.write(f"{marker} {json_dumps(doc)}\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass  # nobody is listening any more; status.json stays the truth


def read_marked(output: bytes, marker: str) -> Optional[Dict[str, Any]]:
    """The JSON object on the last line of ``output`` that starts with ``marker``.

    The reading side of :func:`_emit`, for the controller. Node output is
    untrusted (a program may print anything, shell start-up files too): a
    line that is not a JSON object counts as no line. None if there is none.
    """
    prefix = marker.encode() + b" "
    for line in reversed(output.splitlines()):
        if not line.startswith(prefix):
            continue
        try:
            doc = json_loads(line[len(prefix) :].decode("utf-8"))
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None
    return None


def final_outcome(
    status: Optional[Dict[str, Any]],
) -> Optional[Tuple[Optional[int], Optional[int]]]:
    """(exit code, signal) of a final status document, or None if it does not hold one."""
    if status is None:
        return None
    code, sig = status.get("exit_code"), status.get("signal")
    for value in (code, sig):
        if value is not None and (type(value) is not int or not -(1 << 31) <= value < 1 << 31):
            return None
    if (code is None) == (sig is None):
        return None
    return code, sig


# --------------------------------------------------------------------------
# probe and stop
# --------------------------------------------------------------------------


def probe(run_dir: str) -> Dict[str, Any]:
    """status.json plus liveness; "lost" if it says running but nothing runs."""
    try:
        status = read_status(run_dir)
    except (OSError, ValueError) as exc:
        return {
            "state": "missing",
            "error": f"unreadable status.json: {exc}",
            "program_alive": False,
            "executor_alive": False,
        }
    if status is None:
        return {"state": "missing", "program_alive": False, "executor_alive": False}
    running = status.get("state") == "running"
    pid: Any = status.get("pid")
    pgid = status.get("pgid")
    program = running and pid_alive(pid) and _pgid_of(pid) in (pgid, None)
    executor = executor_alive(status.get("executor_pid"))
    status["program_alive"] = bool(program)
    status["executor_alive"] = executor
    if running and not program and not executor:
        # Nobody is left to record the end: a stop asked for is still a stop.
        status["state"] = STATE_STOPPED if stop_requested(run_dir) else "lost"
    return status


def _pgid_of(pid: int) -> Optional[int]:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _wait_for(cond: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while True:
        if cond():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(0.05)


def run_processes(run_id: Optional[str], host: Optional[str]) -> List[int]:
    """Live processes of this user that carry the run's id and host in their environment.

    The executor gives the program ``CORUNNER_RUN_ID`` and ``CORUNNER_HOST``,
    and every process it starts inherits them, whatever process group or
    session it moves to: daemons that double-fork, children that call
    setsid. (One that clears its environment escapes; a cgroup would not
    let it, but a node user may not make one.) Our own process is never one.
    """
    if not run_id or not host:
        return []
    wanted = {("CORUNNER_RUN_ID=" + run_id).encode(), ("CORUNNER_HOST=" + host).encode()}
    me, found = os.getpid(), []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if wanted.issubset(fh.read().split(b"\0")) and pid_alive(int(entry)):
                    found.append(int(entry))
        except OSError:
            continue  # gone, or not ours to read
    return found


def stop_requested(run_dir: str) -> bool:
    """Whether ``stop`` was asked for this run (its marker is in the run directory)."""
    return os.path.lexists(os.path.join(run_dir, STOP_MARKER))


def _mark_stop(run_dir: str) -> None:
    """Leave the marker; never through a symlink, never failing the stop itself."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        os.close(os.open(os.path.join(run_dir, STOP_MARKER), flags, 0o600))
    except OSError:
        pass  # there already, or the disk is full: the signals still go


def stop(run_dir: str, grace: float = 5.0) -> Dict[str, Any]:
    """End everything the run started: SIGTERM, then SIGKILL after ``grace`` seconds.

    Everything: the program's process group, and every process that carries
    the run's id in its environment (daemons and setsid children, which left
    the group), also after the program itself has exited.
    """
    import signal

    before = probe(run_dir)
    pgid = before.get("pgid")
    # "lost" still says running on disk: the program's children may outlive it.
    # After an exit, only processes that carry our run id are ours to kill.
    running = before["state"] in ("running", "lost")
    run_id, host = before.get("run_id"), before.get("host")

    def remaining() -> List[int]:
        found = run_processes(run_id, host)
        if running and pgid and group_alive(pgid):
            found.append(-pgid)  # the group, for members that cleared their environment
        return found

    targets = remaining()
    if targets and running:
        _mark_stop(run_dir)
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for target in targets:
            try:
                if target < 0:
                    os.killpg(-target, signum)
                else:
                    os.kill(target, signum)
            except OSError:
                pass  # gone already, or not ours
        if not targets or _wait_for(lambda: not remaining(), wait):
            break
        targets = remaining()
    stopped = bool(targets) and not remaining()
    if stopped and executor_alive(before.get("executor_pid")):
        # Let the executor record the outcome so the reported state is final.
        _wait_for(lambda: probe(run_dir)["state"] != "running", 2.0)
    return {"stopped": stopped, "pgid": pgid, "state": probe(run_dir)["state"]}


# --------------------------------------------------------------------------
# The upload: what the start command reads from its stdin
# --------------------------------------------------------------------------

# The one definition of the upload's format: the controller builds it with
# frame_header, frame, TAR_MARKER and END_MARKER (corunner.bootstrap.Payload),
# the node reads it with parse_frame_header and unpack.

#: Each piece of the upload begins with a header of this many bytes:
#: ``KIND MODE SIZE NAMELEN`` (mode in octal), space-padded, ending in a newline;
#: the name and then SIZE bytes of data follow. KIND is F (a file, written at
#: NAME relative to the run directory with exactly MODE), T (the rest of the
#: stream is a tar of the user's files), S (that tar is already here, at NAME
#: relative to the run directory: ``run --files --relay`` put it there, its
#: sha256 checked) or E (the end). The controller's boot code reads the first
#: two F pieces (this file and its bytecode) the same way.
FRAME_HEADER = 40
FRAME_FILE, FRAME_TAR, FRAME_STAGED, FRAME_END = "F", "T", "S", "E"
_FRAME_KINDS = (FRAME_FILE, FRAME_TAR, FRAME_STAGED, FRAME_END)

#: Where the upload puts the run's config (see parse_config), in the run directory.
CONFIG_PATH = ".corunner/config.json"


def frame_header(kind: str, name: bytes = b"", size: int = 0, mode: int = 0o600) -> bytes:
    """The header of one piece of the upload, followed by its name."""
    if kind not in _FRAME_KINDS:
        raise ValueError(f"unknown frame kind {kind!r}")
    text = f"{kind} {mode:o} {size} {len(name)}".encode()
    if len(text) >= FRAME_HEADER:
        raise ValueError(f"frame header too long: {text!r}")
    return text.ljust(FRAME_HEADER - 1) + b"\n" + name


def frame(name: str, data: bytes, mode: int = 0o600) -> bytes:
    """One file of the upload: ``data``, to be written at ``name`` with exactly ``mode``."""
    return frame_header(FRAME_FILE, os.fsencode(name), len(data), mode) + data


#: The last piece of an upload: after TAR_MARKER, the rest of it is a tar of
#: the user's files; after END_MARKER, there is nothing more.
TAR_MARKER = frame_header(FRAME_TAR)
END_MARKER = frame_header(FRAME_END)


def parse_frame_header(header: bytes) -> Tuple[str, int, int, int]:
    """(kind, mode, size, name length) of a header; ValueError if it is not one."""
    fields = header.split()
    if len(header) != FRAME_HEADER or header[-1:] != b"\n" or len(fields) != 4:
        raise ValueError(f"not an upload header: {header[:FRAME_HEADER]!r}")
    kind = fields[0].decode("ascii", "replace")
    if kind not in _FRAME_KINDS or not all(f.isdigit() for f in fields[1:]):
        raise ValueError(f"not an upload header: {header!r}")
    return kind, int(fields[1], 8), int(fields[2]), int(fields[3])


def _take(fd: int, size: int) -> bytes:
    """Exactly ``size`` bytes from ``fd`` (unbuffered: a child may read on after us)."""
    parts = []
    while size > 0:
        chunk = os.read(fd, min(size, 1 << 18))
        if not chunk:
            raise ValueError("the upload ended early")
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def unpack(fd: int) -> Tuple[str, bytes]:
    """Write the files framed on ``fd`` under the current directory.

    Returns how the user's files come: (FRAME_TAR, b"") as a tar that follows
    on ``fd``, (FRAME_STAGED, name) as a tar already at ``name``, or
    (FRAME_END, b"") not at all. Names are relative and never climb out
    (ValueError otherwise); modes are set exactly, whatever the umask, as
    ``tar -p`` does.
    """
    while True:
        kind, mode, size, name_len = parse_frame_header(_take(fd, FRAME_HEADER))
        name = _take(fd, name_len) if kind in (FRAME_FILE, FRAME_STAGED) else b""
        if (
            kind != FRAME_END
            and kind != FRAME_TAR
            and (not name or name.startswith(b"/") or b".." in name.split(b"/"))
        ):
            raise ValueError(f"unsafe name in the upload: {name!r}")
        if kind != FRAME_FILE:
            return kind, name
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(out, mode & 0o7777)
            while size > 0:
                chunk = os.read(fd, min(size, 1 << 18))
                if not chunk:
                    raise ValueError("the upload ended early")
                view = memoryview(chunk)
                while view:
                    view = view[os.write(out, view) :]
                size -= len(chunk)
        finally:
            os.close(out)


def private_dirs(top: str, path: str, create: bool, owner_uid: int = -1) -> Optional[str]:
    """Check (and with ``create``, make) the directories from ``top`` down to ``path``.

    ``top`` is the remote_dir; ``path`` is it or lies under it. Each directory
    from ``top`` down must be a real directory (no symbolic link), owned by
    this user and writable by nobody else, as OpenSSH's ``StrictModes`` wants
    of ``~/.ssh``: otherwise another user could swap in their own executor,
    or read and replace the run's files. What ``create`` makes (``top``'s
    missing parents too) is mode 0700 and checked the same way; parents of
    ``top`` that exist already (``/tmp``, an NFS home) are the system's.
    Returns None, or the one line saying what is wrong with which path and
    how to fix it. Self-contained (``os`` only): the boot code embeds it.
    ``owner_uid``: whose they must be when that is not us (stop, run as root
    through sudo, checks the node user's directories).
    """
    me = os.geteuid() if owner_uid < 0 else owner_uid

    def refuse(p: str, why: str, fix: str) -> str:
        return f"refusing {p}: {why} ({fix})"

    def owner(uid: int) -> str:
        import pwd

        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return f"uid {uid}"

    def check(p: str) -> Optional[str]:
        try:
            st = os.lstat(p)
        except OSError as exc:
            return f"cannot use {p}: {exc.strerror}"
        kind = st.st_mode & 0o170000
        if kind == 0o120000:
            return refuse(p, "it is a symbolic link", "remove it, or choose another remote_dir")
        if kind != 0o040000:
            return refuse(p, "it is not a directory", "remove it, or choose another remote_dir")
        if st.st_uid != me:
            return refuse(
                p,
                f"it belongs to {owner(st.st_uid)}, not {owner(me)}",
                f"remove it, or choose a remote_dir of your own such as /tmp/corunner-{owner(me)}",
            )
        if st.st_mode & 0o022:
            mode = st.st_mode & 0o7777
            return refuse(
                p, f"it is writable by group or others (mode {mode:o})", f"chmod go-w {p}"
            )
        return None

    def make(p: str) -> Optional[str]:
        try:
            os.mkdir(p, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            return f"cannot make {p}: {exc.strerror}"
        return check(p)

    top = top.rstrip("/")
    if create:
        parts = top.split("/")
        for i in range(2, len(parts)):
            parent = "/".join(parts[:i])
            try:
                os.mkdir(parent, 0o700)
            except FileExistsError:
                continue
            except OSError as exc:
                return f"cannot make {parent}: {exc.strerror}"
            why = check(parent)
            if why:
                return why
    why = make(top) if create else check(top)
    if why:
        return why
    here = top
    for part in path[len(top) :].strip("/").split("/"):
        if part:
            here += "/" + part
            why = make(here) if create else check(here)
            if why:
                return why
    return None


def _untar(fd: int) -> None:
    """Extract the tar on ``fd`` (the user's files) with GNU tar; OSError naming its error."""
    read_end, write_end = os.pipe()
    try:
        pid = os.posix_spawnp(
            "tar",
            ["tar", "-b", "256", "-xpf", "-", "--no-same-owner"],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, fd, 0),
                (os.POSIX_SPAWN_DUP2, write_end, 2),
                (os.POSIX_SPAWN_CLOSE, read_end),
            ],
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end, "rb") as errors:
        said = errors.read().decode("utf-8", "replace").strip().splitlines()
    _, wait_status = os.waitpid(pid, 0)
    if wait_status != 0:
        raise OSError(said[-1] if said else f"tar failed (wait status {wait_status})")


def _untar_staged(name: bytes) -> None:
    """Extract the tar a relay left at ``name`` (never through a symlink), then remove it."""
    fd = os.open(name, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        _untar(fd)
    finally:
        os.close(fd)
    os.unlink(name)


def cmd_start(run_dir: str, foreground: bool) -> int:
    """Unpack the rest of the upload from stdin, then run the program.

    The controller's boot code has already written this file and its bytecode
    into ``RUN_DIR/.corunner`` and made ``RUN_DIR`` the working directory. In
    one process, with no shell, ``tar``, ``mkdir`` or ``setsid`` on the node:
    about 5 ms of the node's CPU less per start than doing it in ``sh``.
    Detached, the executor forks into a session of its own, off the SSH
    session's pipes, and the parent prints ``CORUNNER-STARTED <pid>``.
    """
    try:
        kind, name = unpack(0)
        if kind == FRAME_TAR:
            _untar(0)
        elif kind == FRAME_STAGED:
            _untar_staged(name)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"CORUNNER-ERROR cannot unpack the upload in {run_dir}: {exc}\n")
        return 99
    if foreground:
        return cmd_run(True)
    try:
        with open(CONFIG_PATH) as fh:
            cfg = parse_config(json_loads(fh.read()))
    except (OSError, ValueError):
        cfg = None  # cmd_run says what is wrong with it, in the log
    env = program_env(cfg, run_dir) if cfg is not None else {}
    why = cfg and (cannot_become(cfg, env) or cannot_execute(program_argv(cfg), env))
    if cfg is not None and why:
        # Said on the start command's stdout, where the controller reads it: a
        # program that cannot start has nothing to send heartbeats about.
        status = new_status(cfg, time.time())
        code = 127 if "No such file" in why else 126
        status.update(state="error", exit_code=code, ended_at=time.time(), error=why)
        _try_write_status(run_dir, status)
        _emit("CORUNNER-STATUS", status)
        return 0
    sys.stdout.flush()
    # The executor's first try at the controller is told back on this pipe:
    # where no path works, the start says so in one line, rather than leave
    # the controller to find the node silent later.
    verdict_r, verdict_w = os.pipe() if cfg is not None and cfg.heartbeat else (-1, -1)
    patience = min(2.0, max(0.5, 2 * cfg.interval)) if cfg is not None else 0.0
    pid = os.fork()
    if pid:
        sys.stdout.write(f"CORUNNER-STARTED {pid}\n")
        if verdict_r >= 0:
            os.close(verdict_w)
            said = _read_verdict(verdict_r, patience)
            if said:
                sys.stdout.write(f"{NOREACH_MARKER} {said}\n")
        sys.stdout.flush()
        return 0
    if verdict_r >= 0:
        os.close(verdict_r)
    os.setsid()
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(".corunner/executor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    return cmd_run(False, verdict_w)


def _read_verdict(fd: int, timeout: float) -> Optional[str]:
    """The executor's unreachable line from the verdict pipe, None if it reached the
    controller, went quiet for ``timeout`` seconds or ended first (silence says nothing)."""
    import select

    data = b""
    end = time.monotonic() + timeout
    try:
        while b"\n" not in data:
            wait = end - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            data += chunk
    finally:
        os.close(fd)
    line = data.split(b"\n", 1)[0].decode("utf-8", "replace")
    return line if line.startswith("cannot reach") else None


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

_USAGE = "usage: executor.py start RUN_DIR [--foreground] | probe RUN_DIR | stop RUN_DIR"


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command the controller sent (see the top of this file); the exit status.

    Exactly the forms corunner.bootstrap's scripts send, parsed by hand
    (argparse and gettext cost ~10 ms per start); anything else gets one line
    of usage on stderr and status 2.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if len(args) == 3 and args[0] == "start" and args[2] == "--foreground":
        return cmd_start(args[1], True)
    if len(args) == 2:
        cmd, run_dir = args
        if cmd == "start":
            return cmd_start(run_dir, False)
        if cmd == "probe":
            _emit("CORUNNER-PROBE", probe(run_dir))
            return 0
        if cmd == "stop":
            _emit("CORUNNER-STOP", stop(run_dir))
            return 0
    sys.stderr.write(f"{_USAGE} (not {' '.join(args) or 'nothing'})\n")
    return 2


if __name__ == "__main__":
    sys.exit(main())
