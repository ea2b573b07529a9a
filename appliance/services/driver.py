"""The driver service: one loop per robot between the job queue (state.db) and the robot's Publisher.

`serve_robot` heartbeats the robot's status into `robot_status`, submits the `built` jobs the
burner assigned to it, polls them and writes their progress back, and passes cancel requests on.
It moves a job `built → submitted` *before* calling `submit`, so a crash in between leaves a job
that says "submitted"; after a restart each submitted/burning job is re-attached with
`poll(robot_job_id)`: UNKNOWN and never acknowledged by the robot → submit (it never got there);
UNKNOWN after the robot had it → failed ("lost", never burned twice); anything else → follow it.
`serve` runs one such loop per configured robot as threads (the supervisor may instead run each
`serve_robot` in a process of its own, as `driver:<robot>`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from appliance import db, publish
from appliance.burn import dispatch, jobs, robots
from appliance.config import Settings

LOG = logging.getLogger("burnstation.driver")
POLL_SECONDS = 0.5
HEARTBEAT_SECONDS = 2.0
# a job this loop submitted may stay unknown to the engine this long (it has not picked it up yet)
PICKUP_SECONDS = 300.0


def register_drivers() -> None:
    """Fill PUBLISHER_FACTORIES: the folder export and the robot drivers (a driver that fails to
    import stops the service with its error: a robot without its driver cannot burn)."""
    import drivers
    from appliance.burn import folder_export  # noqa: F401 - importing it registers "folder"

    drivers.register_all()


def make_publisher(robot: dict[str, Any], data_dir: Path) -> publish.Publisher:
    factory = publish.PUBLISHER_FACTORIES.get(robot["driver"])
    if factory is None:
        raise RuntimeError(f"no driver {robot['driver']!r} installed for robot {robot['name']}")
    return factory(robot, data_dir)


def _request(job: dict[str, Any], robot: dict[str, Any]) -> publish.PublishRequest:
    return publish.PublishRequest(
        job_id=job["robot_job_id"] or job["id"],
        discs=[dispatch.disc_from_doc(d) for d in job["discs"]],
        copies=int(job["copies"]),
        verify=bool(job["verify"]) and bool(robot.get("verify", True)),
        priority=int(job["priority"]),
    )


class RobotLoop:
    """The state of one robot's loop (kept in memory; everything durable is in state.db)."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.data_dir = data_dir
        self.name = name
        self.settings = Settings(data_dir)
        self.conn = db.connect(data_dir)
        self.robot: dict[str, Any] | None = None
        self.publisher: publish.Publisher | None = None
        self.online = False
        self.last_beat = 0.0
        self.attached: set[str] = set()  # robot job ids checked (re-attached) by this loop
        self.submitted: dict[str, float] = {}  # robot job id → when this loop submitted it

    # -- configuration and heartbeat

    def reload(self) -> bool:
        """Pick up the robot's configuration; False when it was removed."""
        self.settings.all()  # refresh the change stamp
        doc = robots.get_robot(self.settings, self.name)
        if doc is None:
            return False
        if doc != self.robot:
            self.robot = doc
            self.publisher = None
        if self.publisher is None:
            try:
                self.publisher = make_publisher(doc, self.data_dir)
                LOG.info("robot %s: %s driver ready (spool %s)", self.name, doc["driver"], doc["spool"])
            except Exception as exc:
                LOG.error("robot %s: %s", self.name, exc)
                robots.record_status(self.conn, self.name, None, message=f"driver not available: {exc}")
                self.online = False
        return True

    def heartbeat(self) -> None:
        self.last_beat = time.monotonic()
        if self.publisher is None:
            return
        try:
            status = self.publisher.status()
        except Exception as exc:
            LOG.warning("robot %s: status failed: %s", self.name, exc)
            robots.record_status(self.conn, self.name, None, message=f"status failed: {exc}")
            self.online = False
            return
        robots.record_status(self.conn, self.name, status)
        self.online = bool(status.online)

    # -- jobs

    def work(self) -> None:
        if self.publisher is None or self.robot is None:
            return
        for job in jobs.for_robot(self.conn, self.name):
            try:
                if job["state"] == jobs.BUILT:
                    if self.online:
                        self.submit(job)
                else:
                    self.follow(job)
            except Exception as exc:
                LOG.exception("robot %s: job %s", self.name, job["id"])
                jobs.update(self.conn, job["id"], jobs.IN_ROBOT, message=f"robot {self.name}: {exc}"[:1000])

    def submit(self, job: dict[str, Any]) -> None:
        assert self.publisher is not None and self.robot is not None
        rjid = job["robot_job_id"] or job["id"]
        # claim first: a crash after this line leaves "submitted", which re-attach resolves
        if not jobs.claim_submit(self.conn, job["id"], self.name):
            return
        self.attached.add(rjid)
        try:
            self.publisher.submit(_request(job, self.robot))
        except Exception as exc:
            LOG.exception("robot %s: submit of %s failed", self.name, job["id"])
            jobs.move(self.conn, job["id"], (jobs.SUBMITTED,), jobs.FAILED, error=f"submit to {self.name} failed: {exc}",
                      message="the robot did not take the job")
            return
        self.submitted[rjid] = time.monotonic()
        LOG.info("robot %s: job %s submitted as %s", self.name, job["id"], rjid)
        jobs.update(self.conn, job["id"], jobs.IN_ROBOT, message=f"submitted to {self.name}")

    def follow(self, job: dict[str, Any]) -> None:
        assert self.publisher is not None and self.robot is not None
        rjid = job["robot_job_id"] or job["id"]
        if rjid not in self.attached:
            self.attached.add(rjid)
            progress = self.publisher.poll(rjid)
            LOG.info("robot %s: re-attached to job %s (%s)", self.name, job["id"], progress.state)
            if progress.state == publish.UNKNOWN and not job["robot_ack"] and not job["cancel_requested"]:
                LOG.info("robot %s: job %s never reached the robot; submitting it now", self.name, job["id"])
                self.publisher.submit(_request(job, self.robot))
                self.submitted[rjid] = time.monotonic()
                jobs.update(self.conn, job["id"], jobs.IN_ROBOT, message=f"submitted to {self.name}")
                return
            self.apply(job, progress)
            return
        if job["cancel_requested"] == 1:
            delivered = self.publisher.cancel(rjid)
            jobs.update(self.conn, job["id"], jobs.IN_ROBOT, cancel_requested=2 if delivered else 1,
                        message="cancel sent to the robot" if delivered else "cancel could not be delivered yet")
        self.apply(job, self.publisher.poll(rjid))

    def apply(self, job: dict[str, Any], p: publish.JobProgress) -> None:
        """Write what the robot said about a job into its row."""
        conn, job_id = self.conn, job["id"]
        rjid = job["robot_job_id"] or job_id
        progress = max(0.0, min(1.0, float(p.progress or 0.0)))
        if p.state == publish.UNKNOWN:
            if job["cancel_requested"]:
                jobs.move(conn, job_id, jobs.IN_ROBOT, jobs.CANCELLED, message="cancelled")
            elif not job["robot_ack"] and time.monotonic() - self.submitted.get(rjid, 0) < PICKUP_SECONDS:
                if job["message"] != f"submitted to {self.name}; waiting for the robot to pick it up":
                    jobs.update(conn, job_id, jobs.IN_ROBOT,
                                message=f"submitted to {self.name}; waiting for the robot to pick it up")
            else:
                jobs.move(conn, job_id, jobs.IN_ROBOT, jobs.FAILED, error_code="LOST",
                          error=f"robot {self.name} no longer knows job {rjid}; check its output before burning again")
            return
        if p.state == publish.WAITING:
            jobs.update(conn, job_id, jobs.IN_ROBOT, robot_ack=1, progress=progress,
                        message=p.message or f"waiting in robot {self.name}", error_code=p.error_code or "")
        elif p.state == publish.BURNING:
            jobs.move(conn, job_id, jobs.IN_ROBOT, jobs.BURNING, robot_ack=1, progress=progress,
                      message=p.message or f"burning in {self.name}", error_code=p.error_code or "")
        elif p.state == publish.DONE:
            if jobs.move(conn, job_id, jobs.IN_ROBOT, jobs.DONE, robot_ack=1, progress=1.0,
                         message=p.message or f"done by {self.name}", error_code=""):
                LOG.info("robot %s: job %s done", self.name, job_id)
        elif p.state == publish.FAILED:
            if jobs.move(conn, job_id, jobs.IN_ROBOT, jobs.FAILED, robot_ack=1, progress=progress,
                         error=p.message or f"robot {self.name} reported a failure", error_code=p.error_code or "",
                         message=p.message or "failed"):
                LOG.warning("robot %s: job %s failed: %s %s", self.name, job_id, p.error_code, p.message)
        elif p.state == publish.CANCELLED:
            jobs.move(conn, job_id, jobs.IN_ROBOT, jobs.CANCELLED, robot_ack=1,
                      message=p.message or f"cancelled in {self.name}")
        else:
            jobs.update(conn, job_id, jobs.IN_ROBOT, message=f"robot said {p.state!r}: {p.message}"[:1000])


