"""The node bootstrap: what the controller sends to start or ask the executor.

Two shell scripts (start, ask) run under POSIX ``sh`` whatever the login
shell, a few lines of Python that unpack the executor from stdin, the
executor's bytecode, and the upload itself (:class:`Payload`). The upload's
frame format is defined once, in the executor: this module builds it with
``frame``, ``frame_header`` and the markers, the node reads it with ``unpack``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import marshal
import os
import shlex
import shutil
import sys
import tarfile
import tempfile
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, Tuple

from . import executor as executor_module
from . import remote
from .errors import UsageError
from .executor import (
    CONFIG_PATH,
    END_MARKER,
    FRAME_FILE,
    FRAME_HEADER,
    FRAME_STAGED,
    TAR_MARKER,
    frame,
    frame_header,
)
from .inventory import Host
from .spec import Program

EXECUTOR_SOURCE = executor_module.__file__

#: How a node loads the executor for probe and stop ($1 of the Python command
#: line, so that its processes read ``.../executor.py VERB ...``): imported,
#: not run as a script, so that Python loads the bytecode shipped beside it
#: (see executor_bytecode) instead of compiling ~1,500 lines on every node.
BOOT = (
    "import sys, os.path; sys.path.insert(0, os.path.dirname(sys.argv.pop(1)));"
    " from executor import main; sys.exit(main())"
)

#: The only code on the Python command line (``python -I -S -c``): read the
#: boot code from stdin (8 digits of length, then the code) and run it. The
#: rest of stdin is the boot code's. The boot code is sent on stdin, not in the
#: sh script, because sh reads its script one byte per system call.
LOADER = r"""
import os
def take(n):
    b = b""
    while len(b) < n:
        k = os.read(0, n - len(b))
        if not k:
            raise SystemExit("CORUNNER-ERROR the upload ended early")
        b += k
    return b
exec(take(int(take(8))))
"""


#: What the boot codes share: argv is the remote_dir, the executor's path in
#: the run directory, then the executor's own arguments (so a node's process
#: list reads ``.../executor.py start ...``); and the one check of remote_dir
#: and everything under it (executor.private_dirs).
def _boot_head(owner: bool = False) -> str:
    """The first lines of a boot code (``owner``: argv first holds the uid to check for)."""
    return (
        "from __future__ import annotations\n"  # the embedded functions' annotations stay text
        "import sys\n"
        + ("owner = int(sys.argv.pop(1))\n" if owner else "")
        + "top = sys.argv.pop(1)\n"
        "x = sys.argv.pop(1)\n"
        "d = os.path.dirname(os.path.dirname(x))\n"
    )


def embedded(function: Any) -> str:
    """The source of an executor function, to run on a node before the executor is there.

    Without its docstring: every byte of boot code is sent on every command.
    """
    source = inspect.getsource(function)
    if function.__doc__:
        start = source.index('"""')
        source = source[:start] + "pass" + source[source.index('"""', start + 3) + 3 :]
    return source


#: Where ``run --stdin FILE`` lands in the run directory (the program's stdin).
STDIN_PATH = ".corunner/stdin"
#: Where ``run --files --relay`` leaves the tar of --files in the run directory
#: for the start to extract (the executor then removes it).
STAGED_DIR = ".corunner"
STAGED_NAME = "files.tar"
STAGED_PATH = f"{STAGED_DIR}/{STAGED_NAME}"

#: The two answers of the start boot code, on a line of their own: the node has
#: this executor in its cache (send the rest of the upload), or needs it first.
HAVE_MARKER, NEED_MARKER = "CORUNNER-HAVE", "CORUNNER-NEED"

#: Where a node keeps executors, under remote_dir: ``.executor/<key>/``, the
#: key a hash of exactly what would be sent (source and bytecode).
CACHE_DIR = ".executor"

