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
    STAGE_DIR,
    DiscState,
    EnginePathMap,
    ErrorReportWait,
    FoundJobFile,
    RobotJobRef,
    Sections,
    TolerantIni,
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
    system_error,
    system_reader,
)

STATE_EXTS = ("JRQ", "QRJ", "INP", "DON", "ERR")
TERMINAL = (publish.DONE, publish.FAILED, publish.CANCELLED)
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


class PrimeraPublisher(publish.Publisher):
    """A robot behind PTBurn, reached through its job request folder (the robot config's `spool`).

    Robot config keys used (besides the shared ones): `engine_path` (the folder as PTBurn sees it),
    `robot_name` (PTBurn's RobotName; default: the first robot in SystemStatus.txt), `client_id`
    (default BurnStation), `merge_fields` (the label design's field order), `data_image_type`,
    `status_timeout` (seconds without a new ServerTickCount before the engine counts as offline;
    0 = never), `encoding` (of the job files; default utf-8).
    """

    kind = "primera"

    def __init__(self, robot: Mapping[str, Any], data_dir: Path | None = None) -> None:
        self.robot = dict(robot)
        self.name = str(robot["name"])
        self.spool = Path(robot["spool"])
        self.paths = EnginePathMap(self.spool, str(robot.get("engine_path") or ""))
        self.mode = str(robot.get("mode") or "image")
        self.client_id = str(robot.get("client_id") or jrq.CLIENT_ID)
        self.status_timeout = float(robot.get("status_timeout", 30) or 0)
        self.encoding = str(robot.get("encoding") or "utf-8")
        self.system_reader = system_reader(self.spool)
        self.robot_readers: dict[str, TolerantIni] = {}
        self.heartbeat = Heartbeat(self.status_timeout)
        self.data_dir = data_dir
        self.error_wait = ErrorReportWait()
        self.ledger = ledger_for(data_dir, self.name)
        self.robot_file_mtime = 0.0
        clean_aside(self.spool)

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
                reader = self.robot_readers.get(name) or robot_reader(self.spool, name)
                self.robot_readers[name] = reader
                rsnap = reader.read()
                if rsnap is not None:
                    robot_sections = rsnap.sections
                    stale = stale or rsnap.stale
                    self.robot_file_mtime = rsnap.mtime
            except ValueError:
                pass
        return snap.sections, name, robot_sections, snap.mtime, stale

    def _section_refs(self, job_id: str, sections: Sections) -> set[RobotJobRef]:
        refs = set()
        for section in sections:
            ref = match_robot_job(section, job_id, MAX_JOB_ID)
            if ref is not None:
                refs.add(ref)
        return refs

    def _disc_states(self, job_id: str) -> tuple[list[DiscState], int, list[RobotJobRef]]:
        system, _, robot_sections, _, _ = self._read()
        files: list[FoundJobFile] = find_job_files([self.spool], job_id, STATE_EXTS + ("PTM",), MAX_JOB_ID)
        all_refs = {f.ref for f in files} | self._section_refs(job_id, robot_sections)
        refs = {r for r in all_refs if self.ledger is None or self.ledger.known(r.stem)}  # ours only
        if not refs:
            return [], 0, sorted(all_refs, key=lambda r: (r.attempt, r.disc))
        sys_err = system_error(system or {})
        latest_count = max(refs, key=lambda r: r.attempt).disc_count
        latest = latest_per_disc(r for r in refs if r.disc_count == latest_count)
        by_stem: dict[str, set[str]] = {}
        for f in files:
            by_stem.setdefault(f.ref.stem.lower(), set()).add(f.ext)
        states = []
        for disc in sorted(latest):
            ref = latest[disc]
            info = job_info(robot_sections, ref.stem)
            exts = by_stem.get(ref.stem.lower(), set())
            progress = disc_state(exts, info, sys_err)
            progress = self.error_wait.settle(ref.stem, progress, "PTM" in exts, self.robot_file_mtime)
            states.append(DiscState(ref, progress))
        return states, latest_count, sorted(all_refs, key=lambda r: (r.attempt, r.disc))

    def poll(self, job_id: str) -> publish.JobProgress:
        try:
            checked_id(job_id, 32)
        except ValueError:
            return publish.JobProgress(publish.UNKNOWN, message="not a valid job id")
        states, count, _ = self._disc_states(job_id)
        for d in states:
            if d.progress.state in TERMINAL:
                remove_quietly(self._stage_dir(d.ref.stem))
        return aggregate(states, count)

    def status(self) -> publish.RobotStatus:
        rs = publish.RobotStatus(name=self.name, kind=self.kind, online=False,
                                 media=list(self.robot.get("media") or []))
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

    def _stage_dir(self, stem: str) -> Path:
        return self.spool / STAGE_DIR / stem

    def _label(self, disc: publish.DiscImage, stage: Path, must_copy: bool) -> str:
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

    def plan(self, request: publish.PublishRequest) -> list[tuple[RobotJobRef, publish.DiscImage]]:
        """Which discs still need a robot job, and under which robot job id."""
        checked_id(request.job_id, 32)
        if not request.discs:
            raise ValueError(f"job {request.job_id}: no discs to publish")
        count = len(request.discs)
        states, known_count, refs = self._disc_states(request.job_id)
        active = {d.ref.disc: d for d in states} if known_count == count else {}
        attempt = 1 if not refs else max(r.attempt for r in refs) + 1
        todo = []
        for number, disc in enumerate(request.discs, 1):
            cur = active.get(number)
            if cur is not None and cur.progress.state in (publish.WAITING, publish.BURNING, publish.DONE):
                continue
            stem = robot_job_id(request.job_id, number, count, attempt, MAX_JOB_ID)
            todo.append((RobotJobRef(stem, number, count, attempt), disc))
        return todo

    def submit(self, request: publish.PublishRequest) -> None:
        todo = self.plan(request)
        if not todo:
            return
        system, robot_name, _, _, _ = self._read()
        must_copy = bool(self.paths.engine_root)
        order = list(self.robot.get("merge_fields") or jrq.DEFAULT_MERGE_ORDER)
        prepared: list[tuple[str, str]] = []
        for ref, disc in todo:
            stage = self._stage_dir(ref.stem)
            job = jrq.JrqJob(
                job_id=ref.stem, client_id=self.client_id, importance=jrq.importance_for(request.priority),
                verify=request.verify and bool(self.robot.get("verify", True)), copies=request.copies,
                volume_name=disc.volume_label, robot_name=robot_name,
                merge_values=jrq.ordered_merge_values(disc.label_fields, order) if disc.label_fields else [],
            )
            if self.mode == "data":
                job.data_image_type = jrq.data_image_type_for(disc.media, disc.filesystem,
                                                              str(self.robot.get("data_image_type") or ""))
                tree = stage_tree(Path(disc.tree), stage / "DISC", must_copy)
                job.data = [self.paths.to_engine(tree, "Data")]
            else:
                image = stage_file(Path(disc.image), stage / f"DISC{Path(disc.image).suffix or '.iso'}", must_copy)
                job.image = self.paths.to_engine(image, "ImageFile")
            job.print_label = self._label(disc, stage, must_copy)
            prepared.append((ref.stem, jrq.build_jrq(job)))
        if self.ledger is not None:
            self.ledger.add(stem for stem, _ in prepared)  # before the job files (see SubmittedLedger)
        for stem, text in prepared:
            write_aside_then_rename(self.spool, f"{stem}.JRQ", text, self.encoding)

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
            name = f"{d.ref.stem}.PTM"
            if (self.spool / name).exists():
                asked = True
                continue
            try:
                write_aside_then_rename(self.spool, name, jrq.build_abort(d.ref.stem, self.client_id),
                                        self.encoding)
                asked = True
            except FileExistsError:
                asked = True
        return asked


def factory(robot: Any, data_dir: Any = None, *rest: Any) -> PrimeraPublisher:
    """`PUBLISHER_FACTORIES["primera"](robot_doc, data_dir)`; also accepts (name, options, data_dir)."""
    if isinstance(robot, str):
        options = dict(data_dir or {})
        options.setdefault("name", robot)
        return PrimeraPublisher(options, rest[0] if rest else None)
    return PrimeraPublisher(robot, data_dir)
