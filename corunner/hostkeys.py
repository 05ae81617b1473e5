"""Host key checking as OpenSSH does it, with each known_hosts file parsed once per process.

Why not ``paramiko.SSHClient.load_host_keys``: it is called per connection,
so N hosts parse an N-line file N times, and ``HostKeys.load`` takes the
logging module's global lock on every line; with 1,000 hosts and 64 threads
that is minutes of start-up. It also raises ``InvalidHostKey`` (a traceback
per host) on one ``@cert-authority``, ``@revoked`` or corrupt line, and never
reads ``/etc/ssh/ssh_known_hosts``.

Here a file is parsed once per process (again only if its mtime, size or
inode change) into a dict of plain names, looked up in O(1), and a list of
hashed (``|1|salt|hash``) and wildcard lines, scanned once per host name and
cached. Measured: a parse of 1,000 plain and 5,000 hashed lines takes ~35 ms;
a check of a plain name ~12 us (10 of them Paramiko's ``key.asbytes()``); the
first check of a name in no plain line ~12 ms per 5,000 hashed lines (one
HMAC-SHA1 each), then ~12 us. Paramiko's ``load_host_keys`` on the same file
takes ~5 s, for every connection.

Semantics follow OpenSSH's ``hostfile.c``: names are lowercased, a port other
than 22 is looked up as ``[host]:port``, ``*``/``?`` wildcards and ``!negated``
patterns as ``match_hostname``; a key is *known* if any line for the host
holds it, *changed* if lines for the host hold keys of its type but none is
it. Two deliberate differences: ``@revoked`` refuses the key for every host,
whatever host patterns its line names (OpenSSH applies them; stricter is
safer for a key known to be compromised), and ``@cert-authority`` lines grant
no key, as Paramiko cannot check host certificates: a host they alone name
is refused with a line that says so (:attr:`Status.CERT_ONLY`). Corrupt lines
are skipped and counted by line number, never raised; each file's are warned
of once per process through :func:`warn_with` (the CLI prints them on stderr).

Use :class:`HostKeyPolicy` with an *empty* Paramiko host key store, so that
Paramiko hands every server key to it.
"""

from __future__ import annotations

import base64
import binascii
import enum
import fcntl
import hmac
import os
import re
import threading
from dataclasses import dataclass
from itertools import repeat
from typing import Callable, Dict, Iterable, List, Optional, Pattern, Sequence, Set, Tuple

import paramiko

from .errors import HostKeyError

#: OpenSSH's default ``GlobalKnownHostsFile``, read after the user's file(s).
GLOBAL_KNOWN_HOSTS_FILES: Tuple[str, ...] = ("/etc/ssh/ssh_known_hosts",)

_HASH_MAGIC = "|1|"
_SHA1_LEN = 20
_BRACKETED = re.compile(r"\[([^\]]+)\]:(\d+)\Z")
_MARKERS = ("@cert-authority", "@revoked")


class Status(str, enum.Enum):
    """What known_hosts says about one server key for one host name."""

    KNOWN = "known"  # a line for the host holds this key
    CHANGED = "changed"  # lines for the host hold keys of its type, none is it
    REVOKED = "revoked"  # a @revoked line holds this key
    UNKNOWN = "unknown"  # no line for the host holds a key of its type
    CERT_ONLY = "cert-only"  # unknown, but a @cert-authority line names the host


@dataclass(frozen=True)
class Verdict:
    """A :class:`Status` and where it comes from: the file and line that decided."""

    status: Status
    path: Optional[str] = None
    line: int = 0


@dataclass(frozen=True)
class KeyLine:
    """One key of a known_hosts line: its type and decoded blob, compared as bytes."""

    keytype: str
    blob: bytes
    line: int


@dataclass(frozen=True)
class _Hashed:
    salt: bytes
    digest: bytes
    key: KeyLine


