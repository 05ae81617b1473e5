"""Read ``hosts.yaml`` into an Inventory: the only module here that opens the file.

YAML is composed (safe: no Python tags) and the node tree is turned into plain
values here, so every key path gets its line number for error messages, and a
key given twice in one mapping is an error instead of YAML's silent "last one
wins".
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Tuple

import yaml
from yaml.constructor import SafeConstructor

from . import sshconfig
from .errors import InventoryError, UsageError
from .inventory import Inventory, inventory_from_dict, ssh_config_setting

ENV_VAR = "CORUNNER_INVENTORY"
DEFAULT_PATH = "./hosts.yaml"
#: Chooses the OpenSSH client config as ``--ssh-config`` does (a file, or ``none``).
SSH_CONFIG_ENV = "CORUNNER_SSH_CONFIG"
#: The word that switches ssh_config off (``ssh -F none``).
NO_SSH_CONFIG = "none"

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


def load_inventory(
    path: Optional[str] = None,
    env: Mapping[str, str] = os.environ,
    ssh_config: Optional[str] = None,
) -> Inventory:
    """Load the inventory from ``path``, else ``$CORUNNER_INVENTORY``, else ``./hosts.yaml``.

    Relative ``key``/``known_hosts`` paths resolve against the file's
    directory. Hosts are resolved through the OpenSSH client config that
    :func:`ssh_config_paths` chooses (``ssh_config``: the ``--ssh-config``
    option). Raises InventoryError for a missing or unreadable file, YAML
    syntax errors and duplicate keys (with the line), a bad ssh_config line,
    and every validation error of :func:`corunner.inventory.inventory_from_dict`;
    UsageError for an ``--ssh-config`` file that does not exist.
    """
    if path:
        chosen, origin = path, ""
    elif env.get(ENV_VAR):
        chosen, origin = env[ENV_VAR], f" (from {ENV_VAR})"
    else:
        chosen, origin = DEFAULT_PATH, ""
    text = _read(chosen, origin)
    data, lines = parse_yaml(text, chosen)
    base_dir = os.path.dirname(os.path.abspath(chosen))
    paths = ssh_config_paths(ssh_config, env, data, lines, chosen, base_dir)
    config = sshconfig.load(paths) if paths else None
    return inventory_from_dict(
        data, source=chosen, base_dir=base_dir, lines=lines, ssh_config=config
    )


def ssh_config_paths(
    option: Optional[str],
    env: Mapping[str, str],
    data: Any,
    lines: Mapping[tuple, int],
    source: str,
    base_dir: str,
) -> Tuple[str, ...]:
    """The OpenSSH client config files to read, in order; () for none.

    The first that says wins: ``--ssh-config FILE|none``, then
    ``$CORUNNER_SSH_CONFIG``, then the inventory's ``defaults: ssh_config:``
    (a file relative to the inventory, or false), then ssh's own
    ``~/.ssh/config`` and ``/etc/ssh/ssh_config`` (either may be missing). A
    file named explicitly is read alone (as ``ssh -F``) and must exist.
    """
    for value, origin in ((option, "--ssh-config"), (env.get(SSH_CONFIG_ENV), SSH_CONFIG_ENV)):
        if value is None or not value.strip():
            continue
        if value.strip().lower() == NO_SSH_CONFIG:
            return ()
        path = os.path.expanduser(value.strip())
        if not os.path.isfile(path):
            raise UsageError(
                f"no ssh_config file at {value} (from {origin}); name a file, or {NO_SSH_CONFIG}"
            )
        return (path,)
    defaults = data.get("defaults") if isinstance(data, dict) else None
    if isinstance(defaults, dict) and "ssh_config" in defaults:
        line = lines.get(("defaults", "ssh_config"))
        where = f"line {line}" if line else "defaults.ssh_config"
        try:
            chosen = ssh_config_setting(defaults["ssh_config"])
        except ValueError as exc:
            raise InventoryError(str(exc), source, where) from None
        if chosen is None:
            return ()
        if chosen:
            path = os.path.join(base_dir, os.path.expanduser(chosen))
            if not os.path.isfile(path):
                raise InventoryError(f"ssh_config: no file at {path}", source, where)
            return (os.path.normpath(path),)
    return (sshconfig.USER_CONFIG, sshconfig.SYSTEM_CONFIG)


def parse_yaml(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML text into plain values and a map of key paths to 1-based lines.

    Pure. Raises InventoryError for syntax errors, duplicate keys, recursive
    aliases and tags other than YAML's standard scalar ones.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is None:
            return None, {}
        lines: dict[tuple, int] = {}
        return _Walker(source, lines).value(root, ()), lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}" if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem and problem.startswith("but "):
            problem = f"{exc.context}, {problem}"  # "expected a single document, but found..."
        elif exc.context and exc.problem and exc.context_mark and exc.context_mark is not mark:
            problem += f" ({exc.context} on line {exc.context_mark.line + 1})"
        raise InventoryError(f"YAML syntax error: {problem}", source, where) from exc
    except yaml.YAMLError as exc:
        raise InventoryError(f"YAML error: {exc}", source) from exc


class _Walker:
    """Builds plain values from YAML nodes, recording each key path's line."""

    def __init__(self, source: str, lines: dict[tuple, int]):
        self.source, self.lines = source, lines
        self.constructor = SafeConstructor()
        self.done: dict[int, Any] = {}  # aliases share one value, as in safe_load
        self.active: set[int] = set()

    def value(self, node: yaml.Node, path: tuple) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        if id(node) in self.done:
            return self.done[id(node)]
        if id(node) in self.active:
            raise self.error("recursive YAML alias", node)
        if isinstance(node, yaml.ScalarNode):
            result = self.scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            self.check_tag(node, _SEQ_TAG)
            self.active.add(id(node))
            result = [self.value(item, path + (i,)) for i, item in enumerate(node.value)]
        elif isinstance(node, yaml.MappingNode):
            self.check_tag(node, _MAP_TAG)
            self.active.add(id(node))
            result = self.mapping(node, path)
        else:  # composing makes no other kind of node
            raise self.unsupported(node)
        self.active.discard(id(node))
        self.done[id(node)] = result
        return result

    def mapping(self, node: yaml.MappingNode, path: tuple) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.key(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise self.error(
                    f"duplicate key {key!r} (first on line {first_line[key]});"
                    " YAML would silently keep only the last one",
                    key_node,
                )
            first_line[key] = line
        # `<<: *anchor` merge keys, as safe_load does them; own keys come last and win.
        self.constructor.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.key(key_node)
            # The key's line, not the value's: a block value starts on the next line.
            self.lines[path + (key,)] = key_node.start_mark.line + 1
            result[key] = self.value(value_node, path + (key,))
        return result

    def key(self, node: yaml.Node) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error("a mapping key must be a plain value, not a list or mapping", node)
        return self.scalar(node)

    def scalar(self, node: yaml.ScalarNode) -> Any:
        """A string, number, bool, null or date, exactly as ``safe_load`` builds it."""
        if node.tag not in SafeConstructor.yaml_constructors:
            raise self.unsupported(node)
        return self.constructor.construct_object(node, deep=True)

    def check_tag(self, node: yaml.Node, expected: str) -> None:
        if node.tag != expected:
            raise self.unsupported(node)

    def unsupported(self, node: yaml.Node) -> InventoryError:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        return self.error(f"YAML tag {tag} is not supported in an inventory", node)

    def error(self, msg: str, node: yaml.Node) -> InventoryError:
        return InventoryError(msg, self.source, f"line {node.start_mark.line + 1}")


def _read(path: str, origin: str) -> str:
    """The file's text; InventoryError naming the file and the fix when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise InventoryError(
            f"no inventory at {path}{origin}: pass --inventory FILE or set {ENV_VAR}"
        ) from None
    except IsADirectoryError:
        raise InventoryError(f"{path}{origin} is a directory, not an inventory file") from None
    except OSError as exc:
        raise InventoryError(f"cannot read inventory {path}{origin}: {exc.strerror}") from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InventoryError(f"{path} is not UTF-8 text (byte {exc.start})") from exc
