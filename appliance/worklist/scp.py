"""Modality Worklist C-FIND SCP (1.2.840.10008.5.1.4.31), bound into the DICOM server.

Items come from state.db (HL7 orders) and from the `.wl` file folder; both are cached in memory
as records and refreshed only when they change, so a scanner polling every few seconds costs a
single small SELECT. Access: any calling AE title may query the worklist. Most sites do not
register every modality as a known node, and the worklist only reveals what the RIS scheduled
for the scanners; storage and query/retrieve keep their own rules.
Requests are logged only when `hl7.log_messages` is on (scanners poll every few seconds); with
it off, a worklist-only association is also dropped from the association log.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from appliance import index
from appliance.dicom.handlers import BAD_IDENTIFIER, UNABLE_TO_PROCESS, failure_status
from appliance.worklist import items
from appliance.worklist import record as rec
from appliance.worklist.matching import QueryError, compile_query, respond
from appliance.worklist.record import Record
from appliance.worklist.wlfiles import FOLDER, WorklistFolder

LOG = logging.getLogger("burnstation.worklist")

MWL_FIND = "1.2.840.10008.5.1.4.31"


class WorklistSource:
    """The items a worklist query sees: state.db items (cached by revision) plus `.wl` files."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = WorklistFolder(Path(data_dir) / FOLDER)
        self._generation = -1
        self._items: dict[int, tuple[int, float | None, Record]] = {}
        self._lock = threading.Lock()

    def _refresh(self, conn: sqlite3.Connection) -> None:
        gen = items.generation(conn)
        if gen == self._generation:
            return
        with self._lock:
            if gen == self._generation:
                return
            revs = items.revisions(conn)
            stale = [i for i, r in revs.items() if i not in self._items or self._items[i][0] != r]
            fresh = dict(self._items)
            for gone in set(fresh) - set(revs):
                del fresh[gone]
            for row in items.load(conn, stale):
                fresh[row["id"]] = (row["rev"], row["done_at"], rec.from_json(row["dataset"]))
            self._items = fresh
            self._generation = gen

    def records(self, conn: sqlite3.Connection, retention_hours: float, now: float | None = None) -> list[Record]:
        self._refresh(conn)
        limit = (now or time.time()) - retention_hours * 3600
        listed = [r for _rev, done_at, r in self._items.values() if done_at is None or done_at > limit]
        return listed + self.folder.records()


_sources: dict[Path, WorklistSource] = {}
_sources_lock = threading.Lock()


def source_for(data_dir: Path) -> WorklistSource:
    key = Path(data_dir).resolve()
    with _sources_lock:
        if key not in _sources:
            _sources[key] = WorklistSource(key)
        return _sources[key]


def _summary(identifier: Dataset) -> str:
    try:
        return "; ".join(f"{e.keyword or e.tag}={e.value!s}" for e in identifier.iterall() if e.VR != "SQ")[:2000]
    except Exception:
        return "(unreadable identifier)"


def _forget_association(ctx: Any, assoc: Any) -> None:
    state = getattr(assoc, "bs_state", None)
    if state is None or not state.services <= {"worklist"}:
        return
    try:
        index.forget_association(ctx.conn(), state.row_id)
    except sqlite3.Error:
        LOG.debug("could not drop the worklist association from the log", exc_info=True)


def find_worklist(ctx: Any, event: Any) -> Iterator[tuple[Any, Dataset | None]]:
    """EVT_C_FIND handler for the MWL information model (called by the DICOM FindHandler)."""
    settings = ctx.settings
    log_on = bool(settings.get("hl7.log_messages"))
    assoc = event.assoc
    calling = assoc.requestor.ae_title.strip()
    started = time.perf_counter()
    try:
        identifier = event.identifier
        if log_on:
            LOG.info("worklist C-FIND from %s (%s): %s", calling, assoc.requestor.address, _summary(identifier))
        query = compile_query(identifier)
        records = source_for(ctx.data_dir).records(ctx.conn(), float(settings.get("worklist.done_retention_hours")))
        found = 0
        for record in records:
            if not query.matches(record):
                continue
            if event.is_cancelled:
                yield 0xFE00, None
                return
            found += 1
            yield 0xFF00, rec.to_dataset(respond(query, record))
    except QueryError as exc:
        LOG.info("worklist C-FIND from %s refused: %s", calling, exc)
        yield failure_status(BAD_IDENTIFIER, str(exc)), None
        return
    except Exception as exc:
        LOG.exception("worklist C-FIND failed")
        yield failure_status(UNABLE_TO_PROCESS, f"unable to process: {exc}"), None
        return
    if log_on:
        LOG.info("worklist C-FIND from %s: %d item(s) in %.1f ms", calling, found,
                 (time.perf_counter() - started) * 1000)
    else:
        _forget_association(ctx, assoc)
    yield 0x0000, None
