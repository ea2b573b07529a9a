"""Every change the station makes to pynetdicom internals, in one place.

pynetdicom is pinned to 3.0.4 in pyproject.toml, and `install()` checks at every start that each
library function a patch replaces, copies or wraps is the reviewed 3.0.4 source (sha256 of its
source, read from the library's files: `appliance/pnd_release.py`). A speed-only patch (2 to 3c)
over changed code is left out, with a warning in the log, and the library's own code runs. The called-AE-title patch (1) carries behaviour: the
library's path would accept other called titles than the station's, so over changed code
`install()` raises `LibraryChanged` and the station does not start (`burnstation run` checks
this before it starts any process). `tests/test_pnd_tuning.py` also fails when an internal this
module relies on changes shape, so an upgrade is a deliberate act.

1. Several called AE titles on one listener: pynetdicom compares the called AE title with one
   title only. The station answers to `<AET>`, `<AET>_E`, `<AET>_P`, `<AET>_TE` and `<AET>_TP`,
   so the acceptor's negotiation is wrapped: an AE that carries `accepted_called_aets` rejects
   any other called title (A-ASSOCIATE-RJ, reason 7 "called AE title not recognised") and takes
   the called title as its own for the rest of the association. A request the library's own
   negotiation fails on (it raised, e.g. on a presentation context without a transfer syntax,
   and the peer heard nothing until the time-out) is rejected, "no reason given".

2. Event-driven reactors. Each association runs two polling loops: the DUL thread sleeps 1 ms
   whenever it finds nothing to do, and the association thread sleeps 1 ms on every turn. A
   C-STORE crosses both twice (request: DUL -> association thread; response: association thread
   -> DUL), so every object paid up to ~2-3 ms of sleeping. Here the loops are the library's own
   (copied from 3.0, line for line, minus the sleeps) but they block instead:
   - the DUL waits in `select()` on its socket plus a wake-up socketpair; the queues other threads
     feed it (`event_queue`, `to_provider_queue`), `kill_dul` and `stop_dul` poke the socketpair;
   - the association thread waits on a `threading.Event` set whenever the DUL feeds it
     (`dimse.msg_queue`, `dul.to_user_queue`), when the DUL thread ends, and on `kill`.
   The DUL acts on the events already queued before it reads the socket again (the library's loop
   read first, and a read blocks until a whole PDU header is there: a broken PDU followed by part
   of another was answered only at the time-out).
   Both waits time out after `IDLE_WAIT` seconds, so the timers (ARTIM, network idle) are still
   checked as before, only with that resolution instead of 1 ms.
   The association thread fires EVT_RELEASED just before (not after) queueing the A-RELEASE-RP,
   so a peer closing right after the response cannot make the release look like a lost
   connection. The association thread never waits for itself from the DUL thread (`kill`).

2b. C-STORE requests served in the DUL thread. Even without sleeps, every object still crossed
   two threads (DUL -> association thread -> DUL); on a busy machine each wake-up waits for a
   CPU. When a complete C-STORE request arrives, nothing is queued for or being served by the
   association thread, and the association is an established acceptor with a valid context,
   the DUL thread runs `Association._serve_request` itself (the same library code the
   association thread would run) and sends the response on its next turn. Anything else
   (other services, a paused reactor, requests during a C-GET, an unknown context) is queued
   for the association thread exactly as before, so requests are still served in order.

3. C-STORE-RSP packed directly. `DIMSEServiceProvider.send_msg` builds a pydicom Dataset for
   the command set and encodes it twice (once for the group length): about half of the Python
   time per stored object. `encode_store_rsp` packs the same Implicit VR Little Endian bytes with
   struct; any response it does not cover (Offending Element, non-ASCII text, a command set
   larger than the peer's PDU, an EVT_DIMSE_SENT handler that wants the message object) takes
   the library's path. Byte-for-byte equality with the library is tested.

3a. C-STORE-RQ command sets read directly. The library decodes every command set into a
   pydicom Dataset and then copies it element by element into the request primitive. When a
   C-STORE-RQ command set arrives whole in one PDV and holds only the standard elements (each
   single-valued, well-formed), `_decode_store_rq` unpacks it with struct and fills the C_STORE
   primitive through the same setters (same validation); the data set fragments still go through
   the library's `decode_msg`. Anything else, or an EVT_DIMSE_RECV handler that wants the decoded
   command set, takes the library's path. Equality of the resulting primitives is tested.

3b. Socket reads in one piece. `AssociationSocket.recv` reads a PDU in 4 KiB `recv` calls,
   appending each to a bytearray (a 128 KiB P-DATA PDU: 32 calls and copies). `_socket_recv`
   reads into a bytearray with `recv_into` instead (allocated as the bytes arrive, never the length
   a header merely claims); same result, same behaviour at end of stream (returns what was read),
   same exceptions (time-outs, resets).

3c. C-STORE requests sent directly by the requestor (`direct_store`, the transfer process). The
   library's send_c_store encodes the command set with pydicom (twice), hands each P-DATA to the
   DUL thread through a queue, and the response comes back through the DUL thread and another
   queue: two thread hand-offs and two pydicom codecs per object, plus one per 16 KiB PDU of a
   large one. While `lend_socket` holds an established requestor association, the DUL thread
   leaves the socket alone (it waits on its wake-up socket only) and the calling thread writes
   each request (command set packed with struct, first data fragment in the same PDU, the stored
   file's data set bytes as they are) and reads the C-STORE-RSP itself. Anything it does not
   expect (another PDU type, an A-ABORT, a time-out) ends the direct path: the socket goes back
   to the DUL and the association is aborted. Only for stored syntaxes the peer accepted as they
   are, with no PDU/DIMSE event handlers bound; everything else takes the library's path.

3d. C-MOVE requests sent and their responses read directly by the requestor (the transfer
   process's retrieve), in the same way as 3c: the library decoded every pending C-MOVE-RSP with
   pydicom in the DUL thread, handed it over through a queue and built a status Dataset of it,
   about a millisecond of CPU per retrieved instance, next to the dicom process storing that
   very instance. The command set is packed and each response's read with struct; the
   identifier is encoded once with pydicom (Implicit or Explicit VR Little Endian only; anything
   else takes the library's path), an identifier in a response decoded with pydicom.

3e. Data sets streamed to disk (`stream`): see `_stream_data_set`.

3f. C-STORE requests served straight from the socket (`lean_store`). Even with 2 to 3e, every
   object still went through the library's PDU objects, event queue and state machine twice
   (command and data PDUs), a DIMSE message, `_serve_request`, the service class and the send
   path back through the state machine: about a third of the CPU per small object. When a
   P-DATA-TF PDU arrives in Sta6 on a plain socket with nothing bound to the PDU, data or DIMSE
   events, no message in progress, and its first item is a whole C-STORE-RQ command set that
   `_decode_store_rq` reads on an accepted context (a SOP class the library would serve with
   its Storage Service Class, one EVT_C_STORE handler bound), the DUL thread collects the data
   fragments itself (a data set in several fragments goes to 3e's file as it arrives), runs the
   handler as StorageServiceClass.SCP would (same Event, same `attempt` behaviour on an
   exception), and writes the C-STORE-RSP to the socket (any status other than a plain int the
   library knows, or a full send queue, goes through the library's `send_msg`). Anything else
   goes to the library: a PDU that breaks a request off (another type, a command fragment,
   another context) hands the request over exactly as 3a would have built it; a request the
   association is not ready to serve (a queued or running request, a paused reactor) is queued
   as the DIMSE layer would queue it. The next fragments of a data set that are already there
   are read in the same pass of the reactor loop. The PDU reads go through a second socket
   object on a duplicate of the descriptor, in blocking mode as Python sees it: on the
   association's own socket (which has a time-out) Python waits for data before every recv and
   send, MSG_DONTWAIT or not, and the DUL would not hear its wake-up meanwhile.
   `splice`: a PDU holding one large data fragment of such a request goes from the socket
   through a pipe into the file (os.splice), never through Python (its item header is read, not
   peeked: a sender held back by a full receive window cuts the stream anywhere). A PDU of the
   request that the library reads instead (3f saw only part of its header) continues the request
   in the library (`_dimse_receive_primitive`); while 3f holds a request and nothing has come,
   the library does not look (`_fast_pdata` returns None).
   `_read_pdu_data`, `_serve_request` and `StorageServiceClass.SCP` (what 3f does instead of
   them) are pinned in the source-hash check.

4. Protocol logging handlers only in debug mode. pynetdicom binds its "standard" logging
   handlers (a formatted log of every PDU and DIMSE message) to every association; they do
   their work even when the log level discards it. `set_protocol_logging(False)` binds none;
   the DICOM server turns them on with `dicom.debug`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import inspect
import logging
import os
import queue
import re
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from io import BytesIO
from typing import Any, cast

from pydicom.uid import UID
from pydicom.values import convert_AE_string, convert_UI
from pynetdicom import _config, evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE, N_EVENT_REPORT
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import A_P_ABORT, P_DATA
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class  # type: ignore[attr-defined]
from pynetdicom.transport import AssociationSocket
from pynetdicom.utils import make_target

from appliance.pnd_release import (  # noqa: F401 - the check's names are part of this module's API
    BEHAVIOURAL,
    PATCH_SOURCES,
    REPLACED_SOURCES,
    LibraryChanged,
    changed_sources,
    check_library,
    installed_version,
)

_ORIGINAL_NEGOTIATE = ACSE._negotiate_as_acceptor
_ORIGINAL_ASSOC_INIT = Association.__init__
_ORIGINAL_ASSOC_KILL = Association.kill
_ORIGINAL_SEND_MSG = DIMSEServiceProvider.send_msg
_ORIGINAL_RECV = AssociationSocket.recv
_ORIGINAL_RECEIVE_PRIMITIVE = DIMSEServiceProvider.receive_primitive
_ORIGINAL_SEND_C_STORE = Association.send_c_store  # not replaced; pinned for 3c, which stands in for it
_ORIGINAL_SEND_C_MOVE = Association.send_c_move  # not replaced; pinned for 3d, which stands in for them
_ORIGINAL_WRAP_MOVE = Association._wrap_get_move_responses
_ORIGINAL_DECODE_MSG = DIMSEMessage.decode_msg  # not replaced; pinned for 3e, which does its data-set part
_ORIGINAL = {
    "Association._run_reactor": Association._run_reactor,
    "DULServiceProvider.run_reactor": DULServiceProvider.run_reactor,
    "DULServiceProvider.kill_dul": DULServiceProvider.kill_dul,
    "DULServiceProvider.stop_dul": DULServiceProvider.stop_dul,
}
LOG = logging.getLogger("burnstation.dicom")
_LOGGER_DUL = logging.getLogger("pynetdicom.dul")
_LOGGER_ASSOC = logging.getLogger("pynetdicom.association")
_LOGGER_DIMSE = logging.getLogger("pynetdicom.dimse")
_LOGGER_SERVICE = logging.getLogger("pynetdicom.service_class")
_installed = False

IDLE_WAIT = 0.05  # seconds a reactor blocks when idle before re-checking its timers
# 3c: while the socket is lent the DUL checks no timers and is woken for everything it must do
# (give back, kill, stop, an abort queued); a long wait spares the sending thread 20 GIL
# hand-overs a second
LENT_WAIT = 1.0
_INLINE_STORE = False  # 2b on (set by install)
_DIRECT_STORE = False  # 3c on (set by install)
_DIRECT_MOVE = False  # 3d on (set by install)
_STREAM = False  # 3e on (set by install)
_LEAN = False  # 3f on (set by install)
_SPLICE = False  # 3f moves large data fragments socket -> pipe -> file (set by install)



def _negotiate_as_acceptor(self: ACSE) -> None:
    allowed = getattr(self.assoc.ae, "accepted_called_aets", None)
    if allowed is not None:
        primitive = cast(Any, self.requestor.primitive)
        called = str(primitive.called_ae_title).strip()
        self.requestor.ae_title = primitive.calling_ae_title
        if called not in allowed:
            self.assoc.acceptor.ae_title = called
            self.send_reject(0x01, 0x01, 0x07)
            evt.trigger(self.assoc, evt.EVT_REJECTED, {})
            self.assoc.kill()
            return
        self.assoc.acceptor.ae_title = called
    try:
        _ORIGINAL_NEGOTIATE(self)
    except Exception:
        # the library's negotiation fails on some requests it decoded (a presentation context without
        # a transfer syntax: IndexError) and its thread ended without a word to the peer, who waited
        # the time-out (found by the fuzzer): such a request is rejected, "no reason given"
        if self.assoc.is_established:
            raise
        LOG.exception("A-ASSOCIATE-RQ from %s could not be negotiated: rejected", self.requestor.ae_title)
        self.send_reject(0x01, 0x01, 0x01)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


# --------------------------------------------------------------------------- 2. event-driven reactors


class _WakeQueue(queue.Queue):
    """A queue.Queue that calls `notify` after every put."""

    def __init__(self, notify: Callable[[], None]) -> None:
        super().__init__()
        self._notify = notify

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._notify()


def _notify_dul(dul: DULServiceProvider) -> None:
    """Wake the DUL thread if it may be blocked (not needed when the DUL itself is the caller)."""
    if getattr(dul, "_bs_ident", None) == threading.get_ident():
        return
    waker = getattr(dul, "_bs_waker", None)
    if waker is not None:
        try:
            waker.send(b"\0")
        except OSError:  # closed (the reactor ended) or full (a wake-up is pending anyway)
            pass


class _DimseQueue(_WakeQueue):
    """dimse.msg_queue: wakes the association thread, or lets the DUL thread serve a C-STORE itself."""

    def __init__(self, assoc: Association) -> None:
        super().__init__(assoc._bs_wake.set)  # type: ignore[attr-defined]
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if _INLINE_STORE and _serve_inline(self, item):
            return
        super().put(item, block, timeout)


def _serve_inline(msg_queue: _DimseQueue, item: Any) -> bool:
    """Serve a C-STORE request in the DUL thread when that keeps the library's order and rules."""
    context_id, msg = item
    if type(msg) is not C_STORE or msg.MessageIDBeingRespondedTo is not None:
        return False
    assoc = msg_queue._assoc
    if getattr(assoc.dul, "_bs_ident", None) != threading.get_ident():
        return False
    if (not assoc.is_acceptor or not assoc.is_established or assoc._sent_release
            or context_id not in assoc._accepted_cx or not msg.is_valid_request
            or not assoc._reactor_checkpoint.is_set()):
        return False
    with assoc._bs_serve_lock:  # type: ignore[attr-defined]
        if msg_queue.queue or assoc._bs_serving:  # type: ignore[attr-defined]
            return False
        assoc._bs_serving = True  # type: ignore[attr-defined]
    try:
        assoc._serve_request(msg, context_id)
    finally:
        assoc._bs_serving = False  # type: ignore[attr-defined]
    return True


