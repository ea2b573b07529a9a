"""C-STORE: write the object as received, fsync, rename, index — then, and only then, succeed."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from pydicom.dataset import Dataset

from appliance import index
from appliance.dicom.context import StationContext, state_of
from appliance.storage import OutOfSpace, file_meta_bytes

LOG = logging.getLogger("burnstation.dicom.store")

SUCCESS = 0x0000
NOT_AUTHORISED = 0x0124
OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC210


def _failure(status: int, comment: str) -> Dataset:
    rsp = Dataset()
    rsp.Status = status
    rsp.ErrorComment = comment[:64]
    return rsp


class StoreHandler:
    """Bound to EVT_C_STORE."""

    def __init__(self, ctx: StationContext) -> None:
        self.ctx = ctx

    def __call__(self, event: Any) -> int | Dataset:
        state = state_of(event.assoc)
        try:
            status = self._store(event)
        except Exception as exc:  # never let one object kill the association
            LOG.exception("C-STORE failed")
            status = _failure(OUT_OF_RESOURCES, f"internal error: {exc}")
        if state is not None:
            state.services.add("store")
            if isinstance(status, int) and status == SUCCESS:
                state.stored += 1
            else:
                state.failed += 1
        return status

    def _store(self, event: Any) -> int | Dataset:
        ctx = self.ctx
        assoc = event.assoc
        calling = assoc.requestor.ae_title.strip()
        if not ctx.settings.get("dicom.store_from_any") and ctx.known_node(
                calling, assoc.requestor.address, "store") is None:
            return _failure(NOT_AUTHORISED, f"{calling} is not a known node allowed to store")
        request = event.request
        raw = request.DataSet.getvalue()
        try:
            ctx.store.check_space(len(raw))
        except OutOfSpace as exc:
            LOG.warning("refusing C-STORE: %s", exc)
            return _failure(OUT_OF_RESOURCES, "disk space below threshold")
        try:
            ds = event.dataset
        except Exception as exc:
            return _failure(CANNOT_UNDERSTAND, f"cannot decode data set: {exc}")
        sop_uid = str(request.AffectedSOPInstanceUID or "").strip()
        sop_class = str(request.AffectedSOPClassUID or "").strip()
        try:
            ds_uid = str(ds.get("SOPInstanceUID", "") or "").strip()
            study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
            series_uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        except Exception as exc:
            return _failure(CANNOT_UNDERSTAND, f"cannot decode data set: {exc}")
        if not sop_uid or ds_uid != sop_uid:
            return _failure(DATASET_MISMATCH, "SOP Instance UID missing or differs from the request")
        if not study_uid or not series_uid:
            return _failure(DATASET_MISMATCH, "Study or Series Instance UID missing")
        transfer_syntax = str(event.context.transfer_syntax)
        path = ctx.store.path_for(study_uid, series_uid, sop_uid)
        try:
            size = ctx.store.write(path, [file_meta_bytes(sop_class, sop_uid, transfer_syntax, calling), raw])
        except OSError as exc:
            LOG.error("cannot write %s: %s", path, exc)
            return _failure(OUT_OF_RESOURCES, f"cannot write file: {exc.strerror or exc}")
        try:
            rec = index.record_from_dataset(ds, str(path), size, transfer_syntax)
        except Exception as exc:
            os.unlink(path)
            return _failure(CANNOT_UNDERSTAND, f"cannot decode data set: {exc}")
        state = state_of(assoc)
        rec.sop_class = sop_class or rec.sop_class
        rec.assoc_id = state.row_id if state else None
        rec.called_aet = assoc.acceptor.ae_title.strip()
        rec.calling_aet = calling
        rec.received_at = time.time()
        old = index.add_instance(ctx.conn(), rec)
        if old:
            try:
                os.unlink(old)
            except FileNotFoundError:
                pass
        return SUCCESS
