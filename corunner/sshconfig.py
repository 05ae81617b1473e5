"""OpenSSH client configuration (``ssh_config``), read and applied as ``ssh`` does.

Why our own parser and not ``paramiko.SSHConfig``: Paramiko's has no
``Include`` (users split their config across ``~/.ssh/config.d/``), keeps no
file or line, so nothing could say *where* an unsupported setting is, runs
``Match exec`` commands (through Invoke) and ``CanonicalizeHostname`` DNS
lookups while it looks a host up, and drops ``Match final`` passes' host
renaming. This module reads only the files it is given (at :func:`load`) and
is pure afterwards: a lookup is a walk over the parsed lines.

Semantics follow OpenSSH's ``readconf.c``: keywords are case-insensitive and
take ``keyword value`` or ``keyword=value``; the files are read in order
(``~/.ssh/config`` then ``/etc/ssh/ssh_config``) and, within them, top to
bottom; for each keyword the *first* value obtained wins, except
``IdentityFile`` and ``CertificateFile``, which add up. ``Host`` patterns
(``*``, ``?``, ``!negated``) match the name as written; ``Match host``
matches the ``HostName`` obtained so far (else the name); ``Match final``
(and ``canonical``) blocks apply in a second pass over the files, as ssh's
"re-parsing configuration", in which ``Host`` matches the ``HostName``.
``ProxyJump`` and ``ProxyCommand`` share one slot: whichever comes first
wins, ``none`` included. Relative ``Include`` paths are under ``~/.ssh`` for
a user file and ``/etc/ssh`` for the system one; an ``Include`` in a block
that does not apply contributes nothing.

What corunner cannot do is said, never dropped silently:
:data:`UNSUPPORTED` lists the keywords that change how a host is reached;
a line that applies to a host gets one warning naming its file and line.
Keywords that only change things corunner does not do (X11, environment
passing, escape characters, forwardings, algorithms Paramiko negotiates
itself, and ``GSSAPIAuthentication``, which Debian's own ssh_config turns on
and ssh falls back from to keys) are ignored in silence. An unknown keyword gets a warning (ssh
itself refuses it). A value ssh would refuse (a port that is not a number, a
``Match`` with no criteria) is a :class:`~corunner.errors.InventoryError`
naming the file and line, as ssh stops on it too.
"""

from __future__ import annotations

import functools
import glob
import os
import re
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import InventoryError

#: The files ``ssh`` reads when no ``-F`` is given, in its order.
USER_CONFIG = "~/.ssh/config"
SYSTEM_CONFIG = "/etc/ssh/ssh_config"
#: How deep ``Include`` may nest (OpenSSH's READCONF_MAX_DEPTH).
MAX_INCLUDE_DEPTH = 16

#: Keywords corunner reads. The rest of OpenSSH's are in UNSUPPORTED or SILENT.
SUPPORTED = frozenset(
    {
        "hostname",
        "user",
        "port",
        "identityfile",
        "identitiesonly",
        "proxyjump",
        "proxycommand",
        "connecttimeout",
        "userknownhostsfile",
        "globalknownhostsfile",
        "stricthostkeychecking",
        "serveraliveinterval",
        "serveralivecountmax",
        "hashknownhosts",
    }
)

