"""The supervisor's command channel: owner-only request files in `<data>/run/requests/`.

The web UI and `burnstation restart-process NAME` ask for a process in FAILED state to be
started again by dropping a small JSON file there (0600, the folder 0700); the supervisor's loop
takes the files, acts on them and deletes them. Files are the channel because they need no open
socket and survive a supervisor that is busy or restarting.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from appliance.supervisor.states import ProcessState

LOG = logging.getLogger("burnstation.supervisor")
MAX_AGE_SECONDS = 300.0  # an old request (no supervisor was running) is dropped, not acted on late


def requests_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "run" / "requests"


def request_reset(data_dir: str | os.PathLike[str], name: str, who: str) -> Path:
    """Ask the supervisor to start `name` again (when it is failed); returns the request file."""
    folder = requests_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    path = folder / f"{time.time():.6f}-{secrets.token_hex(4)}.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"action": "reset", "name": name, "who": who, "at": time.time()}, fh)
    os.replace(tmp, path)
    return path


def handle_requests(supervisor: Any) -> bool:
    """Called by the supervisor's loop: act on pending requests; True when a process was reset."""
    folder = requests_dir(supervisor.data_dir)
    if not folder.is_dir():
        return False
    acted = False
    for path in sorted(folder.glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            doc = {}
        path.unlink(missing_ok=True)
        if doc.get("action") != "reset" or time.time() - float(doc.get("at", 0)) > MAX_AGE_SECONDS:
            continue
        proc = supervisor.procs.get(str(doc.get("name")))
        if proc is None or proc.state is not ProcessState.FATAL:
            LOG.info("reset of %s asked by %s: nothing to do (not a failed process)", doc.get("name"), doc.get("who"))
            continue
        LOG.warning("%s: reset asked by %s; starting it again", proc.name, doc.get("who"))
        proc.reset()
        proc.spawn()
        acted = True
    return acted
