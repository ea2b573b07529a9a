"""What every DICOM handler shares: settings, the file store, state.db, and the association log."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance import db, index
from appliance.config import Node, Settings
from appliance.dicom import query
from appliance.dicom.ingest import IndexWriter
from appliance.storage import Store

LOG = logging.getLogger("burnstation.dicom")


class StationContext:
    """Settings, store and a per-thread state.db connection for the handlers."""

    def __init__(self, data_dir: Path, settings: Settings, worker: int = 1) -> None:
        self.data_dir = data_dir
        self.settings = settings
        self.worker = worker  # which dicom worker process this is (1..dicom.workers)
        self.store = Store(data_dir, int(settings.get("dicom.min_free_mb")))
        self.writer = IndexWriter(data_dir)  # index writes of every association of this process
        self._conns = db.PerThread(data_dir, query.install_functions)  # closed when its association's thread ends
        self._node_cache: dict[str, tuple[float, set[str]]] = {}

    def conn(self) -> sqlite3.Connection:
        return self._conns.get()

    def _addresses(self, node: Node) -> set[str]:
        cached = self._node_cache.get(node.host)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        addrs = node.addresses()
        self._node_cache[node.host] = (time.monotonic() + 60, addrs)
        return addrs

    def known_node(self, calling_aet: str, peer_address: str, service: str) -> Node | None:
        """The known node behind an association, if its AE title and address match and it may use `service`."""
        node = self.settings.node(calling_aet)
        if node is None or not node.allows(service):
            return None
        peer = peer_address.removeprefix("::ffff:")
        if peer not in self._addresses(node):
            return None
        return node


@dataclass
class AssocState:
    """Bookkeeping for one incoming association (kept on the association object)."""

    row_id: int
    called: str
    calling: str
    stored: int = 0
    failed: int = 0
    services: set[str] = field(default_factory=set)
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


def state_of(assoc: Any) -> AssocState | None:
    return getattr(assoc, "bs_state", None)


class AssociationLog:
    """Writes the association log (who, when, what, result) as associations come and go."""

    def __init__(self, ctx: StationContext) -> None:
        self.ctx = ctx

    def on_accepted(self, event: Any) -> None:
        assoc = event.assoc
        called = assoc.acceptor.ae_title.strip()
        calling = assoc.requestor.ae_title.strip()
        tls = _is_tls(assoc)
        row = index.open_association(self.ctx.conn(), calling, called, assoc.requestor.address,
                                     assoc.requestor.port, tls, self.ctx.worker)
        assoc.bs_state = AssocState(row, called, calling)

    def on_rejected(self, event: Any) -> None:
        assoc = event.assoc
        conn = self.ctx.conn()
        row = index.open_association(conn, str(assoc.requestor.ae_title).strip(), str(assoc.acceptor.ae_title).strip(),
                                     assoc.requestor.address, assoc.requestor.port, _is_tls(assoc), self.ctx.worker)
        index.close_association(conn, row, stored=0, failed=0, services=[], result="rejected",
                                detail="called AE title not recognised")

    def _close(self, event: Any, result: str) -> None:
        state = state_of(event.assoc)
        if state is None:
            return
        with state.lock:
            if state.closed:
                return
            state.closed = True
        index.close_association(self.ctx.conn(), state.row_id, stored=state.stored, failed=state.failed,
                                services=state.services, result=result)

    def on_released(self, event: Any) -> None:
        self._close(event, "released")

    def on_aborted(self, event: Any) -> None:
        self._close(event, "aborted")

    def on_closed(self, event: Any) -> None:
        self._close(event, closing_reason(event.assoc))

    def on_echo(self, event: Any) -> int:
        state = state_of(event.assoc)
        if state is not None:
            state.services.add("echo")
        return 0x0000


def closing_reason(assoc: Any) -> str:
    """How an association ended, decided when its connection closes.

    pynetdicom fires EVT_CONN_CLOSE from the DUL thread, often before the association thread
    fires EVT_RELEASED / EVT_ABORTED, so the close event alone says nothing. The state machine does:
    Sta13 (the A-RELEASE-RP went out, waiting for the peer to close) means a completed release;
    an A-ABORT / A-P-ABORT waiting for the association thread means an abort; anything else is
    a transport connection dropped without release (the burn pipeline treats it like an abort).
    """
    if getattr(assoc, "is_released", False):
        return "released"
    dul = getattr(assoc, "dul", None)
    state = getattr(getattr(dul, "state_machine", None), "current_state", "")
    if state == "Sta13":
        return "released"
    try:
        if getattr(assoc, "is_aborted", False) or assoc.acse.is_aborted("a-abort"):
            return "aborted"
    except Exception:  # the queue peek is best effort
        pass
    return "connection closed"


def _is_tls(assoc: Any) -> bool:
    sock = getattr(getattr(assoc, "dul", None), "socket", None)
    raw = getattr(sock, "socket", None)
    return raw is not None and raw.__class__.__name__ == "SSLSocket"
