"""The Epson Discproducer publisher: PublishRequests in, .JDF files out, TD Bridge's state back.

One robot job per disc (and per retry): `<job>`, `<job>-D2of3`, `<job>-R2` (drivers/common.py).
The job's state lives in the spool alone (the job file's extension, in the spool or in its
`log/YYYYMMDD/HHMM/` folders, and TDBStatus.txt), so a restarted station finds it again by id.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance import publish
from drivers.common import (
    STAGE_DIR,
    DiscState,
    EnginePathMap,
    ErrorReportWait,
    FoundJobFile,
    RobotJobRef,
    Sections,
    aggregate,
    checked_id,
    clean_aside,
    find_job_files,
    latest_per_disc,
    ledger_for,
    match_robot_job,
    remove_quietly,
    robot_job_id,
    stage_file,
    stage_tree,
    write_aside_then_rename,
)
from drivers.epson import errors, jdf
from drivers.epson.status import (
    DETAIL_USER_CANCEL,
    JobInfo,
    job_info,
    robot_state,
    status_reader,
)

STATE_EXTS = ("JDF", "RJD", "INP", "STP", "DON", "ERR")
CANCEL_EXTS = ("JCF", "CDN", "CER")
TERMINAL = (publish.DONE, publish.FAILED, publish.CANCELLED)
MAX_JOB_ID = jdf.MAX_JOB_ID


def _info_progress(info: JobInfo | None) -> float:
    if info and info.publication and info.publication > 0 and info.completion and info.completion > 0:
        return max(0.0, min(1.0, info.completion / info.publication))
    return 0.0


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
        return prog(publish.DONE, 1.0, "done")
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
        return prog(publish.DONE, 1.0, "done")
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


class EpsonPublisher(publish.Publisher):
    """A robot behind TD Bridge, reached through its watched folder (the robot config's `spool`).

    Robot config keys used (besides the shared ones): `engine_path` (the spool as TD Bridge sees
    it), `publisher` (the robot's name registered in TD Bridge; default: the first robot in
    TDBStatus.txt), `label_template` (.tdd design for LABEL), `format` (force FORMAT),
    `status_timeout` (seconds without a TDBStatus.txt rewrite before the robot counts as offline;
    0 = never), `encoding` (of the job files; default utf-8).
    """

    kind = "epson"

    def __init__(self, robot: Mapping[str, Any], data_dir: Path | None = None) -> None:
        self.robot = dict(robot)
        self.name = str(robot["name"])
        self.spool = Path(robot["spool"])
        self.paths = EnginePathMap(self.spool, str(robot.get("engine_path") or ""))
        self.mode = str(robot.get("mode") or "image")
        self.reader = status_reader(self.spool)
        self.status_timeout = float(robot.get("status_timeout", 30) or 0)
        self.encoding = str(robot.get("encoding") or "utf-8")
        self.data_dir = data_dir
        self.error_wait = ErrorReportWait()
        self.ledger = ledger_for(data_dir, self.name)
        clean_aside(self.spool)

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

    def _scan(self, job_id: str) -> tuple[list[FoundJobFile], Sections]:
        snap = self.reader.read()
        sections = snap.sections if snap else {}
        exts = STATE_EXTS + CANCEL_EXTS
        files = find_job_files([self.spool], job_id, exts, MAX_JOB_ID)
        known = {f.ref.stem for f in files if f.ext in STATE_EXTS}
        refs = {f.ref for f in files} | self._section_refs(job_id, sections)
        latest = latest_per_disc(refs)
        if any(ref.stem not in known for ref in latest.values()) or not latest:
            files += find_job_files(self._log_folders(), job_id, exts, MAX_JOB_ID)
        return files, sections

    @staticmethod
    def _section_refs(job_id: str, sections: Sections) -> set[RobotJobRef]:
        refs = set()
        for name in sections:
            ref = match_robot_job(name, job_id, MAX_JOB_ID)
            if ref is not None:
                refs.add(ref)
        return refs

    def _disc_states(self, job_id: str) -> tuple[list[DiscState], int, list[RobotJobRef]]:
        files, sections = self._scan(job_id)
        all_refs = {f.ref for f in files} | self._section_refs(job_id, sections)
        refs = {r for r in all_refs if self.ledger is None or self.ledger.known(r.stem)}  # ours only
        if not refs:
            return [], 0, sorted(all_refs, key=lambda r: (r.attempt, r.disc))
        latest_count = max(refs, key=lambda r: r.attempt).disc_count
        current = [r for r in refs if r.disc_count == latest_count]
        latest = latest_per_disc(current)
        by_stem: dict[str, set[str]] = {}
        for f in files:
            by_stem.setdefault(f.ref.stem.lower(), set()).add(f.ext)
        states = []
        for disc in sorted(latest):
            ref = latest[disc]
            info = job_info(sections, ref.stem)
            exts = by_stem.get(ref.stem.lower(), set())
            progress = disc_state(exts, info)
            mtime = self.reader.last_good.mtime if self.reader.last_good else 0.0
            progress = self.error_wait.settle(ref.stem, progress, "JCF" in exts, mtime)
            states.append(DiscState(ref, progress))
        return states, latest_count, sorted(all_refs, key=lambda r: (r.attempt, r.disc))

    def poll(self, job_id: str) -> publish.JobProgress:
        try:
            checked_id(job_id, 32)
        except ValueError:
            return publish.JobProgress(publish.UNKNOWN, message="not a valid job id")
        states, count, _ = self._disc_states(job_id)
        for d in states:  # the engine is finished with a disc's files: drop our staged copies
            if d.progress.state in TERMINAL:
                self._clean_staged(d.ref.stem)
        return aggregate(states, count)

    def status(self) -> publish.RobotStatus:
        rs = publish.RobotStatus(name=self.name, kind=self.kind, online=False,
                                 media=list(self.robot.get("media") or []))
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

    def _stage_dir(self, stem: str) -> Path:
        return self.spool / STAGE_DIR / stem

    def _merge_file(self, stem: str) -> Path:
        return self.spool / f"{stem}_FIELDS.TXT"

    def _clean_staged(self, stem: str) -> None:
        remove_quietly(self._stage_dir(stem))
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

    def plan(self, request: publish.PublishRequest) -> list[tuple[RobotJobRef, publish.DiscImage]]:
        """Which discs still need a robot job, and under which robot job id."""
        checked_id(request.job_id, 32)
        if not request.discs:
            raise ValueError(f"job {request.job_id}: no discs to publish")
        count = len(request.discs)
        states, known_count, refs = self._disc_states(request.job_id)
        active = {d.ref.disc: d for d in states} if known_count == count else {}
        attempt = max((r.attempt for r in refs), default=0) + 1
        todo = []
        for number, disc in enumerate(request.discs, 1):
            cur = active.get(number)
            if cur is not None and cur.progress.state in (publish.WAITING, publish.BURNING, publish.DONE):
                continue  # already with the robot (or made): never twice
            stem = robot_job_id(request.job_id, number, count, attempt, MAX_JOB_ID)
            todo.append((RobotJobRef(stem, number, count, attempt), disc))
        return todo

    def submit(self, request: publish.PublishRequest) -> None:
        todo = self.plan(request)
        if not todo:
            return
        publisher = self._publisher_name()
        must_copy = bool(self.paths.engine_root)
        prepared: list[tuple[str, str, str]] = []  # stem, jdf text, merge text
        for ref, disc in todo:
            disc_type = disc.media.upper()
            fmt = jdf.choose_format(disc_type, disc.filesystem, str(self.robot.get("format") or ""))
            jdf.validate_format(disc_type, fmt)  # before anything is staged or written
            stage = self._stage_dir(ref.stem)
            job = jdf.JdfJob(
                job_id=ref.stem, disc_type=disc_type, format=fmt, copies=request.copies,
                publisher=publisher, compare=request.verify and bool(self.robot.get("verify", True)),
                volume_label=disc.volume_label, label=self._label(), high_priority=request.priority > 0,
            )
            if self.mode == "data":
                tree = stage_tree(Path(disc.tree), stage / "DISC", must_copy)
                # destination "" = the disc root (relative to it, as TD Bridge wants; unconfirmed: "\\")
                job.data = [(self.paths.to_engine(tree, "DATA"), "")]
            else:
                image = stage_file(Path(disc.image), stage / f"DISC{Path(disc.image).suffix or '.iso'}", must_copy)
                job.image = self.paths.to_engine(image, "IMAGE")
            merge = jdf.build_merge_file(disc.label_fields) if disc.label_fields else ""
            if merge:
                job.replace_field = self.paths.to_engine(self._merge_file(ref.stem), "REPLACE_FIELD")
            prepared.append((ref.stem, jdf.build_jdf(job), merge))
        if self.ledger is not None:
            self.ledger.add(stem for stem, _, _ in prepared)  # before the job files (see SubmittedLedger)
        for stem, text, merge in prepared:
            if merge:
                target = self._merge_file(stem)
                remove_quietly(target)  # a crashed earlier try; no job file refers to it yet
                write_aside_then_rename(self.spool, target.name, merge, self.encoding)
            write_aside_then_rename(self.spool, f"{stem}.JDF", text, self.encoding)

    def cancel(self, job_id: str) -> bool:
        try:
            checked_id(job_id, 32)
        except ValueError:
            return False
        states, _, _ = self._disc_states(job_id)
        asked = False
        for d in states:
            if d.progress.state in TERMINAL or d.progress.state == publish.UNKNOWN:
                continue
            name = f"{d.ref.stem}.JCF"
            if (self.spool / name).exists():
                asked = True
                continue
            try:
                write_aside_then_rename(self.spool, name, jdf.build_cancel(d.ref.stem), self.encoding)
                asked = True
            except FileExistsError:
                asked = True
        return asked


def factory(robot: Any, data_dir: Any = None, *rest: Any) -> EpsonPublisher:
    """`PUBLISHER_FACTORIES["epson"](robot_doc, data_dir)`; also accepts (name, options, data_dir)."""
    if isinstance(robot, str):
        options = dict(data_dir or {})
        options.setdefault("name", robot)
        return EpsonPublisher(options, rest[0] if rest else None)
    return EpsonPublisher(robot, data_dir)
