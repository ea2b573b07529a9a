"""The DICOM SCP: one pynetdicom AE listening on port 1 (plain) and port 2 (TLS only).

Handlers are bound to events, one module per service (echo/store/find/retrieve). This module
wires them, keeps the per-association bookkeeping (association log, called AE title), and
rebinds the listeners when the settings that shape them change.
"""

from __future__ import annotations

import copy
import logging
import logging.handlers
import os
import socket
import socketserver
import ssl
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from appliance import tlsca
from appliance.config import DICOM_LISTENER_KEYS, Settings
from appliance.dicom import pnd_tuning
from appliance.dicom.balance import Balancer
from appliance.dicom.context import AssociationLog, StationContext
from appliance.dicom.handlers import find as find_handler
from appliance.dicom.handlers import retrieve, store
from appliance.worklist import scp as worklist_scp

LOG = logging.getLogger("burnstation.dicom")

TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
]
QR_FIND = [PatientRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelFind]
QR_MOVE = [PatientRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelMove]
QR_GET = [PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelGet]
NATIVE_SYNTAXES = TRANSFER_SYNTAXES[:3]
STOP_GRACE = 2.0  # seconds running associations get to finish when the service stops
ABORT_WAIT = 1.0  # then, for the aborted ones to end (the supervisor's SIGKILL comes after 5 s)

# extra (event, handler) bindings other subsystems add (the worklist's MWL C-FIND, for one)
EXTRA_CONTEXTS: list[str] = [worklist_scp.MWL_FIND]
EXTRA_FIND_HANDLERS: dict[str, Any] = {worklist_scp.MWL_FIND: worklist_scp.find_worklist}


def apply_settings(ae: AE, settings: Settings) -> None:
    """The AE title, derived called titles and time-outs: what a running listener can change in place."""
    ae.ae_title = settings.aet()
    timeout = float(settings.get("dicom.timeout"))
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = max(timeout, 60.0)
    ae.connection_timeout = timeout
    ae.accepted_called_aets = set(settings.derived_aets())  # type: ignore[attr-defined]


def build_ae(ctx: StationContext) -> AE:
    """An AE that supports every service of SPEC section 4."""
    pnd_tuning.install()
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    ae = AE(ae_title=ctx.settings.aet())
    ae.require_called_aet = False
    ae.maximum_associations = 1_000_000  # incoming associations are not capped (seed)
    ae.maximum_pdu_size = 0  # no limit on what we receive
    apply_settings(ae, ctx.settings)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
    ae.add_supported_context(Verification, NATIVE_SYNTAXES)
    for sop in QR_FIND + QR_MOVE + QR_GET:
        ae.add_supported_context(sop, NATIVE_SYNTAXES)
    for sop in EXTRA_CONTEXTS:
        ae.add_supported_context(sop, NATIVE_SYNTAXES)
    # outgoing (C-MOVE sub-operations, send to node): propose what we hold
    return ae