#: Keywords that change how a host is reached, which corunner does not do,
#: each with a test of the value (lower-cased first word) that makes it
#: matter, and the reason shown in the warning.
UNSUPPORTED: Dict[str, Tuple[Callable[[str], bool], str]] = {
    "certificatefile": (lambda v: v != "none", "SSH certificates are not offered"),
    "hostkeyalias": (lambda v: v != "none", "host keys are looked up under the host's name"),
    "canonicalizehostname": (
        lambda v: v not in ("no", "false"),
        "host names are not canonicalized: the name is used as written",
    ),
    "localcommand": (lambda v: True, "no local command is run"),
    "permitlocalcommand": (lambda v: v in ("yes", "true", "always"), "no local command is run"),
    "controlmaster": (
        lambda v: v not in ("no", "false"),
        "connections are not shared through a control socket: corunner opens its own",
    ),
    "controlpersist": (
        lambda v: v not in ("no", "false"),
        "connections are not shared through a control socket: corunner opens its own",
    ),
    "addressfamily": (lambda v: v != "any", "the address family is the resolver's choice"),
    "bindaddress": (lambda v: True, "the local address is the system's choice"),
    "bindinterface": (lambda v: True, "the local interface is the system's choice"),
    "proxyusefdpass": (lambda v: v in ("yes", "true"), "ProxyCommand fd passing is not done"),
    "pkcs11provider": (lambda v: v != "none", "keys on PKCS#11 tokens are not offered"),
    "smartcarddevice": (lambda v: True, "keys on smartcards are not offered"),
    "securitykeyprovider": (lambda v: v != "internal", "security key providers are not loaded"),
    "identityagent": (
        lambda v: v not in ("ssh_auth_sock", "$ssh_auth_sock"),
        "the agent is the one SSH_AUTH_SOCK names",
    ),
    "verifyhostkeydns": (
        lambda v: v in ("yes", "true", "ask"),
        "host keys are not looked up in DNS (SSHFP); known_hosts decides",
    ),
    "knownhostscommand": (lambda v: v != "none", "host keys come from known_hosts files only"),
    "revokedhostkeys": (lambda v: v != "none", "this revocation file is not read"),
}

#: OpenSSH keywords that change nothing about reaching a host: ignored quietly.
SILENT = frozenset(
    """
    addkeystoagent batchmode canonicaldomains canonicalizefallbacklocal canonicalizemaxdots
    canonicalizepermittedcnames casignaturealgorithms channeltimeout checkhostip ciphers
    clearallforwardings compression connectionattempts controlpath dynamicforward
    enableescapecommandline enablesshkeysign escapechar exitonforwardfailure fingerprinthash
    forkafterauthentication forwardagent forwardx11 forwardx11timeout forwardx11trusted
    gatewayports gssapiauthentication gssapiclientidentity gssapidelegatecredentials gssapikexalgorithms
    gssapikeyexchange gssapirenewalforcesrekey gssapiserveridentity gssapitrustdns
    hostbasedacceptedalgorithms hostbasedauthentication hostbasedkeytypes hostkeyalgorithms
    ignoreunknown ipqos kbdinteractiveauthentication kbdinteractivedevices kexalgorithms
    localforward loglevel logverbose macs nohostauthenticationforlocalhost
    numberofpasswordprompts obscurekeystroketiming passwordauthentication permitremoteopen
    preferredauthentications protocol pubkeyacceptedalgorithms pubkeyacceptedkeytypes
    pubkeyauthentication refuseconnection rekeylimit remotecommand remoteforward requesttty
    requiredrsasize sendenv sessiontype tag setenv stdinnull
    streamlocalbindmask streamlocalbindunlink tcpkeepalive tunnel tunneldevice
    updatehostkeys usekeychain useprivilegedport visualhostkey
    warnweakcrypto xauthlocation challengeresponseauthentication rhostsrsaauthentication
    rsaauthentication usersh fallbacktorsh cipher compressionlevel
    """.split()
)

#: Keywords whose value is the rest of the line, spaces and all (ssh does not split it).
_RAW = frozenset({"proxycommand", "localcommand", "remotecommand", "knownhostscommand"})
#: Keywords whose values add up instead of the first winning.
_MULTI = frozenset({"identityfile", "certificatefile"})
_MATCH_CRITERIA = frozenset(
    {"all", "canonical", "final", "exec", "localnetwork", "host", "originalhost"}
    | {"tagged", "user", "localuser", "version", "sessiontype", "command"}
)
_TOKEN = re.compile(r"%(.)", re.DOTALL)
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TIME = re.compile(r"(\d+)([smhdwSMHDW]?)")
_TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_YES = ("yes", "true")
_NO = ("no", "false")


@dataclass(frozen=True)
class Line:
    """One meaningful line of a config file, with where it is for messages."""

    where: str  # "~/.ssh/config line 12"
    keyword: str  # lower-cased
    spelled: str  # as written, for messages
    args: Tuple[str, ...]
    raw: str  # the value as written (after the keyword and its separator)
    #: For ``Include``: the parsed files it names, in glob order.
    included: Tuple[ConfigFile, ...] = ()
    #: For ``Match``: its criteria as (negated, criterion, argument).
    terms: Tuple[Tuple[bool, str, str], ...] = ()


