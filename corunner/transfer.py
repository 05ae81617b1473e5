"""Copy files and trees to and from nodes: one regular file over SFTP, trees as tar streams.

A push goes through the controller's ``ssh`` where it can serve the host
(:func:`push_with_openssh`, :mod:`corunner.openssh`): the tar stream below,
staged once in a local file that every host's ``ssh`` reads (:meth:`Archive.staged`),
or for a push too big to stage, made as the file is read. Otherwise, and through Paramiko:
a tree travels as a tar archive on one command's stdin (push) or stdout (pull),
built once and sent to every node, keeping modes and links. One regular file
goes over SFTP instead, which runs no login shell and no tar on the node (a
heavy .bashrc alone costs ~100 ms of its CPU); pushes use large pipelined
writes, as Paramiko's 32 KiB requests cost far more of the controller's CPU.

Destination rules (documented in README.md):

* push ``SRC`` to ``DEST``: if ``DEST`` ends with ``/`` or is an existing
  directory on the node, ``SRC`` lands inside it as ``DEST/<name of SRC>``;
  otherwise ``SRC`` is copied *as* ``DEST``. A tree copied onto an existing
  directory of the same name merges into it, as ``cp -r`` does. A single file
  is replaced atomically, so readers never see half of it.
* pull ``SRC`` into local ``DEST`` (always a directory): with ``divide``,
  each host's copy lands in ``DEST/<host>/<name>``; without, in
  ``DEST/<name>.<host>`` (as ``clush --rcopy`` does), so copies from different
  hosts never overwrite each other. ``<host>`` is :attr:`Host.local_name`: the
  host id with each ``:`` made ``+``.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import shutil
import stat
import tarfile
import tempfile
import threading
from dataclasses import dataclass, field
from typing import IO, Dict, Iterator, List, Optional, Sequence

import fabric
import paramiko

from . import openssh, remote
from .errors import TransferError, UsageError
from .inventory import Host

PAYLOAD = "payload"
MARKER = "CORUNNER-TAR-7f3a9c"
#: Data per SFTP write request when pushing one file: OpenSSH's sftp-server takes
#: up to 255 KiB; Paramiko's default, 32 KiB, costs 8x the requests and Python work.
SFTP_WRITE_SIZE = 255 * 1024
#: The largest push staged as one local file for every host's ``ssh`` to read
#: (:meth:`Archive.staged`); a larger one is fed to each ``ssh`` through a pipe,
#: so a big file needs no copy of itself in the work directory.
STAGE_LIMIT = 1 << 30

#: Push: extract into a temporary directory beside the target, then rename
#: (files) or merge (an existing directory). $1 = dest, $2 = name of the
#: source, $3 = archive size in KiB (to name a full disk as the cause). GNU
#: tar reads backslashes in the names and directories it is given as escapes
#: unless told --no-unquote (here and in the pull).
PUSH_SCRIPT = r"""
dest=$1 name=$2 need=$3
no_space() {
  free=$(df -Pk -- "$1" 2>/dev/null | awk 'NR==2 {print $4}')
  if [ -n "$free" ] && [ "$free" -lt "$need" ]; then
    echo "CORUNNER-ERROR not enough space in $1: ${free} KiB free, ${need} KiB needed" >&2
  fi
  exit 1
}
case $dest in */) mkdir -p -- "$dest" || exit 1 ;; esac
if [ -d "$dest" ]; then target=${dest%/}/$name; else target=$dest; fi
parent=$(dirname -- "$target")
mkdir -p -- "$parent" || exit 1
if [ -d "$target" ] && [ ! -L "$target" ]; then
  tar -b 256 -xpf - --no-same-owner --no-unquote --strip-components=1 -C "$target" || no_space "$target"
else
  tmp=$(mktemp -d "$parent/.corunner-cp.XXXXXX") || exit 1
  trap 'rm -rf -- "$tmp"' EXIT
  tar -b 256 -xpf - --no-same-owner --no-unquote -C "$tmp" || no_space "$parent"
  mv -f -T -- "$tmp/payload" "$target" || exit 1
