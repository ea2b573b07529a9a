"""The station as a client: echo and send to known nodes, within `dicom.max_connections` (slots.py)."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from collections.abc import Iterable, Iterator
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_context, evt
from pynetdicom.dsutils import decode, encode

from appliance import tlsca
from appliance.config import Node, Settings
from appliance.dicom import pnd_tuning, slots
from appliance.dicom.handlers.retrieve import contexts_for, prepare


def _client_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.aet())
    timeout = float(settings.get("dicom.timeout"))
    ae.acse_timeout = ae.dimse_timeout = ae.connection_timeout = timeout
    ae.network_timeout = timeout
    return ae


def _tls_args(data_dir: str | os.PathLike[str], node: Node, settings: Settings) -> tuple | None:
    if not node.tls:
        return None
    return (tlsca.client_context(data_dir, trusted_ca=settings.get("dicom.tls_trusted_ca")), None)


def echo(data_dir: str | os.PathLike[str], settings: Settings, node: Node) -> tuple[bool, str]:
    """C-ECHO a known node; (success, human-readable result)."""
    ae = _client_ae(settings)
    ae.add_requested_context("1.2.840.10008.1.1")
    try:
        slot = slots.take(data_dir, int(settings.get("dicom.max_connections")), float(settings.get("dicom.timeout")))
    except slots.Busy as exc:
        return False, str(exc)
    with slot:
        assoc = ae.associate(node.host, node.port, ae_title=node.aet, tls_args=_tls_args(data_dir, node, settings))
        if not assoc.is_established:
            if assoc.is_rejected:
                return False, f"association rejected by {node.aet}@{node.host}:{node.port}"
            return False, f"no association with {node.aet}@{node.host}:{node.port} (refused, timed out or aborted)"
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
    if status is not None and getattr(status, "Status", None) == 0x0000:
        return True, f"{node.aet}@{node.host}:{node.port} answered C-ECHO"
    return False, f"{node.aet} answered C-ECHO with status {getattr(status, 'Status', 'none')}"


def _no_delay(event: Any) -> None:
    """TCP_NODELAY on the requestor's socket: pynetdicom writes a command set and its data set as
    separate small PDUs, and Nagle + the peer's delayed ACK then cost ~40 ms per C-STORE."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _HeldCheckpoint(threading.Event):
    """Keeps a requestor association's reactor thread parked while the station drives it.

    pynetdicom 3.0 pauses its reactor around each send_*() with an Event and a flag it sets just
    before waiting; a send can read that flag between the reactor's wait returning and the flag
    being cleared, and the reactor then takes the peer's response off the queue ("Received
    unexpected C-STORE service message"): the send waits for dicom.timeout and the association is
    aborted. Seen about once per thousand fast C-STOREs on loopback. Parked for the whole
    association, the reactor never competes; `set()` is ignored until the association is released
    or aborted (or `close` lets it go), so its thread always ends.
    """

    def __init__(self, assoc: Any) -> None:
        super().__init__()
        self._assoc = assoc
        self.held = True
        self.parked = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.parked.set()
        try:
            return super().wait(timeout)
        finally:
            self.parked.clear()

    def set(self) -> None:
        a = self._assoc
        if not self.held or a._kill or a._sent_abort or not a.is_established:
            super().set()

    def let_go(self) -> None:
        self.held = False
        super().set()


def _hold_reactor(assoc: Any) -> None:
    checkpoint = _HeldCheckpoint(assoc)
    assoc._reactor_checkpoint = checkpoint
    # the event-driven reactor (pnd_tuning 2) idles up to IDLE_WAIT before its next turn; woken, it
    # parks at once (that wait was ~50 ms of every association, more on a busy machine)
    wake = getattr(assoc, "_bs_wake", None)
    if wake is not None:
        wake.set()
    if not checkpoint.parked.wait(5.0):  # the reactor reaches its wait within one loop turn
        raise AssociationFailed("the association's reactor thread did not pause")