def _association_init(self: Association, ae: Any, mode: str) -> None:
    _ORIGINAL_ASSOC_INIT(self, ae, mode)
    self._bs_wake = threading.Event()  # type: ignore[attr-defined]
    self._bs_serve_lock = threading.Lock()  # type: ignore[attr-defined]
    self._bs_serving = False  # type: ignore[attr-defined]
    dul = self.dul
    dul._bs_waker = None  # type: ignore[attr-defined]
    dul._bs_ident = None  # type: ignore[attr-defined]
    dul._bs_lent = threading.Event()  # type: ignore[attr-defined]
    dul._bs_parked = threading.Event()  # type: ignore[attr-defined]
    dul._bs_lean = None  # type: ignore[attr-defined]  # 3f: a C-STORE request whose data set is arriving
    dul._bs_peeker = None  # type: ignore[attr-defined]  # 3e/3f: (socket, its non-blocking twin)
    dul._bs_pipe = None  # type: ignore[attr-defined]  # 3f with splice: (read end, write end, capacity)
    dul.event_queue = _WakeQueue(lambda: _notify_dul(dul))
    dul.to_provider_queue = _WakeQueue(lambda: _notify_dul(dul))
    dul.to_user_queue = _WakeQueue(self._bs_wake.set)
    self.dimse.msg_queue = _DimseQueue(self)


def _association_kill(self: Association) -> None:
    wake = getattr(self, "_bs_wake", None)
    self._kill = True
    if wake is not None:
        wake.set()
    if getattr(self.dul, "_bs_ident", None) == threading.get_ident():
        # called in the DUL thread (an abort while serving inline): the library would wait for
        # the DUL to stop, i.e. for itself; stop it without waiting instead
        self._reactor_checkpoint.set()
        self.is_established = False
        self._is_paused = True
        self.dul.kill_dul()
        return
    _ORIGINAL_ASSOC_KILL(self)


def _dul_kill(self: DULServiceProvider) -> None:
    self._kill_thread = True
    _notify_dul(self)


def _dul_stop(self: DULServiceProvider) -> bool:
    if self.state_machine.current_state == "Sta1":
        self._kill_thread = True
        _notify_dul(self)
        while self.is_alive():
            time.sleep(self._run_loop_delay)
        return True
    return False


def _dul_wait(dul: DULServiceProvider, waker_r: socket.socket) -> None:
    """Block until the peer sent data, another thread queued work for the DUL, or IDLE_WAIT passed."""
    if dul._kill_thread or dul.event_queue.queue or dul.to_provider_queue.queue:  # type: ignore[attr-defined]
        return
    rlist: list[Any] = [waker_r]
    assoc_sock = dul.socket
    raw = getattr(assoc_sock, "socket", None)
    lent = getattr(dul, "_bs_lent", None)
    if raw is not None and getattr(assoc_sock, "_is_connected", False) and not (lent is not None and lent.is_set()):
        if isinstance(raw, ssl.SSLSocket) and raw.pending():
            return
        rlist.append(raw)
    try:
        readable, _, _ = select.select(rlist, [], [], IDLE_WAIT)
    except (OSError, ValueError):  # the socket was closed under us: let the loop notice
        time.sleep(dul._run_loop_delay)
        return
    if waker_r in readable:
        try:
            while waker_r.recv(4096):
                pass
        except OSError:
            pass


def _wait_waker(waker_r: socket.socket) -> None:
    """3c: while the socket is lent, wait for a wake-up only (never read the peer's data)."""
    try:
        readable, _, _ = select.select([waker_r], [], [], LENT_WAIT)
        if readable:
            while waker_r.recv(4096):
                pass
    except OSError:
        pass


def _dul_run_reactor(self: DULServiceProvider) -> None:
    """DULServiceProvider.run_reactor of pynetdicom 3.0 with the idle sleep replaced by `_dul_wait`."""
    waker_r, waker_w = socket.socketpair()
    waker_r.setblocking(False)
    waker_w.setblocking(False)
    self._bs_ident = threading.get_ident()  # type: ignore[attr-defined]
    self._bs_waker = waker_w  # type: ignore[attr-defined]
    try:
        _dul_loop(self, waker_r)
    finally:
        self._bs_waker = None  # type: ignore[attr-defined]
        waker_w.close()
        waker_r.close()
        peeker = getattr(self, "_bs_peeker", None)
        if peeker is not None:
            self._bs_peeker = None  # type: ignore[attr-defined]
            peeker[1].close()
        pipe = getattr(self, "_bs_pipe", None)
        if pipe is not None:
            self._bs_pipe = None  # type: ignore[attr-defined]
            os.close(pipe[0])
            os.close(pipe[1])
        _discard_unfinished(self)
        wake = getattr(self.assoc, "_bs_wake", None)
        if wake is not None:
            wake.set()