@dataclass(frozen=True)
class _Wildcard:
    positive: Tuple[Pattern[str], ...]
    negative: Tuple[Pattern[str], ...]
    key: KeyLine

    def matches(self, name: str) -> bool:
        return _match_list(name, self.positive, self.negative)


def known_hosts_name(hostname: str, port: int = 22) -> str:
    """The name OpenSSH looks up and writes: ``host`` for port 22, else ``[host]:port``.

    Accepts a name already in the bracketed form (Paramiko passes that to a
    policy when the port is not 22) and keeps it as it is.
    """
    name = hostname.strip().lower()
    bracketed = _BRACKETED.match(name)
    if bracketed:
        return bracketed.group(1) if bracketed.group(2) == "22" else name
    return name if port == 22 else f"[{name}]:{port}"


#: Replaces :data:`GLOBAL_KNOWN_HOSTS_FILES` (space-separated paths) when set:
#: for tests, which must not write the real ``/etc/ssh/ssh_known_hosts``.
GLOBAL_ENV = "CORUNNER_GLOBAL_KNOWN_HOSTS"


def default_paths(user_files: Iterable[str]) -> Tuple[str, ...]:
    """The user's file(s) then the global ones, as OpenSSH's two options list them."""
    override = os.environ.get(GLOBAL_ENV)
    global_files = tuple(override.split()) if override is not None else GLOBAL_KNOWN_HOSTS_FILES
    return tuple(user_files) + global_files


def _pattern(text: str) -> Pattern[str]:
    """OpenSSH's ``match_pattern``: only ``*`` and ``?`` are special (no ``[]`` classes)."""
    return re.compile(re.escape(text).replace(r"\*", ".*").replace(r"\?", "."), re.DOTALL)


def _match_list(
    name: str, positive: Sequence[Pattern[str]], negative: Sequence[Pattern[str]]
) -> bool:
    """``match_hostname``: a matching negated pattern vetoes the line, else any positive one."""
    if any(p.fullmatch(name) for p in negative):
        return False
    return any(p.fullmatch(name) for p in positive)


def _blob_type(blob: bytes) -> Optional[str]:
    """The key type a public key blob starts with, or None if it is not a blob."""
    if len(blob) < 5:
        return None
    size = int.from_bytes(blob[:4], "big")
    if not 0 < size <= 64 or len(blob) < 4 + size:
        return None
    try:
        return blob[4 : 4 + size].decode("ascii")
    except UnicodeDecodeError:
        return None


def _b64(text: str) -> Optional[bytes]:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def _key(fields: List[str], number: int) -> Optional[KeyLine]:
    """``keytype base64``, with the blob's own type agreeing with the line's."""
    if len(fields) < 2:
        return None
    blob = _b64(fields[1])
    if blob is None:
        return None
    keytype = _blob_type(blob)
    if keytype is None:
        return None
    if fields[0] != keytype and not (keytype == "ssh-rsa" and fields[0].startswith("rsa-sha2-")):
        return None
    return KeyLine(keytype, blob, number)