class _SharedContexts(list):  # type: ignore[type-arg]
    """A listener's presentation contexts, shared by all its associations.

    pynetdicom deep-copies the server's contexts for every association it accepts (in case the AE's
    are changed while it runs): for the station's ~180 contexts that is 20-30 ms of CPU per
    association, more than a hundred small C-STOREs. The station never changes a listener's
    contexts (a changed setting changes the AE title or time-outs in place, or builds a new
    listener), so each listener copies them once, here, and its associations read that copy.
    Negotiation only reads them (it builds new result contexts).
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> _SharedContexts:
        return self


class _Listener(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake moved off the accept loop.

    pynetdicom wraps each accepted socket in `get_request`, i.e. in the one thread that accepts
    connections: a peer that connects to the TLS port and sends nothing (or a slow handshake)
    stalls every other TLS client. Here the accept loop only accepts; the handshake runs in the
    connection's own thread, bounded by the service time-out, and a failed handshake just closes
    that one connection.
    """

    tls_context: ssl.SSLContext | None = None
    io_timeout: float = 30.0
    kind: str = "plain"  # or "tls": which of the station's listeners this is
    owner: DicomServer | None = None  # counts the connections served, hands some to other workers
    bs_stream_sink: Any = None  # opens the file a C-STORE data set is streamed to (pnd_tuning 3e)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock = self.socket
        assert sock is not None
        client, address = sock.accept()
        return client, address

    def process_request(self, request: Any, client_address: Any) -> None:
        owner = self.owner
        if owner is not None and owner.hand_over(self.kind, request, client_address):
            request.close()  # the other worker holds the connection now (no shutdown: that would end it)
            return
        self.serve_connection(request, client_address, taking=owner is not None and owner.claim_kept())

    def serve_connection(self, request: Any, client_address: Any, taking: bool = False) -> None:
        """Serve a connection accepted here or handed over by another worker (never handed on);
        `taking`: it was counted as on its way to this worker (balance.py) until now."""
        if self.owner is not None:
            self.owner.connection_started(taking)
        try:
            super().process_request(request, client_address)
        except BaseException:
            if self.owner is not None:
                self.owner.connection_setup_done()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            self._serve_thread(request, client_address)
        finally:
            if self.owner is not None:  # the association (if any) now counts as an active one
                self.owner.connection_setup_done()

    def _serve_thread(self, request: Any, client_address: Any) -> None:
        # Every blocking read/write on the connection is bounded by the service time-out: without
        # it a peer that stops in the middle of a PDU holds its thread forever (pynetdicom reads
        # the rest of a PDU with a plain blocking recv).
        request.settimeout(self.io_timeout)
        if self.tls_context is not None:
            try:
                request = self.tls_context.wrap_socket(request, server_side=True)
            except (OSError, ValueError) as exc:
                LOG.info("TLS handshake with %s failed: %s", client_address[0], exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def shutdown(self) -> None:
        socketserver.BaseServer.shutdown(self)
        self.server_close()


class _SharedListener(_Listener):
    """A listener whose port several dicom worker processes bind at once (SO_REUSEPORT): the
    kernel spreads new connections over them, and each association is served whole by the
    worker that accepted it. Only set with dicom.workers > 1, so a lone station still gets
    'address in use' from a port another program holds."""

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


def _start_listener(ae: AE, address: tuple[str, int], handlers: list[Any],
                    tls_context: ssl.SSLContext | None, timeout: float, shared: bool = False,
                    kind: str = "plain", owner: DicomServer | None = None) -> _Listener:
    """Bind and serve one listener in a daemon thread (ae.start_server(block=False), our class);
    `shared`: the port is bound by every dicom worker (SO_REUSEPORT); `owner`: the DicomServer that
    balances connections over the workers (only when shared)."""
    server = ae.make_server(address, evt_handlers=handlers, server_class=_SharedListener if shared else _Listener)
    assert isinstance(server, _Listener)
    if pnd_tuning.fast_path_enabled("contexts"):
        server.contexts = _SharedContexts(copy.deepcopy(server.contexts))
    server.tls_context = tls_context
    server.io_timeout = timeout
    server.kind = kind
    server.owner = owner
    if owner is not None:  # pnd_tuning 3e: large C-STORE data sets go to disk as they arrive
        server.bs_stream_sink = store.stream_sink(owner.ctx)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"DicomListener:{address[1]}", daemon=True)
    thread.start()
    return server


