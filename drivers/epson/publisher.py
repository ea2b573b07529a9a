"""The Epson Discproducer publisher: PublishRequests in, .JDF files out, TD Bridge's state back.

One robot job per disc (and per retry): `<job>`, `<job>-D2of3`, `<job>-R2` (drivers/common.py).
The job's state lives in the spool alone (the job file's extension, in the spool or in its
`log/YYYYMMDD/HHMM/` folders, and TDBStatus.txt), so a restarted station finds it again by id.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from appliance import publish
from drivers.common import (
    FoundJobFile,
    RobotJobRef,
    Sections,
    SpoolPublisher,
    find_job_files,
    latest_per_disc,
    remove_quietly,
)
from drivers.encoding import fit_fields, fit_text
from drivers.epson import errors, jdf
from drivers.epson.status import (
    DETAIL_USER_CANCEL,
    JobInfo,
    job_info,
    robot_state,
    status_reader,
)

NO_DESIGN = "no label design: disc will be unprinted"
STATE_EXTS = ("JDF", "RJD", "INP", "STP", "DON", "ERR")
CANCEL_EXTS = ("JCF", "CDN", "CER")
MAX_JOB_ID = jdf.MAX_JOB_ID


def _info_progress(info: JobInfo | None) -> float:
    if info and info.publication and info.publication > 0 and info.completion and info.completion > 0:
        return max(0.0, min(1.0, info.completion / info.publication))
    return 0.0


def finished(info: JobInfo | None, prog: Callable[..., publish.JobProgress]) -> publish.JobProgress:
    """A `.DON` job (STATUS 4): done only when COMPLETION_NUMBER reached PUBLICATION_NUMBER.

    A job cancelled at the robot or in the engine's monitor also ends as `.DON` with STATUS 4, even
    with no disc made (TD Bridge manual): no disc made = cancelled, some = cancelled part way.
    """
    if info is None or info.publication is None or info.publication < 0 or info.completion is None \
            or info.completion < 0:
        # the counts are gone or unknown (-1): the `.DON` is all there is to go by (a guess)
        return prog(publish.DONE, 1.0, "done (TD Bridge gave no disc count to confirm it)")
    made, wanted, bad = info.completion, info.publication, max(info.error_discs or 0, 0)
    if made >= wanted:
        return prog(publish.DONE, 1.0, "done" + (f" ({bad} disc(s) rejected on the way)" if bad else ""))
    spoiled = f", {bad} spoiled" if bad else ""
    if made == 0:
        return prog(publish.CANCELLED, 0.0, f"cancelled at the robot: no disc made{spoiled}")
    return prog(publish.CANCELLED, made / wanted,
                f"cancelled at the robot part way: {made} of {wanted} discs made{spoiled}")


def disc_state(exts: set[str], info: JobInfo | None) -> publish.JobProgress:
    """One robot job's state from its file extension(s) and its TDBStatus.txt section."""
    code = info.error if info else ""
    done = max(info.completion or 0, 0) if info else 0
    bad = max(info.error_discs or 0, 0) if info else 0

    def prog(state: str, progress: float, message: str, error_code: str = "") -> publish.JobProgress:
        return publish.JobProgress(state, progress, message, error_code, done, bad)

    if "CDN" in exts:
        return prog(publish.CANCELLED, _info_progress(info), "cancelled")
    if "DON" in exts:
        if info is not None and info.status in (1, 2, 3):
            # TD Bridge renames the file first and rewrites TDBStatus.txt later (seconds on a busy
            # host): a section still "processing" is the status before the end, not a cancel
            return prog(publish.BURNING, _info_progress(info), "finishing (TDBStatus.txt not updated yet)")
        return finished(info, prog)
    if "ERR" in exts:
        if info and info.detail == DETAIL_USER_CANCEL:
            return prog(publish.CANCELLED, _info_progress(info), "cancelled at the robot")
        text = errors.describe(code) or "TD Bridge reported an error (no code in TDBStatus.txt)"
        return prog(publish.FAILED, _info_progress(info), text, code)
    cancel_note = " (TD Bridge could not cancel the job)" if "CER" in exts else ""
    if "STP" in exts:
        text = errors.describe(code) if code else "paused: cover open or paused by the operator"
        return prog(publish.WAITING, _info_progress(info), text + cancel_note, code)
    if "INP" in exts or "RJD" in exts:
        if code and errors.is_recoverable(code):
            return prog(publish.WAITING, _info_progress(info), errors.describe(code) + cancel_note, code)
        if info and info.status == 3:
            return prog(publish.WAITING, _info_progress(info), "paused" + cancel_note, code)
        if "INP" not in exts and info and info.status == 1:  # queued in TD Bridge, not in the robot yet
            return prog(publish.WAITING, 0.0, "accepted by TD Bridge, waiting for the robot" + cancel_note, code)
        word = "burning" if "INP" in exts else "accepted, preparing"
        if info and info.publication and info.publication > 0:
            word += f" ({max(info.completion or 0, 0)} of {info.publication} discs done)"
        return prog(publish.BURNING, _info_progress(info), word + cancel_note)
    if "JDF" in exts:
        return prog(publish.WAITING, 0.0, "waiting for TD Bridge to pick up the job" + cancel_note)
    if info is None:
        return publish.JobProgress(publish.UNKNOWN)
    # only the status section is left (files already cleaned away)
    if info.status == 4:
        return finished(info, prog)
    if info.status in (5, 6):
        if info.detail == DETAIL_USER_CANCEL:
            return prog(publish.CANCELLED, _info_progress(info), "cancelled")
        text = errors.describe(code) or info.status_text
        return prog(publish.FAILED, _info_progress(info), text, code)
    if info.status == 2:
        return prog(publish.BURNING, _info_progress(info), "burning")
    if info.status in (1, 3):
        return prog(publish.WAITING, _info_progress(info), info.status_text, code)
    return publish.JobProgress(publish.UNKNOWN)


