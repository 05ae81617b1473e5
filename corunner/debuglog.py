"""``--debug``: Paramiko's, Invoke's and corunner's own log, for those who ask.

Without it nothing of theirs reaches the screen (remote.py gives Paramiko a
null handler: each failure is said once, as corunner's one line). With it,
every record goes to stderr as it happens and, once a task knows its run
record (a new run, or the run that status, stop or collect act on), into
``debug.log`` there as well, earlier lines included, so the log of a run
stays with the run.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import List, Optional

#: The loggers shown: the SSH library, the task runner, and corunner itself.
LOGGERS = ("paramiko", "invoke", "fabric", "corunner")
#: The file in a run's record directory.
FILE_NAME = "debug.log"
FORMAT = "%(asctime)s %(threadName)s %(name)s %(levelname)s: %(message)s"


class _Kept(logging.Handler):
    """Keeps what was logged before the run record was known, then writes on."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(FORMAT))
        self.lines: List[str] = []
        self.file: Optional[logging.FileHandler] = None
        self.guard = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self.guard:
            if self.file is not None:
                self.file.emit(record)
            else:
                self.lines.append(self.format(record))

    def keep_in(self, directory: str) -> str:
        path = os.path.join(directory, FILE_NAME)
        with self.guard:
            if self.file is None:
                # Created 0600: a log may name users, paths and host keys.
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
                self.file = logging.FileHandler(path, encoding="utf-8")
                self.file.setFormatter(logging.Formatter(FORMAT))
                with open(path, "a", encoding="utf-8") as f:
                    f.writelines(line + "\n" for line in self.lines)
                self.lines = []
        return path


_kept: Optional[_Kept] = None


def enable() -> None:
    """Show every record of :data:`LOGGERS` on stderr, and keep it for the run record."""
    global _kept
    if _kept is not None:
        return
    _kept = _Kept()
    screen = logging.StreamHandler(sys.stderr)
    screen.setFormatter(logging.Formatter(FORMAT))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG)
        logger.addHandler(screen)
        logger.addHandler(_kept)


def keep_in(directory: str) -> Optional[str]:
    """Write the log (so far and from now on) to ``directory``/debug.log, if enabled."""
    return _kept.keep_in(directory) if _kept is not None else None


def enabled() -> bool:
    return _kept is not None
