"""C-FIND: Patient Root and Study Root query/retrieve information models (and MWL, delegated)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset

from appliance.dicom import query
from appliance.dicom.context import StationContext, state_of
from appliance.dicom.handlers import BAD_IDENTIFIER, UNABLE_TO_PROCESS, failure_status

LOG = logging.getLogger("burnstation.dicom.find")

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"


class FindHandler:
    """Bound to EVT_C_FIND; `extra` maps other SOP classes (e.g. worklist) to their handlers."""

    def __init__(self, ctx: StationContext, extra: dict[str, Any]) -> None:
        self.ctx = ctx
        self.extra = extra

    def __call__(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        sop_class = str(event.request.AffectedSOPClassUID)
        state = state_of(event.assoc)
        if sop_class in self.extra:
            if state is not None:
                state.services.add("worklist")
            yield from self.extra[sop_class](self.ctx, event)
            return
        if state is not None:
            state.services.add("find")
        assoc = event.assoc
        calling = assoc.requestor.ae_title.strip()
        if self.ctx.known_node(calling, assoc.requestor.address, "find") is None:
            LOG.info("C-FIND refused: %s is not a known node allowed to query", calling)
            yield 0x0124, None
            return
        model = "PATIENT" if sop_class == PATIENT_ROOT_FIND else "STUDY"
        try:
            identifier = event.identifier
            matches = query.find(self.ctx.conn(), identifier, model)
            for match in matches:
                if event.is_cancelled:
                    yield 0xFE00, None
                    return
                yield 0xFF00, query.response(identifier, match, self.ctx.settings.aet())
        except query.QueryError as exc:
            yield failure_status(BAD_IDENTIFIER, str(exc)), None
            return
        except Exception as exc:
            LOG.exception("C-FIND failed")
            yield failure_status(UNABLE_TO_PROCESS, f"unable to process: {exc}"), None
            return
        yield 0x0000, None
