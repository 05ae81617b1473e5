"""Progress while tasks work: a live view at a terminal, plain lines elsewhere.

At a terminal (the stream is a TTY and ``TERM`` is not ``dumb``) ``run`` shows
a ``rich`` live view: counts per state, a bar of finished nodes, the elapsed
time against the deadline and the hosts that changed state last, folded. It
redraws at most 4 times a second from rich's own thread; the controller's
``on_change`` only updates counters under a lock, so thousands of changes cost
little. When the run ends the view vanishes and the caller prints the summary.

Anywhere else (CI logs, pipes, files) nothing redraws and nothing escapes: the
changes a reader must see (a node dead, back from dead, failed, unreachable,
timed out) get one timestamped line each as they happen; the routine ones
(pending -> alive -> succeeded) are folded into a line of counts at most every
:data:`PROGRESS_EVERY` seconds (:class:`PlainProgress`), and one count line
ends the run. ``verbose`` gives every change its line. Counting is
incremental: the cost of a change never grows with the fleet. ``cp`` and
``collect`` get a plain rich progress bar at a terminal and nothing extra
elsewhere.

Every write goes through :func:`corunner.interrupts.write_line`: a closed
stdout ends corunner cleanly instead of raising ``BrokenPipeError``.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from types import TracebackType
from typing import (
    IO,
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    List,
    Optional,
    Sequence,
    Type,
    TypeVar,
    Union,
)

if TYPE_CHECKING:
    from rich.console import RenderableType

# rich is imported where a terminal needs it: ~40 ms of start-up that a run in
# CI or in a pipe never pays.

from . import render
from .interrupts import Interrupted, write_line
from .liveness import LIVE, Change, Fleet, State

#: Redraws per second of the live view: enough to see time pass, cheap on a busy controller.
REFRESH_PER_SECOND = 4
#: Hosts remembered for "changed last" (the latest change of each).
RECENT_HOSTS = 256
#: States whose arrival gets a line of its own (and one that stays on the screen at a
#: terminal): what a reader must see, not routine progress. Leaving ``dead`` does too.
NOTABLE = frozenset({State.DEAD, State.FAILED, State.UNREACHABLE, State.TIMEOUT, State.STOPPED})
#: Seconds between plain lines of counts while routine changes happen.
PROGRESS_EVERY = 5.0
#: Seconds after which a plain line of counts is printed even if nothing changed,
#: so a log shows the run is still watched.
PROGRESS_IDLE = 60.0

STYLE = {
    State.PENDING: "dim",
    State.ALIVE: "cyan",
    State.SUCCEEDED: "green",
    State.FAILED: "red",
    State.TIMEOUT: "yellow",
    State.STOPPED: "yellow",
    State.DEAD: "bold red",
    State.UNREACHABLE: "magenta",
}


def is_terminal(stream: IO[str]) -> bool:
    """True when ``stream`` is a terminal that can redraw (not ``TERM=dumb``)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM", "") != "dumb"


def line_width(stream: IO[str]) -> int:
    """Characters a line may take on ``stream``: the terminal's width, else
    :data:`render.PLAIN_WIDTH` (a log has no width, but a reader does)."""
    if not is_terminal(stream):
        return render.PLAIN_WIDTH
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return render.PLAIN_WIDTH


def is_notable(change: Change) -> bool:
    """Whether a change gets a line of its own: news, not routine progress."""
    return change.new in NOTABLE or change.old is State.DEAD


class PlainProgress:
    """What plain output says about a run, as lines; pure, the time passed in.

    ``change`` counts one change and returns its line if it is notable (or
    ``verbose``); routine changes only mark the counts as changed, and
    ``tick`` (called often) returns one line of counts when they changed and
    ``every`` seconds have passed since the last, or ``idle`` seconds in any
    case. Times are wall-clock seconds (``time.time()``).
    """

    def __init__(
        self,
        total: int,
        began: float,
        deadline: Optional[float] = None,
        verbose: bool = False,
        every: float = PROGRESS_EVERY,
        idle: float = PROGRESS_IDLE,
    ):
        self.counts: Dict[State, int] = {State.PENDING: total}
        self.began = began
        self.deadline = deadline
        self.verbose = verbose
        self.every = every
        self.idle = idle
        self.last_line = began  # when the last line of counts was given
        self.changed = False  # routine changes since then

    def change(self, change: Change, now: float) -> List[str]:
        self.counts[change.old] = self.counts.get(change.old, 0) - 1
        self.counts[change.new] = self.counts.get(change.new, 0) + 1
        if self.verbose or is_notable(change):
            return [render.change_line(now, change)]
        self.changed = True
        return self.tick(now)

    def tick(self, now: float) -> List[str]:
        since = now - self.last_line
        if not (self.changed and since >= self.every) and since < self.idle:
            return []
        self.changed = False
        self.last_line = now
        return [self._line(now, "progress")]

    def final(self, now: float, word: str = "ended") -> List[str]:
        """The last line of counts, once the run is over (or ``interrupted``)."""
        return [self._line(now, word)]

    def _line(self, now: float, word: str) -> str:
        return render.progress_line(now, self.counts, now - self.began, self.deadline, word)


V = TypeVar("V", bound="_View")


