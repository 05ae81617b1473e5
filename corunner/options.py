"""The command line's own rules: one table of short flags, only options that do
something, a suggestion for a mistyped option, and the re-run hint.

Invoke would give each task option the first free letter of its name, task by
task: ``-h`` for ``--hosts`` (so ``run -h`` was no help) and ``-i`` for
``--inventory`` in one task but ``--divide`` in another. Here every task made
with :func:`task` takes its short flags from :data:`FLAGS` and from nowhere
else, the same in every task and the same as ``corunner-run``/``corunner-cp``
where they overlap; ``-h``, ``-V`` and ``-l`` stay the program's.
:class:`CorunnerProgram` shows and accepts only corunner's own core options.
Pure but for the Invoke classes it extends: no I/O.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import os
import re
import shlex
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

from invoke import Collection, Context, Exit, Program, Task
from invoke import task as invoke_task
from invoke.exceptions import ParseError
from invoke.parser import Argument, ParserContext

from . import debuglog
from .errors import EXIT_USAGE


@dataclass(frozen=True)
class Flag:
    """One short flag: ``-short`` is ``--long`` in every task that has ``--long``."""

    short: str
    long: str
    meaning: str


#: The one table of short flags (README.md, "Options", prints it). A task option
#: not listed has a long name only.
FLAGS = (
    Flag("H", "hosts", "the hosts to work on: groups, host patterns, set operators (as pssh -H)"),
    Flag("x", "exclude", "hosts to leave out, in the same syntax (as clush -x)"),
    Flag("I", "inventory", "the inventory file"),
    Flag("p", "parallel", "hosts worked on at once"),
    Flag("F", "ssh-config", "the OpenSSH client config to read, or none (as ssh -F)"),
    Flag("j", "json", "one JSON document on stdout"),
    Flag("c", "cmd", "run: the command line to run"),
    Flag("a", "args", "run: the arguments of --script"),
    Flag("f", "files", "run: more files to upload beside it"),
    Flag("r", "remote-dir", "run: the directory on the nodes"),
    Flag("i", "interval", "run: seconds between heartbeats"),
    Flag("n", "no-heartbeat", "run: no heartbeats, wait on the SSH sessions"),
    Flag("t", "deadline", "run: seconds until still-running nodes time out"),
    Flag("s", "src", "cp, collect: what to copy"),
    Flag("d", "dest", "cp, collect: where to"),
    Flag("o", "output", "status: every host's output of the run"),
)
SHORT: Dict[str, str] = {f.long: f.short for f in FLAGS}

#: Core options of the ``corunner`` program, with their short flags: nothing
#: else of Invoke's (``--dry``, ``--pty``, ``--warn-only``, ... change how
#: Invoke runs local shell commands, which corunner never does).
#: ``--print-completion-script`` stays beside ``--complete``, which needs it.
CORE = {"help": "h", "version": "V", "list": "l", "complete": "", "print-completion-script": ""}

#: The options that select hosts; :func:`rerun_command` replaces them.
SELECTION_OPTIONS = ("hosts", "exclude")
#: ``--hosts`` for "the hosts of the last run that did not succeed".
NOT_SUCCEEDED = "@not-succeeded"


class TableTask(Task[Any]):
    """An Invoke task whose short flags come from :data:`FLAGS` only, and whose
    options are all options (none positional unless it says so).

    Under ``inv --dry`` (Invoke's core option, which only ever affected local
    shell commands) a task with a ``dry`` parameter runs as ``--dry``, and
    any other refuses to run: ``--dry`` never does anything.
    """

    def __init__(self, body: Callable[..., Any], **kwargs: Any) -> None:
        kwargs["auto_shortflags"] = False
        # Invoke makes every option without a default positional, and a
        # positional eats the next word: "cp -h" copied a file named -h.
        kwargs.setdefault("positional", [])
        super().__init__(body, **kwargs)

    def arg_opts(self, name: str, default: str, taken_names: Set[str]) -> Dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        short = SHORT.get(opts["names"][0])
        if short:
            opts["names"].append(short)
        return opts

    def get_arguments(self, ignore_unknown_help: Optional[bool] = None) -> List[Argument]:
        """The task's own options, and ``--debug`` for every task."""
        args = super().get_arguments(ignore_unknown_help)
        if "debug" not in inspect.signature(self.body).parameters:
            args.append(Argument(names=("debug",), kind=bool, default=False, help=DEBUG_HELP))
        return args

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.pop("debug", False) and "debug" not in inspect.signature(self.body).parameters:
            debuglog.enable()
        context = args[0] if args else None
        if isinstance(context, Context) and context.config.run.dry:
            if "dry" not in inspect.signature(self.body).parameters:
                raise Exit(
                    f"corunner: {self.name} has no --dry of its own, so it did nothing",
                    code=EXIT_USAGE,
                )
            kwargs["dry"] = True
        return super().__call__(*args, **kwargs)


DEBUG_HELP = (
    "show Paramiko's, Invoke's and corunner's log on stderr, and keep it in the run's "
    "record directory (debug.log)"
)