class KnownHostsFile:
    """The parsed content of one known_hosts file, shared by every thread of the process.

    Not frozen: accepting a new host key adds it here, so the next check in
    this process sees it without parsing the file again. Additions replace or
    extend containers that readers only index, which the GIL keeps consistent.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        #: Plain names (lowercased, ``[host]:port`` for other ports) -> their keys.
        self.plain: Dict[str, List[KeyLine]] = {}
        self.hashed: List[_Hashed] = []
        self.wildcards: List[_Wildcard] = []
        #: Blob -> line number of its @revoked line.
        self.revoked: Dict[bytes, int] = {}
        #: Line numbers of @cert-authority lines (no key granted) and of corrupt lines.
        self.cert_authority: List[int] = []
        #: The host patterns of each @cert-authority line, to say why its hosts fail.
        self.cert_hosts: List[Tuple[Tuple[Pattern[str], ...], Tuple[Pattern[str], ...], int]] = []
        self.corrupt: List[int] = []
        self.lines = 0
        self._hashed_salts: List[bytes] = []
        self._hashed_by_digest: Dict[bytes, List[_Hashed]] = {}
        self._scanned: Dict[str, Tuple[KeyLine, ...]] = {}

    def add_plain(self, name: str, key: KeyLine) -> None:
        """Record ``key`` for the exact (normalised) name ``name``."""
        self.plain.setdefault(name, []).append(key)

    def add_hashed(self, entry: _Hashed) -> None:
        self.hashed.append(entry)
        self._hashed_salts.append(entry.salt)
        self._hashed_by_digest.setdefault(entry.digest, []).append(entry)

    def keys_for(self, name: str) -> Tuple[KeyLine, ...]:
        """Every key this file holds for ``name``: plain in O(1), others by a cached scan."""
        plain = self.plain.get(name)
        return (*plain, *self.scanned(name)) if plain else self.scanned(name)

    def scanned(self, name: str) -> Tuple[KeyLine, ...]:
        """Keys of hashed and wildcard lines matching ``name``, computed once per name."""
        found = self._scanned.get(name)
        if found is None:
            found = self._scan(name)
            self._scanned[name] = found
        return found

    def _scan(self, name: str) -> Tuple[KeyLine, ...]:
        keys: List[KeyLine] = []
        if self.hashed:
            raw = name.encode()
            digests = set(map(hmac.digest, self._hashed_salts, repeat(raw), repeat("sha1")))
            for digest in digests & self._hashed_by_digest.keys():
                for entry in self._hashed_by_digest[digest]:
                    if hmac.digest(entry.salt, raw, "sha1") == digest:
                        keys.append(entry.key)
        keys.extend(w.key for w in self.wildcards if w.matches(name))
        keys.sort(key=lambda k: k.line)
        return tuple(keys)


def parse_lines(lines: Iterable[str], path: str = "") -> KnownHostsFile:
    """Parse OpenSSH known_hosts text. Never raises: bad lines are counted in ``corrupt``."""
    parsed = KnownHostsFile(path)
    number = 0
    for number, text in enumerate(lines, 1):
        fields = text.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = ""
        if fields[0].startswith("@"):
            marker = fields.pop(0)
            if marker not in _MARKERS:
                parsed.corrupt.append(number)
                continue
            if marker == "@cert-authority":
                parsed.cert_authority.append(number)
                if fields and not fields[0].startswith("|"):
                    names = [p for p in fields[0].lower().split(",") if p]
                    positive = tuple(_pattern(p) for p in names if not p.startswith("!"))
                    negative = tuple(_pattern(p[1:]) for p in names if p.startswith("!"))
                    parsed.cert_hosts.append((positive, negative, number))
                continue
        if len(fields) < 3:  # host patterns, key type, base64 key
            parsed.corrupt.append(number)
            continue
        key = _key(fields[1:3], number)
        if key is None:
            parsed.corrupt.append(number)
            continue
        if marker == "@revoked":
            parsed.revoked.setdefault(key.blob, number)
            continue
        if not _add_hosts(parsed, fields[0], key):
            parsed.corrupt.append(number)
    parsed.lines = number
    return parsed


def _add_hosts(parsed: KnownHostsFile, hosts: str, key: KeyLine) -> bool:
    """File ``key`` under its host patterns; False if the host field is malformed."""
    if hosts.startswith("|"):
        parts = hosts.split("|")
        if len(parts) != 4 or parts[1] != "1":
            return False
        salt, digest = _b64(parts[2]), _b64(parts[3])
        if salt is None or digest is None or len(salt) != _SHA1_LEN or len(digest) != _SHA1_LEN:
            return False
        parsed.add_hashed(_Hashed(salt, digest, key))
        return True
    names = [p for p in hosts.lower().split(",") if p]
    if not names:
        return False
    negative = tuple(_pattern(p[1:]) for p in names if p.startswith("!"))
    positive = [p for p in names if not p.startswith("!")]
    wild = tuple(_pattern(p) for p in positive if "*" in p or "?" in p)
    if wild:
        parsed.wildcards.append(_Wildcard(wild, negative, key))
    for name in positive:  # a plain name matches itself only: a negation vetoes it for good
        if not ("*" in name or "?" in name) and not any(n.fullmatch(name) for n in negative):
            parsed.add_plain(name, key)
    return True


@dataclass(frozen=True)
class KnownHosts:
    """The parsed content of a list of files, user file(s) first, then the global one."""

    files: Tuple[KnownHostsFile, ...]

    @property
    def corrupt(self) -> Tuple[Tuple[str, int], ...]:
        """(path, line number) of every corrupt line, for one warning per file."""
        return tuple((f.path, n) for f in self.files for n in f.corrupt)

    def key_types(self, hostname: str, port: int = 22) -> Tuple[str, ...]:
        """Key types known for the host, in file order: the host key algorithms to prefer."""
        name = known_hosts_name(hostname, port)
        seen: Dict[str, None] = {}
        for f in self.files:
            for k in f.keys_for(name):
                seen.setdefault(k.keytype, None)
        return tuple(seen)

    def check(self, hostname: str, port: int, key: paramiko.PKey) -> Verdict:
        """What the files say about ``key`` as the host key of ``hostname``:``port``."""
        blob = key.asbytes()
        keytype = _blob_type(blob) or key.get_name()
        for f in self.files:
            line = f.revoked.get(blob)
            if line is not None:
                return Verdict(Status.REVOKED, f.path, line)
        name = known_hosts_name(hostname, port)
        for f in self.files:  # the common case first: a plain line with this very key
            for k in f.plain.get(name, ()):
                if k.blob == blob:
                    return Verdict(Status.KNOWN, f.path, k.line)
        changed: Optional[Verdict] = None
        for f in self.files:
            for k in f.keys_for(name):
                if k.blob == blob:
                    return Verdict(Status.KNOWN, f.path, k.line)
                if changed is None and k.keytype == keytype:
                    changed = Verdict(Status.CHANGED, f.path, k.line)
        if changed is not None:
            return changed
        for f in self.files:
            for positive, negative, line in f.cert_hosts:
                if _match_list(name, positive, negative):
                    return Verdict(Status.CERT_ONLY, f.path, line)
        return Verdict(Status.UNKNOWN)


# --- the process-wide cache ------------------------------------------------------------

_Signature = Tuple[int, int, int]


class _Slot:
    """One file's cache entry; its lock makes a file parse (or grow) in one thread at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        #: (signature, parsed) replaced as one, so lock-free readers see a matching pair.
        self.state: Optional[Tuple[Optional[_Signature], KnownHostsFile]] = None