class _View:
    """A context manager with ``on_change``; the base prints nothing.

    ``widget``, when a view has one (a rich Live or Progress), is shown while
    the view is open.
    """

    widget: Any = None

    def __enter__(self: V) -> V:
        if self.widget is not None:
            self.widget.start()
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self.widget is not None:
            try:
                self.widget.stop()
            except OSError:
                # A terminal that hung up (SIGHUP, then EIO): the exception that
                # ends the view is the one to report, not this one.
                if exc is None:
                    raise

    def on_change(self, change: Change, fleet: Fleet) -> None:
        return None

    def on_tick(self) -> None:
        """Called by the run loop at least once a second, in its (the main) thread."""
        return None


class PlainRunView(_View):
    """Off a terminal: notable changes one line each, routine ones folded (PlainProgress).

    Called only from the run loop's thread, so a closed stdout surfaces there
    as :class:`~corunner.interrupts.Interrupted` and ends the run cleanly.
    """

    def __init__(
        self,
        stream: IO[str],
        total: int,
        deadline: Optional[float] = None,
        verbose: bool = False,
        wall: Callable[[], float] = time.time,
    ):
        self.stream = stream
        self.wall = wall
        self.progress = PlainProgress(total, wall(), deadline, verbose)

    def __enter__(self) -> PlainRunView:
        self.progress.began = self.progress.last_line = self.wall()
        return self

    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if isinstance(exc, Interrupted) and exc.output_lost:
            return
        word = "ended" if exc is None else "interrupted"
        self._write(self.progress.final(self.wall(), word))

    def on_change(self, change: Change, fleet: Fleet) -> None:
        self._write(self.progress.change(change, self.wall()))

    def on_tick(self) -> None:
        self._write(self.progress.tick(self.wall()))

    def _write(self, lines: List[str]) -> None:
        for line in lines:
            write_line(self.stream, line)


class LiveRunView(_View):
    """At a terminal: counts, a progress bar, elapsed time and the latest changes."""

    def __init__(
        self,
        stream: IO[str],
        hosts: Sequence[str],
        deadline: Optional[float] = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ):
        self.total = len(hosts)
        self.deadline = deadline
        self.clock = clock
        self.wall = wall
        self.began = clock()
        self.counts: Dict[State, int] = {State.PENDING: self.total}
        self.recent: collections.OrderedDict[str, Change] = collections.OrderedDict()
        self.lock = threading.Lock()
        from rich.console import Console
        from rich.live import Live

        self.console = Console(file=stream, force_terminal=True)
        self.widget = Live(
            console=self.console,
            get_renderable=self.renderable,
            refresh_per_second=REFRESH_PER_SECOND,
            transient=True,
        )

    def __enter__(self) -> LiveRunView:
        self.began = self.clock()
        super().__enter__()
        return self

    def on_change(self, change: Change, fleet: Fleet) -> None:
        """Called by the controller's main thread: update counters, never draw here."""
        with self.lock:
            self.counts[change.old] = self.counts.get(change.old, 0) - 1
            self.counts[change.new] = self.counts.get(change.new, 0) + 1
            self.recent.pop(change.host, None)
            self.recent[change.host] = change
            if len(self.recent) > RECENT_HOSTS:
                self.recent.popitem(last=False)
        if is_notable(change):
            # Printed above the live region, so it stays in the scrollback.
            from rich.text import Text

            line = render.change_line(self.wall(), change)
            self.console.print(Text(line, style=STYLE[change.new]), soft_wrap=True)

    def renderable(self) -> RenderableType:
        """What rich draws, at most REFRESH_PER_SECOND times a second (its own thread)."""
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        width = self.console.width - len("  last unreachable (99999): ")
        with self.lock:
            counts = dict(self.counts)
            recent = render.recent(self.recent.values(), width=max(width, 20))
        now = self.clock()
        finished = self.total - sum(counts.get(s, 0) for s in LIVE)
        counts_line = Text()
        for state in render.STATE_ORDER:
            if counts.get(state):
                if counts_line:
                    counts_line.append("  ")
                counts_line.append(f"{state.value} {counts[state]}", style=STYLE[state])
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(
                total=max(self.total, 1),
                completed=finished,
                width=40,
                complete_style="green",
                finished_style="green",
            ),
            Text(f"{finished}/{self.total} finished"),
            Text(render.elapsed(now - self.began, self.deadline), style="dim"),
        )
        lines: List[RenderableType] = [counts_line, bar]
        for state, folded, count in recent:
            text = Text()
            text.append("  last ", style="dim")
            text.append(f"{state.value} ({count})", style=STYLE[state])
            text.append(f": {folded}")
            lines.append(text)
        return Group(*lines)


def run_view(
    stream: IO[str], hosts: Sequence[str], deadline: Optional[float] = None, verbose: bool = False
) -> Union[LiveRunView, PlainRunView]:
    """The progress of a run on ``stream``: live at a terminal, plain lines elsewhere
    (every change on a line of its own with ``verbose``)."""
    if is_terminal(stream):
        return LiveRunView(stream, hosts, deadline)
    return PlainRunView(stream, len(hosts), deadline, verbose)


class TransferView(_View):
    """A progress bar of hosts done, for cp and collect at a terminal; silent elsewhere."""

    def __init__(self, stream: IO[str], total: int, label: str):
        self.task: Any = None
        if is_terminal(stream) and total > 1:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.widget = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(file=stream, force_terminal=True),
                refresh_per_second=REFRESH_PER_SECOND,
                transient=True,
            )
            self.task = self.widget.add_task(label, total=total)

    def done(self, outcome: Any) -> None:
        """One host ended (called from a worker thread; rich's Progress locks itself)."""
        if self.widget is not None:
            self.widget.advance(self.task)
