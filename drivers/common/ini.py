"""The engines' INI status files, read leniently; a half-written one never replaces the last good parse."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from drivers.common.files import read_briefly

log = logging.getLogger(__name__)


Sections = dict[str, dict[str, str]]  # lower-cased section name → lower-cased key → value


def parse_ini(text: str) -> tuple[Sections, bool, list[str]]:
    """Parse INI text leniently. Returns (sections, looks_complete, section names in file order).

    Section names and keys are lower-cased (the engines are not consistent about case); values keep
    theirs. `looks_complete` is False when the text is empty, holds a line that is neither a section,
    a key, a comment nor blank, or ends without a line break (the writer may be mid-line).
    """
    sections: Sections = {}
    order: list[str] = []
    complete = bool(text.strip())
    lines = re.split(r"\r\n|\n|\r", text)
    if lines and lines[-1].strip():
        complete = False  # last line not terminated: possibly cut mid-value
        lines = lines[:-1]
    current: dict[str, str] | None = None
    for raw in lines:
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        if line.startswith("[") and line.endswith("]"):
            name = line[1:-1].strip().lower()
            current = sections.setdefault(name, {})
            order.append(name)
            continue
        if "=" in line and current is not None:
            key, _, value = line.partition("=")
            current[key.strip().lower()] = value.strip()
            continue
        complete = False
    return sections, complete, order


def as_int(value: object, default: int | None = None) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


@dataclass
class IniSnapshot:
    sections: Sections
    mtime: float
    read_at: float
    stale: bool = False  # True: the current file could not be parsed, these are the last good values


@dataclass
class TolerantIni:
    """Reads one engine status file; keeps the last good parse when it catches one half-written.

    `check(new, last_good)` returns a reason string when `new` looks incomplete (a job listed but its
    section missing, a section that was there before gone), else "". A suspicious read is retried a
    few times at once; if it stays suspicious it is served from the last good parse, until the same
    reason has come back on `accept_after` reads in a row over at least `accept_seconds` (then it is
    what the engine means: a robot really removed, a key really dropped).
    """

    path: Path
    check: Callable[[Sections, Sections | None], str] = lambda new, old: ""
    retries: int = 3
    retry_delay: float = 0.02
    accept_after: int = 3
    accept_seconds: float = 1.5
    last_good: IniSnapshot | None = None
    _suspect_reason: str = ""
    _suspect_count: int = 0
    _suspect_since: float = 0.0
    problems: list[str] = field(default_factory=list)
    clock: Callable[[], float] = time.time  # (tests pass their own, to let `accept_seconds` pass without waiting)

    def read(self) -> IniSnapshot | None:
        """The current status (or the last good one); None when the file does not exist."""
        try:
            return self._read()
        except Exception as exc:  # never crash the driver over a status file
            log.warning("status file %s: %s", self.path, exc)
            return self._stale()

    def _stale(self) -> IniSnapshot | None:
        if self.last_good is None:
            return None
        return IniSnapshot(self.last_good.sections, self.last_good.mtime, self.last_good.read_at, stale=True)

    def _read(self) -> IniSnapshot | None:
        reason = ""
        text = ""
        retries = self.retries if self.last_good is not None else self.retries * 4  # nothing to fall back on
        for attempt in range(retries + 1):
            got = read_briefly(self.path)
            if got is None:
                if not self.path.exists():
                    return None
                reason = "cannot be read"
            else:
                text, mtime = got
                sections, complete, _ = parse_ini(text)
                reason = "" if complete else "incomplete"
                if not reason:
                    old = self.last_good.sections if self.last_good else None
                    reason = self.check(sections, old)
                if not reason:
                    self._suspect_count = 0
                    self.last_good = IniSnapshot(sections, mtime, self.clock())
                    return self.last_good
            if attempt < retries:
                time.sleep(self.retry_delay)
        # still suspicious: the same reason again and again, for a while, is what the engine means
        now = self.clock()
        if got is not None and reason == self._suspect_reason and text.strip():
            self._suspect_count += 1
        else:
            self._suspect_reason, self._suspect_count, self._suspect_since = reason, 1, now
        self.problems = [f"{self.path.name}: {reason}"]
        settled = (self._suspect_count >= self.accept_after and now - self._suspect_since >= self.accept_seconds
                   and reason != "incomplete")
        if got is not None and (self.last_good is None or settled):
            sections, _, _ = parse_ini(text)  # best effort (the unterminated last line is dropped)
            if settled:
                self.last_good = IniSnapshot(sections, got[1], now)
                return self.last_good
            return IniSnapshot(sections, got[1], now, stale=True)
        return self._stale()


def listed_values(section: Mapping[str, str] | None) -> list[str]:
    """Values of a list section (`JOB1=a`, `Robot0=b`, …) in key order."""
    if not section:
        return []

    def order(item: tuple[str, str]) -> tuple[int, str]:
        digits = re.sub(r"\D", "", item[0])
        return (int(digits) if digits else 0, item[0])

    return [v for _, v in sorted(section.items(), key=order) if v]


def missing_listed_sections(sections: Sections, list_names: Iterable[str]) -> str:
    for list_name in list_names:
        for job in listed_values(sections.get(list_name)):
            if job.lower() not in sections:
                return f"[{list_name}] lists {job} but its section is missing"
    return ""


def lost_sections(new: Sections, old: Sections | None, keep: Callable[[str], bool],
                  lists: Iterable[str] = ()) -> str:
    """A section that should never vanish (engine info, robots) is in the last good parse but not here,
    or a section in both has lost keys (list sections, whose entries come and go, excepted)."""
    if not old:
        return ""
    for name, keys in old.items():
        if keep(name) and name not in new:
            return f"section [{name}] vanished"
        if name in new and name not in lists and not set(keys) <= set(new[name]):
            return f"section [{name}] lost keys"  # the writer stopped inside it
    return ""


def half_written(new: Sections, old: Sections | None, lists: tuple[str, ...], keep: Callable[[str], bool]) -> str:
    """Why a status file parse looks cut off ('' when it looks whole): a list section (`lists`) names a
    job whose section is missing, or a section `keep` says never vanishes (or its keys) went missing."""
    return missing_listed_sections(new, lists) or lost_sections(new, old, keep, lists=lists)
