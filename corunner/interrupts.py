"""Ending early and cleanly: SIGTERM, SIGHUP and a closed stdout.

``corunner run ... | head -1`` closes corunner's stdout; a CI runner or
systemd sends SIGTERM; a dropped SSH session sends SIGHUP. Each becomes one
:class:`Interrupted` exception in the main thread. It is a
``KeyboardInterrupt``, so the run loop ends as it does after Ctrl-C (starts
in flight finish, the record is saved final with ``interrupted: true``, the
programs on the nodes keep running) and the task layer exits with
128 + the signal number, as a shell reports a process killed by it: 141 for
a closed pipe, 143 for SIGTERM, 129 for SIGHUP. Never a traceback.

SIGPIPE itself stays ignored (Python's default): a broken SSH socket must
not end the run, only a failed write to our own output does
(:func:`write_line`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
from types import FrameType
from typing import IO, Any, Dict, Iterator, Optional

#: What each ending is called in the message that says so.
WHY: Dict[int, str] = {
    signal.SIGPIPE: "its output was closed",
    signal.SIGTERM: "terminated (SIGTERM)",
    signal.SIGHUP: "hung up (SIGHUP)",
}


class Interrupted(KeyboardInterrupt):
    """corunner was told to end early by a signal, or its output went away."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def why(self) -> str:
        return WHY.get(self.signum, f"signal {self.signum}")

    @property
    def output_lost(self) -> bool:
        """True when stdout (or stderr) cannot be written any more: say nothing there."""
        return self.signum in (signal.SIGPIPE, signal.SIGHUP)


def silence(stream: IO[str]) -> None:
    """Point the stream's descriptor at /dev/null, so that later writes and the
    interpreter's final flush do not fail again (``Exception ignored ...``)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.StringIO, a closed file: nothing to redirect
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)


def write_line(stream: IO[str], text: str) -> None:
    """Print one line and flush it; a closed pipe or a hung-up terminal becomes
    :class:`Interrupted` (SIGPIPE or SIGHUP), never a ``BrokenPipeError``."""
    try:
        stream.write(text + "\n")
        stream.flush()
    except BrokenPipeError:
        silence(stream)
        raise Interrupted(signal.SIGPIPE) from None
    except OSError as exc:
        if exc.errno != errno.EIO:  # EIO: the terminal went away
            raise
        silence(stream)
        raise Interrupted(signal.SIGHUP) from None


def tell(stream: IO[str], text: str) -> None:
    """Best effort: a last word on a stream that may be gone already."""
    with contextlib.suppress(OSError, ValueError, Interrupted):
        write_line(stream, text)


@contextlib.contextmanager
def signals_end_cleanly() -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread.

    Only the first one does: the cleanup it starts (saving the run record) is
    never cut short by a second. Outside the main thread, a no-op (Python
    installs handlers only there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: Optional[FrameType]) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Interrupted(signum)

    previous: Dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)