#: Start (after LOADER). Make remote_dir, the run directory and the executor
#: cache private (or refuse them, one line); say whether the cache holds this
#: executor (HAVE_MARKER) or not (NEED_MARKER). If not, the controller sends the
#: executor and its bytecode first (see executor.unpack for the format): they
#: go into the cache, each written to a temporary name and renamed, so nodes
#: sharing remote_dir never see half a file. Then both are linked into the run
#: directory (copied where links fail), imported, and the executor unpacks
#: the rest. @FILES@: (name in the cache, name in the run directory, size).
_START = r"""
os.umask(0o077)
c = top + "/@CACHE@/@KEY@"
why = private_dirs(top, d + "/.corunner/__pycache__", True)
why = why or private_dirs(top, c + "/__pycache__", True)
if why:
    sys.exit("CORUNNER-ERROR " + why)
files = @FILES@
def cached(name, size):
    try:
        st = os.lstat(c + "/" + name)
    except OSError:
        return False
    return st.st_mode & 0o170000 == 0o100000 and st.st_size == size
have = all(cached(n, size) for n, _, size in files)
os.write(1, b"@HAVE@\n" if have else b"@NEED@\n")
try:
    os.chdir(d)
    if not have:
        for name, _, _ in files:
            h = take(@HEADER@).split()
            take(int(h[3]))
            tmp = "%s/%s.%s-%d.tmp" % (c, name, os.uname().nodename, os.getpid())
            with open(tmp, "wb") as f:
                f.write(take(int(h[2])))
            os.replace(tmp, c + "/" + name)
    for name, there, _ in files:
        try:
            os.link(c + "/" + name, there, follow_symlinks=False)
        except OSError:
            with open(c + "/" + name, "rb") as src, open(there, "wb") as f:
                f.write(src.read())
except OSError as e:
    sys.exit("CORUNNER-ERROR cannot write the executor in %s: %s" % (d, e.strerror or e))
sys.path.insert(0, os.path.abspath(".corunner"))
from executor import main
sys.exit(main())
"""


@functools.cache
def executor_files() -> Tuple[Tuple[str, bytes], ...]:
    """What the executor is on a node: (name in the run directory, content), source first."""
    with open(EXECUTOR_SOURCE, "rb") as src:
        source = src.read()
    name, data = executor_bytecode() or ("none", b"")
    return ((".corunner/executor.py", source), (f".corunner/__pycache__/{name}", data))


@functools.cache
def executor_key() -> str:
    """The executor's name in a node's cache: a hash of every file of it, names included."""
    digest = hashlib.sha256()
    for name, data in executor_files():
        digest.update(b"%d %s %d\n" % (len(name), name.encode(), len(data)))
        digest.update(data)
    return digest.hexdigest()[:32]


@functools.cache
def start_boot() -> str:
    """The start boot code for this executor (its cache key and file sizes inside)."""
    files = [(name[len(".corunner/") :], name, len(data)) for name, data in executor_files()]
    return (
        _boot_head()
        + embedded(executor_module.private_dirs)
        + _START.replace("@HEADER@", str(executor_module.FRAME_HEADER))
        .replace("@CACHE@", CACHE_DIR)
        .replace("@KEY@", executor_key())
        .replace("@FILES@", repr(files))
        .replace("@HAVE@", HAVE_MARKER)
        .replace("@NEED@", NEED_MARKER)
    )


#: Probe or stop (after LOADER): refuse a remote_dir or run directory another
#: user could have written to (its executor would run as us), else import
#: the run's executor and hand over. argv[1] is the uid they must belong to
#: (the node user's: stop may run as root through sudo).
ASK_BOOT = (
    _boot_head(owner=True)
    + embedded(executor_module.private_dirs)
    + r"""
why = private_dirs(top, d + "/.corunner", False, owner)
if why:
    sys.exit("CORUNNER-ERROR " + why)
sys.path.insert(0, os.path.dirname(x))
from executor import main
sys.exit(main())
"""
)


def boot_frame(code: str) -> bytes:
    """Boot code as LOADER reads it from stdin."""
    data = code.encode()
    return b"%08d" % len(data) + data


