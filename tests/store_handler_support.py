"""The C-STORE handler called directly, as the DICOM listener calls it (no association, no
station): events and a station context for tests of the store/index path."""

from __future__ import annotations

import io
import types
from pathlib import Path
from typing import Any

import pytest
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset

from appliance import index
from appliance.config import Settings
from appliance.dicom.context import AssocState, StationContext

EXPLICIT = "1.2.840.10008.1.2.1"


def explicit_bytes(ds: Any) -> bytes:
    """The data set in Explicit VR Little Endian, as a sender puts it on the wire."""
    buf = io.BytesIO()
    fp = DicomFileLike(buf)
    fp.is_implicit_VR = False
    fp.is_little_endian = True
    write_dataset(fp, ds)
    return buf.getvalue()


def store_event(ctx: StationContext, ds: Any) -> Any:
    """A C-STORE event as the listener hands it to the handler (its own association each)."""
    assoc = types.SimpleNamespace(requestor=types.SimpleNamespace(ae_title="CT", address="127.0.0.1"),
                                  acceptor=types.SimpleNamespace(ae_title="BURNSTATION"))
    assoc.bs_state = AssocState(index.open_association(ctx.conn(), "CT", "BURNSTATION", "127.0.0.1", 1, False, 1),
                                "BURNSTATION", "CT")
    request = types.SimpleNamespace(DataSet=io.BytesIO(explicit_bytes(ds)), AffectedSOPInstanceUID=ds.SOPInstanceUID,
                                    AffectedSOPClassUID=ds.SOPClassUID)
    return types.SimpleNamespace(assoc=assoc, request=request, context=types.SimpleNamespace(transfer_syntax=EXPLICIT))


def handler_context(data: Path, monkeypatch: pytest.MonkeyPatch) -> StationContext:
    """A station context over `data`: every fast-path part on, any node may store, no free-space floor."""
    monkeypatch.setenv("BURNSTATION_FASTPATH", "1")
    settings = Settings(data)
    settings.set("dicom.store_from_any", True)
    context = StationContext(data, settings)
    context.store.min_free = 0
    return context
