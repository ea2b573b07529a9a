"""The burner service: grouping timers, disc building and the hand-over of built jobs to robots.

It only reads and writes state.db (the DICOM process indexes, the driver services burn), polling
about twice a second with indexed queries. Building runs on a thread of its own, one job at a
time, so a long build never delays a group's deadline or the dispatch of another job.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from appliance import db, network, retention
from appliance.burn import dispatch, jobs, routing
from appliance.config import Settings

# every service ends well inside the supervisor's 5 s before SIGKILL, even on a loaded machine
STOP_JOIN_SECONDS = 2.5
LOG = logging.getLogger("burnstation.burner")
POLL_SECONDS = 0.5
PRUNE_SECONDS = 300.0  # how often finished jobs' disc images are checked for removal


def _build_loop(data_dir: Path, stop: threading.Event, wake: threading.Event) -> None:
    settings = Settings(data_dir)
    conn = db.connect(data_dir)
    # jobs this loop claimed whose build step raised before it could record the outcome (a full
    # disk fails the build, then the very write that would mark it failed): queued again once
    # state.db takes writes, else they would stay `building` until the next restart
    stranded: set[str] = set()
    try:
        while not stop.is_set():
            job = None
            try:
                for job_id in sorted(stranded):
                    jobs.move(conn, job_id, (jobs.BUILDING,), jobs.QUEUED, message="build interrupted; queued again")
                    stranded.discard(job_id)
                job = dispatch.claim_next_build(conn)
                if job is not None:
                    LOG.info("building job %s (%d instances)", job["id"], job["instances"])
                    dispatch.build_job(conn, settings, data_dir, job)
                    continue
            except Exception:
                if job is not None:
                    stranded.add(job["id"])
                LOG.exception("build step failed")
            wake.wait(POLL_SECONDS * 2)
            wake.clear()
    finally:
        conn.close()


def serve(data_dir: str | os.PathLike[str], stop: threading.Event | None = None,
          ready: threading.Event | None = None) -> None:
    """Run routing, building and dispatch until `stop` is set."""
    data_dir = Path(data_dir)
    stop = stop or threading.Event()
    settings = Settings(data_dir)
    conn = db.connect(data_dir)
    requeued = dispatch.recover_builds(conn)
    if requeued:
        LOG.info("%d interrupted build(s) queued again", requeued)
    router = routing.Router(conn, settings)
    wake = threading.Event()
    builder = threading.Thread(target=_build_loop, args=(data_dir, stop, wake), name="burner-build", daemon=True)
    builder.start()
    if ready is not None:
        ready.set()
    pruned = 0.0
    purger = retention.Timer(settings, data_dir)
    net = network.Network(data_dir)
    try:
        while not stop.is_set():
            try:
                if router.run_once():
                    wake.set()
                if jobs.any_queued(conn):
                    wake.set()
                dispatch.assign_built(conn, settings)
                if time.monotonic() - pruned > PRUNE_SECONDS:
                    pruned = time.monotonic()
                    dispatch.prune_discs(conn, settings, data_dir)
                if purger.due():
                    purger.done(retention.run_once(conn, settings, data_dir))
                net.check_rollback()  # an unconfirmed address change comes back by itself
            except Exception:
                LOG.exception("burner pass failed")
            stop.wait(POLL_SECONDS)
    finally:
        wake.set()
        builder.join(STOP_JOIN_SECONDS)  # a build cut here is queued again at the next start
        conn.close()