@dataclass(frozen=True)
class ConfigFile:
    """The lines of one file, parsed once."""

    path: str
    lines: Tuple[Line, ...]


@dataclass(frozen=True)
class Resolved:
    """What the config says about one host; ``None``/empty where it says nothing.

    ``origins`` tells, per setting, the file and line it came from;
    ``warnings`` the lines that apply to this host but cannot be followed.
    Paths are expanded (``~``, tokens).
    """

    hostname: Optional[str] = None
    user: Optional[str] = None
    port: Optional[int] = None
    identity_files: Tuple[str, ...] = ()
    identities_only: Optional[bool] = None
    #: ProxyJump hops (``[user@]host[:port]``); ``()`` with ``proxy_set``: ``none``.
    jump: Tuple[str, ...] = ()
    proxy_command: Optional[str] = None
    connect_timeout: Optional[float] = None
    #: UserKnownHostsFile; ``()`` means ``none``; None: not set.
    known_hosts_files: Optional[Tuple[str, ...]] = None
    global_known_hosts_files: Optional[Tuple[str, ...]] = None
    #: "yes", "accept-new" or "no" (``ask`` is ``yes``: nothing prompts).
    strict_host_keys: Optional[str] = None
    alive_interval: Optional[float] = None
    alive_count_max: Optional[int] = None
    hash_known_hosts: Optional[bool] = None
    origins: Tuple[Tuple[str, str], ...] = ()
    warnings: Tuple[str, ...] = ()

    def origin(self, setting: str) -> Optional[str]:
        """Where ``setting`` (a field name) came from, or None if the config did not set it."""
        return dict(self.origins).get(setting)


@dataclass(frozen=True)
class SshConfig:
    """Parsed config files, in the order ssh reads them; look hosts up with :meth:`lookup`."""

    files: Tuple[ConfigFile, ...] = ()
    home: str = field(default_factory=lambda: os.path.expanduser("~"))
    #: The environment ``${NAME}`` in paths reads (taken at :func:`load`).
    environ: Tuple[Tuple[str, str], ...] = ()

    @property
    def sources(self) -> Tuple[str, ...]:
        return tuple(f.path for f in self.files)

    def lookup(
        self,
        name: str,
        user: Optional[str] = None,
        port: Optional[int] = None,
        local_user: str = "",
    ) -> Resolved:
        """What the config sets for the host written ``name``.

        ``user``/``port``: the values the inventory sets (they win, and they
        are what ``Match user``, ``%r`` and ``%p`` see, as ssh's ``-l``/``-p``
        are). ``local_user`` is ``%u`` and ``Match localuser``.
        """
        walk = _Walk(self, name.lower(), user, port, local_user)
        for f in self.files:
            walk.file(f, active=True, never=False)
        if walk.want_final:
            walk.final = True
            for f in self.files:
                walk.file(f, active=True, never=False)
        return walk.resolved()


def load(paths: Sequence[str], home: Optional[str] = None) -> SshConfig:
    """Read and parse the config files ``paths`` (missing ones are skipped, as ssh does).

    The first path's relative ``Include``s are under ``~/.ssh``, except for
    :data:`SYSTEM_CONFIG`'s, which are under ``/etc/ssh``. Raises
    InventoryError for a file that exists but cannot be read, and for a line
    ssh would refuse.
    """
    home = os.path.expanduser("~") if home is None else home
    files = []
    for path in paths:
        full = _expand_home(path, home)
        base = "/etc/ssh" if os.path.abspath(full) == SYSTEM_CONFIG else os.path.join(home, ".ssh")
        parsed = _read(full, base, home, depth=0, must_exist=False)
        if parsed is not None:
            files.append(parsed)
    return SshConfig(tuple(files), home, tuple(sorted(os.environ.items())))


def parse(text: str, path: str = "<ssh_config>", home: str = "/", base: str = "/") -> SshConfig:
    """An SshConfig from one file's text (unit tests; Include reads files under ``base``)."""
    return SshConfig((_parse(text, path, base, home, 0),), home)


