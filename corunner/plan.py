"""What a task would do, for ``--dry``: the hosts, the SSH settings each would
use, the remote command or copy and the bytes it would upload.

Pure values and formatting: the task layer measures the upload (a local file
read) and prints; nothing here, nor in a dry run, opens a connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .hostrange import fold
from .inventory import Host

#: What a dry run's ``--json`` document is: corunner/schemas/plan.json.
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Step:
    """One thing the task would do on every host: a label and what, in words."""

    label: str
    text: str


@dataclass(frozen=True)
class Plan:
    """What ``task`` would do on ``hosts``; ``upload``: bytes sent to each host (None: none)."""

    task: str
    steps: Tuple[Step, ...]
    hosts: Tuple[Host, ...]
    upload: Optional[int] = None
    not_listed: Tuple[str, ...] = ()  # ids of hosts the inventory does not list

    def lines(self) -> List[str]:
        """The plan as people read it: the steps, then hosts folded by their SSH settings."""
        out = [f"dry run of {self.task}: nothing was done, no node was contacted"]
        width = max([len(s.label) for s in self.steps] + [len("upload")])
        for step in self.steps:
            out.append(f"  {step.label:<{width}}  {step.text}")
        if self.upload is not None:
            out.append(f"  {'upload':<{width}}  {self.upload:,} bytes to each host")
        out.append(f"hosts ({len(self.hosts)}): {fold(h.id for h in self.hosts)}")
        for ids, settings in _by_settings(self.hosts):
            out.append(f"  {fold(ids)}: {settings}")
        if self.not_listed:
            out.append(f"  not in the inventory (its defaults): {fold(self.not_listed)}")
        return out

    def document(self) -> Dict[str, Any]:
        """The plan as one JSON document (corunner/schemas/plan.json)."""
        return {
            "task": self.task,
            "schema_version": SCHEMA_VERSION,
            "dry": True,
            "steps": [{"label": s.label, "text": s.text} for s in self.steps],
            "upload_bytes": self.upload,
            "count": len(self.hosts),
            "folded": fold(h.id for h in self.hosts),
            "hosts": [
                {
                    "id": h.id,
                    "name": h.name,
                    "user": h.user,
                    "port": h.port,
                    "key": h.key,
                    "known_hosts": h.known_hosts,
                    "remote_dir": h.remote_dir,
                    "python": h.python,
                    "connect_timeout": h.connect_timeout,
                    "groups": list(h.groups),
                    "in_inventory": h.id not in self.not_listed,
                }
                for h in self.hosts
            ],
        }


def ssh_settings(host: Host) -> str:
    """``user root, port 22, key K, known_hosts F, ...``: what the connection would use."""
    key = host.key or "the SSH agent and ~/.ssh/id_*"
    return (
        f"user {host.user}, port {host.port}, key {key}, known_hosts {host.known_hosts}, "
        f"connect_timeout {host.connect_timeout:g}s, python {host.python}, "
        f"remote_dir {host.remote_dir}"
    )


def _by_settings(hosts: Sequence[Host]) -> List[Tuple[List[str], str]]:
    """Hosts that share every setting, folded together: a line per kind, not per host."""
    groups: Dict[str, List[str]] = {}
    for host in hosts:
        groups.setdefault(ssh_settings(host), []).append(host.id)
    return [(ids, settings) for settings, ids in groups.items()]
