"""The Primera Bravo publisher: PublishRequests in, .JRQ files out, PTBurn's state back.

One robot job per disc (and per retry): `<job>`, `<job>-D2of3`, `<job>-R2`, cut to PTBurn's 32
characters (drivers/common.py). The job's state lives in the job folder alone (the job file's
extension and `Status/<RobotName>.txt`), so a restarted station finds it again by id.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance import publish
from drivers.common import (
    FoundJobFile,
    RobotJobRef,
    Sections,
    SpoolPublisher,
    TolerantIni,
    find_job_files,
    stage_file,
)
from drivers.encoding import fit_fields, fit_text
from drivers.primera import errors, jrq
from drivers.primera.status import (
    STATE_ABORTED,
    STATE_PAUSED,
    STATUS_STATE,
    Heartbeat,
    JobInfo,
    job_info,
    pick_robot,
    robot_reader,
    robot_state,
    status_file_name,
    system_error,
    system_reader,
)

STATE_EXTS = ("JRQ", "QRJ", "INP", "DON", "ERR")
MAX_JOB_ID = jrq.MAX_ID


def disc_state(exts: set[str], info: JobInfo | None, sys_err: str = "") -> publish.JobProgress:
    """One robot job's state from its file extension and its section of `<RobotName>.txt`."""
    good = info.good if info else 0
    bad = info.bad if info else 0
    progress = info.progress if info else 0.0

    def prog(state: str, fraction: float, message: str, code: str = "") -> publish.JobProgress:
        return publish.JobProgress(state, fraction, message, code, good, bad)

    def failure() -> publish.JobProgress:
        number, text = info.error if info else (None, "")
        if number == errors.ABORTED or (info and info.status_state == STATE_ABORTED):
            return prog(publish.CANCELLED, progress, "aborted")
        message = errors.describe(number, text) or "PTBurn reported an error (no error number in its status)"
        return prog(publish.FAILED, progress, message, str(number) if number else "")

    def running(default: str) -> publish.JobProgress:
        if sys_err:
            return prog(publish.WAITING, progress, sys_err)
        if info and info.status_state == STATE_PAUSED:
            return prog(publish.WAITING, progress, info.current_status or "paused")
        words = (info.current_status if info else "") or (
            STATUS_STATE.get(info.status_state, "") if info and info.status_state is not None else "") or default
        if info and (info.good or info.bad or info.remaining):
            words += f" ({info.good} good, {info.bad} bad, {info.remaining or 0} to go)"
        return prog(publish.BURNING, progress, words)

    if "DON" in exts:
        if info and info.job_state == 3:
            return failure()
        return prog(publish.DONE, 1.0, "done")
    if "ERR" in exts:
        return failure()
    if "INP" in exts:
        return running("burning")
    if "QRJ" in exts:
        if info and info.job_state == 1:
            return running("burning")
        ahead = f" ({info.jobs_ahead} jobs ahead)" if info and info.jobs_ahead else ""
        return prog(publish.WAITING, progress, (sys_err or "queued in PTBurn") + ahead)
    if "JRQ" in exts:
        return prog(publish.WAITING, 0.0, "waiting for PTBurn to pick up the job")
    if info is None:
        return publish.JobProgress(publish.UNKNOWN)
    if info.job_state == 2:
        return prog(publish.DONE, 1.0, "done")
    if info.job_state == 3:
        return failure()
    if info.job_state in (1, 4):
        return running("burning" if info.job_state == 1 else "moved to another robot")
    if info.job_state == 0:
        return prog(publish.WAITING, progress, sys_err or "not started")
    return publish.JobProgress(publish.UNKNOWN)


