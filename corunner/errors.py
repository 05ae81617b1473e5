"""The one exception tree of corunner, and the exit codes it maps to.

Every error a user can meet derives from :class:`CorunnerError` and renders as
one line that names the file or host and the cause. Exit codes are decided
here and only here: an error carries its ``exit_code``, and the outcome of
many hosts maps to one code by :func:`exit_code_for`, for every task.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

#: Exit codes, documented in README.md. 1 is left to Invoke's own parser errors.
EXIT_OK = 0
EXIT_USAGE = 2  # bad options, inventory or run record: nothing was attempted
EXIT_FAILED = 3  # every node was reached, some programs or transfers failed
EXIT_LOST = 4  # some nodes were dead, unreachable or timed out
EXIT_INTERRUPTED = 130  # Ctrl-C

#: Host states (liveness states, and ``unreachable``/``stalled`` for copies)
#: that mean no result came back from the host: it was lost.
LOST_STATES = frozenset({"dead", "unreachable", "timeout", "pending", "alive", "stalled"})
#: Host states that mean the host was reached but its program or copy failed,
#: or (``stopped``) was ended by ``stop`` before it could finish.
FAILED_STATES = frozenset({"failed", "stopped"})


def exit_code_for(states: Iterable[str]) -> int:
    """The one exit code for the outcome of many hosts, given each host's state.

    Lost (4) wins over failed (3), which wins over success (0): a job that
    lost a node cannot claim that every program ran.
    """
    seen = {str(s) for s in states}
    if seen & LOST_STATES:
        return EXIT_LOST
    if seen & FAILED_STATES:
        return EXIT_FAILED
    return EXIT_OK


class CorunnerError(Exception):
    """Root of every error corunner raises on purpose."""

    exit_code = EXIT_USAGE


class UsageError(CorunnerError):
    """Options that cannot work together, or a missing file the user named."""


class InventoryError(CorunnerError):
    """A problem in the inventory, located by file and line or key path."""

    def __init__(self, msg: str, file: Optional[str] = None, where: Optional[str] = None):
        self.msg, self.file, self.where = msg, file, where
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.where
        if where and where.startswith("line "):
            where = where[len("line ") :]  # file:LINE: message, as compilers print it
        place = ":".join(str(p) for p in (self.file, where) if p)
        return f"{place}: {self.msg}" if place else self.msg


class HostRangeError(InventoryError):
    """A host pattern whose bracket ranges do not parse."""

    def __init__(self, pattern: str, reason: str):
        self.pattern = pattern
        super().__init__(f"bad host pattern {pattern!r}: {reason}")


class RecordError(CorunnerError):
    """A run record that is missing or unreadable."""


class RemoteError(CorunnerError):
    """Something went wrong with one host; the message names it."""

    exit_code = EXIT_LOST

    def __init__(self, host: str, cause: str):
        self.host, self.cause = host, cause
        super().__init__(f"{host}: {cause}")


class ConnectError(RemoteError):
    """The host could not be reached (refused, timed out, name unknown)."""


class JumpError(ConnectError):
    """A jump host in front of the host could not be reached or refused us.

    ``jump`` is that jump host's id; the cause names it, so every host behind
    it says the same one line.
    """

    def __init__(self, host: str, cause: str, jump: str):
        super().__init__(host, cause)
        self.jump = jump


class AuthError(RemoteError):
    """The host refused our key."""


class HostKeyError(RemoteError):
    """The host key is unknown or differs from known_hosts."""


class TransferError(RemoteError):
    """A copy to or from the host failed after connecting."""

    exit_code = EXIT_FAILED


class StalledError(RemoteError):
    """A connected host stopped answering mid-exchange: hung, or drowning.

    Not ``unreachable``: the host was reached, and what it already holds
    (results, a copy's first files) stays there to collect later.
    """


class StartError(RemoteError):
    """The executor could not be uploaded or started on the host."""


class InternalError(RemoteError):
    """An unexpected exception while working on one host: a bug to report.

    The host still ends with this one-line error instead of being lost, so a
    run never waits forever for a node whose dispatch crashed.
    """

    @classmethod
    def from_exception(cls, host: str, exc: BaseException) -> InternalError:
        frame = exc.__traceback__
        while frame is not None and frame.tb_next is not None:
            frame = frame.tb_next
        where = ""
        if frame is not None:
            code = frame.tb_frame.f_code
            where = f" at {os.path.basename(code.co_filename)}:{frame.tb_lineno}"
        text = str(exc).splitlines()[0] if str(exc) else ""
        return cls(
            host,
            f"internal error ({type(exc).__name__}{where}: {text}); please report it "
            f"to the corunner developers",
        )


class LabError(CorunnerError):
    """The local test cluster (corunner.testing.lab) cannot start or be used here; says how to fix it."""