def _read(path: str, base: str, home: str, depth: int, must_exist: bool) -> Optional[ConfigFile]:
    shown = _shown(path, home)
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read()
    except FileNotFoundError:
        if must_exist:
            raise InventoryError(f"no ssh_config file at {shown}") from None
        return None
    except IsADirectoryError:
        raise InventoryError(f"{shown} is a directory, not an ssh_config file") from None
    except OSError as exc:
        raise InventoryError(f"cannot read ssh_config {shown}: {exc.strerror}") from exc
    return _parse(text, path, base, home, depth)


def _parse(text: str, path: str, base: str, home: str, depth: int) -> ConfigFile:
    shown = _shown(path, home)
    lines: List[Line] = []
    for number, source in enumerate(text.splitlines(), 1):
        where = f"{shown} line {number}"
        stripped = source.strip()
        if not stripped or stripped.startswith("#"):
            continue
        found = re.match(r"([^\s=]+)\s*(?:=\s*|\s+|$)", stripped)
        if not found:
            raise InventoryError(f"cannot read this line: {stripped!r}", shown, f"line {number}")
        keyword = found.group(1).lower()
        raw = stripped[found.end() :].strip()
        try:
            args = tuple(_split(raw)) if keyword not in _RAW else (raw,)
        except ValueError as exc:
            raise InventoryError(f"{found.group(1)}: {exc}", shown, f"line {number}") from None
        if not args and keyword not in ("match",):
            raise InventoryError(f"{found.group(1)} needs a value", shown, f"line {number}")
        line = Line(where, keyword, found.group(1), args, raw)
        terms = _check(line, shown, number)
        if keyword == "include":
            line = replace(line, included=_includes(args, base, home, depth, line))
        elif keyword == "match":
            line = replace(line, terms=terms)
        lines.append(line)
    return ConfigFile(path, tuple(lines))


def _includes(
    args: Sequence[str], base: str, home: str, depth: int, line: Line
) -> Tuple[ConfigFile, ...]:
    if depth + 1 > MAX_INCLUDE_DEPTH:
        raise InventoryError(
            f"Include nested deeper than {MAX_INCLUDE_DEPTH}: a loop? ({line.where})"
        )
    found: List[ConfigFile] = []
    for pattern in args:
        full = _expand_home(pattern, home)
        if not os.path.isabs(full):
            full = os.path.join(base, full)
        for path in sorted(glob.glob(full)) if glob.has_magic(full) else [full]:
            if os.path.isdir(path):
                continue
            parsed = _read(path, base, home, depth + 1, must_exist=False)
            if parsed is not None:
                found.append(parsed)
    return tuple(found)


def _check(line: Line, shown: str, number: int) -> Tuple[Tuple[bool, str, str], ...]:
    """Refuse what ssh refuses: bad numbers, bad choices, a Match it cannot read.

    Returns a Match line's criteria (else nothing).
    """

    def fail(why: str) -> InventoryError:
        said = f"{line.spelled} {line.raw}".strip()
        return InventoryError(f"{said}: {why}", shown, f"line {number}")

    kw, first = line.keyword, line.args[0].lower() if line.args else ""
    if kw == "port":
        if not (first.isdigit() and 1 <= int(first) <= 65535):
            raise fail("a port must be a number from 1 to 65535")
    elif kw in ("connecttimeout", "serveraliveinterval"):
        if first != "none" and _seconds(first) is None:
            raise fail("wants a time in seconds (10, 10s, 1m)")
    elif kw == "serveralivecountmax":
        if not first.isdigit():
            raise fail("wants a whole number")
    elif kw in ("identitiesonly", "hashknownhosts"):
        if first not in _YES + _NO:
            raise fail("wants yes or no")
    elif kw == "stricthostkeychecking":
        if first not in _YES + _NO + ("off", "ask", "accept-new"):
            raise fail("wants yes, accept-new, no, off or ask")
    elif kw == "match":
        return tuple(_match_terms(line.args, fail))
    elif kw == "proxyjump" and first != "none":
        for hop in line.raw.split(","):
            if not _hop(hop):
                raise fail(f"bad jump host {hop.strip()!r}: write [user@]host[:port]")
    return ()


