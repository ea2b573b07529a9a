"""The burner's two jobs besides routing: build queued jobs into discs, hand built jobs to a robot.

Building calls the disc builder (`appliance.burn.builder.build_discs`) into `<data>/discs/<job id>/`
with the media the job's robots can take. Assignment picks, for each built job, an online robot
(fresh heartbeat) of the job's role whose media fit every disc, the least busy first, avoiding the
robot a retried job failed on when another one can take it. The burner never talks to a robot:
the robot's driver service takes the job from there.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from appliance.burn import jobs, robots
from appliance.config import Settings
from appliance.publish import MEDIA_CAPACITY, MEDIA_ORDER, DiscImage

LOG = logging.getLogger("burnstation.burner")

ROLE_NAMES = {"epson": "Epson", "primera": "Primera", "any": ""}
# a job whose robot is gone from the configuration this long fails (see assign_built)
REMOVED_GRACE_SECONDS = 30.0
_missing_since: dict[str, float] = {}


def disc_to_doc(disc: DiscImage) -> dict[str, Any]:
    doc = dataclasses.asdict(disc)
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in doc.items()}


def disc_from_doc(doc: dict[str, Any]) -> DiscImage:
    fields = {f.name for f in dataclasses.fields(DiscImage)}
    values = {k: v for k, v in doc.items() if k in fields}
    for key in ("image", "tree", "label_image"):
        if values.get(key):
            values[key] = Path(values[key])
    return DiscImage(**values)


def token_links(conn: sqlite3.Connection, settings: Settings, job_id: str, instances: list[Any]) -> dict[str, str]:
    """With `http.token_on_disc`: a new patient portal token per study of the job (study UID → link).
    A rebuild makes new ones; earlier ones stay valid (discs with them may already be out)."""
    if not settings.get("http.token_on_disc"):
        return {}
    from appliance.portal import tokens

    values = settings.all()
    links = {}
    for study_uid in dict.fromkeys(str(row["study_uid"]) for row in instances if row["study_uid"]):
        token, _ = tokens.create(conn, study_uid, int(values["http.token_days"]), origin=f"disc {job_id}")
        links[study_uid] = tokens.link(values, token)
    return links


def build_options(settings: Settings, job: dict[str, Any], links: dict[str, str] | None = None) -> Any:
    """The builder's options for a job: media of the role's robots, the test capacity override, and
    the portal links to print (see `token_links`)."""
    from appliance.burn.builder import BuildOptions

    role_robots = robots.robots_for_role(settings, job["role"])
    media = robots.allowed_media(settings, job["role"])
    capacity = None
    override_kb = int(settings.get("burn.capacity_override_kb") or 0)
    if override_kb:
        capacity = {m: min(override_kb * 1000, MEDIA_CAPACITY[m]) for m in MEDIA_ORDER}
    make_image = not role_robots or any(r.get("mode", "image") == "image" for r in role_robots)
    return BuildOptions(job_id=job["id"], allowed_media=media, capacity=capacity,
                        institution=settings.get("http.institution"), department=settings.get("http.department"),
                        make_image=make_image, token_links=links or {})


def claim_next_build(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """Move the most urgent queued job to `building`; None when nothing is queued."""
    return jobs.claim_next_build(conn)


def build_job(conn: sqlite3.Connection, settings: Settings, data_dir: Path, job: dict[str, Any]) -> bool:
    """Build a job that is `building`; it ends `built` (True) or `failed` with the error text."""
    job_id = job["id"]
    instances = jobs.job_instances(conn, job_id)
    if not instances:
        jobs.move(conn, job_id, (jobs.BUILDING,), jobs.FAILED, error="none of the job's instances is in the index",
                  message="nothing to burn")
        return False
    work_dir = Path(data_dir) / "discs" / job_id
    started = time.monotonic()
    try:
        from appliance.burn.builder import build_discs

        if work_dir.exists():
            shutil.rmtree(work_dir)
        work_dir.mkdir(parents=True)
        links = token_links(conn, settings, job_id, instances)
        discs = build_discs(instances, work_dir, build_options(settings, job, links))
        if not discs:
            raise RuntimeError("the disc builder made no disc")
    except Exception as exc:
        LOG.exception("job %s: build failed", job_id)
        text = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
        shutil.rmtree(work_dir, ignore_errors=True)  # a partial build must not keep a full disk full
        if _disk_full(exc):
            free_mb = shutil.disk_usage(work_dir.parent).free // 1_000_000 if work_dir.parent.exists() else 0
            text = (f"disk full while building in {work_dir.parent} ({free_mb} MB free now): free space, "
                    f"then retry the job ({text})")
        jobs.move(conn, job_id, (jobs.BUILDING,), jobs.FAILED, error=f"build failed: {text}"[:2000],
                  message="the disc could not be built")
        return False
    docs = [disc_to_doc(d) for d in discs]
    media = ", ".join(f"{d.media} {d.disc_number}/{d.disc_count}" for d in discs)
    off_profile = [note for d in discs for note in d.off_profile]
    kept = (f"; {len(off_profile)} object(s) kept in their received transfer syntax, not the disc profile's "
            f"(see `jobs show` and README.TXT): {off_profile[0]}" if off_profile else "")
    if not jobs.move(conn, job_id, (jobs.BUILDING,), jobs.BUILT, discs=docs, built_at=time.time(), progress=0.0,
                     message=f"built {len(discs)} disc(s) ({media}) in {time.monotonic() - started:.1f} s"
                             f"{kept}"[:2000]):
        LOG.info("job %s changed while it was built (cancelled?); discarding its discs", job_id)
        shutil.rmtree(work_dir, ignore_errors=True)
        return False
    LOG.info("job %s built: %s", job_id, media)
    return True


def _disk_full(exc: BaseException | None) -> bool:
    """True when `exc` or an exception it was raised from is "no space left" (or over quota)."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def prune_discs(conn: sqlite3.Connection, settings: Settings, data_dir: Path, now: float | None = None) -> int:
    """Delete the built disc folders of jobs finished more than `burn.keep_discs_hours` ago.

    Only `<data>/discs/<job id>/` goes (what the builder made); received instances are never touched.
    """
    hours = int(settings.get("burn.keep_discs_hours") or 0)
    if not hours:
        return 0
    cutoff = (time.time() if now is None else now) - hours * 3600
    removed = 0
    for job_id in jobs.finished_between(conn, cutoff - 30 * 86400, cutoff):
        folder = Path(data_dir) / "discs" / job_id
        if jobs.JOB_ID_RE.match(job_id) and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed += 1
    if removed:
        LOG.info("removed the disc images of %d finished job(s) older than %d h", removed, hours)
    return removed