def _discard_unfinished(dul: DULServiceProvider) -> None:
    """The association is over: a data set still arriving (3e's or 3f's temp file) never will.
    Its file goes now, not when the garbage collector gets to the association's objects."""
    lean = getattr(dul, "_bs_lean", None)
    dul._bs_lean = None  # type: ignore[attr-defined]
    dimse = getattr(dul.assoc, "dimse", None)
    message = getattr(dimse, "message", None)
    sinks = [getattr(lean, "sink", None), getattr(message, "_bs_sink", None)]
    # a complete request queued behind another (the association thread was serving a request when it
    # arrived) is never served now: its data set's file goes too. Only such requests (a streamed data
    # set) leave the queue, under the lock the association thread takes its requests with, so each is
    # either served or discarded; anything else stays where it was (e.g. a response a thread waits for).
    msg_queue = getattr(dimse, "msg_queue", None)
    serve_lock = getattr(dul.assoc, "_bs_serve_lock", None)
    if msg_queue is not None and serve_lock is not None:
        with serve_lock, msg_queue.mutex:
            for item in list(msg_queue.queue):
                data_set = getattr(item[1], "DataSet", None)
                if hasattr(data_set, "discard"):
                    msg_queue.queue.remove(item)
                    sinks.append(data_set)
    for sink in sinks:
        if sink is not None:
            sink.discard()


# an A-ASSOCIATE-AC, -RJ or -RQ, an A-RELEASE-RQ or -RP PDU received (P-DATA: the DIMSE layer checks its
# values; A-ABORT: the association ends either way)
_ASSOCIATE_EVENTS = ("Evt3", "Evt4", "Evt6", "Evt12", "Evt13")


def _unconvertible(dul: DULServiceProvider) -> bool:
    """Whether the PDU waiting for the state machine cannot become its primitive (it is then dropped). The library's action converts it unguarded: a PDU that decodes but carries e.g. a
    presentation context ID of 0 made the action fail, which ends the DUL without a word to the peer,
    who waited the whole time-out for an answer (found by the fuzzer: tests/fuzz/crashes/)."""
    try:
        pending = dul._recv_pdu.queue[0]
    except IndexError:
        return False
    try:
        pending.to_primitive()
    except Exception as exc:
        _LOGGER_DUL.error("Invalid %s PDU, aborting: %s", type(pending).__name__, exc)
        dul._recv_pdu.get(False)
        return True
    return False


def _dul_loop(self: DULServiceProvider, waker_r: socket.socket) -> None:
    # --- from here on the library's loop (pynetdicom 3.0.4 dul.py), `time.sleep` -> `_dul_wait`
    self._idle_timer.start()
    self.socket = cast(Any, self.socket)
    sleep = False

    while True:
        # Let the assoc reactor off the leash
        if not self.assoc._dul_ready.is_set():
            self.assoc._dul_ready.set()
            sleep = True

        if sleep:
            _dul_wait(self, waker_r)

        if self._kill_thread:
            break

        lent = getattr(self, "_bs_lent", None)  # 3c: the socket is lent to a requestor thread
        if lent is not None and lent.is_set():
            self._bs_parked.set()  # type: ignore[attr-defined]
            _wait_waker(waker_r)
            sleep = False
            continue

        # Check the ARTIM timer first so its event is placed on the queue
        #   ahead of any other events this loop
        if self.artim_timer.expired:
            self.event_queue.put("Evt18")

        # Check the connection for incoming data
        try:
            # We can either encode and send a primitive **OR**
            #   receive and decode a PDU per loop of the reactor
            if self._process_recv_primitive():  # encode (sent by state machine)
                pass
            # (station) events already queued are acted on before the next read: reading blocks until a
            # whole PDU header is there, so a broken PDU followed by a partial one was answered (A-ABORT)
            # only at the time-out (found by the fuzzer)
            elif self.event_queue.empty():
                read = _fast_pdata(self)  # None: 3f holds a request and nothing came yet (see there)
                if read is not None and (read or self._is_transport_event()):
                    self._idle_timer.restart()  # receive and decode PDU (3e: or write the data it carries)
        except Exception as exc:
            _LOGGER_DUL.error("Exception in DUL.run(), aborting association")
            _LOGGER_DUL.exception(exc)
            abort_pdu = A_ABORT_RQ()
            abort_pdu.source = 0x02
            abort_pdu.reason_diagnostic = 0x00
            self.socket.send(abort_pdu.encode())
            self.assoc.is_aborted = True
            self.assoc.is_established = False
            # Hard shutdown of the Association and DUL reactors
            self.assoc._kill = True
            self._kill_thread = True
            return

        # Check the event queue to see if there is anything to do
        try:
            event = self.event_queue.get(block=False)
        # If the queue is empty, return to the start of the loop
        except queue.Empty:
            sleep = True
            continue

        if event in _ASSOCIATE_EVENTS and _unconvertible(self):
            event = "Evt19"  # as the library treats a PDU it cannot decode: A-ABORT, then close
        self.state_machine.do_action(event)
        sleep = False


def _association_run_reactor(self: Association) -> None:
    """Association._run_reactor of pynetdicom 3.0 with the 1 ms sleep replaced by an event wait."""
    wake: threading.Event = self._bs_wake  # type: ignore[attr-defined]
    idle = False
    self._is_paused = False
    while not self._kill:
        if idle:
            # paused while waiting, so send_*()/release() from other threads need not spin
            self._is_paused = True
            wake.wait(IDLE_WAIT)
            wake.clear()

        # --- from here on the library's loop (pynetdicom 3.0.4 association.py)
        self._is_paused = True
        self._reactor_checkpoint.wait()
        self._is_paused = False

        # Check with the DIMSE provider to see if a completely decoded
        #   message is available
        with self._bs_serve_lock:  # type: ignore[attr-defined]
            context_id, msg = self.dimse.get_msg(block=False)
            self._bs_serving = bool(msg)  # type: ignore[attr-defined]
        idle = not msg
        if msg:
            try:
                self._serve_request(msg, cast(int, context_id))
            finally:
                self._bs_serving = False  # type: ignore[attr-defined]

        # Check for release request from the peer
        if self.is_established and self.acse.is_release_requested():
            _LOGGER_ASSOC.info("Association Released")
            self.is_released = True
            self.is_established = False
            # EVT_RELEASED before the A-RELEASE-RP goes out (the library fires it just after):
            # with the DUL no longer sleeping, the peer's close (EVT_CONN_CLOSE) could otherwise
            # be seen first and the association would be logged as "connection closed"
            evt.trigger(self, evt.EVT_RELEASED, {})
            self.acse.send_release(is_response=True)
            self.kill()
            return

        # Check for abort from either locally or the peer
        if self.acse.is_aborted():
            log_msg = "Association Aborted"
            if self.acse.is_aborted("a-p-abort"):
                log_msg += " (A-P-ABORT)"
            _LOGGER_ASSOC.info(log_msg)
            # Ensure that EVT_ASCE_RECV fires for subscribers
            self.dul.receive_pdu(wait=False)
            self.is_aborted = True
            self.is_established = False
            evt.trigger(self, evt.EVT_ABORTED, {})
            self.kill()
            return

        # Check if the DULServiceProvider thread is still running
        if not self.dul.is_alive():
            self.kill()
            return

        # Check if network_timeout has expired
        if self.dul.idle_timer_expired():
            _LOGGER_ASSOC.error("Network timeout reached")
            if self.network_timeout_response == "A-RELEASE":
                self._is_paused = True
                self._reactor_checkpoint.wait()
                self.release()
                self._is_paused = False
            else:
                self.abort()

            self.kill()
            return


# --------------------------------------------------------------------------- 3. C-STORE-RSP fast path

_pack_us = struct.Struct("<HHIH").pack
_pack_len = struct.Struct("<HHI").pack


def _text_element(elem: int, value: str, pad: bytes) -> bytes:
    data = value.encode("ascii")  # UnicodeEncodeError: not covered, the caller falls back
    if len(data) % 2:
        data += pad
    return _pack_len(0x0000, elem, len(data)) + data


def encode_store_rsp(primitive: C_STORE) -> bytes | None:
    """The Implicit VR Little Endian command set of a C-STORE response, or None if not covered.

    Same elements, order and padding as pynetdicom's C_STORE_RSP.primitive_to_message + encode.
    """
    msg_id = primitive.MessageIDBeingRespondedTo
    status = primitive.Status
    if msg_id is None or status is None or primitive.OffendingElement is not None:
        return None
    return _store_rsp_command(msg_id, status, primitive.AffectedSOPClassUID, primitive.AffectedSOPInstanceUID,
                              primitive.ErrorComment)


def _store_rsp_command(msg_id: int, status: int, sop_class: Any, sop_uid: Any, error_comment: Any = None) -> bytes | None:
    try:
        body = []
        if sop_class is not None:
            body.append(_text_element(0x0002, str(sop_class), b"\0"))
        body.append(_pack_us(0x0000, 0x0100, 2, 0x8001))  # Command Field: C-STORE-RSP
        body.append(_pack_us(0x0000, 0x0120, 2, msg_id))
        body.append(_pack_us(0x0000, 0x0800, 2, 0x0101))  # Command Data Set Type: none
        body.append(_pack_us(0x0000, 0x0900, 2, status))
        if error_comment is not None:
            body.append(_text_element(0x0902, str(error_comment), b" "))
        if sop_uid is not None:
            body.append(_text_element(0x1000, str(sop_uid), b"\0"))
        data = b"".join(body)
    except (UnicodeEncodeError, struct.error):
        return None
    return _pack_len(0x0000, 0x0000, 4) + struct.pack("<I", len(data)) + data


def _dimse_send_msg(self: DIMSEServiceProvider, primitive: Any, context_id: int) -> None:
    """DIMSEServiceProvider.send_msg, with C-STORE responses packed by `encode_store_rsp`."""
    if type(primitive) is C_STORE and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
        encoded = encode_store_rsp(primitive)
        max_pdu = self.maximum_pdu_size
        if encoded is not None and (not max_pdu or len(encoded) <= max_pdu - 6):
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))
            self.dul.send_pdu(pdata)
            return
    _ORIGINAL_SEND_MSG(self, primitive, context_id)