#: Upload and start in one command: the boot code, then the upload, arrive on
#: stdin, and Python reads them itself (no tar, mkdir or setsid on the node).
#: The executor needs only the standard library: ``-I -S`` skips
#: site-packages and site hooks, a third of Python's start-up on a Debian node.
#: $1 = remote_dir, $2 = run directory, $3 = python, $4 = "bg" (detached,
#: heartbeats) or "fg".
START_SCRIPT = r"""
top=$1 dir=$2 py=$3 loader=@LOADER@
command -v "$py" >/dev/null 2>&1 || {
  echo "CORUNNER-ERROR python interpreter '$py' not found on the node (set python: in the inventory)" >&2
  exit 97; }
if [ "$4" = fg ]; then set -- --foreground; else set --; fi
exec "$py" -I -S -c "$loader" "$top" "$dir/.corunner/executor.py" start "$dir" "$@"
""".replace("@LOADER@", shlex.quote(LOADER))

#: Ask the executor on the node about a run: $1 = remote_dir, $2 = run
#: directory, $3 = python, $4 = verb, $5 = the user the run's program runs
#: as through sudo, or "" (stop then runs as that user too, to end it);
#: ASK_BOOT follows on stdin.
ASK_SCRIPT = r"""
top=$1 dir=$2 py=$3 loader=@LOADER@ owner=$(id -u)
if [ ! -f "$dir/.corunner/executor.py" ]; then  # never started here, or removed since
  case $4 in
    stop) echo "CORUNNER-STOP {\"stopped\": false, \"state\": \"missing\"}" ;;
    *) echo "CORUNNER-PROBE {\"state\": \"missing\"}" ;;
  esac
  exit 0; fi
verb=$4 as=$5
set -- "$py" -I -S -c "$loader" "$owner" "$top" "$dir/.corunner/executor.py" "$verb" "$dir"
if [ -n "$as" ] && [ "$verb" = stop ]; then
  sudo -n -u "$as" -- "$@" && exit 0
  echo "CORUNNER-ERROR stop needs passwordless sudo (NOPASSWD) for $as" >&2; exit 1; fi
exec "$@"
""".replace("@LOADER@", shlex.quote(LOADER))


def start_command(host: Host, run_id: str, foreground: bool) -> remote.Command:
    """The command that starts ``run_id`` on ``host``; the upload follows it on stdin."""
    mode = "fg" if foreground else "bg"
    command = remote.sh(START_SCRIPT, host.remote_dir, run_dir(host, run_id), host.python, mode)
    return command.followed_by(boot_frame(start_boot()))


def ask_command(host: Host, run_id: str, verb: str) -> remote.Command:
    """The command that asks ``host``'s executor about ``run_id`` (verb: probe or stop)."""
    command = remote.sh(
        ASK_SCRIPT, host.remote_dir, run_dir(host, run_id), host.python, verb, host.become or ""
    )
    return command.followed_by(boot_frame(ASK_BOOT))


@functools.cache
def executor_bytecode() -> Optional[Tuple[str, bytes]]:
    """The executor compiled by this Python: (its name in __pycache__, a PEP 552 .pyc).

    A node whose Python has the same cache tag (e.g. ``cpython-311``) loads it
    and skips compiling the source, ~15 ms of CPU per node and run; any other
    Python does not look for that name and compiles the source as before. The
    .pyc is checked against the source's hash, never its mtime, so it stays
    valid whatever the clocks say and is ignored if executor.py is edited.
    """
    tag = sys.implementation.cache_tag
    if tag is None:
        return None
    with open(EXECUTOR_SOURCE, "rb") as f:
        source = f.read()
    code = compile(source, "executor.py", "exec", dont_inherit=True)
    checked_hash = 0b11  # PEP 552 flags: hash-based, checked
    header = importlib.util.MAGIC_NUMBER + checked_hash.to_bytes(4, "little")
    return f"executor.{tag}.pyc", header + importlib.util.source_hash(source) + marshal.dumps(code)


def check_uploads(files: Sequence[str], stdin: Optional[str] = None) -> None:
    """UsageError for a ``--files`` or ``--stdin`` path that is not there, before a
    run is shown or recorded: a run that cannot start must not become the latest."""
    for path in files:
        if not os.path.lexists(path):
            raise UsageError(f"no such file to upload: {path}")
    if stdin is not None and not os.path.isfile(stdin):
        raise UsageError(f"no such file for --stdin: {stdin}")


