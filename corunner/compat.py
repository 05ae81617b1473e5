"""``corunner-run`` and ``corunner-cp``: the original tool's commands, kept working.

Thin argparse front-ends: each translates its options into the argv of the
``corunner`` tasks and runs them through :data:`corunner.cli.program`, so exit
codes, output and errors are exactly those of ``corunner run``/``corunner cp``.

* ``corunner-run [-n] -f FILE [-r REMOTE_DIR] [-i INTERVAL] COMMAND...``:
  push each FILE into REMOTE_DIR/ (``corunner cp``), so COMMAND may name it
  there as it did in the original tool, then ``corunner run --cmd COMMAND
  --files FILE --remote-dir REMOTE_DIR`` (the run's own directory gets a copy
  too and is COMMAND's working directory). ``-n`` is ``--no-heartbeat``.
* ``corunner-cp -s SRC -d DEST [--divide] [--pull]``: ``corunner cp``.

``--explain`` prints the ``corunner`` commands instead of running them. Short
flags mean what they mean in ``corunner`` (corunner.options.FLAGS).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Callable, List, Optional, Sequence

from .errors import EXIT_USAGE


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-H", "--hosts", metavar="SEL", help="groups and host patterns (default: all)"
    )
    parser.add_argument("-x", "--exclude", metavar="SEL", help="hosts to leave out")
    parser.add_argument(
        "-I", "--inventory", metavar="FILE", help="inventory file (default: hosts.yaml)"
    )
    parser.add_argument("-p", "--parallel", metavar="N", help="hosts worked on at once")
    parser.add_argument(
        "-F", "--ssh-config", metavar="FILE", help="OpenSSH client config to read, or none"
    )
    parser.add_argument(
        "--accept-new-host-keys",
        action="store_true",
        help="record keys of hosts not yet in known_hosts",
    )
    parser.add_argument(
        "--explain", action="store_true", help="print the corunner commands instead of running them"
    )


def _shared(args: argparse.Namespace) -> List[str]:
    argv: List[str] = []
    for option in ("hosts", "exclude", "inventory", "parallel", "ssh_config"):
        value = getattr(args, option)
        if value is not None:
            argv.append(f"--{option.replace('_', '-')}={value}")
    if args.accept_new_host_keys:
        argv.append("--accept-new-host-keys")
    return argv


def run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corunner-run",
        description=(
            "Upload FILE(s) and run COMMAND on every node at once, watching them by "
            "heartbeat (same as: corunner cp, then corunner run --cmd)."
        ),
    )
    parser.add_argument(
        "-f",
        "--file",
        dest="files",
        action="append",
        default=[],
        metavar="FILE",
        help="a file or directory to upload (repeatable); it lands in REMOTE_DIR/ and in the run directory",
    )
    parser.add_argument(
        "-r",
        "--remote-dir",
        metavar="REMOTE_DIR",
        help="directory on the nodes for the files and runs (default: the inventory's remote_dir)",
    )
    parser.add_argument("-i", "--interval", metavar="SECONDS", help="seconds between heartbeats")
    parser.add_argument(
        "-n", "--no-heartbeat", action="store_true", help="no heartbeats: wait on the SSH sessions"
    )
    parser.add_argument("-t", "--deadline", metavar="SECONDS", help="time out after SECONDS")
    _common(parser)
    parser.add_argument(
        "command", nargs=argparse.REMAINDER, metavar="COMMAND", help="the command line to run"
    )
    return parser


def run_argvs(args: argparse.Namespace) -> List[List[str]]:
    """The ``corunner`` task argvs that ``corunner-run`` stands for, in order."""
    if not args.command:
        raise ValueError("COMMAND is missing: say what to run on the nodes")
    for name in args.files:
        if "," in name:
            raise ValueError(f"-f {name}: file names with a comma cannot be uploaded")
    shared = _shared(args)
    argvs = []
    if args.remote_dir and args.files:
        destination = args.remote_dir.rstrip("/") + "/"
        for name in args.files:
            argvs.append(["cp", f"--src={name}", f"--dest={destination}", *shared])
    run = ["run", f"--cmd={shlex.join(args.command)}", *shared]
    if args.files:
        run.append(f"--files={','.join(args.files)}")
    if args.remote_dir:
        run.append(f"--remote-dir={args.remote_dir}")
    if args.interval is not None:
        run.append(f"--interval={args.interval}")
    if args.deadline is not None:
        run.append(f"--deadline={args.deadline}")
    if args.no_heartbeat:
        run.append("--no-heartbeat")
    argvs.append(run)
    return argvs


def cp_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corunner-cp",
        description="Copy a file or tree to every node at once, or (--pull) from every node "
        "(same as: corunner cp).",
    )
    parser.add_argument("-s", "--src", required=True, help="what to copy")
    parser.add_argument(
        "-d", "--dest", required=True, help="where to (with --pull: a local directory)"
    )
    parser.add_argument("--pull", action="store_true", help="copy from the nodes to here")
    parser.add_argument(
        "--divide", action="store_true", help="with --pull: one directory per host, DEST/<host>/"
    )
    _common(parser)
    return parser


def cp_argvs(args: argparse.Namespace) -> List[List[str]]:
    argv = ["cp", f"--src={args.src}", f"--dest={args.dest}", *_shared(args)]
    if args.pull:
        argv.append("--pull")
    if args.divide:
        argv.append("--divide")
    return [argv]


def _execute(argvs: Sequence[List[str]], explain: bool) -> None:
    """Run each task argv in turn; stop at the first that fails, with its exit code."""
    from .cli import program

    if explain:
        for argv in argvs:
            print(shlex.join(["corunner", *argv]))
        return
    for argv in argvs:
        try:
            program.run(["corunner", *argv])
        except SystemExit as exc:
            if exc.code not in (None, 0):
                raise


def _main(
    parser: argparse.ArgumentParser,
    build: Callable[[argparse.Namespace], List[List[str]]],
    argv: Optional[Sequence[str]],
) -> None:
    args = parser.parse_args(argv)
    try:
        argvs = build(args)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    _execute(argvs, args.explain)


def run_main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script ``corunner-run``."""
    _main(run_parser(), run_argvs, argv)


def cp_main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script ``corunner-cp``."""
    _main(cp_parser(), cp_argvs, argv)