fi
echo CORUNNER-OK
"""
#: What PUSH_SCRIPT prints when the copy is in place.
PUSHED = "CORUNNER-OK"

#: Pull: $1 = source path, $2 = marker, $3... = paths under it to leave out
#: (each exactly: no wildcards, from the top of the source).
PULL_SCRIPT = r"""
src=$1 marker=$2
shift 2
if [ ! -e "$src" ] && [ ! -L "$src" ]; then
  echo "CORUNNER-ERROR no such file or directory: $src" >&2; exit 66
fi
cd -- "$(dirname -- "$src")" || exit 1
base=$(basename -- "$src")
n=$#
for x in "$@"; do set -- "$@" "--exclude=$base/$x"; done
shift "$n"
printf '%s\n' "$marker"
exec tar -cf - --no-unquote --anchored --no-wildcards "$@" -- "$base"
"""


class Archive:
    """A local file or tree to push, checked once for every host.

    One regular file is sent as it is (SFTP) and its tar is built only if a
    host needs the tar path, so pushing a 10 GiB file needs no 10 GiB of
    temporary space; a tree is archived at once. Either way the tar is built
    once, in ``workdir``, and shared by every host.
    """

    def __init__(self, src: str, workdir: str):
        src = os.path.abspath(src.rstrip("/") or "/")
        if not os.path.lexists(src):
            raise UsageError(f"no such local file or directory: {src}")
        self.name = os.path.basename(src)
        self.src, self.workdir = src, workdir
        self._lock = threading.Lock()
        self._path: Optional[str] = None
        self._stage_lock = threading.Lock()
        self._staged: Dict[bytes, Optional[str]] = {}
        #: The source, when it is one regular file (pushed over SFTP).
        self.file: Optional[str] = src if stat.S_ISREG(os.lstat(src).st_mode) else None
        if self.file is None:
            self._path = self._build()
        else:
            try:
                open(src, "rb").close()
            except OSError as exc:
                raise UsageError(f"cannot read {src}: {exc.strerror}") from exc

    @property
    def path(self) -> str:
        """The tar of the source (its top named ``payload``), built on first use."""
        with self._lock:
            if self._path is None:
                self._path = self._build()
            return self._path

    def _build(self) -> str:
        fd, path = tempfile.mkstemp(prefix="corunner-", suffix=".tar", dir=self.workdir)
        with (
            os.fdopen(fd, "wb") as f,
            tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            tar.add(self.src, arcname=PAYLOAD, recursive=True)
        return path

    def chunks(self) -> Iterator[bytes]:
        return remote.file_chunks(self.path)

    @property
    def tar_size(self) -> int:
        """The size of the tar :meth:`streamed` sends, without building it."""
        if self.file is not None and self._path is None:
            size = os.path.getsize(self.file)
            return 512 * 3 + -(-size // 512) * 512 + 2 * 512  # headers, data, end blocks
        return os.path.getsize(self.path)

    def streamed(self) -> Iterator[bytes]:
        """The tar, as :meth:`chunks`; for one regular file made as it is read,
        so no temporary copy of the file is needed.

        Raises OSError if the file changed size while it was read (the
        receiving tar then sees a short archive and fails: no copy is made).
        """
        if self.file is None or self._path is not None:
            yield from self.chunks()
            return
        with open(self.file, "rb") as f:
            info = tarfile.TarInfo(PAYLOAD)
            st = os.fstat(f.fileno())
            info.size, info.mode, info.mtime = st.st_size, stat.S_IMODE(st.st_mode), st.st_mtime
            info.uid, info.gid = st.st_uid, st.st_gid
            yield info.tobuf(tarfile.PAX_FORMAT)
            left = info.size
            while left > 0:
                chunk = f.read(min(left, 1 << 20))
                if not chunk:
                    raise OSError(f"{self.file} shrank while it was read")
                left -= len(chunk)
                yield chunk
            if f.read(1):
                raise OSError(f"{self.file} grew while it was read")
        yield bytes(-info.size % 512) + bytes(1024)

    def staged(self, head: bytes) -> Optional[str]:
        """A local file holding ``head`` and then :meth:`streamed`'s tar, built
        once and read by every host's ``ssh`` itself (a regular file costs each
        node less CPU than a pipe: :func:`corunner.openssh.run_file`).

        None when the push is larger than :data:`STAGE_LIMIT` or the work
        directory is unusable or has no room for it and as much again: the
        caller feeds the stream through a pipe instead. Raises OSError if the source cannot be read.
        """
        with self._stage_lock:
            if head not in self._staged:
                self._staged[head] = self._stage(head)
            return self._staged[head]

    def _stage(self, head: bytes) -> Optional[str]:
        size = len(head) + self.tar_size
        if size > STAGE_LIMIT:
            return None
        try:
            if shutil.disk_usage(self.workdir).free < 2 * size:
                return None
            fd, path = tempfile.mkstemp(prefix="corunner-", suffix=".stream", dir=self.workdir)
        except OSError:  # no usable work directory: the stream is piped, as it can always be
            return None
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(head)
                for chunk in _reading(self.streamed()):
                    out.write(chunk)
        except _Unreadable as exc:
            os.unlink(path)
            raise exc.error from None
        except OSError:  # writing here (the disk filled meanwhile): pipe it instead
            os.unlink(path)
            return None
        return path


class _Unreadable(Exception):
    """The source failed while being read (told apart from a failed write)."""

    def __init__(self, error: OSError):
        self.error = error


def _reading(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks``, with an OSError in producing them raised as :class:`_Unreadable`."""
    try:
        yield from chunks
    except OSError as exc:
        raise _Unreadable(exc) from exc