class Payload:
    """What every node reads on the start command's stdin after the boot code answered.

    Built once: the executor and its bytecode (read by the boot code, sent
    only to a node whose cache lacks them), the user's script, and a tar of
    ``--files``; between them, each host's own config (its secret inside,
    mode 0600). The script and the tar are spooled to temporary files, which
    :meth:`remove` deletes. The tar is a file of its own (:attr:`files_tar`)
    so that ``run --files --relay`` can send it once, ahead of the starts: a
    host it reached is then sent only where it lies (:data:`STAGED_PATH`).
    """

    def __init__(
        self,
        program: Program,
        files: Sequence[str],
        workdir: str,
        stdin: Optional[str] = None,
    ):
        check_uploads(files, stdin)
        #: The executor and its bytecode, for a node whose cache lacks them.
        self.executor = b"".join(frame(name, data) for name, data in executor_files())
        self.files_tar: Optional[str] = None
        fd, self.path = tempfile.mkstemp(prefix="corunner-payload-", dir=workdir)
        with os.fdopen(fd, "wb") as f:
            if stdin is not None:
                f.write(frame_header(FRAME_FILE, STDIN_PATH.encode(), os.path.getsize(stdin)))
                with open(stdin, "rb") as src:
                    shutil.copyfileobj(src, f, remote.CHUNK)
            if program.script:
                mode = 0o755 if program.shebang else 0o644
                script = os.fsencode(os.path.basename(program.script))
                size = os.path.getsize(program.script)
                f.write(frame_header(FRAME_FILE, script, size, mode))
                with open(program.script, "rb") as src:
                    shutil.copyfileobj(src, f, remote.CHUNK)
        if files:
            fd, self.files_tar = tempfile.mkstemp(prefix="corunner-files-", dir=workdir)
            with os.fdopen(fd, "wb") as f:
                with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    for path in files:
                        tar.add(path, arcname=os.path.basename(os.path.abspath(path)))

    @property
    def size(self) -> int:
        """The most bytes a start sends after its config: the executor, the program, --files."""
        files = os.path.getsize(self.files_tar) if self.files_tar else 0
        return len(self.executor) + os.path.getsize(self.path) + FRAME_HEADER + files

    def chunks(
        self, config: Dict[str, Any], executor: bool = True, staged: bool = False
    ) -> Iterator[bytes]:
        """The upload after the boot code's answer: the executor only if the node needs it;
        with ``staged``, the --files tar is on the node already, at STAGED_PATH."""
        head = self.executor if executor else b""
        yield head + frame(CONFIG_PATH, json.dumps(config).encode())
        yield from remote.file_chunks(self.path)
        if self.files_tar is None:
            yield END_MARKER
        elif staged:
            yield frame_header(FRAME_STAGED, STAGED_PATH.encode())
        else:
            yield TAR_MARKER
            yield from remote.file_chunks(self.files_tar)

    def reply(
        self, config: Dict[str, Any], staged: bool = False
    ) -> Callable[[str], Iterator[bytes]]:
        """What to send once the start boot code said HAVE_MARKER or NEED_MARKER."""
        return lambda said: self.chunks(config, executor=said == NEED_MARKER, staged=staged)

    def remove(self) -> None:
        os.unlink(self.path)
        if self.files_tar:
            os.unlink(self.files_tar)


def run_dir(host: Host, run_id: str) -> str:
    """Where ``run_id`` lives on ``host``: its program's working directory.

    ``<remote_dir>/<run id>/<host id>``: one directory per host, so nodes
    that share remote_dir (an NFS home, a shared scratch) never mix their
    results. The one rule: everything that looks for a run on a node asks here.
    """
    return f"{host.remote_dir.rstrip('/')}/{run_id}/{host.id}"


def remote_dir_of(run_directory: str, run_id: str, host_id: str) -> Optional[str]:
    """The remote_dir of a run directory :func:`run_dir` made (None if it is not one)."""
    suffix = f"/{run_id}/{host_id}"
    if run_id and run_directory.endswith(suffix) and len(run_directory) > len(suffix):
        return run_directory[: -len(suffix)]
    return None
