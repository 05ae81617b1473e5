"""The inventory: a plain dict (as read from ``hosts.yaml``) in, frozen hosts out.

Pure: no files, no YAML, no network. The loader passes a ``lines`` map from
key paths to line numbers so every validation error can name the file and the
line; without it errors name the dotted key path instead.
"""

from __future__ import annotations

import difflib
import getpass
import math
import os
import posixpath
import re
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

from .errors import HostRangeError, InventoryError
from .hostrange import UNION, expand, split_terms
from .report import OUTCOME_SELECTORS, RunOutcomes
from .sshconfig import Resolved, SshConfig

DEFAULT_PORT = 22
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
#: Without ``remote_dir:``, each node user gets a directory of its own
#: (``/tmp/corunner-<user>``): two users on one node never meet in it.
DEFAULT_REMOTE_DIR = "/tmp/corunner-{user}"
DEFAULT_PYTHON = "python3"
DEFAULT_CONNECT_TIMEOUT = 10.0  # seconds
#: Seconds between keepalives on a quiet connection (OpenSSH's ServerAliveInterval) ...
DEFAULT_ALIVE_INTERVAL = 5.0
#: ... and how many may go unanswered before the host is given up (ServerAliveCountMax).
DEFAULT_ALIVE_COUNT_MAX = 3
#: Where a setting nothing wrote came from (Host.origins).
DEFAULT_ORIGIN = "default"

SETTINGS = (
    "user",
    "port",
    "key",
    "known_hosts",
    "remote_dir",
    "python",
    "connect_timeout",
    "env",
    "become",
    "become_user",
    "jump",
    "heartbeat",
    "relay_address",
)
TOP_KEYS = ("defaults", "groups")
GROUP_KEYS = ("hosts",) + SETTINGS
#: A host entry written as a mapping: its pattern and settings of its own.
ENTRY_KEYS = ("host",) + SETTINGS
#: How heartbeats travel (``heartbeat:``): ``auto`` is ``tunnel`` behind a jump
#: host or a proxy command (nodes there seldom reach the controller), else ``direct``.
HEARTBEAT_PATHS = ("auto", "direct", "tunnel")
#: ``ssh_config:`` (a file, or false) chooses the OpenSSH config for the whole
#: inventory: the loader reads it, so only ``defaults:`` may hold it.
DEFAULTS_KEYS = SETTINGS + ("ssh_config",)
#: The settings whose origin ``inv hosts`` shows (Host.origins).
SHOWN_ORIGINS = ("address", "user", "port", "key", "jump")

# A group name must survive split_patterns and never read as a host pattern.
_GROUP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: An environment variable's name, as POSIX shells accept it.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# A selection word that can only be meant as a group: no digits, dots, brackets, colons.
_GROUP_LIKE = re.compile(r"[A-Za-z_-]+")

KeyPath = tuple

#: Reads the run that ``--hosts @failed`` and friends refer to (raises RecordError if none).
LastRun = Callable[[], RunOutcomes]


@dataclass(frozen=True)
class Host:
    """One SSH target with every setting resolved (inventory over ssh_config over
    built-in defaults); paths are expanded.

    ``name`` is what the user wrote: the host's id and what is printed;
    ``address`` is where to connect (ssh_config's ``HostName``, else the name).
    """

    name: str
    user: str
    port: int
    key: Optional[str]  # None: the SSH agent and the default keys
    #: The user known_hosts files, in order; new keys are written to the first.
    #: Empty: ``UserKnownHostsFile none``.
    known_hosts_files: Tuple[str, ...]
    remote_dir: str
    python: str
    connect_timeout: float  # seconds
    groups: Tuple[str, ...] = ()
    #: The program's environment variables on this host (``env:``), sorted by name.
    env: Tuple[Tuple[str, str], ...] = ()
    #: The user the program runs as through ``sudo -n`` (``become:``), or None.
    become: Optional[str] = None
    #: Where to connect: a host name or address. "" (the default) means ``name``.
    address: str = ""
    #: Jump hosts, in order, each ``[user@]host[:port]`` (ProxyJump).
    jump: Tuple[str, ...] = ()
    #: A command whose stdin/stdout is the connection (ProxyCommand), tokens expanded.
    proxy_command: Optional[str] = None
    #: Key files to offer after ``key`` (ssh_config's further IdentityFile lines).
    extra_keys: Tuple[str, ...] = ()
    #: IdentitiesOnly: offer only the key files, not the agent's keys.
    identities_only: bool = False
    #: GlobalKnownHostsFile; None: the system's (hostkeys.GLOBAL_KNOWN_HOSTS_FILES).
    global_known_hosts_files: Optional[Tuple[str, ...]] = None
    #: StrictHostKeyChecking: "yes", "accept-new" or "no" (no: as accept-new, warned).
    strict_host_keys: str = "yes"
    #: HashKnownHosts: write new known_hosts entries hashed.
    hash_known_hosts: bool = False
    #: How heartbeats travel: one of HEARTBEAT_PATHS (``heartbeat:``).
    heartbeat: str = "auto"
    alive_interval: float = DEFAULT_ALIVE_INTERVAL  # seconds
    alive_count_max: int = DEFAULT_ALIVE_COUNT_MAX
    #: Where each setting came from, for ``inv hosts``: (setting, origin) pairs such
    #: as ("user", "inventory hosts.yaml:group web"), ("address", "~/.ssh/config
    #: line 12"); a setting not listed is "default".
    origins: Tuple[Tuple[str, str], ...] = field(default=(), compare=False)
    #: ssh_config lines that apply to this host but that corunner cannot follow.
    notes: Tuple[str, ...] = field(default=(), compare=False)
    #: The jump hosts of ``jump`` as Hosts, each looked up in ssh_config as ssh
    #: looks up a ProxyJump hop (see :func:`with_hops`); () until resolved.
    hops: Tuple[Host, ...] = field(default=(), compare=False)
    #: Where this host's relay listens for its peers (``cp --relay``); None:
    #: the address the controller reached it on.
    relay_address: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.address:
            object.__setattr__(self, "address", self.name)
        # Callers written for the one ``known_hosts`` file (a path or None) keep working.
        files: object = self.known_hosts_files
        if files is None or isinstance(files, str):
            object.__setattr__(self, "known_hosts_files", (files,) if files else ())

    def heartbeat_via(self, wanted: Optional[str] = None) -> str:
        """``direct`` or ``tunnel`` for this host: ``wanted`` (``--heartbeat-via``)
        over ``heartbeat:``; ``auto`` tunnels behind a jump host or proxy command."""
        choice = wanted if wanted not in (None, "auto") else self.heartbeat
        if choice == "auto":
            return "tunnel" if self.jump or self.proxy_command else "direct"
        return str(choice)

    @property
    def id(self) -> str:
        """The unique key of this host: the name, plus ``:port`` when not 22.

        An IPv6 name with a port is bracketed, as OpenSSH writes it: ``[::1]:2201``.
        """
        if self.port == DEFAULT_PORT:
            return self.name
        return f"[{self.name}]:{self.port}" if ":" in self.name else f"{self.name}:{self.port}"

    @property
    def local_name(self) -> str:
        """The host as a local file name (pulled copies): the id without ``:``, unique per host.

        A ``:`` means a remote path to scp, rsync and GNU tar (``tar -f
        host:file``), and cannot be in a Windows or macOS Finder name, so
        each ``:`` becomes ``+``, which no host name holds:
        ``gw.example.com:2222`` -> ``gw.example.com+2222``. An IPv6 name
        always ends with its port, so ``[::1]:2201`` -> ``++1+2201`` and
        ``::1`` -> ``++1+22`` never meet ``::1:2201`` (``++1+2201+22``).
        """
        if ":" in self.name:
            return f"{self.name.replace(':', '+')}+{self.port}"
        return self.name if self.port == DEFAULT_PORT else f"{self.name}+{self.port}"

    @property
    def known_hosts(self) -> Optional[str]:
        """The user known_hosts file new keys go to, or None (``UserKnownHostsFile none``)."""
        return self.known_hosts_files[0] if self.known_hosts_files else None

    def origin(self, setting: str) -> str:
        """Where ``setting`` (``address``, ``user``, ``port``, ``key``, ``jump``, ...) came from."""
        return dict(self.origins).get(setting, DEFAULT_ORIGIN)