def build_archive(src: str, workdir: str) -> Archive:
    """The :class:`Archive` of ``src`` (UsageError if it is missing or unreadable)."""
    return Archive(src, workdir)


@dataclass
class Pushed:
    """What one push has to say: notes, such as an SFTP that failed and was replaced by tar."""

    notes: List[str] = field(default_factory=list)


def _failed_before(sftp_failure: Optional[str]) -> str:
    """The SFTP failure that sent a copy the tar way, for a tar path's own error."""
    return f" (after {sftp_failure})" if sftp_failure else ""


def push(conn: fabric.Connection, host: Host, archive: Archive, dest: str) -> Pushed:
    """Copy the archive's file or tree to ``dest`` on one node (rules above)."""
    sftp_failure: Optional[str] = None
    if archive.file is not None:
        try:
            if _push_regular_file(conn, host, archive.file, archive.name, dest):
                return Pushed()
        except remote.SFTPBroken as exc:
            sftp_failure = str(exc)
    command = _push_command(host, archive, dest, streamed=False)
    done = remote.execute(conn, host, command, stdin=archive.chunks())
    return _pushed(host, done, dest, sftp_failure)


def push_with_openssh(host: Host, archive: Archive, dest: str) -> Optional[Pushed]:
    """:func:`push` through the controller's ``ssh`` (the tar path), where it can
    serve the host; None to go the Paramiko way (see :mod:`corunner.openssh`)."""
    ssh = openssh.program()
    argv = openssh.command(host, ssh, remote.READER) if ssh else None
    if argv is None:
        return None
    command = _push_command(host, archive, dest, streamed=True)
    try:
        staged = archive.staged(command.head)
        if staged:
            done = openssh.run_file(host, argv, staged, PUSHED)
        else:
            done = openssh.run(host, argv, command, archive.streamed(), PUSHED)
    except OSError as exc:  # reading the source here
        raise TransferError(host.id, f"cannot read {archive.src}: {exc}") from exc
    return None if done is None else _pushed(host, done, dest, None)