def close(assoc: Any) -> None:
    """Release an association opened by `associate` (abort when it is no longer established)."""
    pnd_tuning.return_socket(assoc)
    try:
        if assoc.is_established:
            assoc.release()
    finally:
        checkpoint = assoc._reactor_checkpoint
        if isinstance(checkpoint, _HeldCheckpoint):
            checkpoint.let_go()


class AssociationFailed(RuntimeError):
    """No association with a node (refused, rejected, timed out or aborted); the message says which."""


def associate(data_dir: str | os.PathLike[str], settings: Settings, node: Node, contexts: list[Any],
              evt_handlers: list[Any] | None = None, roles: list[Any] | None = None) -> Any:
    """An established association with `node` (every wait bounded by `dicom.timeout`), else AssociationFailed."""
    ae = _client_ae(settings)
    ext_neg = list(roles or [])
    handlers = [(evt.EVT_CONN_OPEN, _no_delay), *(evt_handlers or [])]
    assoc = ae.associate(node.host, node.port, ae_title=node.aet, contexts=contexts,
                         tls_args=_tls_args(data_dir, node, settings), evt_handlers=handlers,
                         ext_neg=ext_neg or None)
    if assoc.is_established:
        try:
            _hold_reactor(assoc)
        except AssociationFailed:
            assoc.abort()
            raise
        return assoc
    timeout = settings.get("dicom.timeout")
    if assoc.is_rejected:
        raise AssociationFailed(f"association rejected by {node.aet}@{node.host}:{node.port}")
    raise AssociationFailed(f"no association with {node.aet}@{node.host}:{node.port} "
                            f"(refused, aborted or no answer within dicom.timeout={timeout}s)")


STORE_OK = (0x0000, 0xB000, 0xB007, 0xB006)


def store_rows(assoc: Any, rows: Iterable[dict]) -> Iterator[tuple[dict, int | None, str]]:
    """C-STORE indexed instances over `assoc`; yields (row, status or None when none came, comment).

    A stored file whose syntax the peer accepted as is goes out as its bytes, by the calling
    thread itself (pnd_tuning 3c) when that path is on, else through the library's send_c_store;
    anything else is read, converted if needed (`prepare`) and sent by the library.
    """
    accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
    direct = pnd_tuning.direct_store_possible(assoc)
    lent: pnd_tuning.LentSocket | None = None
    try:
        for row in rows:
            stored = None
            if direct and (row["sop_class"], row["transfer_syntax"]) in accepted:
                try:
                    stored = pnd_tuning.read_stored(row["path"])
                except OSError as exc:
                    yield row, None, f"{type(exc).__name__}: {exc}"[:300]
                    continue
            if stored is not None and (stored[0][0x0002], stored[0][0x0010]) in accepted:
                meta, dataset = stored
                try:
                    if lent is None:
                        lent = pnd_tuning.LentSocket(assoc).__enter__()
                    code, comment = lent.store(meta[0x0002], meta[0x0003], meta[0x0010], dataset)
                except (pnd_tuning.DirectStoreError, OSError, struct.error, ValueError) as exc:
                    if lent is not None:
                        lent.give_back()
                        lent = None
                    assoc.abort()
                    yield row, None, f"{type(exc).__name__}: {exc}"[:300]
                    return
                yield row, code, comment
                continue
            if lent is not None:  # the library's path needs the DUL thread on the socket again
                lent.give_back()
                lent = None
            yield from _store_with_library(assoc, row, accepted)
            if not assoc.is_established:
                return
    finally:
        if lent is not None:
            lent.give_back()


