"""C-MOVE (to a known node) and C-GET: send the stored files, as stored when the peer accepts
their transfer syntax, decompressed to Explicit VR Little Endian when it only takes native data."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt

from appliance import tlsca
from appliance.dicom import byteorder, query, slots
from appliance.dicom.context import StationContext, state_of

LOG = logging.getLogger("burnstation.dicom.retrieve")

PATIENT_ROOT = {"1.2.840.10008.5.1.4.1.2.1.2", "1.2.840.10008.5.1.4.1.2.1.3"}
NATIVE = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]

def prepare(ds: Dataset, accepted: list[Any]) -> Dataset:
    """Make `ds` sendable over one of the accepted contexts: decompress when only native is taken,
    and a big endian object meant for a little endian context gets its binary values swapped by VR
    (pynetdicom re-encodes numbers and text but would send OW/OF/... bytes in the wrong order)."""
    sop_class = str(ds.SOPClassUID)
    ts = UID(str(ds.file_meta.TransferSyntaxUID))
    offered = {str(cx.transfer_syntax[0]) for cx in accepted if str(cx.abstract_syntax) == sop_class}
    if ts in offered:
        return ds
    if byteorder.is_big_endian(ds):
        byteorder.swap_to_little_endian(ds)  # ByteOrderError: the caller counts a failed sub-operation
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return ds
    if not ts.is_compressed:
        return ds
    if offered & {str(u) for u in NATIVE}:
        ds.decompress(generate_instance_uid=False)  # a copy of the same instance, not a new one
    return ds


def contexts_for(rows: list[Any]) -> list[Any]:
    """Presentation contexts for a set of instances: each class with its stored syntax, and native."""
    pairs: dict[str, set[str]] = {}
    for row in rows:
        pairs.setdefault(row["sop_class"], set()).add(row["transfer_syntax"])
    contexts = []
    for sop_class, syntaxes in pairs.items():
        compressed = sorted(s for s in syntaxes if UID(s).is_compressed)
        for ts in compressed:
            contexts.append(build_context(sop_class, [ts]))
        contexts.append(build_context(sop_class, [str(u) for u in NATIVE]))
    return contexts[:128]


def _instances(ctx: StationContext, event: Any, model: str) -> list[Any]:
    return query.instance_rows(ctx.conn(), event.identifier, model)


class MoveHandler:
    """Bound to EVT_C_MOVE."""

    def __init__(self, ctx: StationContext) -> None:
        self.ctx = ctx

    def __call__(self, event: Any) -> Iterator[Any]:
        state = state_of(event.assoc)
        if state is not None:
            state.services.add("move")
        assoc = event.assoc
        dest = self.ctx.settings.node(str(event.move_destination).strip())
        if dest is None or not dest.allows("store"):
            LOG.info("C-MOVE: destination %r is not a known node", str(event.move_destination).strip())
            yield None, None
            return
        caller = self.ctx.known_node(assoc.requestor.ae_title.strip(), assoc.requestor.address, "move")
        model = "PATIENT" if str(event.request.AffectedSOPClassUID) in PATIENT_ROOT else "STUDY"
        try:
            rows = _instances(self.ctx, event, model) if caller is not None else []
        except query.QueryError as exc:
            LOG.info("C-MOVE: bad identifier: %s", exc)
            rows = None
        holder: dict[str, Any] = {}

        def remember(ev: Any) -> None:
            holder["assoc"] = ev.assoc

        kwargs: dict[str, Any] = {"ae_title": dest.aet, "evt_handlers": [(evt.EVT_ACCEPTED, remember)],
                                  "contexts": contexts_for(rows or [])
                                  or [build_context("1.2.840.10008.1.1")]}
        if dest.tls:
            kwargs["tls_args"] = (tlsca.client_context(self.ctx.data_dir,
                                                       trusted_ca=self.ctx.settings.get("dicom.tls_trusted_ca")), None)
        # the sub-association counts in the station-wide cap, shared with the transfer process;
        # no slot within twice dicom.timeout (a slot held by a silent peer comes free after one
        # dicom.timeout, so a move queued behind it still goes): raised at the first yield,
        # pynetdicom answers 0xC514 (Failure: unable to process) without connecting to the destination
        limit = int(self.ctx.settings.get("dicom.max_connections"))
        timeout = 2 * float(self.ctx.settings.get("dicom.timeout"))
        try:
            slot = slots.take(self.ctx.data_dir, limit, timeout)
        except slots.Busy as exc:
            LOG.warning("C-MOVE to %s refused: %s", dest.aet, exc)
            raise
        try:
            yield dest.host, dest.port, kwargs
            if caller is None:
                yield 1
                yield 0x0124, None
                return
            if rows is None:
                yield 1
                yield 0xA900, None
                return
            yield len(rows)
            yield from _send(rows, event, lambda: holder["assoc"].accepted_contexts)
        finally:
            slot.release()


class GetHandler:
    """Bound to EVT_C_GET: sends over the requesting association (SCP role for storage)."""

    def __init__(self, ctx: StationContext) -> None:
        self.ctx = ctx

    def __call__(self, event: Any) -> Iterator[Any]:
        state = state_of(event.assoc)
        if state is not None:
            state.services.add("get")
        assoc = event.assoc
        if self.ctx.known_node(assoc.requestor.ae_title.strip(), assoc.requestor.address, "get") is None:
            yield 1
            yield 0x0124, None
            return
        model = "PATIENT" if str(event.request.AffectedSOPClassUID) in PATIENT_ROOT else "STUDY"
        try:
            rows = _instances(self.ctx, event, model)
        except query.QueryError:
            yield 1
            yield 0xA900, None
            return
        yield len(rows)
        yield from _send(rows, event, lambda: assoc.accepted_contexts)


def _send(rows: list[Any], event: Any, accepted: Any) -> Iterator[tuple[int, Dataset | None]]:
    for row in rows:
        if event.is_cancelled:
            yield 0xFE00, None
            return
        try:
            ds = dcmread(row["path"])
            ds = prepare(ds, accepted())
        except Exception as exc:
            LOG.error("cannot read %s for retrieve: %s", row["path"], exc)
            # Skipping it would leave pynetdicom to answer Success with an instance missing. A
            # stand-in without file meta cannot be sent, so pynetdicom counts a failed
            # sub-operation and lists its SOP Instance UID (final status B000, or A702 if all fail).
            ds = Dataset()
            ds.SOPClassUID = row["sop_class"]
            ds.SOPInstanceUID = row["sop_uid"]
        yield 0xFF00, ds