def _push_command(host: Host, archive: Archive, dest: str, streamed: bool) -> remote.Command:
    """PUSH_SCRIPT for one node, with the size of the tar it gets (``streamed``:
    :meth:`Archive.streamed`'s, else the built tar's) to name a full disk."""
    try:
        size = archive.tar_size if streamed else os.path.getsize(archive.path)
    except OSError as exc:  # building the tar here, on first need: say so for this host
        raise TransferError(host.id, f"cannot archive {archive.src}: {exc}") from exc
    return remote.sh(PUSH_SCRIPT, dest, archive.name, str(size // 1024 + 1))


def _pushed(host: Host, done: remote.Completed, dest: str, sftp_failure: Optional[str]) -> Pushed:
    """What PUSH_SCRIPT's run says: copied, or one line naming why not."""
    if done.status != 0 or PUSHED.encode() not in done.stdout:
        raise TransferError(
            host.id, f"copy to {dest} failed: {done.error_line()}{_failed_before(sftp_failure)}"
        )
    return Pushed([f"{sftp_failure}; copied with tar instead"] if sftp_failure else [])


def _push_regular_file(conn: fabric.Connection, host: Host, src: str, name: str, dest: str) -> bool:
    """Write one regular file where PUSH_SCRIPT would, over SFTP; False to leave it to the tar path.

    SFTP starts no login shell and no tar on the node (a heavy .bashrc alone
    costs ~100 ms of its CPU), and with large write requests Paramiko's cost
    is about that of the tar stream. What this does not do plainly (a
    destination to create, a directory in the way, any SFTP error) goes to
    the tar path, which does it or names the cause (a full disk, say).
    """
    with remote.translated(host, conn):
        sftp = remote.open_sftp(conn, host)
        if sftp is None:
            return False  # no SFTP subsystem on this node
        try:
            target = _sftp_target(sftp, dest, name)
            if target is None:
                return False
            tmp = posixpath.join(posixpath.dirname(target), f".corunner-cp.{secrets.token_hex(4)}")
            try:
                _sftp_write(sftp, src, tmp)
                sftp.posix_rename(tmp, target)
            except (OSError, paramiko.SSHException, paramiko.SFTPError):
                with contextlib.suppress(OSError, paramiko.SSHException, paramiko.SFTPError):
                    sftp.remove(tmp)
                return False
            return True
        finally:
            sftp.close()


def _sftp_target(sftp: paramiko.SFTPClient, dest: str, name: str) -> Optional[str]:
    """The path PUSH_SCRIPT would write ``name`` to, if it needs nothing created or merged."""

    def kind(path: str, follow: bool = True) -> Optional[int]:
        try:
            return stat.S_IFMT((sftp.stat(path) if follow else sftp.lstat(path)).st_mode or 0)
        except (OSError, paramiko.SFTPError):
            return None

    dest_kind = kind(dest)
    if dest_kind == stat.S_IFDIR:
        target = posixpath.join(dest, name)
    elif dest.endswith("/"):
        return None  # to create (or not a directory: the tar path says so)
    else:
        target = dest
        if kind(posixpath.dirname(dest) or ".") != stat.S_IFDIR:
            return None
    if kind(target, follow=False) == stat.S_IFDIR:
        return None  # a directory in the way: the tar path merges into it
    return target


def _sftp_write(sftp: paramiko.SFTPClient, src: str, path: str) -> None:
    """Copy local ``src`` to ``path`` with its mode and times, as ``tar -p`` would.

    Raises OSError if any write failed. Paramiko (5.1) drops the replies of
    pipelined writes that are still pending at close, errors included, so
    they are collected here, and the size is checked as well.
    """
    info = os.stat(src)
    with open(src, "rb") as local, sftp.open(path, "wb", bufsize=0) as remote_file:
        remote_file.set_pipelined(True)
        remote_file.MAX_REQUEST_SIZE = SFTP_WRITE_SIZE
        for chunk in iter(lambda: local.read(SFTP_WRITE_SIZE), b""):
            remote_file.write(chunk)
        pending = getattr(remote_file, "_reqs", ())
        while pending:
            sftp._read_response(pending.popleft())  # raises OSError on a failed write
    size = sftp.stat(path).st_size
    if size != info.st_size:
        raise OSError(f"{path}: wrote {size} of {info.st_size} bytes")
    sftp.chmod(path, stat.S_IMODE(info.st_mode))
    sftp.utime(path, (info.st_atime, info.st_mtime))


@dataclass
class Pulled:
    """What one pull brought back."""

    files: int = 0
    bytes: int = 0
    skipped: List[str] = field(default_factory=list)  # unsafe members refused, with why
    notes: List[str] = field(default_factory=list)  # e.g. an SFTP that failed, replaced by tar


def pull(
    conn: fabric.Connection,
    host: Host,
    src: str,
    dest: str,
    divide: bool,
    exclude: Sequence[str] = (),
    contents: bool = False,
    name: Optional[str] = None,
) -> Pulled:
    """Copy ``src`` from one node under local ``dest`` (rules above).

    With ``contents`` and ``divide``, what is inside ``src`` lands directly in
    ``dest/<host>/`` (used for run directories). ``name``, without ``divide``,
    replaces the name of ``src`` in ``dest/<name>.<host>``.
    """
    if divide:
        into, rename = os.path.join(dest, host.local_name), ("." if contents else None)
    else:
        base = name or os.path.basename(src.rstrip("/")) or "root"
        into, rename = dest, f"{base}.{host.local_name}"
    os.makedirs(into, exist_ok=True)
    sftp_failure: Optional[str] = None
    try:
        single = _pull_regular_file(conn, host, src, into, rename)
    except remote.SFTPBroken as exc:
        single, sftp_failure = None, str(exc)
    if single is not None:
        return single
    if not hasattr(tarfile, "data_filter"):  # 3.10 before 3.10.12, 3.11 before 3.11.4
        raise TransferError(
            host.id,
            f"copy of {src} needs tarfile's data filter: use Python 3.10.12, 3.11.4 or later",
        )
    command = remote.sh(PULL_SCRIPT, src, MARKER, *exclude)

    def consume(stream: IO[bytes]) -> Optional[Pulled]:
        try:
            return extract(stream, into, rename)
        except tarfile.ReadError:
            return None  # no archive came: the command's status says why

    pulled, done = remote.stream_from(conn, host, command, MARKER, consume)
    if done.status != 0 or pulled is None:
        raise TransferError(
            host.id, f"copy of {src} failed: {done.error_line()}{_failed_before(sftp_failure)}"
        )
    if sftp_failure:
        pulled.notes.append(f"{sftp_failure}; copied with tar instead")
    return pulled


def _pull_regular_file(
    conn: fabric.Connection, host: Host, src: str, into: str, rename: Optional[str]
) -> Optional[Pulled]:
    """Fetch ``src`` over SFTP if it is one regular file; None if it is not (or no SFTP).

    SFTP runs no login shell on the node, which saves a shell start-up (often
    100 ms of the node's CPU) per host; trees still travel as one tar stream.
    """
    with remote.translated(host, conn):
        sftp = remote.open_sftp(conn, host)
        if sftp is None:
            return None  # no SFTP subsystem on this node: the tar path streams it
        try:
            try:
                attrs = sftp.lstat(src)
            except (OSError, paramiko.SFTPError):
                return None  # missing or unreadable: the tar path names the cause
            if not stat.S_ISREG(attrs.st_mode or 0):
                return None
            name = rename or os.path.basename(src.rstrip("/"))
            target = os.path.join(into, name)
            fd, tmp = tempfile.mkstemp(prefix=".corunner-", dir=into)
            try:
                with os.fdopen(fd, "wb") as f:
                    sftp.getfo(src, f, prefetch=True)
                os.chmod(tmp, (attrs.st_mode or 0o644) & 0o755)  # as tar's data filter does
                os.replace(tmp, target)
            except (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError) as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                remote.raise_if_hung(conn)  # the host stopped answering: stalled
                raise TransferError(host.id, f"copy of {src} failed: {exc}") from exc
            return Pulled(files=1, bytes=attrs.st_size or 0)
        finally:
            sftp.close()


def extract(stream: IO[bytes], into: str, rename_top: Optional[str] = None) -> Pulled:
    """Extract a tar stream under ``into``, never writing outside it.

    Members that would escape (absolute or ``..`` names, links pointing out of
    the tree, device files) are refused one by one and listed in ``skipped``;
    links that stay inside are kept as links, never followed.
    """
    pulled = Pulled()
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            if rename_top:
                top, sep, rest = member.name.partition("/")
                member.name = rename_top + sep + rest
                if member.islnk() and member.linkname.partition("/")[0] == top:
                    member.linkname = rename_top + member.linkname[len(top) :]
            try:
                tar.extract(member, into, filter="data")
            except (tarfile.FilterError, OSError) as exc:
                pulled.skipped.append(f"{member.name}: {exc}")
                continue
            if member.isfile():
                pulled.files += 1
                pulled.bytes += member.size
    return pulled
