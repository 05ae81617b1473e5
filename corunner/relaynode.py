"""The relay on a node: receive one transfer, write it as it arrives, pass it on.

One stdlib-only file (Python 3.8+, no corunner imports), sent to a node as
the boot code of ``python -I -S -c LOADER`` (corunner.bootstrap) and imported
by the controller for the frame formats, so both sides share one definition
(as the executor shares the heartbeat protocol).

What the controller sends on stdin, after the boot code (:func:`frame`):
``C`` the transfer's config (JSON: its TLS certificate and key, the sha256 and
size, where it lands), ``N`` more successors of this node as they come up
(``[[address, port], ...]``, added after those it has: the next first), ``D`` bytes of the payload at an offset, ``Q`` the
end. What the node says on stdout, one marker line each (:func:`say`):
``PORT n`` (listening) or ``NOLISTEN why``, ``HAVE n`` (bytes written, once
a second while they grow), ``SKIP address:port why`` (a successor bypassed), ``DONE``
(checked and in place) or ``FAIL why``.

Between nodes: TLS 1.3 with one certificate and key made for this transfer
alone, required of both sides and pinned (a connection without them is
refused at the handshake). The client says :data:`HELLO` and the transfer
id, the server answers the offset it already has (8 bytes), the client sends
the payload from there, and the server acknowledges what it has written (8
bytes each, every :data:`ACK_EVERY`). A client whose successor stops
acknowledging for ``stall`` seconds, or drops, carries on with the next one
from the offset that one has. Bytes are accepted from any source at the
offset the node has reached, so sources may change at any time and nothing
is written twice or out of order.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

MARKER = "CORUNNER-RELAY"
HELLO = b"CRLY1 "
#: Bytes between two acknowledgements from a receiving node.
ACK_EVERY = 1 << 19
#: Bytes a sender may have in flight without an acknowledgement: a successor
#: that stops reading is noticed once these are out, not after the kernel's buffers.
WINDOW = 1 << 22
CHUNK = 1 << 18
#: Longest frame header line on stdin.
MAX_HEADER = 64
#: Seconds between two HAVE lines while bytes arrive.
REPORT_EVERY = 1.0
#: Seconds a sender waits for a whole chunk before it sends what it has.
BATCH_WAIT = 0.05
#: Peer handshakes in progress at once, at most (the rest wait in the backlog).
HANDSHAKES = 8

FRAME_CONFIG, FRAME_NEXT, FRAME_DATA, FRAME_QUIT = "C", "N", "D", "Q"


# --------------------------------------------------------------------------
# Formats: pure, shared with the controller.
# --------------------------------------------------------------------------


def frame(kind: str, doc: Any = None) -> bytes:
    """A config (``C``) or successors (``N``) frame, or the end (``Q``)."""
    if kind == FRAME_QUIT:
        return b"Q\n"
    if kind not in (FRAME_CONFIG, FRAME_NEXT):
        raise ValueError(f"not a document frame: {kind!r}")
    body = json.dumps(doc).encode()
    return b"%s %d\n" % (kind.encode(), len(body)) + body


def data_header(offset: int, size: int) -> bytes:
    """The header of ``size`` bytes of the payload from ``offset``; the bytes follow."""
    return b"D %d %d\n" % (offset, size)


def parse_header(line: bytes) -> Tuple[str, int, int]:
    """(kind, first number, second number) of a frame header; ValueError if it is not one."""
    fields = line.split()
    if not line.endswith(b"\n") or not fields or len(line) > MAX_HEADER:
        raise ValueError(f"not a relay frame header: {line[:MAX_HEADER]!r}")
    kind = fields[0].decode("ascii", "replace")
    numbers = fields[1:]
    want = {FRAME_CONFIG: 1, FRAME_NEXT: 1, FRAME_DATA: 2, FRAME_QUIT: 0}.get(kind)
    if want is None or len(numbers) != want or not all(n.isdigit() for n in numbers):
        raise ValueError(f"not a relay frame header: {line!r}")
    values = [int(n) for n in numbers] + [0, 0]
    return kind, values[0], values[1]


def status_line(word: str, text: str = "") -> bytes:
    """One line of what the node says (``PORT 4242``, ``FAIL why``): marker, word, text."""
    text = " ".join(text.split())  # one line, whatever an error message held
    return f"{MARKER} {word}{' ' + text if text else ''}\n".encode("utf-8", "replace")


def parse_status(line: bytes) -> Optional[Tuple[str, str]]:
    """(word, text) of a status line, or None for any other line (shell noise)."""
    head = (MARKER + " ").encode()
    if not line.startswith(head):
        return None
    word, _, text = line[len(head) :].decode("utf-8", "replace").strip().partition(" ")
    return (word, text) if word else None


def encode_offset(offset: int) -> bytes:
    return offset.to_bytes(8, "big")


def decode_offsets(buffer: bytearray) -> Optional[int]:
    """The last whole offset in ``buffer`` (consumed), or None if none is whole yet."""
    whole = len(buffer) // 8 * 8
    if not whole:
        return None
    last = int.from_bytes(bytes(buffer[whole - 8 : whole]), "big")
    del buffer[:whole]
    return last


def target_path(dest: str, name: str, is_dir: Any = os.path.isdir) -> str:
    """Where a pushed file named ``name`` lands for ``dest`` (corunner.transfer's rule).

    Inside ``dest`` if it ends with ``/`` or is a directory, else as ``dest``.
    """
    if dest.endswith("/") or is_dir(dest):
        return dest.rstrip("/") + "/" + name if dest.rstrip("/") else "/" + name
    return dest


# --------------------------------------------------------------------------
# TLS: one certificate for the transfer, both sides required and pinned.
# --------------------------------------------------------------------------


def contexts(cert: str, key: str) -> Tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts that trust only ``cert`` and present it.

    The key is written to a private temporary file only as long as OpenSSL
    takes to load it (``load_cert_chain`` reads files only).
    """
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    where = tempfile.mkdtemp(prefix="corunner-relay-")
    try:
        paths = []
        for name, text in (("cert.pem", cert), ("key.pem", key)):
            path = os.path.join(where, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            paths.append(path)
        for ctx in (server, client):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.load_cert_chain(paths[0], paths[1])
            ctx.load_verify_locations(cadata=cert)
            ctx.verify_mode = ssl.CERT_REQUIRED
        client.check_hostname = False  # the pin is the identity: one certificate, no names
    finally:
        for name in ("cert.pem", "key.pem"):
            try:
                os.unlink(os.path.join(where, name))
            except OSError:
                pass
        os.rmdir(where)
    return server, client


def pinned(sock: ssl.SSLSocket, pin: str) -> bool:
    """Whether the peer showed exactly the transfer's certificate (sha256 of its DER)."""
    der = sock.getpeercert(binary_form=True)
    return der is not None and hashlib.sha256(der).hexdigest() == pin


# --------------------------------------------------------------------------
# The relay itself.
# --------------------------------------------------------------------------


class Stalled(Exception):
    """A successor acknowledged nothing for the stall time."""


class Relay:
    """One node's part of a transfer: the temporary file, its offset, its sources."""

    def __init__(self, cfg: Dict[str, Any], out: IO[bytes]):
        self.cfg = cfg
        self.size = int(cfg["size"])
        self.stall = float(cfg["stall"])
        self.out = out
        self.out_lock = threading.Lock()
        self.lock = threading.Condition()
        self.have = 0
        self.sha = hashlib.sha256()
        self.generation = 0  # of peer sources: a newer one ends the older
        self.finished = False
        self.ended = False
        self.handshakes = threading.BoundedSemaphore(HANDSHAKES)
        #: Whom to pass the payload on to, the next first (N frames add to it).
        self.successors: List[Tuple[str, int]] = []
        self.forwarding = False
        self.listener: Optional[socket.socket] = None
        self.server, self.client = contexts(cfg["cert"], cfg["key"])
        self.target = ""
        self.tmp = ""
        self.fd = -1

    # -- output ------------------------------------------------------------
    def say(self, word: str, text: str = "") -> None:
        with self.out_lock:
            try:
                self.out.write(status_line(word, text))
                self.out.flush()
            except OSError:
                pass

    def fail(self, why: str) -> None:
        """Say why this node cannot finish, remove what it wrote, and end at once.

        Its sockets close with it, so its predecessor moves on without waiting.
        """
        self.cleanup()
        self.say("FAIL", why)
        os._exit(1)

    def cleanup(self) -> None:
        if self.tmp and not self.finished:
            try:
                os.unlink(self.tmp)
            except OSError:
                pass

    # -- the file ----------------------------------------------------------
    def prepare(self) -> None:
        """Make the temporary file beside where the payload lands (same filesystem)."""
        dest, name = self.cfg["dest"], self.cfg["name"]
        if self.cfg["kind"] == "file":
            if dest.endswith("/"):
                os.makedirs(dest, exist_ok=True)
            self.target = target_path(dest, name)
            if os.path.isdir(self.target) and not os.path.islink(self.target):
                raise OSError(f"{self.target} is a directory (remove it, or copy into it)")
            parent = os.path.dirname(self.target) or "."
        else:
            parent = os.path.dirname(target_path(dest, name).rstrip("/")) or "."
        os.makedirs(parent, exist_ok=True)
        # A tree needs its tar and what it holds: twice its size, for a while.
        need = self.size * (1 if self.cfg["kind"] == "file" else 2) // 1024 + 1
        fs = os.statvfs(parent)
        free = fs.f_bavail * fs.f_frsize // 1024
        if free < need:
            raise OSError(f"not enough space in {parent}: {free} KiB free, {need} KiB needed")
        self.fd, self.tmp = tempfile.mkstemp(prefix=".corunner-relay.", dir=parent)

    def write(self, offset: int, data: Any) -> None:
        """Write what ``data`` (from ``offset``) adds to what the node has; the rest is dropped."""
        with self.lock:
            start = self.have - offset
            if start < 0 or start >= len(data) or self.have >= self.size:
                return
            view = memoryview(data)[start : start + self.size - self.have]
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self.fd, view[done:], self.have + done)
            except OSError as exc:
                parent = os.path.dirname(self.tmp)
                self.fail(f"cannot write in {parent}: {exc.strerror or exc}")
            self.sha.update(view)
            self.have += len(view)
            complete = self.have == self.size
            self.lock.notify_all()
        if complete:
            threading.Thread(target=self.finish, daemon=True).start()

    def finish(self) -> None:
        """Check the sha256, then put the payload in place: rename, or untar as cp does."""
        got = self.sha.hexdigest()
        if got != self.cfg["sha256"]:
            self.fail(f"sha256 mismatch: got {got}, expected {self.cfg['sha256']}")
        try:
            if self.cfg["kind"] == "file":
                os.fchmod(self.fd, int(self.cfg["mode"]) & 0o7777)
                mtime = float(self.cfg["mtime"])
                os.utime(self.tmp, (mtime, mtime))
                os.rename(self.tmp, self.target)
            else:
                self.untar()
                os.unlink(self.tmp)
        except OSError as exc:
            self.fail(f"cannot put the copy in place: {exc}")
        with self.lock:
            self.finished = True
        self.say("DONE")

    def untar(self) -> None:
        """Extract the tar with the direct path's own script (corunner.transfer.PUSH_SCRIPT)."""
        need = str(self.size // 1024 + 1)
        argv = ["sh", "-c", self.cfg["script"], "sh", self.cfg["dest"], self.cfg["name"], need]
        with open(self.tmp, "rb") as stdin:
            done = subprocess.run(argv, stdin=stdin, capture_output=True)
        if done.returncode != 0 or b"CORUNNER-OK" not in done.stdout:
            lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
            said = [ln for ln in lines if ln.startswith("CORUNNER-ERROR ")]
            why = said[-1][len("CORUNNER-ERROR ") :] if said else (lines[-1] if lines else "")
            self.fail(why or f"tar failed (exit status {done.returncode})")

    # -- receiving from peers ----------------------------------------------
    def listen(self) -> Optional[int]:
        """Listen on the configured address, a port the system picks; None if it cannot."""
        address = self.cfg["bind"]
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.bind((address, 0))
            sock.listen(64)
        except OSError as exc:
            sock.close()
            self.say("NOLISTEN", f"cannot listen on {address}: {exc.strerror or exc}")
            return None
        self.listener = sock
        threading.Thread(target=self.accept, daemon=True).start()
        port: int = sock.getsockname()[1]
        return port

    def accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            if not self.handshakes.acquire(blocking=False):
                conn.close()  # too many at once: a flood, not the transfer's peers
                continue
            threading.Thread(target=self.receive, args=(conn,), daemon=True).start()

    def receive(self, conn: socket.socket) -> None:
        """Serve one peer: handshake, hello, our offset, then its bytes, with acks."""
        try:
            conn.settimeout(self.stall)
            try:
                sock = self.server.wrap_socket(conn, server_side=True)
                if not pinned(sock, self.cfg["pin"]):
                    raise ssl.SSLError("not the transfer's certificate")
                hello = _read_line(sock, len(HELLO) + 80)
            finally:
                self.handshakes.release()
        except (OSError, ValueError):
            conn.close()
            return
        if hello != HELLO + self.cfg["id"].encode() + b"\n":
            sock.close()
            return
        with self.lock:
            self.generation += 1
            mine = self.generation
            position = self.have
        buf = bytearray(CHUNK)
        acked = position
        try:
            sock.sendall(encode_offset(position))
            sock.settimeout(1.0)
            while True:
                with self.lock:
                    if self.generation != mine or self.ended:
                        return
                try:
                    n = _fill(sock, buf)
                except socket.timeout:
                    continue
                if not n:
                    return
                self.write(position, memoryview(buf)[:n])
                position += n
                have = self.have
                if have - acked >= ACK_EVERY or (have == self.size and acked < have):
                    sock.sendall(encode_offset(have))
                    acked = have
        except OSError:
            return
        finally:
            sock.close()

    # -- passing on ----------------------------------------------------------
    def has(self, offset: int) -> bool:
        """Whether the node holds the bytes up to ``offset`` (or all of them), or has ended."""
        return self.ended or self.have >= min(offset, self.size)

    def more_successors(self, successors: Sequence[Tuple[str, int]]) -> None:
        """Nodes that came up after this one (an N frame): the first feeder starts passing on."""
        with self.lock:
            self.successors.extend(successors)
            start = not self.forwarding
            self.forwarding = True
            self.lock.notify_all()
        if start:
            threading.Thread(target=self.forward, daemon=True).start()

    def forward(self) -> None:
        """Feed the first successor that takes it to the end; bypass the others.

        Successors arrive as they come up: with none left to try, wait for
        the next, until the transfer ends.
        """
        tried = 0
        while True:
            with self.lock:
                while tried >= len(self.successors) and not self.ended:
                    self.lock.wait(1.0)
                if self.ended:
                    return
                address, port = self.successors[tried]
            tried += 1
            try:
                self.feed(address, int(port))
                return
            except (OSError, ValueError, Stalled) as exc:
                why = "no acknowledgement" if isinstance(exc, (Stalled, socket.timeout)) else exc
                self.say("SKIP", f"{address}:{port} {why}")

    def feed(self, address: str, port: int) -> None:
        """Send one successor the payload from the offset it has, until it has all of it."""
        raw = socket.create_connection((address, port), timeout=self.stall)
        try:
            sock = self.client.wrap_socket(raw)
        except OSError:
            raw.close()
            raise
        try:
            if not pinned(sock, self.cfg["pin"]):
                raise ssl.SSLError("not the transfer's certificate")
            sock.sendall(HELLO + self.cfg["id"].encode() + b"\n")
            first = bytearray()
            while len(first) < 8:
                got = sock.recv(8 - len(first))
                if not got:
                    raise ConnectionError("closed before saying its offset")
                first += got
            sent = acked = int.from_bytes(bytes(first), "big")
            pending = bytearray()
            while acked < self.size:
                if sent < self.size and sent - acked < WINDOW:
                    with self.lock:
                        # A whole chunk at a time while bytes stream in (one
                        # wake-up per chunk, not per TLS record), what there is otherwise.
                        self.lock.wait_for(partial(self.has, sent + CHUNK), BATCH_WAIT)
                        while self.have <= sent and not self.ended:
                            self.lock.wait(1.0)
                        if self.ended:
                            return
                        available = self.have - sent
                    data = os.pread(self.fd, min(CHUNK, available), sent)
                    sock.sendall(data)
                    sent += len(data)
                    acked = max(acked, _acks(sock, pending, False) or acked)
                else:
                    got_ack = _acks(sock, pending, True)
                    if got_ack is None:
                        raise Stalled()
                    acked = max(acked, got_ack)
        except socket.timeout:
            raise Stalled() from None
        finally:
            sock.close()


def _read_line(sock: ssl.SSLSocket, most: int) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        got = sock.recv(1)
        if not got or len(line) >= most:
            raise ValueError("no hello")
        line += got
    return line


def _readable(sock: ssl.SSLSocket) -> bool:
    """Whether a read would find something now (in TLS's buffer, or on the socket)."""
    return bool(sock.pending()) or bool(select.select([sock], [], [], 0)[0])


def _fill(sock: ssl.SSLSocket, buf: bytearray) -> int:
    """Read into ``buf``: at least one TLS record (waiting), then what has already come.

    One write per chunk instead of one per 16 KiB record. 0 at the end of the stream.
    """
    view = memoryview(buf)
    got = sock.recv_into(view)
    while got and got < len(buf) and _readable(sock):
        more = sock.recv_into(view[got:])
        if not more:
            break
        got += more
    return got


def _acks(sock: ssl.SSLSocket, pending: bytearray, wait: bool) -> Optional[int]:
    """The latest acknowledgement from a successor: waiting for one, or only what has come.

    None if none came (within the socket's timeout, when waiting). Raises
    ConnectionError if the successor closed.
    """
    last = None
    while wait or _readable(sock):
        try:
            got = sock.recv(4096)
        except (ssl.SSLWantReadError, socket.timeout):
            break
        if not got:
            raise ConnectionError("closed the connection")
        pending += got
        value = decode_offsets(pending)
        if value is not None:
            last = value
            if wait:
                break
    return last


def _read_frame(stdin: IO[bytes]) -> Tuple[str, int, bytes]:
    """The next frame on stdin: (kind, offset, body); ``Q`` at its end."""
    line = stdin.readline(MAX_HEADER + 1)
    if not line:
        return FRAME_QUIT, 0, b""
    kind, first, second = parse_header(line)
    size = second if kind == FRAME_DATA else first
    body = stdin.read(size) if size else b""
    if len(body) != size:
        return FRAME_QUIT, 0, b""
    return kind, first if kind == FRAME_DATA else 0, body


def main() -> int:
    """Run this node's part of the transfer, as the controller drives it on stdin."""
    stdin = os.fdopen(0, "rb", buffering=1 << 20)
    out = os.fdopen(1, "wb", buffering=0)
    try:
        kind, _, body = _read_frame(stdin)
        if kind != FRAME_CONFIG:
            raise ValueError("no config")
        cfg = json.loads(body)
    except ValueError as exc:
        out.write(status_line("FAIL", f"bad relay start: {exc}"))
        return 2
    try:
        relay = Relay(cfg, out)
    except (OSError, ssl.SSLError) as exc:
        out.write(status_line("FAIL", f"cannot set up TLS: {exc}"))
        return 1
    try:
        relay.prepare()
    except OSError as exc:
        relay.fail(str(exc) if not exc.strerror else f"{exc.strerror}: {exc.filename}")

    def ended(signum: int, frame: Any) -> None:
        relay.cleanup()
        os._exit(128 + signum)

    for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, ended)
    port = relay.listen()
    if port is not None:
        relay.say("PORT", str(port))
    reporter = threading.Thread(target=_report, args=(relay,), daemon=True)
    reporter.start()
    try:
        while True:
            kind, offset, body = _read_frame(stdin)
            if kind == FRAME_QUIT:
                break
            if kind == FRAME_NEXT:
                relay.more_successors([(str(a), int(p)) for a, p in json.loads(body)])
            elif kind == FRAME_DATA:
                relay.write(offset, body)
    except (OSError, ValueError) as exc:
        relay.fail(f"bad frame from the controller: {exc}")
    with relay.lock:
        relay.ended = True
        relay.lock.notify_all()
        finished = relay.finished
    if not finished:
        relay.cleanup()
        relay.say("FAIL", f"ended with {relay.have} of {relay.size} bytes")
        os._exit(1)
    os._exit(0)


def _report(relay: Relay) -> None:
    said = -1
    while True:
        time.sleep(REPORT_EVERY)
        have = relay.have
        if have != said:
            relay.say("HAVE", str(have))
            said = have


if __name__ == "__main__":
    sys.exit(main())
