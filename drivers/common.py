"""Helpers both vendor drivers share, because both speak "text job file in a watched folder".

- values written into job files come from untrusted data (patient names from scanners): `clean_value`
  makes any string one harmless value (no line break, tab, NUL or `=`), `checked_path` refuses a
  path that would need such a change (a mangled path is worse than a clear error);
- `write_aside_then_rename`: the engines pick up a job file the moment it appears, so it is written
  in a side folder, fsync'd, then moved in (never written in place);
- `TolerantIni`: the engines rewrite their INI status files in place; a reader can catch one
  half-written, so a parse is checked and the last good one kept (never a crash);
- `EnginePathMap`: the spool may be a share of the engine's (Windows) host, so local paths are
  rewritten to what the engine sees;
- robot job ids: a job of several discs, and a retry, need one robot job per disc and attempt;
  `robot_job_id` / `match_robot_job` name them so that `poll(job_id)` finds them from the files alone;
  `SubmittedLedger` tells our jobs from an engine's old ones of a repeated id; `aggregate` makes one
  job state of the discs' states; `ErrorReportWait` holds back an .ERR the engine has not explained;
- `SpoolPublisher`: the job-following skeleton both publishers share (poll, plan, cancel, ledger,
  staging); `spool_factory` makes a class's PUBLISHER_FACTORIES entry;
- USB matchers: data, extendable by a technician (see `usb_matchers`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from appliance import publish
from drivers.encoding import encode_strict, job_file_encoding

log = logging.getLogger(__name__)

ASIDE_DIR = ".burnstation-aside"  # inside the spool: same file system, so the rename is atomic
STAGE_DIR = "jobfiles"  # inside the spool: disc images, trees, labels the engine must read
ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
USB_MATCHERS_FILE = "usb-matchers.json"

# characters that could end a line, separate a DATA source from its destination, or start a key;
# Python's str.splitlines also breaks on \v \f \x1c-\x1e \x85 \u2028 \u2029: a parser on the other
# side may too, so those go as well
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029=]")
_SPACES = re.compile(r"\s{2,}")


# --------------------------------------------------------------------------- values


def clean_value(value: object, max_len: int) -> str:
    """One safe job-file value: control characters, line breaks, tabs and `=` become spaces; cut to max_len."""
    text = "" if value is None else str(value)
    text = _UNSAFE.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    return text[:max_len].rstrip()


def clean_key(name: object, max_len: int = 64) -> str:
    """A merge-field name: letters, digits and `_` only (anything else becomes `_`)."""
    text = re.sub(r"[^A-Za-z0-9_]", "_", "" if name is None else str(name)).strip("_")
    return text[:max_len] or "FIELD"


def checked_id(value: str, max_len: int, what: str = "job id") -> str:
    """An id we write verbatim (job ids): refused, not mangled, when it is not [A-Za-z0-9_-]."""
    if not isinstance(value, str) or not ID_RE.match(value) or len(value) > max_len:
        raise ValueError(f"{what} {value!r}: must be 1-{max_len} of A-Z a-z 0-9 - _")
    return value


def checked_path(value: str, what: str) -> str:
    """A path we write verbatim: refused when it holds a character that could break the job file."""
    if _UNSAFE.search(value):
        raise ValueError(f"{what}: the path {value!r} holds a line break, tab, control character or '='; "
                         "it cannot be written into a job file")
    return value


def yes_no(flag: object) -> str:
    return "YES" if flag else "NO"


# --------------------------------------------------------------------------- files


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_aside_then_rename(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `folder/name` so that the file appears complete or not at all.

    Written (and fsync'd) in a side folder inside `folder`, then moved in. An existing file of that
    name is never replaced (FileExistsError): the engine may already be working on it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    aside = folder / ASIDE_DIR
    aside.mkdir(exist_ok=True)
    target = folder / name
    tmp = aside / f"{name}.{uuid.uuid4().hex}.tmp"
    data = encode_strict(text, encoding, name)  # never a silent "?" (drivers/encoding.py)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        try:
            os.link(tmp, target)  # atomic and refuses to replace an existing file
        except FileExistsError:
            raise
        except OSError:  # shares without hard links: check, then rename
            if target.exists():
                raise FileExistsError(str(target)) from None
            os.rename(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(folder)
    return target


def clean_aside(folder: Path, older_than: float = 60.0) -> None:
    """Remove temp files a crash left in the side folder."""
    aside = folder / ASIDE_DIR
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in os.scandir(aside):
            with contextlib.suppress(OSError):
                if now - entry.stat().st_mtime > older_than:
                    os.unlink(entry.path)


def read_briefly(path: Path) -> tuple[str, float] | None:
    """The file's text and mtime: opened, read and closed at once (the engine cannot rewrite a file
    we hold open). None when it is missing or cannot be read right now."""
    try:
        with open(path, "rb") as fh:
            mtime = os.fstat(fh.fileno()).st_mtime
            data = fh.read()
    except OSError:
        return None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace"), mtime
    try:
        return data.decode("utf-8"), mtime
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace"), mtime


def stage_file(source: Path, target: Path, must_copy: bool) -> Path:
    """Make `source` readable at `target` (inside the spool): hard link, else copy when the engine
    cannot see `source` otherwise (must_copy), else leave it where it is and return `source`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return target
    try:
        os.link(source, target)
        return target
    except OSError:
        if not must_copy:
            return source
    tmp = target.with_name(target.name + ".part")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return target


