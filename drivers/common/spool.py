"""`SpoolPublisher`: the job-following skeleton both vendor publishers share."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance import publish
from drivers.common.files import (
    STAGE_DIR,
    clean_aside,
    remove_quietly,
    stage_file,
    stage_tree,
    write_aside_then_rename,
)
from drivers.common.ini import Sections
from drivers.common.jobids import (
    DiscState,
    ErrorReportWait,
    FoundJobFile,
    RobotJobRef,
    aggregate,
    latest_per_disc,
    ledger_for,
    match_robot_job,
    robot_job_id,
)
from drivers.common.paths import EnginePathMap
from drivers.common.values import checked_id
from drivers.encoding import job_file_encoding

TERMINAL = (publish.DONE, publish.FAILED, publish.CANCELLED)


def section_refs(job_id: str, sections: Sections, max_len: int) -> set[RobotJobRef]:
    """The robot jobs of `job_id` that a status file has a section for."""
    refs = set()
    for name in sections:
        ref = match_robot_job(name, job_id, max_len)
        if ref is not None:
            refs.add(ref)
    return refs


class SpoolPublisher(publish.Publisher):
    """What both vendor publishers do the same way around their job files: one robot job per disc
    and attempt, followed from the spool alone (job files plus the engine's status sections), only
    the ids our ledger lists taken as ours, an unexplained failure held back (`ErrorReportWait`),
    staged copies dropped once the engine is finished, a cancel request written once per disc.

    A vendor module sets `kind`, `MAX_JOB_ID`, `CANCEL_EXT` and supplies `_observe` (the job's files
    and status sections), `_disc_progress` (one disc's state), `_status_mtime`, `_cancel_text`,
    `status` and `submit` (with `_stage_content` and `_hand_over`).
    """

    kind = ""
    MAX_JOB_ID = 32
    CANCEL_EXT = ""  # the job file extension of a cancel request

    def __init__(self, robot: Mapping[str, Any], data_dir: Path | None = None) -> None:
        self.robot = dict(robot)
        self.name = str(robot["name"])
        self.spool = Path(robot["spool"])
        self.paths = EnginePathMap(self.spool, str(robot.get("engine_path") or ""))
        self.mode = str(robot.get("mode") or "image")
        self.status_timeout = float(robot.get("status_timeout", 30) or 0)
        self.encoding = job_file_encoding(robot, self.kind)  # checked code page, vendor default
        self.data_dir = data_dir
        self.error_wait = ErrorReportWait()
        self.ledger = ledger_for(data_dir, self.name)
        clean_aside(self.spool)

    # ------------------------------------------------------------------ vendor hooks

    def _observe(self, job_id: str) -> tuple[list[FoundJobFile], Sections, Any]:
        """The job's files, the status sections naming robot jobs, and what `_disc_progress` needs."""
        raise NotImplementedError

    def _disc_progress(self, ref: RobotJobRef, exts: set[str], sections: Sections,
                       context: Any) -> publish.JobProgress:
        raise NotImplementedError

    def _status_mtime(self) -> float:
        """When the engine last rewrote the status file the job states come from."""
        raise NotImplementedError

    def _cancel_text(self, stem: str) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------ reading state

    def _new_status(self) -> publish.RobotStatus:
        return publish.RobotStatus(name=self.name, kind=self.kind, online=False,
                                   media=list(self.robot.get("media") or []))

    def _section_refs(self, job_id: str, sections: Sections) -> set[RobotJobRef]:
        return section_refs(job_id, sections, self.MAX_JOB_ID)

    def _disc_states(self, job_id: str) -> tuple[list[DiscState], int, list[RobotJobRef]]:
        """The latest attempt of each disc of our latest split, the disc count, and every robot job seen."""
        files, sections, context = self._observe(job_id)
        all_refs = {f.ref for f in files} | self._section_refs(job_id, sections)
        seen = sorted(all_refs, key=lambda r: (r.attempt, r.disc))
        refs = {r for r in all_refs if self.ledger is None or self.ledger.known(r.stem)}  # ours only
        if not refs:
            return [], 0, seen
        latest_count = max(refs, key=lambda r: r.attempt).disc_count
        latest = latest_per_disc(r for r in refs if r.disc_count == latest_count)
        by_stem: dict[str, set[str]] = {}
        for f in files:
            by_stem.setdefault(f.ref.stem.lower(), set()).add(f.ext)
        states = []
        for disc in sorted(latest):
            ref = latest[disc]
            exts = by_stem.get(ref.stem.lower(), set())
            progress = self._disc_progress(ref, exts, sections, context)
            progress = self.error_wait.settle(ref.stem, progress, self.CANCEL_EXT in exts, self._status_mtime())
            states.append(DiscState(ref, progress))
        return states, latest_count, seen

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

    # ------------------------------------------------------------------ submitting

    def _stage_dir(self, stem: str) -> Path:
        return self.spool / STAGE_DIR / stem

    def _clean_staged(self, stem: str) -> None:
        remove_quietly(self._stage_dir(stem))

    def _stage_content(self, disc: publish.DiscImage, stem: str, must_copy: bool,
                       tree_what: str, image_what: str) -> str:
        """The disc's content made readable for the engine, as the engine names it: the staged tree
        (data mode) or the staged image; `tree_what` / `image_what` name the job-file key in errors."""
        stage = self._stage_dir(stem)
        if self.mode == "data":
            tree = stage_tree(Path(disc.tree), stage / "DISC", must_copy)
            return self.paths.to_engine(tree, tree_what)
        image = stage_file(Path(disc.image), stage / f"DISC{Path(disc.image).suffix or '.iso'}", must_copy)
        return self.paths.to_engine(image, image_what)

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
            stem = robot_job_id(request.job_id, number, count, attempt, self.MAX_JOB_ID)
            todo.append((RobotJobRef(stem, number, count, attempt), disc))
        return todo

    def _hand_over(self, jobs: list[tuple[str, list[tuple[str, str]]]]) -> None:
        """Write each robot job's files: `(stem, [(file name, text), ...])`, the job file last.

        The stems go into the ledger first (see SubmittedLedger). A file before the job file (a
        merge file) left by a crashed earlier try is replaced: no job file refers to it yet.
        """
        if self.ledger is not None:
            self.ledger.add(stem for stem, _ in jobs)
        for _, files in jobs:
            for number, (name, text) in enumerate(files, 1):
                if number < len(files):
                    remove_quietly(self.spool / name)
                write_aside_then_rename(self.spool, name, text, self.encoding)

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
            name = f"{d.ref.stem}.{self.CANCEL_EXT}"
            if (self.spool / name).exists():
                asked = True
                continue
            try:
                write_aside_then_rename(self.spool, name, self._cancel_text(d.ref.stem), self.encoding)
                asked = True
            except FileExistsError:
                asked = True
        return asked