class _WarningsToMainLog(logging.Handler):
    """While debug mode keeps pynetdicom from propagating, still pass its warnings and errors on."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        for handler in logging.getLogger().handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


_WARNINGS_TO_MAIN_LOG = _WarningsToMainLog()


class DicomServer:
    """Plain and TLS listeners sharing one AE configuration and one set of handlers."""

    def __init__(self, data_dir: str | os.PathLike[str], settings: Settings | None = None, worker: int = 1) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings or Settings(data_dir)
        self.worker = worker
        self.ctx = StationContext(self.data_dir, self.settings, worker)
        self.servers: list[Any] = []
        self._open: dict[str, Any] = {}  # "plain" / "tls" → its listener
        self._snapshot: dict[str, Any] = {}
        self._debug_handler: logging.Handler | None = None
        self._lock = threading.Lock()
        self.balancer: Balancer | None = None  # with dicom.workers > 1: spreads connections evenly
        self._setting_up = 0  # connections accepted (or handed in) whose association has not started
        # the association each setting-up connection's thread has made (EVT_CONN_OPEN): from its start
        # until that thread ends it is a running association AND a connection setting up, counted once
        self._made: dict[int, Any] = {}
        # associations whose connection has closed: their thread may live on a moment (it ends its
        # DUL thread first), and a count that still holds them made a worker look busier than it was
        self._closed: weakref.WeakSet[Any] = weakref.WeakSet()
        self._count_lock = threading.Lock()

    # -- connection counting and balancing over the dicom workers

    def load(self) -> int:
        """Connections this worker serves now: being set up, plus running associations."""
        running = 0
        made = {id(assoc) for assoc in list(self._made.values())}
        for server in list(self.servers):
            running += sum(1 for assoc in server.active_associations
                           if id(assoc) not in made and assoc not in self._closed)
        return self._setting_up + running

    def connection_started(self, taking: bool = False) -> None:
        with self._count_lock:
            self._setting_up += 1
        self._publish(taking=taking)

    def connection_setup_done(self) -> None:
        with self._count_lock:
            self._setting_up -= 1
            self._made.pop(threading.get_ident(), None)
        self._publish()

    def _on_conn_open(self, event: Any) -> None:
        """In the connection's own thread, just before its association starts (see `_made`)."""
        with self._count_lock:
            self._made[threading.get_ident()] = event.assoc

    def _publish(self, taking: bool = False) -> None:
        balancer = self.balancer
        if balancer is not None:
            try:
                balancer.publish(taking)
            except OSError as exc:
                LOG.debug("could not publish the dicom worker load: %s", exc)

    def publish_load(self) -> None:
        """Correct this worker's published count (the service calls it every second)."""
        self._publish()

    def _on_conn_close(self, event: Any) -> None:
        self._closed.add(event.assoc)
        self._publish()

    def hand_over(self, kind: str, sock: socket.socket, address: Any) -> bool:
        balancer = self.balancer
        if balancer is None:
            return False
        try:
            return balancer.hand_over(kind, sock, address)
        except OSError as exc:  # the load file: serve it here
            LOG.debug("no hand-over: %s", exc)
            return False

    def claim_kept(self) -> bool:
        """Whether the connection just accepted and kept here was counted as on its way here."""
        balancer = self.balancer
        return balancer is not None and balancer.claim_kept()

    def _serve_handed(self, kind: str, sock: socket.socket, address: Any) -> bool:
        server = self._open.get(kind)
        if server is None:
            return False
        server.serve_connection(sock, address, taking=True)
        return True

    def _balance(self, shared: bool) -> None:
        """Open the hand-over inbox with several workers, close it with one."""
        if shared and self.balancer is None and pnd_tuning.fast_path_enabled("balance"):
            balancer = Balancer(self.data_dir, self.worker, self.settings.dicom_workers, self.load,
                                self._serve_handed)
            try:
                balancer.start()
            except OSError as exc:  # another process holds this worker's inbox: no balancing here
                LOG.warning("dicom worker %d: connections are not balanced over the workers: %s", self.worker, exc)
                balancer.close()
                return
            self.balancer = balancer
            LOG.info("dicom worker %d takes connections handed over by the other workers", self.worker)
        elif not shared and self.balancer is not None:
            self.balancer.close()
            self.balancer = None

    def handlers(self) -> list[Any]:
        log = AssociationLog(self.ctx)
        bindings = [
            (evt.EVT_ACCEPTED, log.on_accepted),
            (evt.EVT_REJECTED, log.on_rejected),
            (evt.EVT_RELEASED, log.on_released),
            (evt.EVT_ABORTED, log.on_aborted),
            (evt.EVT_CONN_CLOSE, log.on_closed),
            (evt.EVT_CONN_CLOSE, self._on_conn_close),
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_C_ECHO, log.on_echo),
            (evt.EVT_C_STORE, store.StoreHandler(self.ctx)),
            (evt.EVT_C_FIND, find_handler.FindHandler(self.ctx, EXTRA_FIND_HANDLERS)),
            (evt.EVT_C_MOVE, retrieve.MoveHandler(self.ctx)),
            (evt.EVT_C_GET, retrieve.GetHandler(self.ctx)),
        ]
        return bindings

    def _configure_debug(self) -> None:
        logger = logging.getLogger("pynetdicom")
        pnd_tuning.set_protocol_logging(bool(self.settings.get("dicom.debug")))
        if self.settings.get("dicom.debug"):
            if self._debug_handler is None:
                logs = self.data_dir / "logs"
                logs.mkdir(parents=True, exist_ok=True)
                handler = logging.handlers.RotatingFileHandler(
                    logs / "dicom-debug.log", maxBytes=20 * 1024 * 1024, backupCount=5)
                handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(message)s"))
                logger.addHandler(handler)
                logger.addHandler(_WARNINGS_TO_MAIN_LOG)
                logger.propagate = False  # the protocol log goes to its own file, not the main log
                self._debug_handler = handler
            logger.setLevel(logging.DEBUG)
        else:
            if self._debug_handler is not None:
                logger.removeHandler(self._debug_handler)
                logger.removeHandler(_WARNINGS_TO_MAIN_LOG)
                logger.propagate = True
                self._debug_handler.close()
                self._debug_handler = None
            logger.setLevel(logging.WARNING)

    def start(self) -> None:
        with self._lock:
            self._start_locked()

    def _start_locked(self, only_missing: bool = False) -> None:
        """Open every configured listener; one that cannot be opened does not keep the other shut.

        Raises OSError naming the failed listeners after opening what it can (the service retries,
        with `only_missing`, leaving the listeners that are open alone).
        """
        settings = self.settings.all()
        self._snapshot = self._listener_settings(settings)
        shared = self._snapshot["shared"]
        label = f" [worker {self.worker} of {self.settings.dicom_workers()}]" if shared else ""
        self._configure_debug()
        bind = settings["dicom.bind"] or ""
        self.ctx.store.min_free = int(settings["dicom.min_free_mb"]) * 1024 * 1024
        failures: list[str] = []
        if settings["dicom.port"] and not (only_missing and "plain" in self._open):
            try:
                ae = build_ae(self.ctx)
                server = _start_listener(ae, (bind, settings["dicom.port"]), self.handlers(), None,
                                         float(settings["dicom.timeout"]), shared, "plain", self)
                self.servers.append(server)
                self._open["plain"] = server
                LOG.info("DICOM listening on %s:%s (plain) as %s%s", bind or "*", settings["dicom.port"],
                         ", ".join(sorted(self.settings.derived_aets())), label)
            except OSError as exc:
                failures.append(f"plain port {bind or '*'}:{settings['dicom.port']}: {exc}")
        if settings["dicom.tls_port"] and not (only_missing and "tls" in self._open):
            try:
                ssl_ctx = tlsca.server_context(self.data_dir,
                                               require_client_cert=settings["dicom.tls_require_client_cert"],
                                               trusted_ca=settings["dicom.tls_trusted_ca"])
                ae = build_ae(self.ctx)
                server = _start_listener(ae, (bind, settings["dicom.tls_port"]), self.handlers(), ssl_ctx,
                                         float(settings["dicom.timeout"]), shared, "tls", self)
                self.servers.append(server)
                self._open["tls"] = server
                LOG.info("DICOM listening on %s:%s (TLS)%s", bind or "*", settings["dicom.tls_port"], label)
            except (OSError, ssl.SSLError) as exc:
                failures.append(f"TLS port {bind or '*'}:{settings['dicom.tls_port']}: {exc}")
        self._balance(shared)  # after the listeners: what is handed over here must find them open
        if failures:
            raise OSError("cannot open " + "; ".join(failures))

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Close the listeners, let running associations finish for `grace` seconds, abort the rest.

        A connection that never sent an A-ASSOCIATE-RQ (a port probe) is closed at once. An
        aborted peer never got a success for the object in flight, so nothing acknowledged is
        lost; without the abort a busy sender would keep the process alive until SIGKILL. The
        whole stop takes at most `grace` + ABORT_WAIT seconds, well inside the supervisor's kill
        time-out: an association still alive then ends with the process.
        """
        with self._lock:
            if self.balancer is not None:  # first: what was handed over just now is still served
                self.balancer.close()
                self.balancer = None
            active = []
            for server in self.servers:
                try:
                    active.extend(server.active_associations)
                except Exception:
                    pass
                server.shutdown()
            self.servers = []
            self._open = {}
        dropped = [assoc for assoc in active if pnd_tuning.drop_unrequested(assoc)]
        running = [assoc for assoc in active if assoc not in dropped]
        deadline = time.monotonic() + grace
        for assoc in running:
            assoc.join(max(0.0, deadline - time.monotonic()))
        for assoc in running:
            if assoc.is_alive():
                LOG.warning("aborting association from %s at shutdown", assoc.requestor.ae_title)
                try:
                    assoc.abort(block=False)  # queues the A-ABORT; blocking could wait out the ARTIM timer
                except Exception:
                    pass
        deadline = time.monotonic() + ABORT_WAIT
        for assoc in active:
            assoc.join(max(0.0, deadline - time.monotonic()))

    def reload(self, force: bool = False) -> bool:
        """Apply changed settings without dropping a listener that can stay.

        Only a changed port or bind address closes and reopens that listener; the AE title,
        time-outs and the TLS settings (client certificates, trusted CAs) are swapped in place on
        the running listeners, so a settings change never refuses a connection. `force` retries
        what failed last time (a port that was taken, a TLS file that could not be read).
        """
        settings = self.settings.all()
        self._configure_debug()
        self.ctx.store.min_free = int(settings["dicom.min_free_mb"]) * 1024 * 1024
        current = self._listener_settings(settings)
        old = self._snapshot
        if current == old and not force:
            return False
        with self._lock:
            moved = set()
            if current["shared"] != old.get("shared"):  # SO_REUSEPORT is set before bind: rebind both
                moved |= set(self._open)
            if (current["dicom.port"], current["dicom.bind"]) != (old.get("dicom.port"), old.get("dicom.bind")):
                moved.add("plain")
            if (current["dicom.tls_port"], current["dicom.bind"]) != (old.get("dicom.tls_port"), old.get("dicom.bind")):
                moved.add("tls")
            for name in moved:
                server = self._open.pop(name, None)
                if server is not None:
                    server.shutdown()
                    self.servers.remove(server)
            errors = []
            for name, server in self._open.items():
                try:
                    apply_settings(server.ae, self.settings)
                    server.ae_title = server.ae.ae_title
                    server.io_timeout = float(settings["dicom.timeout"])
                    if name == "tls":
                        server.tls_context = tlsca.server_context(
                            self.data_dir, require_client_cert=settings["dicom.tls_require_client_cert"],
                            trusted_ca=settings["dicom.tls_trusted_ca"])
                except (OSError, ValueError) as exc:
                    errors.append(f"{name} listener: {exc}")
            try:
                self._start_locked(only_missing=True)
            except OSError as exc:
                errors.append(str(exc))
            if errors:
                raise OSError("; ".join(errors))
        return True

    def _listener_settings(self, settings: dict[str, Any]) -> dict[str, Any]:
        """What the listeners are built from (a change of any of it is applied by `reload`)."""
        return {**{k: settings[k] for k in DICOM_LISTENER_KEYS + ("dicom.timeout",)},
                "shared": self.settings.dicom_workers() > 1}

    def ports(self) -> list[int]:
        return [server.server_address[1] for server in self.servers]