def move_responses(assoc: Any, identifier: Any, destination: str, model: str) -> Iterator[tuple[Any, Any]]:
    """C-MOVE `identifier` to `destination`: (status, identifier or None) per response, as the library's
    send_c_move yields them (a status without `Status`: no answer in time, or the association lost).

    The calling thread drives the association itself (pnd_tuning 3d) when it can; close the generator
    before aborting the association.
    """
    cx = next((cx for cx in assoc.accepted_contexts if str(cx.abstract_syntax) == str(model)), None)
    ts = str(cx.transfer_syntax[0]) if cx is not None else ""
    if not (pnd_tuning.direct_move_possible(assoc) and ts in (ImplicitVRLittleEndian, ExplicitVRLittleEndian)):
        yield from assoc.send_c_move(identifier, destination, model)
        return
    implicit = ts == ImplicitVRLittleEndian
    raw = encode(identifier, implicit, True)
    if raw is None:
        yield from assoc.send_c_move(identifier, destination, model)
        return
    try:
        lent: pnd_tuning.LentSocket | None = pnd_tuning.LentSocket(assoc).__enter__()
    except pnd_tuning.DirectStoreError:
        yield from assoc.send_c_move(identifier, destination, model)
        return
    try:
        responses = cast(Any, lent).move(str(model), ts, raw, destination)
        while True:
            try:
                values, data = next(responses)
            except StopIteration:
                return
            yield _move_status(values), (decode(BytesIO(data), implicit, True) if data else None)
    except (pnd_tuning.DirectStoreError, OSError, struct.error, ValueError) as exc:
        if lent is not None:
            lent.give_back()
            lent = None
        assoc.abort()
        yield SimpleNamespace(ErrorComment=f"{type(exc).__name__}: {exc}"[:300]), None
    finally:
        if lent is not None:
            lent.give_back()


_MOVE_STATUS_ELEMENTS = {0x1020: "NumberOfRemainingSuboperations", 0x1021: "NumberOfCompletedSuboperations",
                         0x1022: "NumberOfFailedSuboperations", 0x1023: "NumberOfWarningSuboperations"}


def _move_status(values: dict[int, bytes]) -> SimpleNamespace:
    """The attributes of a C-MOVE-RSP command set the station reads (as the library's status Dataset has them)."""
    status = SimpleNamespace(Status=struct.unpack("<H", values[0x0900])[0])
    for elem, name in _MOVE_STATUS_ELEMENTS.items():
        if len(values.get(elem, b"")) == 2:
            setattr(status, name, struct.unpack("<H", values[elem])[0])
    if 0x0902 in values:
        status.ErrorComment = values[0x0902].rstrip(b"\0 ").decode("ascii", "replace")
    return status


def _store_with_library(assoc: Any, row: dict, accepted: set[tuple[str, str]]) -> Iterator[tuple[dict, int | None, str]]:
    try:
        if _config.STORE_SEND_CHUNKED_DATASET and (row["sop_class"], row["transfer_syntax"]) in accepted:
            status = assoc.send_c_store(Path(row["path"]))  # the file's bytes as they are, not decoded
        else:
            status = assoc.send_c_store(prepare(dcmread(Path(row["path"])), assoc.accepted_contexts))
    except Exception as exc:
        yield row, None, f"{type(exc).__name__}: {exc}"[:300]
        return
    code = getattr(status, "Status", None) if status is not None else None
    comment = str(getattr(status, "ErrorComment", "") or "") if status is not None else ""
    if code is None and not comment:
        comment = "no answer (timed out or aborted)"
    yield row, code, comment


def send_files(data_dir: str | os.PathLike[str], settings: Settings, node: Node,
               rows: Iterable[dict]) -> tuple[int, int]:
    """C-STORE indexed instances (dicts with path, sop_class, transfer_syntax) to a node; (sent, failed)."""
    rows = list(rows)
    contexts = contexts_for(rows) or [build_context("1.2.840.10008.1.1")]
    sent = 0
    try:
        slot = slots.take(data_dir, int(settings.get("dicom.max_connections")), float(settings.get("dicom.timeout")))
    except slots.Busy:
        return 0, len(rows)
    with slot:
        try:
            assoc = associate(data_dir, settings, node, contexts)
        except AssociationFailed:
            return 0, len(rows)
        try:
            for _row, code, _comment in store_rows(assoc, rows):
                sent += code in STORE_OK
        finally:
            close(assoc)
    return sent, len(rows) - sent