_slots: Dict[str, _Slot] = {}
_slots_lock = threading.Lock()
_parses: Dict[str, int] = {}


def _real(path: str) -> str:
    return os.path.realpath(os.path.expanduser(path))


def _slot(real: str) -> _Slot:
    slot = _slots.get(real)
    if slot is None:
        with _slots_lock:
            slot = _slots.setdefault(real, _Slot())
    return slot


def _signature(st: os.stat_result) -> _Signature:
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _stat(real: str) -> Optional[_Signature]:
    try:
        return _signature(os.stat(real))
    except OSError:
        return None


#: Where one-line warnings go (corrupt lines); the CLI sets it to print on stderr.
Warn = Callable[[str], None]
_warn: Optional[Warn] = None
_warned: Set[Tuple[str, int]] = set()
_warned_lock = threading.Lock()
#: Corrupt line numbers named in one warning at most; the rest are counted.
WARN_LINES = 5


def warn_with(sink: Optional[Warn]) -> None:
    """Send each warning (a known_hosts line skipped) to ``sink``, once per line per process."""
    global _warn
    _warn = sink


def corrupt_warning(path: str, lines: Sequence[int]) -> str:
    """The one warning for a file's unparsable lines: the file and the line (or the first few)."""
    if len(lines) == 1:
        return f"warning: {path}:{lines[0]}: cannot parse this known_hosts line; skipped it"
    shown = ", ".join(map(str, lines[:WARN_LINES]))
    more = f" and {len(lines) - WARN_LINES} more" if len(lines) > WARN_LINES else ""
    return f"warning: {path}: cannot parse known_hosts lines {shown}{more}; skipped them"