def stage_tree(source: Path, target: Path, must_copy: bool) -> Path:
    """Like stage_file for a folder (hard links per file)."""
    if target.exists():
        return target
    tmp = target.with_name(target.name + ".part")
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        shutil.copytree(source, tmp, copy_function=os.link)
    except (OSError, shutil.Error):
        shutil.rmtree(tmp, ignore_errors=True)
        if not must_copy:
            return source
        shutil.copytree(source, tmp)
    os.replace(tmp, target)
    return target


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


# --------------------------------------------------------------------------- path mapping


def is_windows_path(path: str) -> bool:
    return path.startswith("\\\\") or bool(re.match(r"^[A-Za-z]:", path)) or ("\\" in path and "/" not in path)


@dataclass
class EnginePathMap:
    """Local paths under `local_root` as the vendor engine sees them under `engine_root`.

    `engine_root` empty: the engine sees our paths as they are. A Windows-style root
    (`\\\\host\\share\\spool`, `Z:\\spool`) gets backslashes, anything else forward slashes.
    """

    local_root: Path
    engine_root: str = ""

    def to_engine(self, path: Path, what: str = "path") -> str:
        path = Path(os.path.abspath(path))
        if not self.engine_root:
            return checked_path(str(path), what)
        local = Path(os.path.abspath(self.local_root))
        try:
            rel = path.relative_to(local)
        except ValueError:
            raise ValueError(f"{what}: {path} is outside the spool folder {local}; the engine "
                             f"(which sees that folder as {self.engine_root}) cannot read it") from None
        sep = "\\" if is_windows_path(self.engine_root) else "/"
        root = self.engine_root
        parts = PurePosixPath(rel.as_posix()).parts
        if not parts:
            return checked_path(root, what)
        if not root.endswith(sep):
            root += sep
        return checked_path(root + sep.join(parts), what)

    @property
    def engine_sep(self) -> str:
        return "\\" if self.engine_root and is_windows_path(self.engine_root) else "/"


# --------------------------------------------------------------------------- INI status files

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
                    self.last_good = IniSnapshot(sections, mtime, time.time())
                    return self.last_good
            if attempt < retries:
                time.sleep(self.retry_delay)
        # still suspicious: the same reason again and again, for a while, is what the engine means
        now = time.time()
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


# --------------------------------------------------------------------------- robot job ids


def robot_job_id(job_id: str, disc: int, disc_count: int, attempt: int, max_len: int) -> str:
    """The robot's job id for one disc and attempt: `<job>`, `<job>-D2of3`, `<job>-R2`, `<job>-D2of3-R2`.

    The base is cut when the protocol's limit requires it, so the result always fits `max_len`.
    """
    suffix = (f"-D{disc}of{disc_count}" if disc_count > 1 else "") + (f"-R{attempt}" if attempt > 1 else "")
    return job_id[: max_len - len(suffix)] + suffix


@dataclass(frozen=True)
class RobotJobRef:
    stem: str
    disc: int
    disc_count: int
    attempt: int


def match_robot_job(stem: str, job_id: str, max_len: int) -> RobotJobRef | None:
    """Whether `stem` (a job file name without extension, or a status section) is a robot job of `job_id`."""
    splits: list[tuple[str, int]] = [(stem, 1)]
    m = re.fullmatch(r"(.+)-R(\d{1,4})", stem)
    if m:
        splits.append((m.group(1), int(m.group(2))))
    for head, attempt in splits:
        options: list[tuple[int, int]] = [(1, 1)]
        d = re.fullmatch(r"(.+)-D(\d{1,3})of(\d{1,3})", head)
        if d:
            options.append((int(d.group(2)), int(d.group(3))))
        for disc, count in options:
            if attempt < 1 or disc < 1 or count < 1 or disc > count:
                continue
            canonical = robot_job_id(job_id, disc, count, attempt, max_len)
            if canonical.lower() == stem.lower():  # status sections come lower-cased
                return RobotJobRef(canonical, disc, count, attempt)
    return None