@dataclass(frozen=True)
class Inventory:
    """Hosts in file order, groups as host ids, and the file name for messages.

    ``defaults`` are the settings of a host the inventory does not list but
    ``--hosts`` names (its ``defaults:`` block over the built-in values).
    """

    hosts: tuple[Host, ...]
    groups: Mapping[str, tuple[str, ...]] = field(hash=False)
    source: str = "<inventory>"
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    #: Where each of ``defaults`` was written (setting -> origin).
    default_origins: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), hash=False, compare=False
    )
    #: The OpenSSH client config the hosts were resolved with (also those named ad hoc).
    ssh_config: Optional[SshConfig] = field(default=None, hash=False, compare=False)

    def select(
        self,
        selection: Optional[str] = None,
        exclude: Optional[str] = None,
        last_run: Optional[LastRun] = None,
    ) -> list[Host]:
        """The hosts a ``--hosts`` selection picks, minus those ``--exclude`` picks.

        None or blank selects every host. A selection applies ClusterShell's
        set operators left to right (``,`` union, ``!`` difference, ``&``
        intersection, ``^`` symmetric difference; ``lab,!n3`` is ``lab!n3``;
        a leading operator starts from every host) to operands that are:
        a group name or ``@group``; ``@failed``, ``@unreachable``, ``@dead``,
        ``@timeout``, ``@stalled`` or ``@not-succeeded``, the hosts of the run
        ``last_run`` reads that ended so; or ``[user@]pattern[:port]``, the
        inventory's hosts of those names, and in a union the names it does not
        list as hosts with :attr:`defaults` (``clush -w``). A word of letters
        only (no digit or dot) is a group name. The result is in inventory
        order, hosts not listed last, without duplicates.

        Raises InventoryError for an unknown group (with the closest name), a
        host named with another user than the inventory's, an operand of
        ``!``, ``&`` or ``--exclude`` that matches no host, or a selection left
        empty; HostRangeError for a malformed pattern; RecordError from
        ``last_run``.
        """
        resolver = _Resolver(self, last_run)
        picked = {h.id: h for h in self.hosts}
        if selection is not None and selection.strip():
            picked = resolver.evaluate(selection, picked)
        if exclude is not None and exclude.strip():
            removed = resolver.evaluate(exclude, picked, strict=True)
            picked = {i: h for i, h in picked.items() if i not in removed}
        if not picked:
            said = f"--hosts {selection!r}" if selection and selection.strip() else "every host"
            if exclude and exclude.strip():
                said += f" --exclude {exclude!r}"
            why = f" ({'; '.join(resolver.empty)})" if resolver.empty else ""
            raise InventoryError(f"{said} selects no host{why}")
        order = {h.id: i for i, h in enumerate(self.hosts)}
        return sorted(picked.values(), key=lambda h: order.get(h.id, len(order)))

    def host(self, host_id: str) -> Host:
        """The host with this id (``name`` or ``name:port``); InventoryError if none."""
        try:
            return self._by_id[host_id]
        except KeyError:
            raise InventoryError(f"no host {host_id!r} in {self.source}") from None

    def not_listed(self, hosts: list[Host]) -> list[Host]:
        """Those of ``hosts`` that this inventory does not list (named ad hoc in --hosts)."""
        return [h for h in hosts if h.id not in self._by_id]

    def ad_hoc_host(
        self, name: str, user: Optional[str] = None, port: Optional[int] = None
    ) -> Host:
        """A host this inventory does not list, with its defaults; InventoryError without a user."""
        settings = dict(self._ad_hoc_defaults)
        origins = dict(self.default_origins)
        if user is not None:
            settings["user"] = user
            origins["user"] = f"--hosts {user}@{name}"
        if port is not None:
            settings["port"] = port
            origins["port"] = f"--hosts {name}:{port}"
        settings, origins, extra = with_ssh_config(name, settings, origins, self.ssh_config)
        if settings["user"] is None:
            raise InventoryError(
                f"cannot tell which user logs in to {name}: write user@{name}, "
                "or set 'user:' under defaults",
                self.source,
            )
        return with_hops(Host(name=name, **host_fields(settings), **extra), self.ssh_config)

    def with_ad_hoc(self, entries: Iterable[str]) -> Inventory:
        """This inventory plus the hosts of ``[user@]name[:port]`` entries it does not list.

        How a run's record brings back the hosts it ran on that were named ad
        hoc (see :func:`ad_hoc_entry`). Raises InventoryError for a bad entry.
        """
        extra: dict[str, Host] = {}
        for entry in entries:
            user, pattern, port = _split_entry(entry)
            for name in expand(pattern):
                host = self.ad_hoc_host(name, user, _port_number(entry, port))
                if host.id not in self._by_id:
                    extra.setdefault(host.id, host)
        if not extra:
            return self
        return replace(self, hosts=self.hosts + tuple(extra.values()))

    @cached_property
    def _by_id(self) -> dict[str, Host]:
        # cached_property writes the instance __dict__ directly, so it works on a frozen class.
        return {h.id: h for h in self.hosts}

    @cached_property
    def _ad_hoc_defaults(self) -> dict[str, Any]:
        return {**_builtin_settings(), **self.defaults}

    @cached_property
    def _by_name(self) -> dict[str, list[Host]]:
        names: dict[str, list[Host]] = {}
        for h in self.hosts:
            names.setdefault(h.name, []).append(h)
        return names