def _warn_corrupt(parsed: KnownHostsFile) -> None:
    """Warn of lines of ``parsed`` not warned of yet in this process (one warning per file)."""
    if not parsed.corrupt or _warn is None:
        return
    with _warned_lock:
        fresh = [n for n in parsed.corrupt if (parsed.path, n) not in _warned]
        _warned.update((parsed.path, n) for n in fresh)
    if fresh:
        _warn(corrupt_warning(parsed.path, fresh))


def _load(path: str, real: str) -> Tuple[Optional[_Signature], KnownHostsFile]:
    """Read and parse one file; a missing or unreadable file is empty, as for OpenSSH."""
    _parses[real] = _parses.get(real, 0) + 1
    try:
        with open(real, "rb") as f:
            signature = _signature(os.fstat(f.fileno()))
            data = f.read()
    except OSError:
        return None, KnownHostsFile(path)
    parsed = parse_lines(data.decode("utf-8", "replace").splitlines(), path)
    _warn_corrupt(parsed)
    return signature, parsed


def _file(path: str) -> KnownHostsFile:
    real = _real(path)
    slot = _slot(real)
    signature = _stat(real)
    state = slot.state
    if state is not None and state[0] == signature:
        return state[1]
    with slot.lock:
        signature = _stat(real)  # again: an append may have landed while we waited
        state = slot.state
        if state is None or state[0] != signature:
            state = _load(path, real)
            slot.state = state
        return state[1]


def known_hosts_for(paths: Sequence[str]) -> KnownHosts:
    """The parsed files, each read once per process and again only once it has changed.

    Thread-safe: a file is parsed under its own lock, so concurrent callers
    wait for one parse instead of each doing it.
    """
    return KnownHosts(tuple(_file(p) for p in paths))


def parse_count(path: str) -> int:
    """How many times this process has parsed ``path``: for tests and diagnostics."""
    return _parses.get(_real(path), 0)


def clear_cache() -> None:
    """Forget every parsed file (tests)."""
    with _slots_lock:
        _slots.clear()
        _parses.clear()
    with _warned_lock:
        _warned.clear()