#: ``@task`` and ``@task(help=...)`` as Invoke's, made into :class:`TableTask`.
task: Callable[..., Any] = functools.partial(invoke_task, klass=TableTask)


def retable(collection: Collection) -> Collection:
    """The same collection with every task a :class:`TableTask` (tasks made elsewhere)."""
    out = Collection(collection.name)
    for name, old in collection.tasks.items():
        new = TableTask(
            old.body,
            name=old.name,
            aliases=old.aliases,
            positional=old.positional,
            optional=old.optional,
            default=old.is_default,
            help=old.help,
            pre=old.pre,
            post=old.post,
            autoprint=old.autoprint,
            iterable=old.iterable,
            incrementable=old.incrementable,
        )
        new.__doc__ = old.__doc__  # set on the task itself by some (lab's _fault)
        out.add_task(new, name=name)
    for sub in collection.collections.values():
        out.add_collection(retable(sub))
    return out


class CorunnerProgram(Program):
    """``corunner``: Invoke's Program with only corunner's core options, and
    the closest option or task suggested for one it does not know."""

    def core_args(self) -> List[Argument]:
        return [a for a in super().core_args() if a.name in CORE]

    def parse_core_args(self) -> None:
        super().parse_core_args()
        # Program reads the core options it no longer offers (write-pyc, dry,
        # ...): they stay at their defaults, never parsed, never shown.
        args = self.core[0].args
        for arg in super().core_args():
            if arg.name not in args:
                args[arg.name] = arg

    def parse_tasks(self) -> None:
        try:
            super().parse_tasks()
        except ParseError as exc:
            raise ParseError(self.suggest(str(exc), exc.context), exc.context) from None

    def parse_cleanup(self) -> None:
        try:
            super().parse_cleanup()
        except ParseError as exc:
            raise ParseError(self.suggest(str(exc), exc.context), exc.context) from None

    def suggest(self, message: str, context: Optional[ParserContext]) -> str:
        """Invoke's message plus the closest option or task, on one line."""
        return message + suggestion(message, context, self.collection, self.binary)


_UNKNOWN = re.compile(r"No idea what '(.+)' is!")


def suggestion(
    message: str, context: Optional[ParserContext], collection: Collection, binary: str
) -> str:
    """`` did you mean --cmd?`` for Invoke's ``No idea what '--cmnd' is!``, or ``""``.

    An option is matched against the options of the task being parsed (and
    the core ones), anything else against the task names.
    """
    found = _UNKNOWN.fullmatch(message.strip())
    if not found:
        return ""
    word = found.group(1).split("=", 1)[0]
    task_name = context.name if context is not None and context.name else None
    if word.startswith("-"):
        names = [f"--{name}" for name, short in CORE.items()]
        if context is not None:
            names += [flag for flag in (*context.flags, *context.inverse_flags) if flag[:2] == "--"]
    else:
        names = list(collection.task_names)
        names += [alias for aliases in collection.task_names.values() for alias in aliases]
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    if close:
        return f" did you mean {close[0]}?"
    if word.startswith("-") and task_name:
        return f" ({binary} {task_name} --help lists its options)"
    return f" ({binary} --list lists the tasks)"


def rerun_command(hosts: str, argv: Optional[Sequence[str]] = None) -> str:
    """The command line ``argv`` (default: ``sys.argv``) again, on ``hosts`` only.

    Every ``--hosts``/``-H``/``--exclude``/``-x`` in it is replaced by one
    ``--hosts HOSTS``: for a run, :data:`NOT_SUCCEEDED`; for an unrecorded copy,
    the folded hosts that failed. Shell-quoted, ready to paste. Arguments
    after ``--`` are left alone.
    """
    words = list(sys.argv if argv is None else argv)
    prog = _program_name(words[0]) if words else ["corunner"]
    selecting = {f"--{o}" for o in SELECTION_OPTIONS} | {f"-{SHORT[o]}" for o in SELECTION_OPTIONS}
    kept: List[str] = []
    rest = iter(words[1:])
    for word in rest:
        if word == "--":
            kept += [word, *rest]
            break
        if word in selecting:
            next(rest, None)  # its value
            continue
        if word.split("=", 1)[0] in selecting or (word[:2] in selecting and len(word) > 2):
            continue  # --hosts=X, -HX
        kept.append(word)
    at = kept.index("--") if "--" in kept else len(kept)
    return shlex.join([*prog, *kept[:at], "--hosts", hosts, *kept[at:]])


def rerun_hint(hosts: str, argv: Optional[Sequence[str]] = None) -> str:
    """``re-run just those hosts with: corunner run ... --hosts @not-succeeded``."""
    return f"re-run just those hosts with: {rerun_command(hosts, argv)}"


def _program_name(argv0: str) -> List[str]:
    name = os.path.basename(argv0)
    if name in ("__main__.py", "-m", "-c") or name.startswith("python"):
        return ["python3", "-m", "corunner"]
    return [name]
