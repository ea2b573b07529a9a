"""The hl7 process's own log file, <data>/logs/hl7.log: what it did (listener, orders, the RIS
outbox) and, with `hl7.log_messages` on, the messages themselves. The web UI's HL7 log page reads
it back as records (a record is one log line and the message segments under it), newest first.
"""

from __future__ import annotations

import logging
import logging.handlers
import re
from pathlib import Path
from typing import Any

NAME = "hl7.log"
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 3
READ_BYTES = 4 * 1024 * 1024  # what the page reads back at most (the newest part)
_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def path(data_dir: str | Path) -> Path:
    return Path(data_dir) / "logs" / NAME


def attach(data_dir: str | Path) -> logging.Handler:
    """Send the `burnstation.hl7` logger to the file too (besides the station's main log)."""
    target = path(data_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(target, maxBytes=MAX_BYTES, backupCount=BACKUPS,
                                                   encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger("burnstation.hl7")
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    return handler


def detach(handler: logging.Handler) -> None:
    logging.getLogger("burnstation.hl7").removeHandler(handler)
    handler.close()


def records(data_dir: str | Path, search: str = "", offset: int = 0, limit: int = 50) -> tuple[list[str], int]:
    """A page of the log's records, newest first, those containing `search` (any case); and how many match."""
    target = path(data_dir)
    try:
        with open(target, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - READ_BYTES))
            text = fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return [], 0
    found: list[str] = []
    for line in text.splitlines():
        if _START.match(line) or not found:
            found.append(line)
        else:
            found[-1] += "\n" + line
    needle = search.lower()
    matching = [r for r in reversed(found) if needle in r.lower()] if needle else list(reversed(found))
    return matching[offset:offset + limit], len(matching)


def describe(record: str) -> dict[str, Any]:
    """A record split for display: time, level, first line, and the lines under it."""
    first, _, rest = record.partition("\n")
    parts = first.split(" ", 3)
    if len(parts) == 4 and _START.match(first):
        return {"time": f"{parts[0]} {parts[1].split(',')[0]}", "level": parts[2], "text": parts[3], "more": rest}
    return {"time": "", "level": "", "text": first, "more": rest}
