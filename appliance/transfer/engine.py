"""The transfer engine: runs queued transfers and queries within `dicom.max_connections`.

One dispatcher (the `transfer` service loop) starts the oldest queued transfer whenever a slot of
the station-wide cap is free (`appliance/dicom/slots.py`, shared with the dicom process's C-MOVE
SCP), each on a thread of its own holding one slot for its one association; queries take a slot
too (waiting at most `dicom.timeout` for one). Every wait on a peer is bounded by `dicom.timeout`
(pynetdicom's ACSE, DIMSE, network and connection time-outs). A send journals each answer of the
peer before the next instance goes out (jobs.AckJournal; state.db in batches), so after a crash
it resumes with what the peer did not acknowledge.

The loop that starts them (`loop.Engine`) imports this module when the first transfer or query runs.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pynetdicom import StoragePresentationContexts, build_context, build_role, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from appliance import db, index
from appliance.config import Node, Settings
from appliance.dicom import scu
from appliance.dicom.handlers.retrieve import contexts_for
from appliance.storage import OutOfSpace, Store, file_meta_bytes
from appliance.transfer import jobs

if TYPE_CHECKING:
    from appliance.transfer.loop import Engine

LOG = logging.getLogger("burnstation.transfer")
BACKOFF_MAX = 60.0  # a forward whose node is down is tried again after 2, 4, 8 ... at most this many seconds
PROGRESS_SECONDS = 0.5

LEVELS = ("PATIENT", "STUDY", "SERIES")
DEFAULT_KEYS = {
    "PATIENT": ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "NumberOfPatientRelatedStudies"),
    "STUDY": ("PatientName", "PatientID", "PatientBirthDate", "StudyInstanceUID", "StudyDate", "StudyTime",
              "AccessionNumber", "StudyID", "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
              "NumberOfStudyRelatedInstances"),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
               "NumberOfSeriesRelatedInstances"),
}


class QueryError(ValueError):
    """A query the station cannot send (bad level or key); the message says why."""


def _status_text(code: int | None, comment: str = "") -> str:
    if code is None:
        return comment or "no status"
    return f"0x{code:04X}" + (f" {comment}" if comment else "")


def _assoc_error(exc: scu.AssociationFailed, started: float, timeout: float) -> str:
    """Say plainly when the peer never answered (the association wait ran into dicom.timeout)."""
    if time.monotonic() - started >= timeout * 0.9 and "rejected" not in str(exc):
        return f"{exc.args[0].split(' (')[0]}: no answer within dicom.timeout={timeout:g}s"
    return str(exc)


# --------------------------------------------------------------------------- query


def build_identifier(level: str, keys: dict[str, str]) -> Dataset:
    """The C-FIND identifier: the level's usual return keys, plus the user's matching keys."""
    level = level.upper()
    if level not in LEVELS:
        raise QueryError(f"query level: patient, study or series, not {level.lower()!r}")
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword in DEFAULT_KEYS[level]:
        setattr(ds, keyword, "")
    for keyword, value in keys.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise QueryError(f"query key: {keyword!r} is not a DICOM keyword (e.g. PatientName, StudyDate)")
        if dictionary_VR(tag) == "SQ":
            raise QueryError(f"query key: {keyword} is a sequence; only simple keys are supported")
        setattr(ds, keyword, value)
    if level == "SERIES" and not str(ds.get("StudyInstanceUID", "")).strip():
        raise QueryError("query at series level: give -k StudyInstanceUID=UID")
    return ds


def _plain(ds: Dataset) -> dict[str, str]:
    out = {}
    for elem in ds:
        if elem.keyword in ("QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle") or elem.VR == "SQ":
            continue
        value = elem.value
        if value is None:
            text = ""
        elif isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            text = "\\".join(str(v) for v in value)
        else:
            text = str(value)
        out[elem.keyword or str(elem.tag)] = text
    return out


def run_query(data_dir: Path, settings: Settings, node: Node, level: str, keys: dict[str, str]) -> list[dict]:
    """C-FIND on `node`: Study Root, or Patient Root at patient level and when the node only takes that."""
    ds = build_identifier(level, keys)
    contexts = [build_context(PatientRootQueryRetrieveInformationModelFind)]
    if ds.QueryRetrieveLevel != "PATIENT":
        contexts.insert(0, build_context(StudyRootQueryRetrieveInformationModelFind))
    timeout = float(settings.get("dicom.timeout"))
    started = time.monotonic()
    try:
        assoc = scu.associate(data_dir, settings, node, contexts)
    except scu.AssociationFailed as exc:
        raise RuntimeError(_assoc_error(exc, started, timeout)) from None
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        model = next((m for m in (StudyRootQueryRetrieveInformationModelFind,
                                  PatientRootQueryRetrieveInformationModelFind)
                      if m in accepted and (m != StudyRootQueryRetrieveInformationModelFind
                                            or ds.QueryRetrieveLevel != "PATIENT")), None)
        if model is None:
            raise RuntimeError(f"{node.aet} accepted no C-FIND model for {ds.QueryRetrieveLevel.lower()} level")
        results = []
        for status, identifier in assoc.send_c_find(ds, model):
            code = getattr(status, "Status", None)
            if code is None:
                raise RuntimeError(f"{node.aet} did not answer the C-FIND within dicom.timeout={timeout:g}s")
            if code in (0xFF00, 0xFF01):
                if identifier is not None:
                    results.append(_plain(identifier))
            elif code != 0x0000:
                raise RuntimeError(f"{node.aet} answered C-FIND with status "
                                   f"{_status_text(code, str(getattr(status, 'ErrorComment', '') or ''))}")
        return results
    finally:
        scu.close(assoc)


# --------------------------------------------------------------------------- transfers


class Runner:
    """Runs one transfer on its own thread and connection (holding one slot)."""

    def __init__(self, engine: Engine, transfer: dict[str, Any]) -> None:
        self.engine = engine
        self.t = transfer
        self.id = transfer["id"]
        self.settings = engine.settings
        self.data_dir = engine.data_dir
        self.conn = db.connect(self.data_dir)
        self.timeout = float(self.settings.get("dicom.timeout"))
        self._checked = 0.0
        self._cancel = False

    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancel and now - self._checked >= PROGRESS_SECONDS:
            self._checked = now
            self._cancel = jobs.cancel_requested(self.conn, self.id)
        return self._cancel

    def run(self) -> None:
        try:
            node = self.settings.node(self.t["node"])
            if node is None:
                self.fail(f"{self.t['node']!r} is not a known node any more")
            elif self.t["kind"] == jobs.SEND:
                self.send(node)
            else:
                self.retrieve(node)
        except Exception as exc:
            LOG.exception("transfer %s failed", self.id)
            self.fail(f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self.conn.close()

    def fail(self, error: str, peer_status: str = "", **fields: Any) -> None:
        """Final failure, except for a forward, which waits and tries again (its node may be down)."""
        if self.t["rule"] and not self.cancelled():
            delay = min(BACKOFF_MAX, 2.0 ** min(int(self.t["attempts"]), 6))
            jobs.update(self.conn, self.id, peer_status=peer_status, **fields)
            jobs.requeue(self.conn, self.id, delay, f"waiting {delay:g}s before trying again", error)
            LOG.info("forward %s (rule %s): %s; next try in %gs", self.id, self.t["rule"], error, delay)
            return
        if self.cancelled():
            jobs.finish(self.conn, self.id, jobs.CANCELLED, message="cancelled by the user", error=error,
                        peer_status=peer_status, **fields)
            return
        LOG.warning("transfer %s failed: %s", self.id, error)
        jobs.finish(self.conn, self.id, jobs.FAILED, error=error, peer_status=peer_status, message="failed", **fields)

    # -- send

    def _counts(self) -> dict[str, int]:
        c = jobs.item_counts(self.conn, self.id)
        return {"remaining": c["pending"], "completed": c["done"], "warning": c["warning"], "failed": c["failed"]}

    def send(self, node: Node) -> None:
        jobs.mark_missing(self.conn, self.id)
        rows = jobs.pending_rows(self.conn, self.id)
        counts = self._counts()
        if not rows:
            self._end_send(counts, "", "")
            return
        started = time.monotonic()
        jobs.update(self.conn, self.id, message=f"connecting to {node.aet}", **counts)
        try:
            assoc = scu.associate(self.data_dir, self.settings, node, contexts_for(rows))
        except scu.AssociationFailed as exc:
            self.fail(_assoc_error(exc, started, self.timeout), **counts)
            return
        last_status, last_comment = "", ""
        lost = ""
        last_write = 0.0
        journal = jobs.AckJournal(self.data_dir, self.id)
        try:
            jobs.update(self.conn, self.id, message=f"sending to {node.aet}")
            for row, code, comment in scu.store_rows(assoc, rows):
                if code is None:  # no answer: the instance stays pending (it may be sent again)
                    lost = comment
                    break
                if code == 0x0000:
                    state = "done"
                elif code in scu.STORE_OK:
                    state = "warning"
                else:
                    state = "failed"
                    last_status, last_comment = f"0x{code:04X}", comment
                journal.record(row["sop_uid"], state, _status_text(code, comment))  # before the next goes out
                counts["remaining"] -= 1
                counts[{"done": "completed"}.get(state, state)] += 1
                if time.monotonic() - last_write >= PROGRESS_SECONDS:
                    last_write = time.monotonic()
                    journal.flush(self.conn)
                    jobs.update(self.conn, self.id, **counts)
                if self.cancelled():
                    break
        finally:
            try:
                journal.close(self.conn)
            finally:
                scu.close(assoc)
        if lost and not self.cancelled():
            self.fail(f"association with {node.aet} lost during the send: {lost}", last_status, **self._counts())
            return
        self._end_send(self._counts(), last_status, last_comment)

    def _end_send(self, counts: dict[str, int], status: str, comment: str) -> None:
        if self.cancelled() and counts["remaining"]:
            jobs.finish(self.conn, self.id, jobs.CANCELLED, message="cancelled by the user", **counts)
        elif counts["failed"]:
            self.fail(f"{self.t['node']} refused {counts['failed']} instance(s): {comment or status}".strip(),
                      status, **counts)
        elif counts["remaining"]:
            self.fail(f"{counts['remaining']} instance(s) not sent", status, **counts)
        else:
            jobs.finish(self.conn, self.id, jobs.DONE, message=f"{counts['completed'] + counts['warning']} sent",
                        peer_status=status or "0x0000", **counts)
            if self.t["rule"]:
                LOG.info("forward %s (rule %s): %d sent to %s", self.id, self.t["rule"], counts["completed"],
                         self.t["node"])

    # -- retrieve

    def retrieve(self, node: Node) -> None:
        ds = Dataset()
        ds.QueryRetrieveLevel = self.t["level"] or "STUDY"
        ds.StudyInstanceUID = self.t["study_uid"]
        if self.t["series_uid"]:
            ds.SeriesInstanceUID = self.t["series_uid"]
        get = self.t["method"] == "get"
        # Study Root, or Patient Root when the node only takes that (then with the study's Patient ID,
        # asked by a Patient Root C-FIND on the same association)
        models = ((StudyRootQueryRetrieveInformationModelGet, PatientRootQueryRetrieveInformationModelGet) if get
                  else (StudyRootQueryRetrieveInformationModelMove, PatientRootQueryRetrieveInformationModelMove))
        contexts = [build_context(m) for m in (*models, PatientRootQueryRetrieveInformationModelFind)]
        handlers, roles = [], []
        if get:
            storage = [cx.abstract_syntax for cx in StoragePresentationContexts][:128 - len(contexts)]
            contexts += [build_context(uid) for uid in storage]
            roles = [build_role(uid, scp_role=True) for uid in storage]
            store = GetStore(self.data_dir, self.settings, node.aet)
            handlers = [(evt.EVT_C_STORE, store)]
        started = time.monotonic()
        jobs.update(self.conn, self.id, message=f"connecting to {node.aet}")
        try:
            assoc = scu.associate(self.data_dir, self.settings, node, contexts, handlers, roles)
        except scu.AssociationFailed as exc:
            self.fail(_assoc_error(exc, started, self.timeout))
            return
        counts = {"remaining": 0, "completed": 0, "failed": 0, "warning": 0}
        final: Any = None
        how = ""
        last_write = 0.0
        try:
            accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
            model = next((m for m in models if m in accepted), None)
            if model is None:
                self.fail(f"{node.aet} does not accept C-{'GET' if get else 'MOVE'} (Study Root or Patient Root)")
                return
            root = "Study Root" if model == models[0] else "Patient Root"
            how = "" if model == models[0] else " (Patient Root)"
            if model == models[1]:
                ds.PatientID = self._patient_id(assoc, accepted)
            jobs.update(self.conn, self.id,
                        message=f"retrieving from {node.aet} by C-{'GET' if get else 'MOVE'} ({root})")
            responses = (assoc.send_c_get(ds, model) if get
                         else scu.move_responses(assoc, ds, self.settings.aet(), model))
            for status, _identifier in responses:
                code = getattr(status, "Status", None)
                for key, attr in (("remaining", "NumberOfRemainingSuboperations"),
                                  ("completed", "NumberOfCompletedSuboperations"),
                                  ("failed", "NumberOfFailedSuboperations"),
                                  ("warning", "NumberOfWarningSuboperations")):
                    value = getattr(status, attr, None) if status is not None else None
                    if value is not None:
                        counts[key] = int(value)
                if code in (0xFF00, 0xFF01):
                    # the counts at most every PROGRESS_SECONDS: a write per pending response would
                    # compete with the dicom process indexing the very instances that arrive
                    if time.monotonic() - last_write >= PROGRESS_SECONDS:
                        last_write = time.monotonic()
                        jobs.update(self.conn, self.id, peer_status=f"0x{code:04X}", **counts)
                    if self.cancelled():
                        responses.close()  # a C-MOVE driven by this thread gives the socket back first
                        assoc.abort()
                        jobs.finish(self.conn, self.id, jobs.CANCELLED, message="cancelled by the user", **counts)
                        return
                else:
                    final = status
        finally:
            scu.close(assoc)
        code = getattr(final, "Status", None)
        comment = str(getattr(final, "ErrorComment", "") or "") if final is not None else ""
        if code is None:
            self.fail(f"{node.aet} did not answer the retrieve within dicom.timeout={self.timeout:g}s", **counts)
        elif code == 0x0000 and not counts["failed"]:
            counts["remaining"] = 0
            jobs.finish(self.conn, self.id, jobs.DONE, peer_status="0x0000",
                        message=f"{counts['completed'] + counts['warning']} instance(s) retrieved{how}", **counts)
            if self.t["burn"]:
                self.burn()
        elif code == 0xFE00:
            jobs.finish(self.conn, self.id, jobs.CANCELLED, peer_status="0xFE00", message="cancelled by the peer",
                        **counts)
        else:
            what = f"{counts['failed']} sub-operation(s) failed" if code == 0xB000 else "retrieve failed"
            self.fail(f"{node.aet}: {what} (status {_status_text(code, comment)})", f"0x{code:04X}", **counts)

    def _patient_id(self, assoc: Any, accepted: set[str]) -> str:
        """The Patient ID of the study (a Patient Root identifier needs it): Patient Root C-FIND at study
        level; empty (universal) when the node takes no C-FIND or does not say."""
        if PatientRootQueryRetrieveInformationModelFind not in accepted:
            return ""
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.PatientID = ""
        q.StudyInstanceUID = self.t["study_uid"]
        found = ""
        for status, identifier in assoc.send_c_find(q, PatientRootQueryRetrieveInformationModelFind):
            if getattr(status, "Status", None) in (0xFF00, 0xFF01) and identifier is not None and not found:
                found = str(identifier.get("PatientID", "") or "")
        return found

    def burn(self) -> None:
        """Retrieve and burn: a disc job of exactly what was retrieved (the study, or the series)."""
        from appliance.burn import jobs as burn_jobs

        uids = jobs.select_instances(self.conn, self.t["study_uid"], self.t["series_uid"])
        try:
            job_id = burn_jobs.create_job(self.conn, role="any", sop_uids=uids, source="manual",
                                          copies=self.settings.get("burn.default_copies"),
                                          verify=self.settings.get("burn.verify"),
                                          message=f"retrieved by {self.id}")
        except Exception as exc:
            LOG.error("transfer %s: could not queue the burn job: %s", self.id, exc)
            jobs.set_burn_job(self.conn, self.id, "", f"retrieved, but no burn job: {exc}"[:500])
            return
        jobs.set_burn_job(self.conn, self.id, job_id, f"retrieved; burn job {job_id} queued")
        LOG.info("transfer %s: burn job %s queued (%d instances)", self.id, job_id, len(uids))


class GetStore:
    """C-STORE sub-operations of a C-GET: written and indexed as if received on the plain AE title."""

    def __init__(self, data_dir: Path, settings: Settings, peer_aet: str) -> None:
        self.store = Store(data_dir, int(settings.get("dicom.min_free_mb")))
        self.data_dir = data_dir
        self.station_aet = settings.aet()
        self.peer_aet = peer_aet
        self.conn: Any = None

    def __call__(self, event: Any) -> int:
        try:
            return self._store(event)
        except OutOfSpace as exc:
            LOG.warning("C-GET store refused: %s", exc)
            return 0xA700
        except Exception:
            LOG.exception("C-GET store failed")
            return 0xA700

    def _store(self, event: Any) -> int:
        if self.conn is None:
            self.conn = db.connect(self.data_dir)
        raw = event.request.DataSet.getvalue()
        self.store.check_space(len(raw))
        ts = str(event.context.transfer_syntax)
        rec = index.record_from_dataset(event.dataset, "", 0, ts)
        sop_class = str(event.request.AffectedSOPClassUID or rec.sop_class)
        if not rec.sop_uid or not rec.study_uid or not rec.series_uid:
            return 0xA900
        path = self.store.path_for(rec.study_uid, rec.series_uid, rec.sop_uid)
        with self.store.arrival(path):  # as a C-STORE: no purge, no other copy of this path, until its row
            rec.size = self.store.write(path, [file_meta_bytes(sop_class, rec.sop_uid, ts, self.peer_aet), raw])
            rec.path = str(path)
            rec.sop_class = sop_class
            rec.called_aet = self.station_aet
            rec.calling_aet = self.peer_aet
            rec.received_at = time.time()
            try:
                old = index.add_instance(self.conn, rec)
            except Exception:
                old, unindexed = str(path), True  # its file goes as a replaced copy would (no row names it)
            else:
                unindexed = False
        if old:  # unless a copy arriving meanwhile (a dicom worker's) is at that path
            self.store.remove_unless_named(old, lambda: index.instance_path(self.conn, rec.sop_uid))
        if unindexed:
            LOG.error("C-GET store: cannot index %s", path)
            return 0xA700
        return 0x0000