@dataclass
class FoundJobFile:
    ref: RobotJobRef
    ext: str  # upper case, no dot
    path: Path


def find_job_files(folders: Iterable[Path], job_id: str, extensions: Iterable[str],
                   max_len: int) -> list[FoundJobFile]:
    """Every job file of `job_id` (all discs and attempts) in the given folders."""
    wanted = {e.upper() for e in extensions}
    found: list[FoundJobFile] = []
    prefix = job_id[: max(1, max_len - 16)].lower()  # what survives the longest suffix's cut
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            stem, dot, ext = name.rpartition(".")
            if not dot or ext.upper() not in wanted or not stem.lower().startswith(prefix):
                continue
            ref = match_robot_job(stem, job_id, max_len)
            if ref is not None:
                found.append(FoundJobFile(ref, ext.upper(), Path(entry.path)))
    return found


def latest_per_disc(refs: Iterable[RobotJobRef]) -> dict[int, RobotJobRef]:
    """For each disc, the robot job of its highest attempt."""
    best: dict[int, RobotJobRef] = {}
    for ref in refs:
        cur = best.get(ref.disc)
        if cur is None or ref.attempt > cur.attempt:
            best[ref.disc] = ref
    return best


@dataclass
class DiscState:
    ref: RobotJobRef
    progress: publish.JobProgress


def aggregate(discs: list[DiscState], disc_count: int) -> publish.JobProgress:
    """The job's state from its discs' states (every disc must be known)."""
    if not discs:
        return publish.JobProgress(publish.UNKNOWN, message="the robot does not know this job")
    if len(discs) < disc_count:
        return publish.JobProgress(publish.UNKNOWN, message="not every disc of the job reached the robot")
    progs = [d.progress for d in discs]
    total = publish.JobProgress(
        publish.BURNING,
        progress=sum(p.progress for p in progs) / disc_count,
        discs_done=sum(p.discs_done for p in progs),
        discs_failed=sum(p.discs_failed for p in progs),
    )

    def label(d: DiscState, text: str) -> str:
        return f"disc {d.ref.disc} of {disc_count}: {text}" if disc_count > 1 else text

    for wanted in (publish.FAILED, publish.CANCELLED, publish.WAITING, publish.BURNING):
        hits = [d for d in discs if d.progress.state == wanted]
        if hits:
            if wanted == publish.WAITING and any(d.progress.state == publish.BURNING for d in discs) \
                    and not any(d.progress.error_code for d in hits):
                continue  # a disc burning beats one merely queued behind it
            total.state = wanted
            total.message = label(hits[0], hits[0].progress.message)
            total.error_code = hits[0].progress.error_code
            return total
    total.state = publish.DONE
    total.progress = 1.0
    total.message = "done"
    return total