def serve_robot(data_dir: str | os.PathLike[str], stop: threading.Event | None, ready: threading.Event | None,
                robot_name: str) -> None:
    """Run one robot's loop until `stop` is set or the robot is removed from the configuration."""
    stop = stop or threading.Event()
    register_drivers()
    loop = RobotLoop(Path(data_dir), robot_name)
    if ready is not None:
        ready.set()
    try:
        if not loop.reload():
            LOG.error("robot %s is not configured", robot_name)
            return
        while not stop.is_set():
            if loop.settings.changed() and not loop.reload() and not (stop.wait(2.0) or loop.reload()):
                LOG.info("robot %s removed from the configuration; its driver stops", robot_name)
                robots.mark_stopped(loop.conn, robot_name, "removed from the configuration")
                return
            if loop.publisher is None:
                loop.reload()
            if time.monotonic() - loop.last_beat >= HEARTBEAT_SECONDS:
                loop.heartbeat()
            try:
                loop.work()
            except Exception:
                LOG.exception("robot %s: job pass failed", robot_name)
            stop.wait(POLL_SECONDS)
        robots.mark_stopped(loop.conn, robot_name, "driver stopped")
    finally:
        loop.conn.close()


def serve(data_dir: str | os.PathLike[str], stop: threading.Event | None = None,
          ready: threading.Event | None = None) -> None:
    """Run `serve_robot` for every configured robot as threads, following the robots table."""
    data_dir = Path(data_dir)
    stop = stop or threading.Event()
    settings = Settings(data_dir)
    threads: dict[str, tuple[threading.Thread, threading.Event]] = {}
    restarts: dict[str, float] = {}
    if ready is not None:
        ready.set()
    checked = 0.0
    while not stop.is_set():
        if (settings.changed() or time.monotonic() - checked > 5.0
                or any(not t.is_alive() for t, _ in threads.values())):
            checked = time.monotonic()
            settings.all()
            names = {r["name"] for r in robots.list_robots(settings)}
            for name, (thread, robot_stop) in list(threads.items()):
                if name not in names:
                    robot_stop.set()
                if not thread.is_alive():
                    del threads[name]
                    restarts[name] = time.monotonic() + (5.0 if name in names else 0.0)
            for name in sorted(names - set(threads)):
                if time.monotonic() < restarts.get(name, 0):
                    continue
                robot_stop = threading.Event()
                thread = threading.Thread(target=serve_robot, args=(data_dir, robot_stop, None, name),
                                          name=f"driver:{name}", daemon=True)
                thread.start()
                threads[name] = (thread, robot_stop)
                LOG.info("driver for robot %s started", name)
        stop.wait(1.0)
    for _thread, robot_stop in threads.values():
        robot_stop.set()
    deadline = time.monotonic() + 2.5  # all robots together, well inside the supervisor's 5 s before SIGKILL
    for thread, _ in threads.values():
        thread.join(max(0.0, deadline - time.monotonic()))