_unpack_element = struct.Struct("<HHI").unpack_from
_unpack_us = struct.Struct("<H").unpack
# C-STORE-RQ command elements: element number -> (primitive attribute or None, VR)
_STORE_RQ_ELEMENTS = {
    0x0000: (None, "UL"),  # Command Group Length
    0x0002: ("AffectedSOPClassUID", "UI"),
    0x0100: (None, "US"),  # Command Field
    0x0110: ("MessageID", "US"),
    0x0700: ("Priority", "US"),
    0x0800: (None, "US"),  # Command Data Set Type
    0x1000: ("AffectedSOPInstanceUID", "UI"),
    0x1030: ("MoveOriginatorApplicationEntityTitle", "AE"),
    0x1031: ("MoveOriginatorMessageID", "US"),
}


def _decode_store_rq(command: bytes) -> C_STORE | None:
    """The C_STORE request primitive of a standard C-STORE-RQ command set, or None (library path)."""
    values: dict[int, bytes] = {}
    pos, end = 0, len(command)
    last = -1
    while pos < end:
        if pos + 8 > end:
            return None
        group, elem, length = _unpack_element(command, pos)
        pos += 8
        if group != 0 or elem <= last or elem not in _STORE_RQ_ELEMENTS or pos + length > end or not length:
            return None
        last = elem
        values[elem] = command[pos:pos + length]
        pos += length
    for elem, raw in values.items():
        vr = _STORE_RQ_ELEMENTS[elem][1]
        if (vr == "US" and len(raw) != 2) or (vr == "UL" and len(raw) != 4) or (vr in ("UI", "AE") and b"\\" in raw):
            return None
    if (values.get(0x0100) != b"\x01\x00" or 0x0800 not in values or values[0x0800] == b"\x01\x01"
            or 0x0002 not in values or 0x0110 not in values or 0x1000 not in values):
        return None
    rq = C_STORE.__new__(C_STORE)
    rq.__dict__.update(_C_STORE_FRESH)
    try:
        for elem, raw in values.items():
            attr, vr = _STORE_RQ_ELEMENTS[elem]
            if attr is None:
                continue
            if vr == "US":
                value: Any = _unpack_us(raw)[0]
            elif vr == "UI":
                uid = _conformant_uid(raw, elem == 0x0002)
                if uid is not None:  # what the setter would store, without its checks (which it passes)
                    rq.__dict__[_UID_SLOTS[attr]] = uid
                    continue
                value = convert_UI(raw, True)
            else:
                value = convert_AE_string(raw, True)
            setattr(rq, attr, value)
    except Exception:  # the library raises the same from message_to_primitive -> its own handling
        return None
    return rq


_C_STORE_FRESH = dict(C_STORE().__dict__)  # what C_STORE.__init__ sets (all None)
_UID_SLOTS = {"AffectedSOPClassUID": "_affected_sop_class_uid", "AffectedSOPInstanceUID": "_affected_sop_instance_uid"}
_CONFORMANT = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*").fullmatch  # pydicom's RE_VALID_UID
_KNOWN_UIDS: dict[bytes, UID] = {}  # the SOP class UIDs seen


def _conformant_uid(raw: bytes, remember: bool) -> UID | None:
    """The UID of a UI value as convert_UI + set_uid make it, when it is conformant (then set_uid
    neither raises nor warns, and the result is the same); None for anything else."""
    uid = _KNOWN_UIDS.get(raw)
    if uid is not None:
        return uid
    text = raw.decode("latin-1").rstrip("\0 ")
    if len(text) > 64 or not _CONFORMANT(text):
        return None
    uid = UID(text)
    if remember and len(_KNOWN_UIDS) < 512:
        _KNOWN_UIDS[raw] = uid
    return uid


def _dimse_receive_primitive(self: DIMSEServiceProvider, primitive: Any) -> None:
    """DIMSEServiceProvider.receive_primitive of pynetdicom 3.0 with C-STORE-RQ command sets read by
    `_decode_store_rq` (the data set fragments still go through DIMSEMessage.decode_msg)."""
    lean = getattr(self.assoc.dul, "_bs_lean", None)
    if lean is not None and self.message is None:
        # 3f holds a request and the library read its next PDU (3f could not see the whole header
        # yet, or it arrived just after 3f found nothing): the request goes on here, in order
        _lean_to_library(self.assoc.dul, lean)
    if (self.message is None and type(primitive) is P_DATA and primitive.presentation_data_value_list
            and not _config.STORE_RECV_CHUNKED_DATASET and not self.assoc.get_handlers(evt.EVT_DIMSE_RECV)):
        pdvs = primitive.presentation_data_value_list
        context_id, data = pdvs[0]
        if data[0] & 3 == 3:
            rq = _decode_store_rq(data[1:])
            if rq is not None:
                message = DIMSEMessage()
                message.__class__ = C_STORE_RQ
                message.context_id = context_id
                message.encoded_command_set.write(data[1:])
                message._bs_primitive = rq  # type: ignore[attr-defined]
                self.message = message
                rest = P_DATA()
                rest.presentation_data_value_list.extend(pdvs[1:])  # items as received (no re-validation)
                primitive = rest

    streamed = _stream_data_set(self, primitive) if _STREAM and self.message is not None else None

    # --- from here on the library's function (pynetdicom 3.0.4 dimse.py), message_to_primitive
    #     skipped when the command set was read above
    if self.message is None:
        self.message = DIMSEMessage()

    if streamed if streamed is not None else self.message.decode_msg(primitive, self.assoc):
        # Trigger event
        evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": self.message})

        context_id = cast(int, self.message.context_id)
        try:
            fast = getattr(self.message, "_bs_primitive", None)
            if fast is not None and not len(self.message.command_set):
                sink = getattr(self.message, "_bs_sink", None)
                fast.DataSet = sink.finish() if sink is not None else self.message.data_set
                fast._context_id = self.message.context_id
                fast._dataset_path = None
                fast._dataset_file = None
                d_primitive = fast
            else:
                d_primitive = self.message.message_to_primitive()
        except Exception as exc:
            _LOGGER_DIMSE.error("Received an invalid DIMSE message")
            _LOGGER_DIMSE.exception(exc)
            self.dul.event_queue.put("Evt19")
            return

        # Keep C-CANCEL requests separate from other messages
        # Only allow up to 10 C-CANCEL requests
        if isinstance(d_primitive, C_CANCEL) and len(self.cancel_req) < 10:
            msg_id = cast(int, d_primitive.MessageIDBeingRespondedTo)
            self.cancel_req[msg_id] = d_primitive
        elif isinstance(d_primitive, N_EVENT_REPORT) and d_primitive.is_valid_request:
            # N-EVENT-REPORT service requests are handled immediately
            t = threading.Thread(
                target=make_target(self.assoc._serve_request),
                args=(d_primitive, context_id),
            )
            t.start()
        else:
            self.msg_queue.put((context_id, d_primitive))

        # Fix for memory leak, Issue #41
        #   Reset the DIMSE message, ready for the next one
        self.message.encoded_command_set = BytesIO()
        self.message.data_set = BytesIO()
        self.message._data_set_file = None
        self.message._data_set_path = None
        self.message = None


# --------------------------------------------------------------------------- 3e. data sets streamed to disk


def _stream_data_set(self: DIMSEServiceProvider, primitive: Any) -> bool | None:
    """The data-set part of DIMSEMessage.decode_msg for a C-STORE-RQ read by 3a, with the fragments
    written to a file as they arrive instead of into a BytesIO: the writeback of a large object
    then runs while the rest of it is still on the wire, and its fsync after the last fragment has
    little left to wait for. Only for an acceptor whose listener offers a sink
    (`bs_stream_sink(assoc, request, context_id)`, the station's store handler) and a data set
    that spans more than one fragment. The handler gets the sink's `finish()` as the data set.

    Returns None to leave the primitive to the library (not such a message, or a command fragment
    where only data may come: the library's own handling then resumes with what arrived so far),
    False while the data set is incomplete, True when its last fragment has been written.
    """
    message = self.message
    rq = getattr(message, "_bs_primitive", None)
    if rq is None or type(primitive) is not P_DATA or len(message.command_set):
        return None
    pdvs = primitive.presentation_data_value_list
    sink = getattr(message, "_bs_sink", None)
    if sink is None:
        if not pdvs or any(data[0] & 1 for _cid, data in pdvs) or message.data_set.tell():
            return None
        if pdvs[0][1][0] & 2:  # the whole data set in one fragment: nothing to overlap
            return None
        opener = getattr(getattr(self.assoc, "_server", None), "bs_stream_sink", None)
        if opener is None or not self.assoc.is_acceptor:
            return None
        sink = opener(self.assoc, rq, message.context_id)
        if sink is None:
            return None
        message._bs_sink = sink  # type: ignore[attr-defined]
    elif any(data[0] & 1 for _cid, data in pdvs):  # a command fragment: give the bytes back to the library
        message.data_set.write(sink.abandon())
        message._bs_sink = None  # type: ignore[attr-defined]
        return None
    for _cid, data in pdvs:
        with memoryview(data) as view, view[1:] as fragment:
            sink.write(fragment)
        if data[0] & 2:
            return True
    return False


def _pdata_items(body: bytearray) -> list[tuple[int, int, int, int]] | None:
    """The PDV items of a P-DATA-TF body as (start, end, context ID, control byte), the fragment
    being body[start:end]; None when the items do not fill the body exactly or one is malformed
    (too short, context ID 0): the library's decoding then judges the PDU."""
    items: list[tuple[int, int, int, int]] = []
    pos, length = 0, len(body)
    while pos + 6 <= length:
        item_length = int.from_bytes(body[pos:pos + 4], "big")
        if item_length < 2 or pos + 4 + item_length > length or not body[pos + 4]:
            return None
        items.append((pos + 6, pos + 4 + item_length, body[pos + 4], body[pos + 5]))
        pos += 4 + item_length
    return items if items and pos == length else None


def _data_only(items: list[tuple[int, int, int, int]], context_id: int | None = None) -> bool:
    """Whether the items are data fragments (of one context when given) with only the last one
    possibly marked last."""
    for n, (_start, _end, cid, control) in enumerate(items):
        if control & 1 or (control & 2 and n != len(items) - 1) or (context_id is not None and cid != context_id):
            return False
    return True