class SubmittedLedger:
    """The robot job ids this station wrote into a spool, kept in the data folder.

    Job ids repeat when a station's state is reset (a re-initialised box numbers its jobs from 1
    again) while the engine still keeps the old job files and status entries for days. A job file
    the ledger does not list is someone else's: `poll` ignores it and `submit` burns under a new
    attempt id instead of taking that old ".DON" for this job's. Each id is written (fsync'd)
    before its job file, so a crash in between never makes our own job look foreign.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._known: set[str] = set()
        self._size = -1

    def _load(self) -> None:
        try:
            size = self.path.stat().st_size
        except OSError:
            size = 0
        if size != self._size:
            try:
                text = self.path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                text = ""
            self._known = {line.strip().lower() for line in text.splitlines() if line.strip()}
            self._size = size

    def known(self, stem: str) -> bool:
        self._load()
        return stem.lower() in self._known

    def add(self, stems: Iterable[str]) -> None:
        stems = [s for s in stems if not self.known(s)]
        if not stems:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write("".join(f"{s}\n" for s in stems))
            fh.flush()
            os.fsync(fh.fileno())
        self._size = -1


def ledger_for(data_dir: Path | None, robot_name: str) -> SubmittedLedger | None:
    if data_dir is None:
        return None
    return SubmittedLedger(Path(data_dir) / "drivers" / checked_id(robot_name, 64, "robot name") / "submitted.txt")


@dataclass
class ErrorReportWait:
    """Holds back a failure the engine has not explained yet.

    An engine renames a job file to .ERR and rewrites its status file (with the error) a moment
    later; a poll in between would fail the job with no reason, or call a cancelled job failed. So a
    failure without an error code, or one with a cancel request still unanswered, is reported as
    still running until the status file has been rewritten after we first saw it, for at most
    `grace` seconds.
    """

    grace: float = 20.0
    first_seen: dict[str, float] = field(default_factory=dict)

    def settle(self, stem: str, progress: publish.JobProgress, cancel_pending: bool,
               status_mtime: float) -> publish.JobProgress:
        if progress.state != publish.FAILED or (progress.error_code and not cancel_pending):
            self.first_seen.pop(stem, None)
            return progress
        now = time.time()
        first = self.first_seen.setdefault(stem, now)
        if now - first < self.grace and (status_mtime <= first or cancel_pending):
            return publish.JobProgress(publish.BURNING, progress.progress,
                                       "finishing: waiting for the engine's report", "",
                                       progress.discs_done, progress.discs_failed)
        return progress


# --------------------------------------------------------------------------- publisher skeleton

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


def spool_factory(cls: type[SpoolPublisher]) -> Callable[..., SpoolPublisher]:
    """The `PUBLISHER_FACTORIES[kind]` entry for a publisher class: `(robot_doc, data_dir)`; also
    accepts `(name, options, data_dir)`."""

    def factory(robot: Any, data_dir: Any = None, *rest: Any) -> SpoolPublisher:
        if isinstance(robot, str):
            options = dict(data_dir or {})
            options.setdefault("name", robot)
            return cls(options, rest[0] if rest else None)
        return cls(robot, data_dir)

    factory.__doc__ = f"`PUBLISHER_FACTORIES[{cls.kind!r}](robot_doc, data_dir)`; also accepts (name, options, data_dir)."
    return factory


# --------------------------------------------------------------------------- USB matchers


def usb_matchers(kind: str, builtin: Iterable[Mapping[str, Any]], data_dir: Path | None) -> list[dict[str, Any]]:
    """The driver's built-in matchers plus a technician's additions from `<data>/usb-matchers.json`.

    That file is `{"epson": [{"vendor_id": "04b8", "model": "PP-150"}], "primera": [...]}`; each
    matcher's fields (vendor_id, product_id: exact hex; vendor, model: case-insensitive substrings of
    udev's ID_VENDOR / ID_MODEL, `_` and space alike) must all match. A broken file is logged and ignored.
    """
    result = [dict(m, kind=kind) for m in builtin]
    if data_dir is None:
        return result
    path = Path(data_dir) / USB_MATCHERS_FILE
    if not path.exists():
        return result
    try:
        extra = json.loads(path.read_text(encoding="utf-8")).get(kind, [])
        for m in extra:
            if not isinstance(m, dict):
                continue
            m = {_USB_ALIASES.get(k, k): v for k, v in m.items()}
            doc = {k: str(v) for k, v in m.items() if k in ("vendor_id", "product_id", "vendor", "model") and v}
            if doc:
                result.append(doc | {"kind": kind})
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        log.warning("%s: ignored (%s)", path, exc)
    return result


_USB_ALIASES = {"vid": "vendor_id", "pid": "product_id", "idVendor": "vendor_id", "idProduct": "product_id"}


def _norm(text: object) -> str:
    return str(text or "").replace("_", " ").strip().lower()


def usb_match(matcher: Mapping[str, Any], device: Mapping[str, Any]) -> bool:
    """Whether a device (keys vendor_id, product_id, vendor, model — or udev's ID_VENDOR_ID, ID_MODEL_ID,
    ID_VENDOR, ID_MODEL) satisfies every field the matcher sets."""
    props = {
        "vendor_id": device.get("vendor_id") or device.get("ID_VENDOR_ID") or "",
        "product_id": device.get("product_id") or device.get("ID_MODEL_ID") or "",
        "vendor": device.get("vendor") or device.get("ID_VENDOR") or device.get("ID_VENDOR_FROM_DATABASE") or "",
        "model": device.get("model") or device.get("ID_MODEL") or device.get("ID_MODEL_FROM_DATABASE") or "",
    }
    checked = False
    for key in ("vendor_id", "product_id"):
        want = str(matcher.get(key) or "").lower()
        if want:
            checked = True
            if str(props[key]).lower() != want:
                return False
    for key in ("vendor", "model"):
        want = _norm(matcher.get(key))
        if want:
            checked = True
            if want not in _norm(props[key]):
                return False
    return checked