def hashed_name(name: str, salt: Optional[bytes] = None) -> str:
    """``|1|salt|hash``: the name as ``HashKnownHosts yes`` writes it (HMAC-SHA1, random salt)."""
    salt = salt if salt is not None else os.urandom(_SHA1_LEN)
    digest = hmac.digest(salt, name.encode(), "sha1")
    return f"{_HASH_MAGIC}{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def append_host_key(
    path: str, hostname: str, port: int, key: paramiko.PKey, hashed: bool = False
) -> str:
    """Append ``key`` for the host to ``path`` in OpenSSH's format; return the line.

    ``hashed``: the name is written hashed, as with OpenSSH's ``HashKnownHosts
    yes``. A missing directory is made mode 0700 (``~/.ssh``), the file 0600.

    Locked across threads and processes (``flock``), appended with ``O_APPEND``.
    The process cache learns the line and the file's new signature, so the
    next lookup sees it without a parse; if the file changed under us since
    it was parsed, the cache is left stale and the next lookup parses it.
    """
    name = known_hosts_name(hostname, port)
    blob = key.asbytes()
    keytype = _blob_type(blob) or key.get_name()
    salt = os.urandom(_SHA1_LEN)
    written = hashed_name(name, salt) if hashed else name
    text = f"{written} {keytype} {base64.b64encode(blob).decode()}\n"
    real = _real(path)
    directory = os.path.dirname(real) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)  # whatever the umask: ssh wants ~/.ssh private
    slot = _slot(real)
    with slot.lock:
        fd = os.open(real, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            state = slot.state
            current = state is not None and (
                state[0] == _signature(st) or (state[0] is None and st.st_size == 0)
            )
            parsed = state[1] if state is not None else None
            if current and parsed is not None:
                if any(k.blob == blob for k in parsed.keys_for(name)):
                    return text  # another thread of ours recorded it meanwhile
            prefix = ""
            if st.st_size and os.pread(fd, 1, st.st_size - 1) != b"\n":
                prefix = "\n"  # never glue our line to a last line without a newline
            os.write(fd, (prefix + text).encode())
            if current and parsed is not None:
                parsed.lines += 1
                line = KeyLine(keytype, blob, parsed.lines)
                if hashed:
                    digest = hmac.digest(salt, name.encode(), "sha1")
                    parsed.add_hashed(_Hashed(salt, digest, line))
                    parsed._scanned.pop(name, None)  # the cached scan did not see it
                else:
                    parsed.add_plain(name, line)
                slot.state = (_signature(os.fstat(fd)), parsed)
        finally:
            os.close(fd)
    return text


# --- the Paramiko policy ---------------------------------------------------------------


class HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Check a server key against the cached files; raise a one-line ``HostKeyError``.

    Set on a client whose Paramiko host key store is empty, so Paramiko
    calls it for every connection. ``accept_new`` is OpenSSH's
    ``StrictHostKeyChecking accept-new``: a key for a host never seen is
    appended to ``write_path`` (default: the first of ``paths``); a key that
    changed is refused all the same.
    """

    def __init__(
        self,
        host_label: str,
        hostname: str,
        port: int,
        paths: Sequence[str],
        accept_new: bool = False,
        write_path: Optional[str] = None,
        hash_names: bool = False,
    ) -> None:
        self.host_label = host_label
        self.hostname = hostname
        self.port = port
        self.paths = tuple(paths)
        self.accept_new = accept_new
        #: None (``UserKnownHostsFile none``): a key accepted as new is not recorded.
        self.write_path = write_path if write_path is not None or not paths else self.paths[0]
        #: OpenSSH's ``HashKnownHosts yes``: keys accepted are written with hashed names.
        self.hash_names = hash_names

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        name = known_hosts_name(hostname or self.hostname, self.port)
        verdict = known_hosts_for(self.paths).check(name, self.port, key)
        if verdict.status is Status.KNOWN:
            return
        if verdict.status is Status.REVOKED:
            raise HostKeyError(
                self.host_label,
                f"host key is marked @revoked in {verdict.path} line {verdict.line}: refusing "
                "it (the key was withdrawn: ask the host's admin for its new key)",
            )
        if verdict.status is Status.CERT_ONLY:
            raise HostKeyError(
                self.host_label,
                f"host certificates are not supported: {verdict.path} line {verdict.line} "
                f"vouches for {name} only by @cert-authority; add the host's own key "
                f"(ssh-keyscan -p {self.port} {self.hostname} >> {self.write_path})",
            )
        if verdict.status is Status.CHANGED:
            raise HostKeyError(
                self.host_label,
                f"host key differs from the one in {verdict.path}: possible "
                f"man-in-the-middle; if the host was reinstalled, run "
                f"ssh-keygen -R {name} -f {verdict.path}",
            )
        if not self.accept_new:
            searched = " or ".join(self.paths) or "any known_hosts file (all set to none)"
            into = self.write_path or "a known_hosts file"
            raise HostKeyError(
                self.host_label,
                f"host key not in {searched} (add it with ssh-keyscan -p {self.port} "
                f"{self.hostname} >> {into}, or pass --accept-new-host-keys)",
            )
        if self.write_path is not None:
            append_host_key(self.write_path, name, self.port, key, hashed=self.hash_names)
