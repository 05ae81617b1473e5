"""What a run is asked to do: the program and the run's settings. Pure values.

:meth:`Program.load` is the one place that looks at the user's script (that
it exists, whether it has a ``#!`` line); everything after works on values.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

from .errors import UsageError
from .inventory import Host

#: Hosts worked on at once unless --parallel says otherwise.
DEFAULT_PARALLEL = 64


@dataclass(frozen=True)
class Program:
    """What to run: a local script (uploaded) with arguments, or a command line.

    ``shebang``: the script starts with ``#!``, so it runs as ``./name`` (the
    line picks the interpreter) rather than under the inventory's python.
    """

    script: Optional[str] = None
    args: Tuple[str, ...] = ()
    cmd: Optional[str] = None
    shebang: bool = False

    def __post_init__(self) -> None:
        if (self.script is None) == (self.cmd is None):
            raise UsageError("give exactly one of --script FILE or --cmd COMMAND")

    @classmethod
    def load(
        cls, script: Optional[str] = None, args: Tuple[str, ...] = (), cmd: Optional[str] = None
    ) -> Program:
        """The program the user named; raises UsageError if the script is not a file."""
        if script is None or cmd is not None:
            return cls(script, args, cmd)
        if not os.path.isfile(script):
            raise UsageError(f"no such script: {script}")
        with open(script, "rb") as f:
            shebang = f.read(2) == b"#!"
        return cls(script, args, None, shebang)

    def config_for(self, host: Host) -> Dict[str, Any]:
        """The ``argv``/``shell`` part of the executor's config on ``host``."""
        if self.cmd is not None:
            return {"argv": None, "shell": self.cmd}
        name = os.path.basename(self.script or "")
        argv = ["./" + name] if self.shebang else [host.python, name]
        return {"argv": argv + list(self.args), "shell": None}

    def describe(self) -> str:
        if self.cmd is not None:
            return self.cmd
        return " ".join(shlex.quote(p) for p in (self.script or "", *self.args))


@dataclass(frozen=True)
class RunSpec:
    """Everything about a run but the hosts. Times in seconds."""

    program: Program
    files: Tuple[str, ...] = ()
    interval: float = 1.0
    dead_after: Optional[float] = None  # default: 5 intervals
    deadline: Optional[float] = None  # from the start of the run
    heartbeat: bool = True
    listen: Optional[Tuple[str, int]] = None
    parallel: int = DEFAULT_PARALLEL
    accept_new_host_keys: bool = False
    linger: float = 60.0
    #: ``--env NAME=VALUE``: added to (and winning over) each host's ``env:``.
    env: Tuple[Tuple[str, str], ...] = ()
    #: ``--stdin FILE``: a local file every node's program reads as its stdin.
    stdin: Optional[str] = None
    #: ``--sudo``/``--sudo-user``: the user every program runs as (wins over ``become:``).
    become: Optional[str] = None
    #: ``--heartbeat-via``: ``direct`` or ``tunnel`` for every host (wins over
    #: ``heartbeat:``); None or ``auto``: each host's own (Host.heartbeat_via).
    heartbeat_via: Optional[str] = None
    #: ``--relay``: send --files once and let the nodes pass them on (True),
    #: ``"auto"`` when that pays (corunner.relay.wanted), or not (False).
    relay: Union[bool, str] = False

    @property
    def silence_limit(self) -> float:
        return self.dead_after if self.dead_after is not None else 5 * self.interval