def _queue_for_library(dul: DULServiceProvider, header: bytes, body: bytearray) -> None:
    """What the library's `_read_pdu_data` does with a P-DATA-TF PDU it read (no handler is bound)."""
    try:
        pdu = P_DATA_TF()
        pdu.decode(bytes(header) + bytes(body))
    except Exception as exc:
        _LOGGER_DUL.error("Unable to decode the received PDU data")
        _LOGGER_DUL.exception(exc)
        dul.event_queue.put("Evt19")
        return
    dul.event_queue.put("Evt10")
    dul._recv_pdu.put(pdu)


def _fast_pdata(dul: DULServiceProvider) -> bool | None:
    """Read a P-DATA-TF PDU without the library's PDU objects, event queue and state machine, for
    3e (data fragments of a data set being streamed to disk) and 3f (a whole C-STORE request).
    In Sta6 the library's action DT-2 only hands the PDU's primitive to the DIMSE layer, which is
    where both take over.

    Only for a plain socket with nothing bound to the PDU and data events (protocol logging off).
    Returns True when a PDU was consumed: one neither part takes (another message, a command
    fragment where data must come, a malformed item) is queued for the library exactly as
    `_read_pdu_data` would; False when no PDU was read (the library's own check runs: another PDU
    type, or nothing there yet). None when 3f holds a request and nothing has come since: the
    library must not look now, or a PDU arriving between the two looks is read by the library
    (the request then goes on in the library, correct but without 3f and splice for the rest).
    """
    if not (_STREAM or _LEAN):  # called on every pass of the reactor loop: nothing more when both are off
        return False
    first = _fast_pdata_once(dul)
    if not first:
        return first
    # the next fragments of a data set still arriving, when already there, are read at once: a pass
    # of the reactor loop (its wait, timers and queues) for each of them cost more than the reading
    for _more in range(_MORE_PDUS):
        message = dul.assoc.dimse.message
        if ((dul._bs_lean is None and getattr(message, "_bs_sink", None) is None)  # type: ignore[attr-defined]
                or dul._kill_thread or dul.event_queue.queue or dul.to_provider_queue.queue):  # type: ignore[attr-defined]
            break
        dul._idle_timer.restart()
        if not _fast_pdata_once(dul):
            break
    return True


_MORE_PDUS = 64  # at most this many PDUs read in one pass of the reactor loop
# socket flags as plain ints: they are IntFlag members, whose `|` and conversion cost microseconds per call
_NOW = int(socket.MSG_DONTWAIT)
_PEEK_NOW = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)


def _fast_pdata_once(dul: DULServiceProvider) -> bool | None:
    """`_fast_pdata` for one PDU."""
    assoc = dul.assoc
    lean: _LeanStore | None = dul._bs_lean  # type: ignore[attr-defined]
    message = assoc.dimse.message
    sink = getattr(message, "_bs_sink", None) if message is not None else None
    if sink is None and lean is None and not (_LEAN and message is None and assoc.is_acceptor):
        return False
    assoc_sock = dul.socket
    raw = getattr(assoc_sock, "socket", None)
    if (dul.state_machine.current_state != "Sta6" or _config.LOG_HANDLER_LEVEL != "none" or raw is None
            or isinstance(raw, ssl.SSLSocket) or not getattr(assoc_sock, "_is_connected", False)
            or assoc.get_handlers(evt.EVT_PDU_RECV) or assoc.get_handlers(evt.EVT_DATA_RECV)):
        if lean is not None:
            _lean_to_library(dul, lean)
        return False
    peeker = dul._bs_peeker  # type: ignore[attr-defined]
    if peeker is None or peeker[0] is not raw:
        if peeker is not None:
            peeker[1].close()
        # a second socket object on a duplicate of the descriptor, in blocking mode as Python sees it:
        # on the association's socket (which has a time-out) Python waits for data before every
        # recv, MSG_DONTWAIT or not, and the DUL would not hear its wake-up meanwhile
        peeker = dul._bs_peeker = (raw, socket.socket(fileno=os.dup(raw.fileno())))  # type: ignore[attr-defined]
    try:
        header = peeker[1].recv(6, _PEEK_NOW)
    except BlockingIOError:  # nothing there: the reactor waits for the socket, 3f looks again
        return None if lean is not None else False
    except OSError:
        return False
    if len(header) < 6 or header[0] != 0x04:
        # part of a header (the library's read waits for the rest), the end of the stream, another
        # PDU (a release, an abort): the library's, with the request as far as it got
        if lean is not None:
            _lean_to_library(dul, lean)
        return False
    twin = peeker[1]
    length = int.from_bytes(header[2:6], "big")
    twin.recv(6)  # peeked: it is there
    try:
        if _SPLICE and lean is not None and lean.sink is not None and length >= SPLICE_MIN and raw.gettimeout():
            # the item's header is read, not peeked: a sender held back by a full receive window
            # may have cut the headers anywhere, and only reading opens the window again
            body = _recv_body(twin, assoc_sock, 6)
            if len(body) == 6:
                if _splice_fragment(dul, lean, twin, body, length):
                    return True
                body += assoc_sock.recv(length - 6)
        else:
            body = _recv_body(twin, assoc_sock, length)
    except (OSError, TimeoutError) as exc:
        _pdu_cut_off(dul, exc)
        return True
    if len(body) != length:
        _LOGGER_DUL.error(f"The received PDU is shorter than expected ({6 + len(body)} of {6 + length} bytes "
                          "received)")
        dul.event_queue.put("Evt17")
        return True
    items = _pdata_items(body)
    if items is not None and sink is not None:  # 3e: data of a message the library holds
        if _data_only(items):
            _stream_items(dul, sink, body, items)
            return True
    elif items is not None and lean is not None:  # 3f: the rest of a request's data set
        if _data_only(items, lean.context_id):
            _lean_feed(dul, lean, body, items)
            return True
        _lean_to_library(dul, lean)
    elif items is not None and _LEAN:  # 3f: a new message
        start, end, context_id, control = items[0]
        if control & 3 == 3 and _data_only(items[1:], context_id):
            command = bytes(body[start:end])
            request = _decode_store_rq(command)
            if request is not None and _lean_accepts(assoc, request, context_id):
                lean = _LeanStore(request, context_id, command)
                dul._bs_lean = lean  # type: ignore[attr-defined]
                _lean_feed(dul, lean, body, items[1:])
                return True
    _queue_for_library(dul, header, body)
    return True


SPLICE_MIN = 32768  # smaller fragments are read as they are