def _match_terms(
    args: Sequence[str], fail: Callable[[str], InventoryError]
) -> List[Tuple[bool, str, str]]:
    """``Match`` criteria as (negated, criterion, argument); InventoryError for a bad one."""
    if not args:
        raise fail("needs criteria (all, host, user, ...)")
    terms: List[Tuple[bool, str, str]] = []
    rest = list(args)
    while rest:
        word = rest.pop(0)
        negated = word.startswith("!")
        criterion = word.lstrip("!").lower()
        if criterion not in _MATCH_CRITERIA:
            raise fail(f"unknown Match criterion {criterion!r}")
        argument = ""
        if criterion not in ("all", "canonical", "final"):
            if not rest:
                raise fail(f"Match {criterion} needs an argument")
            argument = rest.pop(0)
        terms.append((negated, criterion, argument))
    names = [t[1] for t in terms]
    if "all" in names and any(n not in ("all", "canonical", "final") for n in names):
        raise fail("Match all cannot be mixed with other criteria but canonical or final")
    return terms


def _split(text: str) -> Iterable[str]:
    """ssh's argv_split: words by white space, "double" or 'single' quotes, ``#`` ends."""
    word: Optional[str] = None
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            if word is not None:
                yield word
                word = None
            i += 1
            continue
        if ch == "#" and word is None:
            return
        if ch in "\"'":
            end = text.find(ch, i + 1)
            if end < 0:
                raise ValueError("unterminated quote")
            word = (word or "") + text[i + 1 : end]
            i = end + 1
            continue
        if ch == "\\" and i + 1 < n and text[i + 1] in "\"'\\ ":
            word = (word or "") + text[i + 1]
            i += 2
            continue
        word = (word or "") + ch
        i += 1
    if word is not None:
        yield word


def _seconds(text: str) -> Optional[float]:
    """OpenSSH's convtime: ``90``, ``90s``, ``1m30s``, ``1h``; None if not a time."""
    if not text:
        return None
    total, at = 0, 0
    for part in _TIME.finditer(text):
        if part.start() != at:
            return None
        total += int(part.group(1)) * _TIME_UNITS[part.group(2).lower()]
        at = part.end()
    return float(total) if at == len(text) else None


def _hop(text: str) -> Optional[str]:
    """A ProxyJump hop as ``[user@]host[:port]`` (``ssh://`` URIs too), or None if malformed."""
    hop = text.strip()
    if hop.lower().startswith("ssh://"):
        hop = hop[len("ssh://") :].rstrip("/")
    user, at, rest = hop.rpartition("@")
    if at and not user:
        return None
    host, port = rest, ""
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            return None
        host, port = rest[: close + 1], rest[close + 1 :].lstrip(":")
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    if not host or (port and not (port.isdigit() and 1 <= int(port) <= 65535)):
        return None
    return hop


@functools.lru_cache(maxsize=4096)
def _glob(pattern: str) -> re.Pattern[str]:
    """OpenSSH's match_pattern: only ``*`` and ``?`` are special (no ``[]`` classes).

    Lower-cased, as ssh lowers the host name it matches.
    """
    regex = re.escape(pattern.lower()).replace(r"\*", ".*").replace(r"\?", ".")
    return re.compile(regex + r"\Z", re.DOTALL)


def _matches(name: str, pattern: str) -> bool:
    return _glob(pattern).match(name) is not None


def match_list(name: str, patterns: Iterable[str]) -> bool:
    """OpenSSH's match_pattern_list: any positive pattern matches and no ``!`` one does."""
    hit = False
    for pattern in patterns:
        if pattern.startswith("!"):
            if _matches(name, pattern[1:]):
                return False
        elif _matches(name, pattern):
            hit = True
    return hit


