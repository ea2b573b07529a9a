"""MLLP (HL7 minimal lower layer protocol): `0x0B` message `0x1C 0x0D`, over TCP.

`MLLPServer` is a threaded socket server (one thread per connection, so a slow RIS never
blocks another) that hands each complete frame to a callback and writes back what the callback
returns. Framing errors are survived: bytes outside a frame close that connection (the peer is
not speaking MLLP); a frame cut short by a new start block, by the peer closing its side, or by a
time-out is passed to the callback as truncated so it can be answered with an AE/AR.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import threading
from collections.abc import Callable

LOG = logging.getLogger("burnstation.hl7")

SB = b"\x0b"
EB = b"\x1c"
CR = b"\x0d"
MAX_FRAME = 16 * 1024 * 1024
FRAME_TIMEOUT = 30.0  # seconds a started frame may take to complete
IDLE_TIMEOUT = 3600.0  # an idle connection (between frames) is closed after this

# callback(frame bytes, truncated, peer) → reply bytes (already framed by the server) or None
FrameHandler = Callable[[bytes, bool, str], bytes | None]


def frame(payload: bytes) -> bytes:
    return SB + payload + EB + CR


class _Connection(socketserver.BaseRequestHandler):
    server: MLLPServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        self.server.track(sock, True)
        try:
            self._serve(sock, peer)
        except OSError as exc:
            LOG.debug("MLLP connection %s ended: %s", peer, exc)
        finally:
            self.server.track(sock, False)

    def _reply(self, sock: socket.socket, payload: bytes, truncated: bool, peer: str) -> None:
        try:
            answer = self.server.on_frame(payload, truncated, peer)
        except Exception:
            LOG.exception("HL7 message from %s could not be handled", peer)
            answer = None
        if answer is not None:
            sock.sendall(frame(answer))

    def _serve(self, sock: socket.socket, peer: str) -> None:
        buf = bytearray()
        in_frame = False
        while not self.server.closing:
            sock.settimeout(FRAME_TIMEOUT if in_frame else IDLE_TIMEOUT)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if in_frame:
                    LOG.warning("MLLP %s: frame not completed within %ss", peer, FRAME_TIMEOUT)
                    self._reply(sock, bytes(buf), True, peer)
                return
            if not data:
                if in_frame and buf:
                    LOG.warning("MLLP %s: connection closed in the middle of a frame", peer)
                    with contextlib.suppress(OSError):
                        self._reply(sock, bytes(buf), True, peer)
                return
            buf += data
            while True:
                if not in_frame:
                    # tolerate line breaks between frames; anything else is not MLLP
                    stripped = buf.lstrip(b"\r\n")
                    del buf[:len(buf) - len(stripped)]
                    if not buf:
                        break
                    if buf[0:1] != SB:
                        LOG.warning("MLLP %s: %d bytes outside a frame; closing the connection", peer, len(buf))
                        return
                    del buf[0]
                    in_frame = True
                end = buf.find(EB)
                restart = buf.find(SB)
                if restart >= 0 and (end < 0 or restart < end):
                    # a new start block before the end block: the previous frame was cut short
                    LOG.warning("MLLP %s: frame cut short by a new start block", peer)
                    self._reply(sock, bytes(buf[:restart]), True, peer)
                    del buf[:restart]
                    in_frame = False
                    continue
                if end < 0:
                    if len(buf) > MAX_FRAME:
                        LOG.warning("MLLP %s: frame larger than %d bytes; closing", peer, MAX_FRAME)
                        self._reply(sock, bytes(buf[:4096]), True, peer)
                        return
                    break
                # complete at its end block: a CR after it that comes in a later read is skipped as a
                # line break between frames (waiting for it kept a sender that omits it 30 s for its ACK)
                payload = bytes(buf[:end])
                tail = end + 2 if buf[end + 1:end + 2] == CR else end + 1
                del buf[:tail]
                in_frame = False
                self._reply(sock, payload, False, peer)


class MLLPServer(socketserver.ThreadingTCPServer):
    """Threaded MLLP listener; `on_frame` answers each frame."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], on_frame: FrameHandler) -> None:
        self.on_frame = on_frame
        self.closing = False
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Connection)

    def track(self, sock: socket.socket, opened: bool) -> None:
        with self._open_lock:
            (self._open.add if opened else self._open.discard)(sock)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                  name="hl7-listener", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.closing = True
        self.shutdown()
        self.server_close()
        with self._open_lock:
            for sock in list(self._open):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    @property
    def port(self) -> int:
        return self.server_address[1]


# --------------------------------------------------------------------------- client


class MLLPError(OSError):
    """The peer could not be reached or answered with something that is not an MLLP frame."""


def read_frame(sock: socket.socket, timeout: float) -> bytes:
    """Read one framed reply (blocking up to `timeout` seconds)."""
    sock.settimeout(timeout)
    buf = bytearray()
    while True:
        data = sock.recv(65536)
        if not data:
            raise MLLPError("connection closed before a complete reply")
        buf += data
        start = buf.find(SB)
        if start < 0:
            if buf.strip(b"\r\n"):
                raise MLLPError("reply is not MLLP framed")
            continue
        end = buf.find(EB + CR, start)
        if end >= 0:
            return bytes(buf[start + 1:end])
        if len(buf) > MAX_FRAME:
            raise MLLPError("reply too large")


def send(host: str, port: int, payload: bytes, timeout: float = 10.0, expect_reply: bool = True) -> bytes | None:
    """Send one message on a new connection and return the reply frame's content."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(frame(payload))
        if not expect_reply:
            return None
        return read_frame(sock, timeout)
