"""Folder export: a "robot" that writes each finished disc into a folder (PDI on a USB stick).

A job lands in `<spool>/<job id>/disc<N>/` (the disc's file tree, as on the disc) plus
`<spool>/<job id>/disc<N>.iso` (the disc image) when the robot is in image mode. It is first
copied into `<spool>/.partial-<job id>/` (the request is kept beside it in
`<spool>/.partial-<job id>.json`) and renamed into place when complete, so a reader never sees half a job. If the station stops
mid-copy, `poll` finds the partial folder and starts the copy again: the driver loop re-attaches
without submitting twice, and the job still appears exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from appliance import atomicfile
from appliance.publish import (
    BURNING,
    CANCELLED,
    DONE,
    FAILED,
    UNKNOWN,
    DiscImage,
    JobProgress,
    Publisher,
    PublishRequest,
    RobotStatus,
    register,
)

LOG = logging.getLogger("burnstation.folder")
PARTIAL_PREFIX = ".partial-"


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _request_to_doc(request: PublishRequest) -> dict[str, Any]:
    doc = dataclasses.asdict(request)
    for disc in doc["discs"]:
        for key, value in list(disc.items()):
            if isinstance(value, Path):
                disc[key] = str(value)
    return doc


def _request_from_doc(doc: dict[str, Any]) -> PublishRequest:
    discs = []
    for d in doc.get("discs", []):
        d = dict(d)
        for key in ("image", "tree", "label_image"):
            if d.get(key):
                d[key] = Path(d[key])
        discs.append(DiscImage(**d))
    return PublishRequest(job_id=doc["job_id"], discs=discs, copies=doc.get("copies", 1),
                          verify=doc.get("verify", True), priority=doc.get("priority", 0))


class _Copy:
    """One job being copied on a thread of its own."""

    def __init__(self, publisher: FolderPublisher, request: PublishRequest) -> None:
        self.publisher = publisher
        self.request = request
        self.state = BURNING
        self.progress = 0.0
        self.message = "copying"
        self.cancel = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"folder-{request.job_id}", daemon=True)

    def _files(self) -> list[tuple[Path, Path]]:
        pairs = []
        for n, disc in enumerate(self.request.discs, 1):
            n = disc.disc_number or n
            target = Path(f"disc{n}")
            for root, _dirs, files in os.walk(disc.tree, followlinks=True):
                rel = Path(root).relative_to(disc.tree)
                for name in sorted(files):
                    pairs.append((Path(root) / name, target / rel / name))
            if self.publisher.mode == "image" and disc.image and Path(disc.image).is_file():
                pairs.append((Path(disc.image), Path(f"disc{n}{Path(disc.image).suffix or '.iso'}")))
        return pairs

    def _run(self) -> None:
        pub = self.publisher
        job_id = self.request.job_id
        partial = pub.partial_dir(job_id)
        try:
            pairs = self._files()
            total = sum(src.stat().st_size for src, _ in pairs) or 1
            shutil.rmtree(partial, ignore_errors=True)  # a copy interrupted earlier starts again
            partial.mkdir(parents=True)
            done = 0
            for src, rel in pairs:
                if self.cancel.is_set():
                    shutil.rmtree(partial, ignore_errors=True)
                    pub.request_file(job_id).unlink(missing_ok=True)
                    self.state, self.message = CANCELLED, "cancelled"
                    return
                dest = partial / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
                done += src.stat().st_size
                self.progress = min(done / total, 0.99)
                self.message = f"copying to {pub.spool}: {_human(done)} of {_human(total)}"
                if pub.copy_delay:
                    self.cancel.wait(pub.copy_delay)
            with contextlib.suppress(OSError):
                os.sync()
            os.rename(partial, pub.final_dir(job_id))
            pub.request_file(job_id).unlink(missing_ok=True)
            self.state, self.progress = DONE, 1.0
            self.message = f"copied {len(self.request.discs)} disc(s) to {pub.final_dir(job_id)}"
            LOG.info("job %s: %s", job_id, self.message)
        except Exception as exc:
            LOG.exception("job %s: folder export failed", job_id)
            shutil.rmtree(partial, ignore_errors=True)
            pub.request_file(job_id).unlink(missing_ok=True)
            self.state, self.message = FAILED, f"copy to {pub.spool} failed: {exc}"


class FolderPublisher(Publisher):
    """Writes finished discs into a folder (a USB stick, a share) instead of burning them."""

    kind = "folder"

    def __init__(self, robot: Mapping[str, Any], data_dir: Path | None = None) -> None:
        self.name = str(robot["name"])
        self.spool = Path(robot["spool"])
        self.mode = robot.get("mode", "image")
        self.media = list(robot.get("media") or [])
        self.copy_delay = float(robot.get("copy_delay", 0) or 0)
        self._copies: dict[str, _Copy] = {}
        self._lock = threading.Lock()

    def partial_dir(self, job_id: str) -> Path:
        return self.spool / f"{PARTIAL_PREFIX}{job_id}"

    def request_file(self, job_id: str) -> Path:
        return self.spool / f"{PARTIAL_PREFIX}{job_id}.json"

    def final_dir(self, job_id: str) -> Path:
        return self.spool / job_id

    def status(self) -> RobotStatus:
        if not self.spool.is_dir():
            return RobotStatus(self.name, self.kind, False, f"folder {self.spool} not found (USB stick not plugged in?)",
                               media=self.media)
        if not os.access(self.spool, os.W_OK | os.X_OK):
            return RobotStatus(self.name, self.kind, False, f"folder {self.spool} is not writable", media=self.media)
        try:
            usage = shutil.disk_usage(self.spool)
            free = f"{_human(usage.free)} free of {_human(usage.total)}"
        except OSError as exc:
            return RobotStatus(self.name, self.kind, False, f"folder {self.spool}: {exc}", media=self.media)
        return RobotStatus(self.name, self.kind, True, f"folder {self.spool}: {free}", media=self.media,
                           stackers={"free_bytes": usage.free})

    def _start(self, request: PublishRequest) -> None:
        copy = _Copy(self, request)
        self._copies[request.job_id] = copy
        copy.thread.start()

    def submit(self, request: PublishRequest) -> None:
        with self._lock:
            job_id = request.job_id
            if job_id in self._copies or self.final_dir(job_id).exists():
                return  # already has it (never copy a job twice)
            atomicfile.write_text(self.request_file(job_id), json.dumps(_request_to_doc(request)))
            self._start(request)

    def poll(self, job_id: str) -> JobProgress:
        with self._lock:
            copy = self._copies.get(job_id)
            if copy is None:
                saved = self.request_file(job_id)
                if self.final_dir(job_id).is_dir():
                    saved.unlink(missing_ok=True)
                    return JobProgress(DONE, 1.0, f"in {self.final_dir(job_id)}")
                if not saved.is_file():
                    return JobProgress(UNKNOWN, 0.0, "")
                try:  # the station stopped during the copy: start it again
                    request = _request_from_doc(json.loads(saved.read_text(encoding="utf-8")))
                except (OSError, ValueError, TypeError, KeyError) as exc:
                    return JobProgress(FAILED, 0.0, f"cannot resume the copy: {exc}", error_code="RESUME")
                LOG.info("job %s: resuming an interrupted copy into %s", job_id, self.spool)
                self._start(request)
                copy = self._copies[job_id]
            done = 1 if copy.state == DONE else 0
            return JobProgress(copy.state, copy.progress, copy.message, discs_done=done * len(copy.request.discs),
                               error_code="COPY" if copy.state == FAILED else "")

    def cancel(self, job_id: str) -> bool:
        with self._lock:
            copy = self._copies.get(job_id)
            if copy is None or copy.state != BURNING:
                return False
            copy.cancel.set()
            return True


register("folder", FolderPublisher)