class PrimeraPublisher(SpoolPublisher):
    """A robot behind PTBurn, reached through its job request folder (the robot config's `spool`).

    Robot config keys used (besides the shared ones): `engine_path` (the folder as PTBurn sees it),
    `robot_name` (PTBurn's RobotName; default: the first robot in SystemStatus.txt), `client_id`
    (default BurnStation), `merge_fields` (the label design's field order), `data_image_type`,
    `status_timeout` (seconds without a new ServerTickCount before the engine counts as offline;
    0 = never), `encoding` (the job files' code page; default ascii, see drivers/encoding.py),
    `label_template` (a SureThing `.STD` design: PrintLabel with the label fields as MergeField
    lines; without one the station's rendered label image is printed, text already on it).
    """

    kind = "primera"
    MAX_JOB_ID = MAX_JOB_ID
    CANCEL_EXT = "PTM"

    def __init__(self, robot: Mapping[str, Any], data_dir: Path | None = None) -> None:
        super().__init__(robot, data_dir)
        self.client_id = str(robot.get("client_id") or jrq.CLIENT_ID)
        self.system_reader = system_reader(self.spool)
        self.robot_readers: dict[str, TolerantIni] = {}
        self.heartbeat = Heartbeat(self.status_timeout)
        self.robot_file_mtime = 0.0

    # ------------------------------------------------------------------ reading state

    def _read(self) -> tuple[Sections | None, str, Sections, float, bool]:
        """(SystemStatus sections or None, robot name, robot file sections, mtime, stale)."""
        snap = self.system_reader.read()
        if snap is None:
            return None, "", {}, 0.0, False
        name = pick_robot(snap.sections, str(self.robot.get("robot_name") or "")) or str(
            self.robot.get("robot_name") or "")
        robot_sections: Sections = {}
        stale = snap.stale
        if name:
            try:
                file_name = status_file_name(snap.sections, name)
                reader = self.robot_readers.get(file_name) or robot_reader(self.spool, file_name)
                self.robot_readers[file_name] = reader
                rsnap = reader.read()
                if rsnap is not None:
                    robot_sections = rsnap.sections
                    stale = stale or rsnap.stale
                    self.robot_file_mtime = rsnap.mtime
            except ValueError:
                pass
        return snap.sections, name, robot_sections, snap.mtime, stale

    def _observe(self, job_id: str) -> tuple[list[FoundJobFile], Sections, str]:
        """Job files in the job folder, the robot file's sections and the engine's system error."""
        system, name, robot_sections, _, _ = self._read()
        files = find_job_files([self.spool], job_id, STATE_EXTS + (self.CANCEL_EXT,), MAX_JOB_ID)
        return files, robot_sections, system_error(system or {}, name)

    def _disc_progress(self, ref: RobotJobRef, exts: set[str], sections: Sections,
                       context: str) -> publish.JobProgress:
        return disc_state(exts, job_info(sections, ref.stem), context)

    def _status_mtime(self) -> float:
        return self.robot_file_mtime

    def status(self) -> publish.RobotStatus:
        rs = self._new_status()
        system, name, robot_sections, mtime, stale = self._read()
        if system is None:
            rs.message = f"PTBurn is not running: no Status/SystemStatus.txt in {self.spool}"
            return rs
        state = robot_state(system, robot_sections, name)
        rs.stackers, rs.ink, rs.drives, rs.faults = state.stackers, state.ink, state.drives, state.faults
        tick = system.get("system", {}).get("servertickcount")
        alive = self.heartbeat.alive(tick)
        age = time.time() - mtime
        if not alive or (self.status_timeout and age > self.status_timeout):
            silent = max(self.heartbeat.silent_for(), age if self.status_timeout and age > self.status_timeout else 0)
            rs.message = f"PTBurn is not responding (no heartbeat for {int(silent)} s)"
            return rs
        if not state.found:
            wanted = self.robot.get("robot_name")
            rs.message = f"PTBurn has no robot named {wanted!r}" if wanted else "PTBurn reports no robot"
            return rs
        rs.online = True
        words = list(state.faults)
        if state.message and state.message.lower() not in ("ok", "idle", "ready", "system ok"):
            words.insert(0, state.message)
        rs.message = "; ".join(dict.fromkeys(words)) or "ready"
        if stale:
            rs.message += " (status file caught half-written: last good values shown)"
        return rs

    # ------------------------------------------------------------------ submitting

    def _design(self) -> str:
        """The configured SureThing .STD design as PTBurn names it ('' = print the label image)."""
        template = str(self.robot.get("label_template") or "")
        if not template.lower().endswith(".std"):
            if template:
                raise ValueError(f"robot {self.name}: label_template {template!r} must be a SureThing .STD design")
            return ""
        local = Path(template)
        if self.paths.engine_root and local.is_absolute():
            try:
                return self.paths.to_engine(local, "PrintLabel")
            except ValueError:
                pass  # outside the spool: taken to be a path on the engine's host already
        return template

    def _label(self, disc: publish.DiscImage, stage: Path, must_copy: bool) -> str:
        if self._design():
            return self._design()
        if not disc.label_image:
            return ""
        source = Path(disc.label_image)
        if source.suffix.lower() in jrq.LABEL_SUFFIXES:
            staged = stage_file(source, stage / f"LABEL{source.suffix.lower()}", must_copy)
        else:  # PTBurn prints .jpg/.bmp images: convert (PNG from the label renderer)
            from PIL import Image

            staged = stage / "LABEL.jpg"
            stage.mkdir(parents=True, exist_ok=True)
            if not staged.exists():
                with Image.open(source) as img:
                    tmp = stage / "LABEL.part.jpg"
                    img.convert("RGB").save(tmp, "JPEG", quality=92)
                    tmp.replace(staged)
        return self.paths.to_engine(staged, "PrintLabel")

    def submit(self, request: publish.PublishRequest) -> None:
        todo = self.plan(request)
        if not todo:
            return
        system, robot_name, _, _, _ = self._read()
        must_copy = bool(self.paths.engine_root)
        order = list(self.robot.get("merge_fields") or jrq.DEFAULT_MERGE_ORDER)
        prepared: list[tuple[str, list[tuple[str, str]]]] = []
        for ref, disc in todo:
            job = jrq.JrqJob(
                job_id=ref.stem, client_id=self.client_id, importance=jrq.importance_for(request.priority),
                verify=request.verify and bool(self.robot.get("verify", True)), copies=request.copies,
                volume_name=fit_text(disc.volume_label, self.encoding), robot_name=robot_name,
                # MergeField fills a .STD design only; an image label already carries the text
                merge_values=jrq.ordered_merge_values(fit_fields(disc.label_fields, self.encoding), order)
                if disc.label_fields and self._design() else [],
            )
            if self.mode == "data":  # refused before anything is staged
                job.data_image_type = jrq.data_image_type_for(disc.media, disc.filesystem,
                                                              str(self.robot.get("data_image_type") or ""))
            content = self._stage_content(disc, ref.stem, must_copy, "Data", "ImageFile")
            if self.mode == "data":
                job.data = [content]
            else:
                job.image = content
            job.print_label = self._label(disc, self._stage_dir(ref.stem), must_copy)
            prepared.append((ref.stem, [(f"{ref.stem}.JRQ", jrq.build_jrq(job))]))
        self._hand_over(prepared)

    def _cancel_text(self, stem: str) -> str:
        return jrq.build_abort(self.client_id)  # the file's name `<stem>.PTM` names the job