def ad_hoc_entry(host: Host) -> str:
    """How a run record keeps a host not in the inventory: ``user@name:port``
    (``user@[v6addr]:port`` for an IPv6 name)."""
    name = f"[{host.name}]" if ":" in host.name else host.name
    return f"{host.user}@{name}:{host.port}"


#: ``[v6addr]`` or ``[v6addr]:port``: brackets around a name holding ':' (a
#: range never does) are an IPv6 address, as OpenSSH and URLs write it.
_BRACKETED_V6 = re.compile(r"\[([^\[\]]*:[^\[\]]*)\](?::([^:]*))?")


def split_host_port(text: str) -> tuple[str, Optional[str]]:
    """``pattern[:port]`` -> (pattern, port text or None), IPv6 forms included.

    ``[v6addr]:port`` and ``[v6addr]`` give the bare address; a name with more
    than one colon and no brackets is an IPv6 address without a port.
    """
    bracketed = _BRACKETED_V6.fullmatch(text)
    if bracketed:
        return bracketed.group(1), bracketed.group(2)
    if text.count(":") == 1:
        name, _, port = text.partition(":")
        return name, port
    return text, None


class _Resolver:
    """Evaluates selections over one inventory; remembers why an operand was empty."""

    def __init__(self, inventory: Inventory, last_run: Optional[LastRun]):
        self.inv = inventory
        self.last_run = last_run
        self._outcomes: Optional[RunOutcomes] = None
        self.empty: list[str] = []  # why operands selected nothing, for the error message

    def evaluate(
        self, selection: str, every: dict[str, Host], strict: bool = False
    ) -> dict[str, Host]:
        """Apply the selection's terms left to right; a leading operator starts from ``every``.

        ``strict`` (--exclude): names that match no host are an error, never
        hosts to add.
        """
        terms = split_terms(selection)
        picked: dict[str, Host] = {} if terms[0][0] == UNION else dict(every)
        for op, operand in terms:
            adds = op in (UNION, "^") and not strict
            extra: dict[str, list[Host]] = {}  # hosts named ad hoc so far, by name
            for host in (*every.values(), *picked.values()):
                if host.id not in self.inv._by_id and host not in extra.get(host.name, ()):
                    extra.setdefault(host.name, []).append(host)
            found = self.operand(operand, adds, extra)
            if (
                not found
                and not adds
                and not operand.startswith("@")
                and operand not in self.inv.groups
            ):
                task = "exclude" if strict else ("remove" if op == "!" else "keep")
                raise InventoryError(
                    f"{operand!r} matches no host in {self.inv.source} (nothing to {task})"
                )
            if op == UNION:
                picked.update((i, h) for i, h in found.items() if i not in picked)
            elif op == "!":
                picked = {i: h for i, h in picked.items() if i not in found}
            elif op == "&":
                picked = {i: h for i, h in picked.items() if i in found}
            else:
                both = picked.keys() & found.keys()
                picked = {i: h for i, h in {**picked, **found}.items() if i not in both}
        return picked

    def operand(self, operand: str, adds: bool, extra: dict[str, list[Host]]) -> dict[str, Host]:
        """The hosts one operand names. ``adds``: names not listed become ad-hoc hosts.

        ``extra``: the hosts not listed that the selection named so far, by
        name, which a later ``!`` or ``&`` may name too.
        """
        if operand.startswith("@"):
            return self.at(operand)
        if operand in self.inv.groups:
            return self.group(operand)
        user, pattern, port_text = _split_entry(operand)
        port = _port_number(operand, port_text)
        if user is None and port is None and _GROUP_LIKE.fullmatch(pattern):
            if pattern not in self.inv._by_name and pattern not in extra:
                raise self.unknown_group(pattern, at=False)
        found: dict[str, Host] = {}
        for name in expand(pattern):
            matches = [h for h in self.inv._by_name.get(name, []) if port in (None, h.port)]
            if not matches:
                matches = [h for h in extra.get(name, ()) if port in (None, h.port)]
            if not matches and adds:
                matches = [self.inv.ad_hoc_host(name, user, port)]
            for host in matches:
                if adds and user is not None and host.user != user:
                    # One host id, one user: the record keeps ids, and status
                    # and collect log in again as the host's user.
                    where = (
                        f"is in {self.inv.source}"
                        if host.id in self.inv._by_id
                        else "is named earlier"
                    )
                    raise InventoryError(
                        f"{operand!r}: {host.id} {where} with user {host.user}; "
                        f"drop '{user}@' or change the inventory"
                    )
                found[host.id] = host
        return found

    def group(self, name: str) -> dict[str, Host]:
        ids = self.inv.groups[name]
        if not ids:
            self.empty.append(f"group {name!r} lists no host")
        return {i: self.inv.host(i) for i in ids}

    def at(self, operand: str) -> dict[str, Host]:
        """``@group`` (``@rack[1-2]`` too) or ``@failed`` and the other run outcomes."""
        name = operand[1:]
        if name in OUTCOME_SELECTORS:
            return self.outcome(name)
        if not name:
            raise InventoryError("'@' needs a group name after it (as in @lab)")
        found: dict[str, Host] = {}
        for group in expand(name):
            if group not in self.inv.groups:
                raise self.unknown_group(group, at=True)
            found.update(self.group(group))
        return found

    def outcome(self, selector: str) -> dict[str, Host]:
        if self.last_run is None:
            raise InventoryError(f"@{selector} needs a run record, and none is at hand here")
        if self._outcomes is None:
            self._outcomes = self.last_run()
        outcomes = self._outcomes
        inv = self.inv.with_ad_hoc(outcomes.ad_hoc)
        found: dict[str, Host] = {}
        for host_id in outcomes.hosts(selector):
            try:
                found[host_id] = inv._by_id[host_id]
            except KeyError:
                raise InventoryError(
                    f"host {host_id} of run {outcomes.run_id} is no longer in the inventory; "
                    "pass the run's inventory with --inventory FILE",
                    self.inv.source,
                ) from None
        if not found:
            self.empty.append(f"run {outcomes.run_id} has no {selector.replace('-', ' ')} host")
        return found

    def unknown_group(self, name: str, at: bool) -> InventoryError:
        known = list(self.inv.groups)
        prefix = "@" if at else ""
        choices = [prefix + g for g in known] + (["@" + s for s in OUTCOME_SELECTORS] if at else [])
        close = difflib.get_close_matches(prefix + name, choices, n=1)
        if close:
            hint = f"did you mean {close[0]!r}?"
        else:
            hint = f"groups: {', '.join(known) or 'none'}"
            if not at:
                hint += f"; a host not in {self.inv.source}: {name}:22 or user@{name}"
        return InventoryError(f"unknown group {prefix + name!r} ({hint})")