def recover_builds(conn: sqlite3.Connection) -> int:
    """After a burner restart, a job left `building` is queued again (its half-built folder is redone)."""
    return jobs.requeue_interrupted_builds(conn)


def _fits(robot: dict[str, Any], status: dict[str, Any] | None, media_needed: set[str]) -> bool:
    media = set(robot.get("media") or [])
    loaded = set((status or {}).get("status", {}).get("media") or [])
    if loaded:
        media &= loaded
    return media_needed <= media


def assign_built(conn: sqlite3.Connection, settings: Settings) -> int:
    """Give every unassigned built job to a robot that can burn it now; returns how many were assigned."""
    configured = {r["name"]: r for r in robots.list_robots(settings)}
    statuses = robots.status_rows(conn)
    # a built job waiting on a robot that vanished or went silent goes back to the pool
    for job_id, robot in jobs.robots_of(conn, (jobs.BUILT,)):
        if robot and (robot not in configured or not robots.is_online(statuses.get(robot))):
            jobs.unassign(conn, job_id, robot)
    # a robot deleted from the configuration while it had a job: nobody will follow that job any more
    # (only after it stayed away a while: a robot re-registered by discovery vanishes for a moment)
    now = time.monotonic()
    for job_id, robot in jobs.robots_of(conn, jobs.IN_ROBOT):
        if not robot or robot in configured:
            _missing_since.pop(job_id, None)
            continue
        if now - _missing_since.setdefault(job_id, now) >= REMOVED_GRACE_SECONDS:
            _missing_since.pop(job_id, None)
            jobs.move(conn, job_id, jobs.IN_ROBOT, jobs.FAILED, error_code="REMOVED",
                      error=f"robot {robot} was removed from the configuration while it had this job; "
                            "check the robot before retrying")
    waiting = jobs.awaiting_robot(conn)
    if not waiting:
        return 0
    load = jobs.robot_load(conn)
    assigned = 0
    for job in waiting:
        needed = {d.get("media", "") for d in job["discs"]}
        role_robots = [r for r in configured.values() if job["role"] == "any" or r["role"] in (job["role"], "any")]
        label = ROLE_NAMES.get(job["role"], job["role"])
        if not role_robots:
            reason = f"no {label + ' ' if label else ''}robot configured".replace("  ", " ")
        else:
            online = [r for r in role_robots if robots.is_online(statuses.get(r["name"]))]
            fitting = [r for r in online if _fits(r, statuses.get(r["name"]), needed)]
            if len(fitting) > 1 and job["exclude_robot"]:
                fitting = [r for r in fitting if r["name"] != job["exclude_robot"]] or fitting
            if fitting:
                robot = min(fitting, key=lambda r: (load.get(r["name"], 0), r["name"]))
                if jobs.assign(conn, job["id"], robot["name"], f"assigned to {robot['name']}"):
                    load[robot["name"]] = load.get(robot["name"], 0) + 1
                    assigned += 1
                    LOG.info("job %s assigned to robot %s", job["id"], robot["name"])
                continue
            if online:
                reason = f"no online {label + ' ' if label else ''}robot has {', '.join(sorted(needed))} media"
            else:
                reason = f"no {label + ' ' if label else ''}robot online"
        if job["message"] != reason:
            jobs.update(conn, job["id"], (jobs.BUILT,), message=reason)
    return assigned