def _splice_fragment(dul: DULServiceProvider, lean: _LeanStore, twin: socket.socket, head: bytearray,
                     length: int) -> bool:
    """3f with `splice`: a PDU holding one data fragment of the request's data set, whose file is
    open, goes from the socket through a pipe into the file (os.splice), never through Python: one
    copy of every byte less, and no buffer to allocate. `head` is the PDU's first item header,
    already read. False (nothing more read) for any other PDU."""
    item_length = int.from_bytes(head[0:4], "big")
    context_id, control = head[4], head[5]
    if item_length + 4 != length or item_length < 2 or context_id != lean.context_id or control & 1:
        return False
    pipe = dul._bs_pipe  # type: ignore[attr-defined]
    if pipe is None:
        read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, 1 << 20)
        pipe = dul._bs_pipe = (read_end, write_end, fcntl.fcntl(write_end, _F_GETPIPE_SZ))  # type: ignore[attr-defined]
    count = item_length - 2
    timeout = dul.socket.socket.gettimeout()  # type: ignore[union-attr]
    sock_fd = twin.fileno()
    try:
        while count:
            try:
                moved = os.splice(sock_fd, pipe[1], min(count, pipe[2]), flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
            except BlockingIOError:  # the rest is still on the way: wait as the association's own reads wait
                if not select.select([sock_fd], [], [], timeout)[0]:
                    raise TimeoutError("timed out in the middle of a PDU") from None
                continue
            if not moved:
                raise ConnectionResetError("the peer closed the connection in the middle of a PDU")
            lean.sink.splice_from(pipe[0], moved)
            count -= moved
    except (OSError, TimeoutError) as exc:
        _pdu_cut_off(dul, exc)
        return True
    if control & 2:
        dul._bs_lean = None  # type: ignore[attr-defined]
        _lean_serve(dul, lean)
    return True


_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def _pdu_cut_off(dul: DULServiceProvider, exc: BaseException) -> None:
    """What the library's `_read_pdu_data` does when the rest of a PDU does not come: Evt17."""
    _LOGGER_DUL.error("Connection closed before the entire PDU was received")
    _LOGGER_DUL.exception(exc)
    dul.event_queue.put("Evt17")


def _recv_body(twin: socket.socket, assoc_sock: AssociationSocket, length: int) -> bytearray:
    """A PDU body of `length` bytes: what has arrived is read through the blocking-mode twin without
    waiting (no poll before each read, as Python does on a socket with a time-out); the rest, if
    any, through the association's socket, whose time-out bounds the wait."""
    if length > _RECV_FIRST:
        return assoc_sock.recv(length)
    body = bytearray(length)
    got = 0
    with memoryview(body) as view:
        try:
            got = twin.recv_into(view, length, _NOW)
        except BlockingIOError:
            pass
        sock = cast(Any, assoc_sock.socket)
        while got < length:  # into the same buffer (no second copy), each wait bounded by the time-out
            n = sock.recv_into(view[got:], length - got)
            if not n:
                break
            got += n
    if got < length:
        del body[got:]
    return body


def _stream_items(dul: DULServiceProvider, sink: Any, body: bytearray, items: list[tuple[int, int, int, int]]) -> None:
    """3e: write the data fragments; the last one goes through the DIMSE layer (as a P-DATA
    primitive), so the library's message is completed by the same code."""
    *fragments, last = items
    with memoryview(body) as view:
        for start, end, _cid, _control in fragments if last[3] & 2 else items:
            with view[start:end] as fragment:
                sink.write(fragment)
    if last[3] & 2:
        primitive = P_DATA()
        primitive.presentation_data_value_list.append([last[2], bytes(body[last[0] - 1:last[1]])])
        dul.assoc.dimse.receive_primitive(primitive)


# --------------------------------------------------------------------------- 3f. C-STORE served from the socket


class _LeanStore:
    """A C-STORE request read by 3f whose data set is still arriving."""

    __slots__ = ("request", "context_id", "command", "chunks", "sink")

    def __init__(self, request: C_STORE, context_id: int, command: bytes) -> None:
        self.request = request
        self.context_id = context_id
        self.command = command
        self.chunks: list[bytes] = []
        self.sink: Any = None  # 3e's file, for a data set in several fragments


def _storage_class(assoc: Association, class_uid: str) -> bool:
    """Whether the library would serve this SOP class with its Storage Service Class (remembered per
    association: the library's lookup scans every known storage UID)."""
    known: dict[str, bool] | None = getattr(assoc, "_bs_storage_classes", None)
    if known is None:
        known = assoc._bs_storage_classes = {}  # type: ignore[attr-defined]
    result = known.get(class_uid)
    if result is None:
        result = known[class_uid] = (uid_to_service_class(class_uid) is StorageServiceClass
                                     and class_uid not in assoc.acceptor.accepted_common_extended)
    return result


def _lean_accepts(assoc: Association, request: C_STORE, context_id: int) -> bool:
    """Whether 3f may take this C-STORE request: what `_serve_request` would do with it is to run
    StorageServiceClass.SCP, with one handler bound and nothing watching the DIMSE messages."""
    return (assoc.is_acceptor and not _config.STORE_RECV_CHUNKED_DATASET and context_id in assoc._accepted_cx
            and (_config.UNRESTRICTED_STORAGE_SERVICE or _storage_class(assoc, str(request.AffectedSOPClassUID)))
            and bool(assoc.get_handlers(evt.EVT_C_STORE)) and not assoc.get_handlers(evt.EVT_DIMSE_RECV)
            and not assoc.get_handlers(evt.EVT_DIMSE_SENT) and not assoc.get_handlers(evt.EVT_PDU_SENT)
            and not assoc.get_handlers(evt.EVT_DATA_SENT))


def _lean_feed(dul: DULServiceProvider, lean: _LeanStore, body: bytearray, items: list[tuple[int, int, int, int]]) -> None:
    """Add data fragments to the request; serve it at the last one. A data set in several fragments
    goes to 3e's file (when streaming is on and the listener offers one) as it arrives."""
    with memoryview(body) as view:
        for start, end, _cid, control in items:
            with view[start:end] as fragment:
                if lean.sink is None and _STREAM and (lean.chunks or not control & 2):
                    opener = getattr(getattr(dul.assoc, "_server", None), "bs_stream_sink", None)
                    lean.sink = opener(dul.assoc, lean.request, lean.context_id) if opener is not None else None
                    if lean.sink is not None:
                        for chunk in lean.chunks:
                            lean.sink.write(memoryview(chunk))
                        lean.chunks = []
                if lean.sink is not None:
                    lean.sink.write(fragment)
                else:
                    lean.chunks.append(bytes(fragment))
            if control & 2:
                dul._bs_lean = None  # type: ignore[attr-defined]
                _lean_serve(dul, lean)


def _lean_to_library(dul: DULServiceProvider, lean: _LeanStore) -> None:
    """Hand a request still arriving to the library, as 3a would have built it from the same bytes."""
    dul._bs_lean = None  # type: ignore[attr-defined]
    message = DIMSEMessage()
    message.__class__ = C_STORE_RQ
    message.context_id = lean.context_id
    message.encoded_command_set.write(lean.command)
    message._bs_primitive = lean.request  # type: ignore[attr-defined]
    if lean.sink is not None:
        message._bs_sink = lean.sink  # type: ignore[attr-defined]
    for chunk in lean.chunks:
        message.data_set.write(chunk)
    dul.assoc.dimse.message = message


def _lean_serve(dul: DULServiceProvider, lean: _LeanStore) -> None:
    """StorageServiceClass.SCP for a complete request, in the DUL thread, its response written to the
    socket: what `_serve_inline` + `_serve_request` + SCP + `send_msg` + DT-1 do, without the
    primitives, queues and state machine. When the association is not in a state to serve it now
    (a request queued or being served, a paused reactor, a release under way) the request is queued
    exactly as the library's DIMSE layer would queue it."""
    assoc = dul.assoc
    context_id = lean.context_id
    request = lean.request
    request.DataSet = lean.sink.finish() if lean.sink is not None else BytesIO(
        lean.chunks[0] if len(lean.chunks) == 1 else b"".join(lean.chunks))
    request._context_id = context_id
    request._dataset_path = None
    request._dataset_file = None
    msg_queue = assoc.dimse.msg_queue
    with assoc._bs_serve_lock:  # type: ignore[attr-defined]
        serve = (assoc.is_established and not assoc._sent_release and assoc._reactor_checkpoint.is_set()
                 and not msg_queue.queue and not assoc._bs_serving)  # type: ignore[attr-defined]
        if serve:
            assoc._bs_serving = True  # type: ignore[attr-defined]
    if not serve:
        msg_queue.put((context_id, request))
        return
    error: BaseException | None = None
    status: Any = None
    try:
        handler, args = cast(tuple[Callable[..., Any], Any], assoc.get_handlers(evt.EVT_C_STORE))
        event = evt.Event(assoc, evt.EVT_C_STORE, {"request": request, "context": assoc._accepted_cx[context_id].as_tuple})
        assoc.dimse.cancel_req = {}
        assoc._is_paused = True
        assoc.abort = assoc._abort_nonblocking  # type: ignore[method-assign]  # as the library's `attempt`
        try:
            status = handler(event, *args) if args else handler(event)
        except Exception as exc:
            error = exc
        finally:
            assoc.abort = assoc._abort_blocking  # type: ignore[method-assign]
            assoc._is_paused = False
            assoc.dimse.cancel_req = {}
    finally:
        assoc._bs_serving = False  # type: ignore[attr-defined]
    if error is None and not assoc.is_established:
        return
    msg_id = request.MessageID
    encoded = None
    if error is None and type(status) is int and status in StorageServiceClass.statuses:
        encoded = _store_rsp_command(msg_id, status, str(request.AffectedSOPClassUID),
                                     str(request.AffectedSOPInstanceUID))
    max_pdu = assoc.dimse.maximum_pdu_size
    if encoded is None or (max_pdu and len(encoded) > max_pdu - 6) or dul.to_provider_queue.queue:
        rsp = C_STORE()
        rsp.MessageID = msg_id
        rsp.MessageIDBeingRespondedTo = msg_id
        rsp.AffectedSOPInstanceUID = request.AffectedSOPInstanceUID
        rsp.AffectedSOPClassUID = request.AffectedSOPClassUID
        if error is not None:  # as the library's `attempt`
            _LOGGER_SERVICE.error("Exception in handler bound to 'evt.EVT_C_STORE'")
            _LOGGER_SERVICE.exception(error)
            rsp.Status = 0xC211
        else:
            rsp = StorageServiceClass(assoc).validate_status(status, rsp)
        assoc.dimse.send_msg(rsp, context_id)
        return
    pdu = _pdu_header(0x04, 0, len(encoded) + 6) + _pdv_header(len(encoded) + 2, context_id, 0x03) + encoded
    peeker = dul._bs_peeker  # type: ignore[attr-defined]
    sent = 0
    if peeker is not None:  # without the poll Python makes before each send on a socket with a time-out
        try:
            sent = peeker[1].send(pdu, _NOW)
        except BlockingIOError:
            sent = 0
        except OSError:
            dul.event_queue.put("Evt17")  # as AssociationSocket.send: the connection is gone
            return
    if sent < len(pdu):
        dul.socket.send(pdu[sent:])


_RECV_FIRST = 1 << 20  # the buffer starts at most this big and doubles as the bytes arrive


def _socket_recv(self: AssociationSocket, nr_bytes: int) -> bytearray:
    """AssociationSocket.recv: `nr_bytes` from the socket, fewer only if the peer closed it.

    The buffer grows with what arrives (never more than twice it): `nr_bytes` is the length a PDU
    header claims, up to 4 GiB, and allocating it up front let a peer that sent only a header make
    the station take that much memory (found by the fuzzer: tests/fuzz/crashes/dicom-oversized/)."""
    sock = cast(Any, self.socket)
    buf = bytearray(min(nr_bytes, _RECV_FIRST))
    nr_read = 0
    while nr_read < nr_bytes:
        if nr_read == len(buf):
            buf += bytes(min(nr_bytes - nr_read, len(buf)))
        with memoryview(buf) as view, view[nr_read:] as free:
            got = sock.recv_into(free, len(buf) - nr_read)
        if not got:
            break
        nr_read += got
    if nr_read < len(buf):
        del buf[nr_read:]
    return buf


# --------------------------------------------------------------------------- 3c. direct C-STORE requests

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_pack_ul = struct.Struct("<HHII").pack
_pdu_header = struct.Struct(">BBI").pack
_pdv_header = struct.Struct(">IBB").pack


DIRECT_MAX_BYTES = 64 << 20  # larger files go through the library, which reads them in chunks


class DirectStoreError(RuntimeError):
    """The direct path met something it does not handle; the association is no longer usable."""


def read_stored(path: str) -> tuple[dict[int, str], memoryview] | None:
    """(file meta UIDs by element number, the data set bytes) of a DICOM file, or None if it has no
    standard file meta (Explicit VR Little Endian group 0002 after the 128-byte preamble) or is
    larger than DIRECT_MAX_BYTES."""
    # os-level calls: open, fstat, read, close (a Python file object adds two fstat, an ioctl, two
    # lseek and a second read per object)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size > DIRECT_MAX_BYTES:
            return None
        data = os.read(fd, size)  # a stored file is written once (renamed into place): its size is final
        while len(data) < size and (more := os.read(fd, size - len(data))):
            data += more
    finally:
        os.close(fd)
    if data[128:132] != b"DICM":
        return None
    pos, meta = 132, {}
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 2:
            break
        if data[pos + 4:pos + 6] in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, pos + 8)
            start = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            start = pos + 8
        if elem in (0x0002, 0x0003, 0x0010):
            meta[elem] = data[start:start + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
    if pos > len(data) or not all(e in meta for e in (0x0002, 0x0003, 0x0010)):
        return None
    return meta, memoryview(data)[pos:]


def store_rq_command(msg_id: int, sop_class: str, sop_uid: str, priority: int = 2) -> bytes:
    """The Implicit VR Little Endian command set of a C-STORE-RQ with a data set (as the library's)."""
    body = b"".join((
        _text_element(0x0002, sop_class, b"\0"),
        _pack_us(0x0000, 0x0100, 2, 0x0001),  # Command Field: C-STORE-RQ
        _pack_us(0x0000, 0x0110, 2, msg_id),
        _pack_us(0x0000, 0x0700, 2, priority),
        _pack_us(0x0000, 0x0800, 2, 0x0001),  # Command Data Set Type: present
        _text_element(0x1000, sop_uid, b"\0"),
    ))
    return _pack_ul(0x0000, 0x0000, 4, len(body)) + body


def store_rq_pdus(context_id: int, command: bytes, dataset: memoryview, max_pdu: int) -> list[Any]:
    """The P-DATA-TF PDUs of one C-STORE-RQ: the command set and the first data fragment in one PDU
    when they fit, then fragments of at most the peer's maximum PDU length."""
    room = (max_pdu or 1 << 20) - 6  # PDV data per PDU (PDV item header: 4 + 1 + 1 bytes)
    if len(command) > room:
        raise DirectStoreError("command set larger than the peer's PDU")
    cmd_pdv = _pdv_header(len(command) + 2, context_id, 0x03) + command
    parts: list[Any] = []
    first = max(0, min(len(dataset), room - len(command) - 6))
    if first:
        last = first == len(dataset)
        parts += [_pdu_header(0x04, 0, len(cmd_pdv) + 6 + first), cmd_pdv,
                  _pdv_header(first + 2, context_id, 0x02 if last else 0x00), dataset[:first]]
    else:
        parts += [_pdu_header(0x04, 0, len(cmd_pdv)), cmd_pdv]
    pos = first
    while pos < len(dataset) or not len(dataset):
        chunk = dataset[pos:pos + room]
        pos += len(chunk)
        last = pos >= len(dataset)
        parts += [_pdu_header(0x04, 0, len(chunk) + 6), _pdv_header(len(chunk) + 2, context_id, 0x02 if last else 0x00),
                  chunk]
        if last:
            break
    return parts


def move_rq_command(msg_id: int, sop_class: str, destination: str, priority: int = 2) -> bytes:
    """The Implicit VR Little Endian command set of a C-MOVE-RQ (as the library's)."""
    body = b"".join((
        _text_element(0x0002, sop_class, b"\0"),
        _pack_us(0x0000, 0x0100, 2, 0x0021),  # Command Field: C-MOVE-RQ
        _pack_us(0x0000, 0x0110, 2, msg_id),
        _text_element(0x0600, destination, b" "),
        _pack_us(0x0000, 0x0700, 2, priority),
        _pack_us(0x0000, 0x0800, 2, 0x0001),  # Command Data Set Type: present (the identifier)
    ))
    return _pack_ul(0x0000, 0x0000, 4, len(body)) + body


def parse_command(command: bytes) -> dict[int, bytes]:
    """Element number -> value of an Implicit VR Little Endian command set (group 0000)."""
    values, pos = {}, 0
    while pos + 8 <= len(command):
        group, elem, length = _unpack_element(command, pos)
        if group != 0 or pos + 8 + length > len(command):
            raise DirectStoreError("malformed command set")
        values[elem] = command[pos + 8:pos + 8 + length]
        pos += 8 + length
    return values


class LentSocket:
    """An established requestor association's socket, lent to the calling thread (3c)."""

    def __init__(self, assoc: Association) -> None:
        self.assoc = assoc
        self.dul = assoc.dul
        self.sock: Any = None
        self.timeout = float(assoc.dimse_timeout or 0) or None
        self.msg_id = 0
        self.max_pdu = int(assoc.acceptor.maximum_length or 0)
        self.contexts = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])): int(cx.context_id)
                         for cx in assoc.accepted_contexts}

    def __enter__(self) -> LentSocket:
        dul = self.dul
        dul._bs_parked.clear()  # type: ignore[attr-defined]
        dul._bs_lent.set()  # type: ignore[attr-defined]
        _notify_dul(dul)
        deadline = time.monotonic() + (self.timeout or 30)
        while not dul._bs_parked.wait(0.05):  # type: ignore[attr-defined]
            if not dul.is_alive() or time.monotonic() > deadline:
                self.give_back()
                raise DirectStoreError("the association's DUL thread did not let go of the socket")
        self.sock = cast(Any, dul.socket).socket
        return self

    def give_back(self) -> None:
        self.dul._bs_lent.clear()  # type: ignore[attr-defined]
        self.dul._idle_timer.restart()
        _notify_dul(self.dul)

    def __exit__(self, *exc: object) -> None:
        self.give_back()

    def _recv(self, n: int, deadline: float | None, ready: bool = False) -> bytes:
        """`n` bytes; `ready`: they are most likely there already (the rest of a PDU whose header
        came), so one non-blocking recv is tried before waiting in select."""
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        if ready and n and not isinstance(self.sock, ssl.SSLSocket):
            with contextlib.suppress(BlockingIOError, InterruptedError):
                got = self.sock.recv_into(view, n, _NOW)
                if not got:
                    raise DirectStoreError("connection closed by the peer")
        while got < n:
            if not (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise DirectStoreError(f"no answer within dicom.timeout={self.timeout:g}s")
                readable, _, _ = select.select([self.sock], [], [], left)
                if not readable:
                    continue
            k = self.sock.recv_into(view[got:], n - got)
            if not k:
                raise DirectStoreError("connection closed by the peer")
            got += k
        view.release()
        return bytes(buf)

    def store(self, sop_class: str, sop_uid: str, ts: str, dataset: memoryview) -> tuple[int, str]:
        """Send one C-STORE-RQ and read its response: (status, error comment). KeyError: the peer did
        not accept (sop_class, ts) as is; DirectStoreError/OSError: the association is lost."""
        context_id = self.contexts[(sop_class, ts)]
        self.msg_id = self.msg_id % 65535 + 1
        parts = store_rq_pdus(context_id, store_rq_command(self.msg_id, sop_class, sop_uid), dataset,
                              self.max_pdu)
        self.sock.sendall(b"".join(parts))
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        command = b""
        while True:
            body = self._pdata(deadline)
            length = len(body)
            pos, done = 0, False
            while pos + 6 <= length:
                (item_len,) = struct.unpack_from(">I", body, pos)
                ctrl = body[pos + 5]
                if not ctrl & 0x01:
                    raise DirectStoreError("a data set in a C-STORE response")
                command += body[pos + 6:pos + 4 + item_len]
                done = bool(ctrl & 0x02)
                pos += 4 + item_len
            if done:
                break
        values = parse_command(command)
        if (values.get(0x0100) != b"\x01\x80" or values.get(0x0120) != struct.pack("<H", self.msg_id)
                or len(values.get(0x0900, b"")) != 2):
            raise DirectStoreError("not the C-STORE response to this request")
        comment = values.get(0x0902, b"").rstrip(b"\0 ").decode("ascii", "replace")
        return _unpack_us(values[0x0900])[0], comment


    def _pdata(self, deadline: float | None) -> bytes:
        """The body of the next PDU, which must be a P-DATA-TF (an abort or release request is the reason)."""
        kind, _, length = struct.unpack(">BBI", self._recv(6, deadline))
        body = self._recv(length, deadline, ready=True)
        if kind != 0x04:
            raise DirectStoreError({0x07: "association aborted by the peer",
                                    0x05: "the peer asked to release the association"}.get(
                                       kind, f"unexpected PDU type 0x{kind:02X}"))
        return body

    def _message(self, deadline: float | None) -> tuple[bytes, bytes | None]:
        """The next DIMSE message from the peer: (command set, data set or None when it has none)."""
        command, data = bytearray(), bytearray()
        values: dict[int, bytes] | None = None
        while True:
            body = self._pdata(deadline)
            length = len(body)
            pos = 0
            while pos + 6 <= length:
                (item_len,) = struct.unpack_from(">I", body, pos)
                ctrl = body[pos + 5]
                fragment = body[pos + 6:pos + 4 + item_len]
                pos += 4 + item_len
                if ctrl & 0x01:
                    if values is not None:
                        raise DirectStoreError("a second command set before the data set")
                    command += fragment
                    if ctrl & 0x02:
                        values = parse_command(bytes(command))
                        if values.get(0x0800) == b"\x01\x01":  # no data set
                            if pos < length:
                                raise DirectStoreError("more after a complete message")
                            return bytes(command), None
                else:
                    if values is None:
                        raise DirectStoreError("a data set before its command set")
                    data += fragment
                    if ctrl & 0x02:
                        if pos < length:
                            raise DirectStoreError("more after a complete message")
                        return bytes(command), bytes(data)

    def move(self, sop_class: str, ts: str, identifier: bytes, destination: str) -> Any:
        """Send one C-MOVE-RQ and yield each response as (command values by element, identifier bytes
        or None), the last one being the first whose status is not pending. KeyError: the peer did
        not accept (sop_class, ts); DirectStoreError/OSError: the association is lost."""
        context_id = self.contexts[(sop_class, ts)]
        self.msg_id = self.msg_id % 65535 + 1
        parts = store_rq_pdus(context_id, move_rq_command(self.msg_id, sop_class, destination),
                              memoryview(identifier), self.max_pdu)
        self.sock.sendall(b"".join(parts))
        while True:
            deadline = None if self.timeout is None else time.monotonic() + self.timeout
            command, data = self._message(deadline)
            values = parse_command(command)
            if (values.get(0x0100) != b"\x21\x80" or values.get(0x0120) != struct.pack("<H", self.msg_id)
                    or len(values.get(0x0900, b"")) != 2):
                raise DirectStoreError("not a C-MOVE response to this request")
            yield values, data
            if _unpack_us(values[0x0900])[0] not in (0xFF00, 0xFF01):
                return


def return_socket(assoc: Association) -> None:
    """Give a lent socket back to the DUL thread (nothing when it is not lent)."""
    lent = getattr(assoc.dul, "_bs_lent", None)
    if lent is not None and lent.is_set():
        lent.clear()
        _notify_dul(assoc.dul)


def direct_store_possible(assoc: Association) -> bool:
    """Whether `lend_socket`/LentSocket can drive this association (3c)."""
    return _DIRECT_STORE and _lendable(assoc)


def direct_move_possible(assoc: Association) -> bool:
    """Whether LentSocket.move can drive this association (3d)."""
    return _DIRECT_MOVE and _lendable(assoc)


def _lendable(assoc: Association) -> bool:
    """An established requestor association with the event-driven DUL (2) and no PDU/DIMSE handlers."""
    return (assoc.is_requestor and assoc.is_established and getattr(assoc.dul, "_bs_lent", None) is not None
            and not any(assoc.get_handlers(e) for e in (evt.EVT_PDU_SENT, evt.EVT_PDU_RECV, evt.EVT_DIMSE_SENT,
                                                       evt.EVT_DIMSE_RECV, evt.EVT_DATA_SENT, evt.EVT_DATA_RECV)))


# --------------------------------------------------------------------------- 4. protocol logging


def set_protocol_logging(enabled: bool) -> None:
    """Bind pynetdicom's standard logging handlers to associations created from now on (or not)."""
    _config.LOG_HANDLER_LEVEL = "standard" if enabled or not fast_path_enabled("logging") else "none"


# --------------------------------------------------------------------------- 5. stopping


def drop_unrequested(assoc: Association) -> bool:
    """End at once an acceptor association whose peer never sent an A-ASSOCIATE-RQ; False otherwise.

    pynetdicom's association thread waits up to the ACSE time-out for the request, even after
    the peer has closed the connection (a port probe), so a server stop would wait for it. Its
    connection is closed, and its thread woken with the association marked aborted: the
    library's acceptor path then neither negotiates nor serves, it shuts the socket and returns.
    """
    if not assoc.is_acceptor or getattr(assoc.requestor, "primitive", None) is not None or assoc.is_established:
        return False
    assoc.is_aborted = True
    assoc.dul.kill_dul()
    with contextlib.suppress(Exception):
        cast(Any, assoc.dul.socket)._shutdown_socket()
    assoc.dul.to_user_queue.put(A_P_ABORT())
    return True


# --------------------------------------------------------------------------- install / checks


FAST_PATH_PARTS = ("reactors", "inline_store", "store_rq", "store_rsp", "recv", "logging", "parser", "store_send",
                   "move_send", "group_commit", "write_lock", "lean_index", "nocopy", "overlap_fsync", "balance",
                   "contexts", "stream", "lean_store", "writer_conn", "splice", "fsync_busy")


def fast_path_enabled(part: str = "") -> bool:
    """Whether a speed-up is on. BURNSTATION_FASTPATH: unset or "1" = all, "0" = none, or a comma
    list of FAST_PATH_PARTS (reactors = 2, inline_store = 2b, store_rq = 3a, store_rsp = 3, recv = 3b, store_send = 3c,
    move_send = 3d, logging = 4, parser = the store handler's raw attribute parser; outside this module:
    group_commit, write_lock and writer_conn = dicom/ingest.py, lean_index = index.add_instances, nocopy, overlap_fsync and fsync_busy =
    the store handler, balance = connections handed between dicom workers, dicom/balance.py, contexts = one
    copy of a listener's presentation contexts for all its associations, dicom/server.py; stream = 3e,
    lean_store = 3f, splice = 3f's large fragments moved socket -> pipe -> file). An escape hatch for the field and for A/B measurements;
    the functional patch (1) always applies."""
    value = os.environ.get("BURNSTATION_FASTPATH", "1").strip()
    if value in ("1", ""):
        return True
    if value == "0":
        return False
    parts = {p.strip() for p in value.split(",")}
    return part in parts if part else bool(parts & set(FAST_PATH_PARTS))


def install() -> None:
    """Apply the patches (idempotent), each only over the library code it was written for.

    Raises LibraryChanged (nothing applied) when the called-AE-title patch cannot be applied.
    """
    global _installed, _INLINE_STORE, _DIRECT_STORE, _DIRECT_MOVE, _STREAM, _LEAN, _SPLICE
    if _installed:
        return
    skipped = check_library()
    for part, names in sorted(skipped.items()):
        LOG.warning("pynetdicom %s: %s differ from the reviewed 3.0.4 source; the '%s' speed-up is "
                    "left out and the library's own code runs", installed_version(), ", ".join(names), part)
    ACSE._negotiate_as_acceptor = _negotiate_as_acceptor  # type: ignore[method-assign]
    _installed = True
    _INLINE_STORE = fast_path_enabled("inline_store") and "reactors" not in skipped  # 2b needs 2's queues
    if "reactors" not in skipped and (fast_path_enabled("reactors") or _INLINE_STORE):
        Association.__init__ = _association_init  # type: ignore[method-assign]
        Association.kill = _association_kill  # type: ignore[method-assign]
        Association._run_reactor = _association_run_reactor  # type: ignore[method-assign]
        DULServiceProvider.run_reactor = _dul_run_reactor  # type: ignore[method-assign]
        DULServiceProvider.kill_dul = _dul_kill  # type: ignore[method-assign]
        DULServiceProvider.stop_dul = _dul_stop  # type: ignore[method-assign]
        _DIRECT_STORE = "store_send" not in skipped and fast_path_enabled("store_send")  # 3c needs 2's loop
        _DIRECT_MOVE = "move_send" not in skipped and fast_path_enabled("move_send")  # so does 3d
    if "store_rsp" not in skipped and fast_path_enabled("store_rsp"):
        DIMSEServiceProvider.send_msg = _dimse_send_msg  # type: ignore[method-assign]
    if "store_rq" not in skipped and fast_path_enabled("store_rq"):
        DIMSEServiceProvider.receive_primitive = _dimse_receive_primitive  # type: ignore[method-assign]
        _STREAM = "stream" not in skipped and fast_path_enabled("stream")  # 3e is part of 3a's function
        # 3f reads in 2's loop and hands what it cannot finish to 3a's function
        _LEAN = ("lean_store" not in skipped and "reactors" not in skipped and fast_path_enabled("lean_store")
                 and (fast_path_enabled("reactors") or _INLINE_STORE))
        _SPLICE = _LEAN and _STREAM and fast_path_enabled("splice") and hasattr(os, "splice")
    if "recv" not in skipped and fast_path_enabled("recv"):
        AssociationSocket.recv = _socket_recv  # type: ignore[method-assign]


def uninstall() -> None:
    """Restore the library's own functions (tests compare patched and unpatched behaviour)."""
    global _installed, _INLINE_STORE, _DIRECT_STORE, _DIRECT_MOVE, _STREAM, _LEAN, _SPLICE
    originals = original_functions()
    for name, func in originals.items():
        cls_name, attr = name.split(".")
        cls = {"ACSE": ACSE, "Association": Association, "DULServiceProvider": DULServiceProvider,
               "DIMSEServiceProvider": DIMSEServiceProvider, "AssociationSocket": AssociationSocket,
               "DIMSEMessage": DIMSEMessage, "StorageServiceClass": StorageServiceClass}[cls_name]
        setattr(cls, attr, func)
    _installed = False
    _STREAM = False
    _LEAN = False
    _SPLICE = False
    _INLINE_STORE = False
    _DIRECT_STORE = False
    _DIRECT_MOVE = False


def source_hash(func: Any) -> str:
    """sha256 of a function's source (what REPLACED_SOURCES pins)."""
    return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()


def original_functions() -> dict[str, Any]:
    """The unpatched library functions named in REPLACED_SOURCES."""
    return {
        "ACSE._negotiate_as_acceptor": _ORIGINAL_NEGOTIATE,
        "Association.__init__": _ORIGINAL_ASSOC_INIT,
        "Association.kill": _ORIGINAL_ASSOC_KILL,
        "Association._run_reactor": _ORIGINAL["Association._run_reactor"],
        "DULServiceProvider.run_reactor": _ORIGINAL["DULServiceProvider.run_reactor"],
        "DULServiceProvider.kill_dul": _ORIGINAL["DULServiceProvider.kill_dul"],
        "DULServiceProvider.stop_dul": _ORIGINAL["DULServiceProvider.stop_dul"],
        "DIMSEServiceProvider.send_msg": _ORIGINAL_SEND_MSG,
        "AssociationSocket.recv": _ORIGINAL_RECV,
        "DIMSEServiceProvider.receive_primitive": _ORIGINAL_RECEIVE_PRIMITIVE,
        "Association.send_c_store": _ORIGINAL_SEND_C_STORE,
        "Association.send_c_move": _ORIGINAL_SEND_C_MOVE,
        "Association._wrap_get_move_responses": _ORIGINAL_WRAP_MOVE,
        "DIMSEMessage.decode_msg": _ORIGINAL_DECODE_MSG,
        "DULServiceProvider._read_pdu_data": DULServiceProvider._read_pdu_data,  # never replaced
        "Association._serve_request": Association._serve_request,  # never replaced
        "StorageServiceClass.SCP": StorageServiceClass.SCP,  # never replaced
    }


def internals_present() -> list[str]:
    """Names of the internals this module relies on that are missing (empty when all is well)."""
    missing = []
    if not callable(getattr(ACSE, "send_reject", None)):
        missing.append("ACSE.send_reject")
    if "_negotiate_as_acceptor" not in ACSE.__dict__:
        missing.append("ACSE._negotiate_as_acceptor")
    needed = {
        ACSE: ["is_release_requested", "is_aborted", "send_release"],
        Association: ["_run_reactor", "_serve_request", "kill", "abort", "release"],
        DULServiceProvider: ["run_reactor", "kill_dul", "stop_dul", "_process_recv_primitive",
                             "_is_transport_event", "idle_timer_expired", "receive_pdu"],
    }
    for cls, names in needed.items():
        missing += [f"{cls.__name__}.{name}" for name in names if not callable(getattr(cls, name, None))]
    return missing