def _split_entry(entry: str) -> tuple[Optional[str], str, Optional[str]]:
    """``[user@]pattern[:port]`` -> (user, pattern, port text); None for a part not given.

    More than one colon is an IPv6 address, with no port unless bracketed
    (``[::1]:2201``). Raises HostRangeError for an empty user or host.
    """
    pattern = entry.strip()
    user: Optional[str] = None
    if "@" in pattern:
        user, _, pattern = pattern.partition("@")
        if not user.strip():
            raise HostRangeError(entry, "empty user before '@'")
        user = user.strip()
    pattern, port = split_host_port(pattern)
    if not pattern:
        raise HostRangeError(entry, "no host name")
    return user, pattern, port


def _port_number(entry: str, text: Optional[str]) -> Optional[int]:
    """A port from ``:PORT`` text (None if not given); HostRangeError unless 1-65535."""
    if text is None:
        return None
    if not (text.isdigit() and text.isascii() and 1 <= int(text) <= 65535):
        raise HostRangeError(entry, f"port must be a number from 1 to 65535, not {text!r}")
    return int(text)


def _builtin_settings() -> dict[str, Any]:
    """The settings of a host when nothing sets them (user: the inventory decides)."""
    return {
        "user": None,
        "port": DEFAULT_PORT,
        "key": None,
        "known_hosts": os.path.normpath(os.path.expanduser(DEFAULT_KNOWN_HOSTS)),
        "remote_dir": None,  # per user: default_remote_dir, once the user is known
        "python": DEFAULT_PYTHON,
        "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
        "env": (),
        "become": False,
        "become_user": None,
        "jump": (),
        "heartbeat": "auto",
        "relay_address": None,
    }