class EpsonPublisher(SpoolPublisher):
    """A robot behind TD Bridge, reached through its watched folder (the robot config's `spool`).

    Robot config keys used (besides the shared ones): `engine_path` (the spool as TD Bridge sees
    it), `publisher` (the robot's name registered in TD Bridge; default: the first robot in
    TDBStatus.txt), `label_template` (.tdd design for LABEL), `format` (force FORMAT),
    `status_timeout` (seconds without a TDBStatus.txt rewrite before the robot counts as offline;
    0 = never), `encoding` (the job files' code page; default cp1252, see drivers/encoding.py).

    TD Bridge prints only from a `.tdd` design (LABEL=, its merge fields filled from REPLACE_FIELD):
    without `label_template` the discs come out unprinted, and status and every job say so.
    """

    kind = "epson"
    MAX_JOB_ID = MAX_JOB_ID
    CANCEL_EXT = "JCF"

    def __init__(self, robot: Mapping[str, Any], data_dir: Path | None = None) -> None:
        super().__init__(robot, data_dir)
        self.reader = status_reader(self.spool)

    # ------------------------------------------------------------------ reading state

    def _log_folders(self) -> list[Path]:
        logs = self.spool / "log"
        try:
            days = sorted(os.scandir(logs), key=lambda e: e.name, reverse=True)
        except OSError:
            return []
        folders: list[Path] = []
        for day in days:
            if day.is_dir():
                try:
                    folders += [Path(e.path) for e in os.scandir(day.path) if e.is_dir()]
                except OSError:
                    continue
        return folders

    def _observe(self, job_id: str) -> tuple[list[FoundJobFile], Sections, None]:
        """Job files in the spool, else (once TD Bridge has moved them) in its log folders."""
        snap = self.reader.read()
        sections = snap.sections if snap else {}
        exts = STATE_EXTS + CANCEL_EXTS
        files = find_job_files([self.spool], job_id, exts, MAX_JOB_ID)
        known = {f.ref.stem for f in files if f.ext in STATE_EXTS}
        refs = {f.ref for f in files} | self._section_refs(job_id, sections)
        latest = latest_per_disc(refs)
        if any(ref.stem not in known for ref in latest.values()) or not latest:
            files += find_job_files(self._log_folders(), job_id, exts, MAX_JOB_ID)
        return files, sections, None

    def _disc_progress(self, ref: RobotJobRef, exts: set[str], sections: Sections,
                       context: None) -> publish.JobProgress:
        return disc_state(exts, job_info(sections, ref.stem))

    def poll(self, job_id: str) -> publish.JobProgress:
        progress = super().poll(job_id)
        if not self.robot.get("label_template") and progress.state != publish.UNKNOWN:
            progress.message = f"{progress.message} ({NO_DESIGN})" if progress.message else NO_DESIGN
        return progress

    def _status_mtime(self) -> float:
        return self.reader.last_good.mtime if self.reader.last_good else 0.0

    def status(self) -> publish.RobotStatus:
        rs = self._new_status()
        snap = self.reader.read()
        if snap is None:
            rs.message = f"TD Bridge is not running: no TDBStatus.txt in {self.spool}"
            return rs
        state = robot_state(snap.sections, str(self.robot.get("publisher") or ""))
        rs.stackers, rs.ink, rs.drives, rs.faults = state.stackers, state.ink, state.drives, state.faults
        if state.media:
            rs.media = state.media
        age = time.time() - snap.mtime
        if self.status_timeout and age > self.status_timeout:
            rs.message = f"TD Bridge has not updated TDBStatus.txt for {int(age)} s"
            return rs
        if not state.found:
            rs.message = "; ".join(state.faults) or "TD Bridge reports no robot"
            return rs
        rs.online = True
        rs.message = "; ".join(state.faults) or "ready"
        if not self.robot.get("label_template"):
            rs.message += f" ({NO_DESIGN})"
        if snap.stale:
            rs.message += " (TDBStatus.txt caught half-written: last good values shown)"
        return rs

    # ------------------------------------------------------------------ submitting

    def _publisher_name(self) -> str:
        configured = str(self.robot.get("publisher") or "")
        if configured:
            return configured
        snap = self.reader.read()
        return robot_state(snap.sections).publisher_name if snap else ""

    def _merge_file(self, stem: str) -> Path:
        return self.spool / f"{stem}_FIELDS.TXT"

    def _clean_staged(self, stem: str) -> None:
        super()._clean_staged(stem)
        remove_quietly(self._merge_file(stem))

    def _label(self) -> str:
        template = str(self.robot.get("label_template") or "")
        if not template:
            return ""
        local = Path(template)
        if self.paths.engine_root and local.is_absolute():
            try:
                return self.paths.to_engine(local, "LABEL")
            except ValueError:
                pass  # outside the spool: taken to be a path on the engine's host already
        return template

    def submit(self, request: publish.PublishRequest) -> None:
        todo = self.plan(request)
        if not todo:
            return
        publisher = self._publisher_name()
        must_copy = bool(self.paths.engine_root)
        prepared: list[tuple[str, list[tuple[str, str]]]] = []  # stem, [merge file], job file
        for ref, disc in todo:
            disc_type = disc.media.upper()
            fmt = jdf.choose_format(disc_type, disc.filesystem, str(self.robot.get("format") or ""))
            jdf.validate_format(disc_type, fmt)  # before anything is staged or written
            job = jdf.JdfJob(
                job_id=ref.stem, disc_type=disc_type, format=fmt, copies=request.copies,
                publisher=publisher, compare=request.verify and bool(self.robot.get("verify", True)),
                volume_label=fit_text(disc.volume_label, self.encoding), label=self._label(),
                high_priority=request.priority > 0,
            )
            content = self._stage_content(disc, ref.stem, must_copy, "DATA", "IMAGE")
            if self.mode == "data":
                # the disc root: DATA=<source> alone (jdf.py omits the TAB and destination)
                job.data = [(content, "")]
            else:
                job.image = content
            files: list[tuple[str, str]] = []
            # merge fields feed the .tdd design only: none written without one
            merge = (jdf.build_merge_file(fit_fields(disc.label_fields, self.encoding))
                     if disc.label_fields and job.label else "")
            if merge:
                job.replace_field = self.paths.to_engine(self._merge_file(ref.stem), "REPLACE_FIELD")
                files.append((self._merge_file(ref.stem).name, merge))
            files.append((f"{ref.stem}.JDF", jdf.build_jdf(job)))
            prepared.append((ref.stem, files))
        self._hand_over(prepared)

    def _cancel_text(self, stem: str) -> str:
        return jdf.build_cancel(stem)