class _Walk:
    """One lookup: ssh's readconf loop over the files, keeping the first value of each keyword."""

    def __init__(
        self,
        config: SshConfig,
        name: str,
        user: Optional[str],
        port: Optional[int],
        local_user: str,
    ):
        self.config = config
        self.name = name
        self.user = user
        self.port = port
        self.local_user = local_user
        self.final = False
        self.want_final = False
        self.first: Dict[str, Line] = {}  # keyword -> the line whose value won
        self.multi: Dict[str, List[Line]] = {}
        self.warned: Dict[str, str] = {}  # where -> warning, in order

    def warn(self, line: Line, text: str) -> None:
        self.warned.setdefault(line.where, f"{line.where}: {text}")

    def file(self, f: ConfigFile, active: bool, never: bool) -> None:
        for line in f.lines:
            if line.keyword == "host":
                active = not never and match_list(self.host_name(), line.args)
            elif line.keyword == "match":
                active = not never and self.match(line)
            elif line.keyword == "include":
                for included in line.included:
                    self.file(included, active, never or not active)
            elif active:
                self.take(line)

    def host_name(self) -> str:
        """What ``Host`` matches: the name as written; in the final pass, the HostName."""
        if self.final and "hostname" in self.first:
            return self.hostname_value().lower()
        return self.name

    def hostname_value(self) -> str:
        line = self.first.get("hostname")
        if line is None:
            return self.name
        return _expand(line.args[0], {"h": self.name}) or self.name

    def match(self, line: Line) -> bool:
        """Whether a Match line applies; one with a criterion corunner cannot judge
        (``exec``, ``localnetwork``, ...) does not, with a warning when the rest of
        it would apply."""
        result = True
        unjudged = ""
        for negated, criterion, argument in line.terms:
            if criterion == "all":
                ok = True
            elif criterion in ("canonical", "final"):
                if criterion == "final" and not negated:
                    self.want_final = True
                ok = self.final
            elif criterion == "host":
                ok = match_list(self.hostname_value().lower(), argument.split(","))
            elif criterion == "originalhost":
                ok = match_list(self.name, argument.split(","))
            elif criterion == "user":
                ok = match_list(self.current_user(), argument.split(","))
            elif criterion == "localuser":
                ok = match_list(self.local_user, argument.split(","))
            else:  # exec, localnetwork, tagged, version, ...
                unjudged = unjudged or criterion
                continue
            if ok == negated:
                result = False
        if result and unjudged:
            self.warn(line, f"Match {unjudged} is not supported: this block is not applied")
            return False
        return result

    def current_user(self) -> str:
        if self.user is not None:
            return self.user
        line = self.first.get("user")
        return line.args[0] if line is not None else self.local_user

    def take(self, line: Line) -> None:
        kw = line.keyword
        if kw in _MULTI:
            if kw == "identityfile":
                self.multi.setdefault(kw, []).append(line)
        elif kw in ("proxyjump", "proxycommand"):
            self.first.setdefault("proxy", line)
        elif kw in SUPPORTED:
            self.first.setdefault(kw, line)
        if kw in UNSUPPORTED:
            applies, why = UNSUPPORTED[kw]
            if applies(line.args[0].lower()):
                self.warn(line, f"{line.spelled} is not supported: {why}")
        elif kw not in SUPPORTED and kw not in SILENT and kw not in _MULTI:
            self.warn(line, f"unknown keyword {line.spelled!r} ignored (ssh itself refuses it)")

    def resolved(self) -> Resolved:
        origins: Dict[str, str] = {}
        values: Dict[str, object] = {}
        hostname = self.hostname_value()
        user = self.current_user()
        port = self.port
        if port is None and "port" in self.first:
            port = int(self.first["port"].args[0])
        tokens = {
            "h": hostname,
            "n": self.name,
            "p": str(port or 22),
            "r": user,
            "u": self.local_user,
            "d": self.config.home,
        }

        def got(setting: str, keyword: str, value: object) -> None:
            values[setting] = value
            origins[setting] = self.first[keyword].where

        if "hostname" in self.first:
            got("hostname", "hostname", hostname)
        if "user" in self.first:
            got("user", "user", self.first["user"].args[0])
        if "port" in self.first:
            got("port", "port", int(self.first["port"].args[0]))
        keys: List[str] = []
        for line in self.multi.get("identityfile", []):
            if line.args[0].lower() == "none":
                continue
            path = self.path(line, tokens, line.args[0])
            if path is not None and path not in keys:  # the final pass reads them again
                keys.append(path)
                origins.setdefault("key", line.where)
        values["identity_files"] = tuple(keys)
        if "identitiesonly" in self.first:
            got(
                "identities_only",
                "identitiesonly",
                self.first["identitiesonly"].args[0].lower() in _YES,
            )
        proxy = self.first.get("proxy")
        if proxy is not None and proxy.args[0].lower() != "none":
            if proxy.keyword == "proxyjump":
                hops = _expand(proxy.raw, tokens, self, proxy)
                if hops is not None:
                    values["jump"] = tuple(_hop(h) or h.strip() for h in hops.split(","))
                    origins["jump"] = proxy.where
            else:
                command = _expand(proxy.raw, tokens, self, proxy)
                if command is not None:
                    values["proxy_command"] = command
                    origins["proxy_command"] = proxy.where
        if "connecttimeout" in self.first:
            seconds = _seconds(self.first["connecttimeout"].args[0].lower())
            if seconds:  # "none" or 0: the system's own (corunner's default)
                got("connect_timeout", "connecttimeout", seconds)
        for setting, kw in (
            ("known_hosts_files", "userknownhostsfile"),
            ("global_known_hosts_files", "globalknownhostsfile"),
        ):
            files = self.first.get(kw)
            if files is None:
                continue
            if [a.lower() for a in files.args] == ["none"]:
                got(setting, kw, ())
                continue
            paths = [self.path(files, tokens, arg) for arg in files.args]
            if all(p is not None for p in paths):
                got(setting, kw, tuple(p for p in paths if p is not None))
        if "stricthostkeychecking" in self.first:
            line = self.first["stricthostkeychecking"]
            word = line.args[0].lower()
            if word in _YES or word == "ask":
                got("strict_host_keys", "stricthostkeychecking", "yes")
            elif word == "accept-new":
                got("strict_host_keys", "stricthostkeychecking", "accept-new")
            else:
                got("strict_host_keys", "stricthostkeychecking", "no")
                self.warn(
                    line,
                    f"StrictHostKeyChecking {line.args[0]}: keys of hosts never seen are "
                    "accepted and recorded (as accept-new), a changed key is still refused",
                )
        if "serveraliveinterval" in self.first:
            line = self.first["serveraliveinterval"]
            seconds = _seconds(line.args[0].lower())
            if seconds:
                got("alive_interval", "serveraliveinterval", seconds)
            else:
                self.warn(
                    line,
                    "ServerAliveInterval 0 (off) is not followed: corunner keeps its "
                    "keepalives to find hung hosts",
                )
        if "serveralivecountmax" in self.first:
            count = int(self.first["serveralivecountmax"].args[0])
            if count > 0:
                got("alive_count_max", "serveralivecountmax", count)
        if "hashknownhosts" in self.first:
            got(
                "hash_known_hosts",
                "hashknownhosts",
                self.first["hashknownhosts"].args[0].lower() in _YES,
            )
        return Resolved(
            **values,  # type: ignore[arg-type]
            origins=tuple(origins.items()),
            warnings=tuple(self.warned.values()),
        )

    def path(self, line: Line, tokens: Dict[str, str], arg: str) -> Optional[str]:
        """A file argument with ``~`` and tokens expanded; None (and a warning) if a token is bad."""
        expanded = _expand(arg, tokens, self, line)
        if expanded is None:
            return None
        environ = dict(self.config.environ) if "${" in expanded else {}
        missing = [n for n in _ENV.findall(expanded) if n not in environ]
        if missing:
            self.warn(line, f"${{{missing[0]}}} is not set: this setting is not applied")
            return None
        expanded = _ENV.sub(lambda m: environ[m.group(1)], expanded)
        return os.path.normpath(_expand_home(expanded, self.config.home))


def _expand(
    text: str, tokens: Dict[str, str], walk: Optional[_Walk] = None, line: Optional[Line] = None
) -> Optional[str]:
    """``%h``, ``%p``, ``%r``, ``%u``, ``%d``, ``%n`` and ``%%`` replaced; None for another token."""
    bad: List[str] = []

    def one(found: re.Match[str]) -> str:
        key = found.group(1)
        if key == "%":
            return "%"
        if key in tokens:
            return tokens[key]
        bad.append(key)
        return found.group(0)

    out = _TOKEN.sub(one, text)
    if bad:
        if walk is not None and line is not None:
            walk.warn(line, f"token %{bad[0]} is not supported: this setting is not applied")
        return None
    return out


def _expand_home(path: str, home: str) -> str:
    if path == "~" or path.startswith("~/"):
        return home + path[1:]
    if path.startswith("~"):
        return os.path.expanduser(path)
    return path


def _shown(path: str, home: str) -> str:
    """A path as messages show it: ``~/.ssh/config`` rather than the full home."""
    home = home.rstrip("/")
    if home and (path == home or path.startswith(home + "/")):
        return "~" + path[len(home) :]
    return path