def host_fields(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A Host's fields from resolved settings (the user known): the per-user
    default remote_dir filled in, ``become``/``become_user`` made the one user
    sudo runs the program as (``become_user`` alone implies ``become``), the
    ``known_hosts:`` file (or ssh_config's list) made ``known_hosts_files``."""
    fields = dict(settings)
    known = fields.pop("known_hosts")
    if "known_hosts_files" not in fields:
        fields["known_hosts_files"] = (known,) if known else ()
    if fields["remote_dir"] is None:
        fields["remote_dir"] = default_remote_dir(fields["user"])
    become, become_user = fields.pop("become"), fields.pop("become_user")
    fields["become"] = (become_user or "root") if (become or become_user) else None
    return fields


#: The Host fields that only ssh_config sets (the inventory has no key for them).
SSH_ONLY_SETTINGS = (
    "identities_only",
    "global_known_hosts_files",
    "strict_host_keys",
    "hash_known_hosts",
    "alive_interval",
    "alive_count_max",
)


def with_ssh_config(
    name: str,
    settings: Mapping[str, Any],
    origins: Mapping[str, str],
    ssh: Optional[SshConfig],
    local_user: Optional[str] = None,
) -> Tuple[Dict[str, Any], Dict[str, str], Dict[str, Any]]:
    """One host's settings with ssh_config's applied where the inventory wrote none.

    ``settings`` holds every setting (built-in values included); ``origins``
    names those the inventory wrote, which win. Returns the settings, every
    setting's origin, and the Host fields only ssh_config sets (address,
    jump, keepalives, host key rules, ...) with ``origins`` and ``notes``.
    """
    out = dict(settings)
    where = dict(origins)
    found = Resolved()
    if ssh is not None:
        user = settings["user"] if "user" in origins else None
        port = settings["port"] if "port" in origins else None
        found = ssh.lookup(name, user, port, local_user or _local_name())
    config = dict(found.origins)
    for setting, value in (
        ("user", found.user),
        ("port", found.port),
        ("connect_timeout", found.connect_timeout),
        ("known_hosts_files", found.known_hosts_files),
    ):
        inventory_name = "known_hosts" if setting == "known_hosts_files" else setting
        if value is not None and inventory_name not in origins:
            out[setting] = value
            where[inventory_name] = config[setting]
    extra: Dict[str, Any] = {}
    if found.identity_files and "key" not in origins:
        out["key"] = found.identity_files[0]
        extra["extra_keys"] = found.identity_files[1:]
        where["key"] = config["key"]
    if found.hostname:
        extra["address"] = found.hostname
        where["address"] = config["hostname"]
    # The inventory's jump: (none included) wins over ProxyJump and ProxyCommand both.
    if found.jump and "jump" not in origins:
        out["jump"] = found.jump
        where["jump"] = config["jump"]
    if found.proxy_command is not None and "jump" not in origins:
        extra["proxy_command"] = found.proxy_command
        where["proxy_command"] = config["proxy_command"]
    for setting in SSH_ONLY_SETTINGS:
        value = getattr(found, setting)
        if value is not None:
            extra[setting] = value
            where[setting] = config[setting]
    extra["origins"] = tuple(sorted(where.items()))
    extra["notes"] = found.warnings
    return out, where, extra


def _local_name() -> str:
    """The local user name for ``%u`` and ``Match localuser``; "" if it cannot be told."""
    try:
        return getpass.getuser()
    except (OSError, KeyError, ImportError):
        return ""


def inventory_from_dict(
    data: object,
    source: str = "<inventory>",
    base_dir: str = ".",
    lines: Optional[Mapping[KeyPath, int]] = None,
    local_user: Optional[str] = None,
    ssh_config: Optional[SshConfig] = None,
) -> Inventory:
    """Validate an inventory dict and resolve every host's settings.

    Precedence: built-in < ``ssh_config`` (OpenSSH's client config, already
    read) < ``defaults`` < group < the entry's ``user@``/``:port``.
    ``key`` and ``known_hosts`` get ``~`` expanded and relative paths resolved
    against ``base_dir`` (the inventory file's directory). A host in two
    groups is one Host with the first group's settings. ``local_user``
    replaces ``getpass.getuser()`` as the built-in user (tests). Raises
    InventoryError naming ``source`` and the closest line in ``lines`` (else
    the dotted key path).
    """
    return _Builder(source, base_dir, lines or {}, local_user, ssh_config).build(data)


class _Builder:
    """Walks the dict once, keeping what every error message needs."""

    def __init__(
        self,
        source: str,
        base_dir: str,
        lines: Mapping[KeyPath, int],
        local_user: Optional[str],
        ssh_config: Optional[SshConfig] = None,
    ):
        self.source = source
        self.base_dir = base_dir
        self.lines = lines
        self.local_user = local_user
        self.ssh_config = ssh_config

    def error(self, msg: str, path: KeyPath) -> InventoryError:
        """An InventoryError at the closest known line of ``path``."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return InventoryError(msg, self.source, f"line {line}")
        return InventoryError(msg, self.source, _dotted(path) or None)

    def build(self, data: object) -> Inventory:
        if data is None:
            raise self.error("empty inventory: add a 'groups:' mapping with hosts", ())
        if not isinstance(data, dict):
            raise self.error(
                f"the inventory must be a mapping with 'groups:', not {_kind(data)}", ()
            )
        self.check_keys(data, TOP_KEYS, ())
        settings = self.builtin_settings()
        origins: Dict[str, str] = {}
        defaults = data.get("defaults")
        if defaults is not None:
            if not isinstance(defaults, dict):
                raise self.error(
                    f"defaults must be a mapping, not {_kind(defaults)}", ("defaults",)
                )
            self.check_keys(defaults, DEFAULTS_KEYS, ("defaults",))
            if "ssh_config" in defaults:
                self.ssh_config_setting(defaults["ssh_config"], ("defaults", "ssh_config"))
            own = self.settings(defaults, ("defaults",))
            settings.update(own)
            origins.update((k, f"inventory {self.source}:defaults") for k in own)
        if "groups" not in data:
            raise self.error("missing 'groups:' (each group lists its hosts)", ())
        groups = data["groups"]
        if not isinstance(groups, dict):
            raise self.error(
                f"groups must be a mapping of group names, not {_kind(groups)}", ("groups",)
            )
        if not groups:
            raise self.error("empty inventory: 'groups:' has no group", ("groups",))

        hosts: dict[str, Host] = {}  # id -> Host, in file order
        members: dict[str, list[str]] = {}
        for name, group in groups.items():
            path: KeyPath = ("groups", name)
            if not isinstance(name, str) or not _GROUP_NAME.fullmatch(name):
                raise self.error(
                    f"bad group name {name!r}: use letters, digits, '_', '-' and '.'", path
                )
            ids: list[str] = []
            ids_seen: set[str] = set()
            members[name] = ids
            for host in self.group_hosts(name, group, settings, origins, path):
                if host.id in ids_seen:
                    continue
                ids_seen.add(host.id)
                ids.append(host.id)
                known = hosts.get(host.id)
                # The first group that lists a host decides its settings.
                hosts[host.id] = host if known is None else _with_group(known, name)
        if not hosts:
            raise self.error("empty inventory: no group lists any host", ("groups",))
        host_names = {h.name for h in hosts.values()} | set(hosts)
        for name in members:
            if name in host_names:
                raise self.error(
                    f"group {name!r} has the same name as a host; rename one", ("groups", name)
                )
        return Inventory(
            hosts=tuple(hosts.values()),
            groups=MappingProxyType({g: tuple(ids) for g, ids in members.items()}),
            source=self.source,
            defaults=MappingProxyType(self.ad_hoc_settings(settings)),
            default_origins=MappingProxyType(origins),
            ssh_config=self.ssh_config,
        )

    def group_hosts(
        self,
        name: str,
        group: object,
        inherited: dict[str, Any],
        inherited_origins: Dict[str, str],
        path: KeyPath,
    ) -> list[Host]:
        if not isinstance(group, dict):
            raise self.error(
                f"group {name!r} must be a mapping with 'hosts:', not {_kind(group)}", path
            )
        self.check_keys(group, GROUP_KEYS, path)
        if "hosts" not in group:
            raise self.error(f"group {name!r} has no 'hosts:' list", path)
        entries = group["hosts"]
        if not isinstance(entries, list):
            raise self.error(
                f"hosts of group {name!r} must be a list, not {_kind(entries)}",
                path + ("hosts",),
            )
        settings = dict(inherited)
        own = self.settings(group, path)
        if "env" in own:  # a group's env: adds to the defaults' (and wins), never replaces them
            own["env"] = tuple(sorted({**dict(inherited["env"]), **dict(own["env"])}.items()))
        settings.update(own)
        origins = dict(inherited_origins)
        origins.update((k, f"inventory {self.source}:group {name}") for k in own)
        hosts = []
        for index, entry in enumerate(entries):
            hosts.extend(self.entry_hosts(name, entry, settings, origins, path + ("hosts", index)))
        return hosts

    def entry_hosts(
        self,
        group: str,
        entry: object,
        settings: dict[str, Any],
        inherited_origins: Dict[str, str],
        path: KeyPath,
    ) -> list[Host]:
        """Hosts of one ``[user@]pattern[:port]`` entry, or of a mapping with
        ``host:`` (such an entry) and settings of its own (``jump:``, ...),
        each resolved through ssh_config."""
        resolved = dict(settings)
        origins = dict(inherited_origins)
        if isinstance(entry, dict):
            self.check_keys(entry, ENTRY_KEYS, path)
            if "host" not in entry:
                raise self.error("a host entry mapping needs 'host:' (its pattern)", path)
            own = self.settings(entry, path)
            if "env" in own:  # as a group's env: adds to what it inherits
                own["env"] = tuple(sorted({**dict(settings["env"]), **dict(own["env"])}.items()))
            resolved.update(own)
            where = f"inventory {self.source}:{str(entry['host']).strip()}"
            origins.update((k, where) for k in own)
            path, entry = path + ("host",), entry["host"]
        if not isinstance(entry, str):
            raise self.error(f"a host entry must be a string, not {_kind(entry)}", path)
        pattern = entry.strip()
        if "@" in pattern:
            user, _, pattern = pattern.partition("@")
            if not user:
                raise self.error(f"empty user before '@' in host entry {entry!r}", path)
            resolved["user"] = self.user(user, path)
            origins["user"] = f"inventory {self.source}:{entry.strip()}"
        pattern, port = split_host_port(pattern)  # [v6addr]:port too
        if port is not None:
            resolved["port"] = self.port(port, path, f"in host entry {entry!r}")
            origins["port"] = f"inventory {self.source}:{entry.strip()}"
        if not pattern:
            raise self.error(f"no host name in host entry {entry!r}", path)
        try:
            names = expand(pattern)
        except HostRangeError as exc:
            raise self.error(exc.msg, path) from exc
        hosts = []
        for name in names:
            own, _, extra = with_ssh_config(
                name, resolved, origins, self.ssh_config, self.local_user
            )
            self.require_user(own, path)
            host = Host(name=name, groups=(group,), **host_fields(own), **extra)
            hosts.append(with_hops(host, self.ssh_config, self.local_user))
        return hosts

    def settings(self, mapping: dict[Any, Any], path: KeyPath) -> dict[str, Any]:
        """Validated settings present in ``mapping`` (a defaults or group block)."""
        checks: dict[str, Callable[[object, KeyPath], Any]] = {
            "user": self.user,
            "port": lambda v, p: self.port(v, p, ""),
            "key": self.key,
            "known_hosts": self.known_hosts,
            "remote_dir": self.remote_dir,
            "python": self.python,
            "connect_timeout": self.connect_timeout,
            "env": self.env,
            "become": self.become,
            "become_user": self.become_user,
            "jump": self.jump,
            "heartbeat": self.heartbeat,
            "relay_address": self.relay_address,
        }
        return {k: checks[k](mapping[k], path + (k,)) for k in SETTINGS if k in mapping}

    def builtin_settings(self) -> dict[str, Any]:
        return {
            "user": self.local_user,  # filled from getpass only if nothing sets it
            "port": DEFAULT_PORT,
            "key": None,
            "known_hosts": self.path(DEFAULT_KNOWN_HOSTS),
            "remote_dir": None,  # per user: default_remote_dir, once the user is known
            "python": DEFAULT_PYTHON,
            "connect_timeout": DEFAULT_CONNECT_TIMEOUT,
            "env": (),
            "become": False,
            "become_user": None,
            "jump": (),
            "heartbeat": "auto",
            "relay_address": None,
        }

    def ad_hoc_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """The defaults for hosts named ad hoc; their user stays None if none can be told."""
        resolved = dict(settings)
        if resolved["user"] is None:
            try:
                resolved["user"] = self.local_user or getpass.getuser()
            except (OSError, KeyError, ImportError):  # no USER, no passwd entry
                pass
        return resolved

    def require_user(self, settings: dict[str, Any], path: KeyPath) -> None:
        if settings["user"] is not None:
            return
        try:
            self.local_user = getpass.getuser()
        except (OSError, KeyError, ImportError) as exc:  # no USER, no passwd entry
            raise self.error(
                "cannot tell the local user name: set 'user:' under defaults", path
            ) from exc
        settings["user"] = self.local_user

    def ssh_config_setting(self, value: object, path: KeyPath) -> None:
        try:
            ssh_config_setting(value)
        except ValueError as exc:
            raise self.error(str(exc), path) from None

    def check_keys(self, mapping: dict[Any, Any], allowed: tuple[str, ...], path: KeyPath) -> None:
        for key in mapping:
            if key in allowed:
                continue
            where = _dotted(path) or "the top level"
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            suggestion = (
                f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(allowed)})"
            )
            raise self.error(f"unknown key {key!r} in {where}{suggestion}", path + (key,))

    # One validator per setting: value and key path in, clean value out.

    def user(self, value: object, path: KeyPath) -> str:
        if not isinstance(value, str) or not value.strip() or "@" in value:
            raise self.error(f"user must be a user name, not {_kind(value)}", path)
        return value.strip()

    def port(self, value: object, path: KeyPath, context: str) -> int:
        text = f" {context}" if context else ""
        if isinstance(value, str) and value.strip().isdigit() and value.strip().isascii():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(
                f"port{text} must be a number from 1 to 65535, not {_kind(value)}", path
            )
        if not 1 <= value <= 65535:
            raise self.error(f"port{text} must be from 1 to 65535, not {value}", path)
        return value

    def key(self, value: object, path: KeyPath) -> Optional[str]:
        if value is None:
            return None  # explicit null: back to the agent and default keys
        return self.path_setting("key", value, path)

    def known_hosts(self, value: object, path: KeyPath) -> str:
        return self.path_setting("known_hosts", value, path)

    def path_setting(self, name: str, value: object, path: KeyPath) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"{name} must be a file path, not {_kind(value)}", path)
        return self.path(value.strip())

    def path(self, value: str) -> str:
        expanded = os.path.expanduser(value)
        if not os.path.isabs(expanded):
            expanded = os.path.join(self.base_dir, expanded)
        return os.path.normpath(expanded)

    def remote_dir(self, value: object, path: KeyPath) -> str:
        try:
            return clean_remote_dir(value)
        except ValueError as exc:
            raise self.error(f"remote_dir {exc}", path) from None

    def become(self, value: object, path: KeyPath) -> bool:
        if not isinstance(value, bool):
            raise self.error(f"become must be true or false, not {_kind(value)}", path)
        return value

    def become_user(self, value: object, path: KeyPath) -> Optional[str]:
        if value is None:
            return None
        return self.user(value, path)

    def relay_address(self, value: object, path: KeyPath) -> Optional[str]:
        if value is None:
            return None
        text = value.strip().strip("[]") if isinstance(value, str) else ""
        if not text or any(c.isspace() for c in text):
            raise self.error(
                f"relay_address must be an IP address or host name, not {_kind(value)}", path
            )
        return text

    def python(self, value: object, path: KeyPath) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"python must be a command such as python3, not {_kind(value)}", path)
        return value.strip()

    def env(self, value: object, path: KeyPath) -> tuple[tuple[str, str], ...]:
        if value is None:
            return ()
        if not isinstance(value, dict):
            raise self.error(f"env must be a mapping of NAME: value, not {_kind(value)}", path)
        pairs = {}
        for name, item in value.items():
            if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
                raise self.error(f"env: {name!r} is not a variable name", path + (name,))
            if isinstance(item, bool) or not isinstance(item, (str, int, float)):
                raise self.error(
                    f"env: {name} must be a string or a number, not {_kind(item)}", path + (name,)
                )
            pairs[name] = str(item)
        return tuple(sorted(pairs.items()))

    def jump(self, value: object, path: KeyPath) -> tuple[str, ...]:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = ",".join(value)
        if not isinstance(value, str):
            raise self.error(
                f"jump must be [user@]host[:port], a comma list of them, or none, not {_kind(value)}",
                path,
            )
        try:
            return parse_jump(value)
        except ValueError as exc:
            raise self.error(f"jump: {exc}", path) from None

    def heartbeat(self, value: object, path: KeyPath) -> str:
        if value not in HEARTBEAT_PATHS:
            raise self.error(
                f"heartbeat must be one of {', '.join(HEARTBEAT_PATHS)}, not {_kind(value)}", path
            )
        return str(value)

    def connect_timeout(self, value: object, path: KeyPath) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value <= 0
        ):
            raise self.error(
                f"connect_timeout must be a positive number of seconds, not {_kind(value)}", path
            )
        return float(value)


def parse_jump(text: str) -> tuple[str, ...]:
    """A jump chain, first hop first: ``[user@]host[:port]`` hops, comma-separated,
    as OpenSSH's ProxyJump; ``none`` (or nothing) is no jump host.

    Each hop is normalised to ``[user@]host[:port]`` (no blanks, a port of 22
    kept only if written). Raises ValueError saying what is wrong with a hop.
    """
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(_hop_text(split_hop(hop)) for hop in text.split(","))


def hop_host(
    target: Host, hop: str, ssh: Optional[SshConfig] = None, local_user: Optional[str] = None
) -> Host:
    """The jump host ``hop`` (``[user@]host[:port]``) of ``target`` as a Host of its own.

    As ssh does for a ProxyJump hop, the hop's name is looked up in ssh_config
    (HostName, User, Port, IdentityFile, known_hosts files, keepalives, ...);
    what the hop string says wins, and what neither says comes from the target
    (its user, key, known_hosts and connect_timeout; port 22). Its host key is
    checked as any host's is. The hop's own ProxyJump is not followed: the
    chain is written out in ``jump``.
    """
    user, name, port = split_hop(hop)
    found = ssh.lookup(name, user, port, local_user or _local_name()) if ssh else None
    fields: Dict[str, Any] = {
        "name": name,
        "address": name,
        "user": user or target.user,
        "port": port or DEFAULT_PORT,
        "groups": (),
        "env": (),
        "become": None,
        "jump": (),
        "proxy_command": None,
        "heartbeat": "auto",
        "hops": (),
        "notes": (),
    }
    if found is not None:
        if found.hostname:
            fields["address"] = found.hostname
        if user is None and found.user:
            fields["user"] = found.user
        if port is None and found.port:
            fields["port"] = found.port
        if found.identity_files:
            fields["key"], fields["extra_keys"] = found.identity_files[0], found.identity_files[1:]
        for setting in ("known_hosts_files", "connect_timeout", *SSH_ONLY_SETTINGS):
            value = getattr(found, setting)
            if value is not None:
                fields[setting] = value
        fields["origins"] = found.origins
        fields["notes"] = found.warnings
    return replace(target, **fields)


def with_hops(host: Host, ssh: Optional[SshConfig], local_user: Optional[str] = None) -> Host:
    """``host`` with :attr:`Host.hops` made from its ``jump`` chain (and ``ssh``)."""
    return replace(host, hops=tuple(hop_host(host, hop, ssh, local_user) for hop in host.jump))


def split_hop(hop: str) -> tuple[Optional[str], str, Optional[int]]:
    """``[user@]host[:port]`` (``[v6addr]:port`` too) -> (user, host, port); None if not given.

    One host, never a pattern: brackets other than an IPv6 address, blanks
    and ``none`` inside a chain are refused with a ValueError.
    """
    text = hop.strip()
    if not text:
        raise ValueError("empty hop in the chain (two commas, or one at an end)")
    user: Optional[str] = None
    if "@" in text:
        user, _, text = text.rpartition("@")
        if not user or any(c.isspace() for c in user):
            raise ValueError(f"bad user in hop {hop.strip()!r}")
    port_text: Optional[str] = None
    if text.startswith("["):  # [v6addr] or [v6addr]:port
        address, close, rest = text[1:].partition("]")
        if not close or ":" not in address or (rest and not rest.startswith(":")):
            raise ValueError(f"hop {hop.strip()!r}: write an IPv6 address as [addr]:port")
        text, port_text = address, (rest[1:] if rest else None)
    elif text.count(":") == 1:
        text, _, port_text = text.partition(":")
    if text.lower() == "none":
        raise ValueError("'none' cannot be part of a chain: write it alone")
    if not text or any(c.isspace() or c in "[],@/" for c in text):
        raise ValueError(f"hop {hop.strip()!r} is not [user@]host[:port] (one host, no pattern)")
    port: Optional[int] = None
    if port_text is not None:
        if not (port_text.isdigit() and port_text.isascii() and 1 <= int(port_text) <= 65535):
            raise ValueError(f"hop {hop.strip()!r}: port must be a number from 1 to 65535")
        port = int(port_text)
    return user, text, port


def _hop_text(parts: tuple[Optional[str], str, Optional[int]]) -> str:
    user, host, port = parts
    name = f"[{host}]" if ":" in host and port is not None else host
    return f"{user + '@' if user else ''}{name}{'' if port is None else f':{port}'}"


def ssh_config_setting(value: object) -> Optional[str]:
    """The inventory's ``ssh_config:``: a file path, None for ``false`` (read none),
    ``""`` for ``true`` (ssh's own files). ValueError for anything else."""
    if value is False:
        return None
    if value is True:
        return ""
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise ValueError(f"ssh_config must be a file path or false, not {_kind(value)}")


def default_remote_dir(user: str) -> str:
    """The remote_dir of ``user`` when the inventory sets none: ``/tmp/corunner-<user>``.

    Characters a path should not carry become ``_``.
    """
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", user) or "_"
    return DEFAULT_REMOTE_DIR.format(user=safe)


def clean_remote_dir(value: object) -> str:
    """A remote_dir (inventory setting or ``run --remote-dir``), normalised.

    Raises ValueError saying what is wrong: not an absolute path, or ``/``.
    """
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError(f"must be an absolute path on the nodes, not {_kind(value)}")
    clean = posixpath.normpath(value)
    if clean in ("/", "//"):
        raise ValueError("must not be '/': corunner writes and cleans in it")
    return clean


def _with_group(host: Host, group: str) -> Host:
    if group in host.groups:
        return host
    return replace(host, groups=host.groups + (group,))


def _dotted(path: KeyPath) -> str:
    """``("groups", "web", "hosts", 2)`` -> ``groups.web.hosts[2]``."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _kind(value: object) -> str:
    """A short description of a wrong value for messages: ``'abc'``, ``a list``."""
    if value is None:
        return "empty (null)"
    if isinstance(value, (str, int, float)):
        return repr(value)
    names: dict[type, str] = {dict: "a mapping", list: "a list"}
    return names.get(type(value), f"a {type(value).__name__}")
