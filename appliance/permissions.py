"""The data folder holds patient data: owner only (folders 0700, files 0600), like PostgreSQL's.

Every station process and the CLI run with umask 077 (`PRIVATE_UMASK`), so whatever they create is
private. `init` and `run` tighten a folder made before that (a 0755 `storage/`, a 0644 `state.db`);
where a mode cannot be changed (another user owns the file), `run` refuses to start and says what
to do. Exempt, never changed nor checked: what is handed to other systems on purpose, the robots'
spool folders (the vendor engine reads them, possibly over a share where chmod fails) and the
folder-export targets (a robot's spool too), plus `<data>/spool`, the default spool root.

The whole tree is walked only when its top shows an older folder (the data folder itself or one of
its direct entries open to others); a private top keeps everyone else out of everything below it.
The walk changes the top folder last, and not at all when something below could not be changed, so
an interrupted walk is done again at the next start, and a refusal is repeated until it is fixed.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG = logging.getLogger("burnstation.permissions")

PRIVATE_UMASK = 0o077
OPEN_BITS = 0o077  # group and other permission bits
EXAMPLES = 5


def set_private_umask() -> None:
    """Everything this process (and its children) creates is owner only."""
    os.umask(PRIVATE_UMASK)


def exempt_paths(data_dir: Path, settings: Any = None) -> list[Path]:
    """Folders handed to other systems on purpose: `<data>/spool` and every robot's spool (folder
    exports included). `settings` is a Settings (None: read them from `data_dir`)."""
    paths = [Path(data_dir) / "spool"]
    try:
        if settings is None:
            from appliance.config import Settings

            settings = Settings(Path(data_dir))
        robots = settings.table_all("robots") if settings.exists() else []
    except Exception as exc:  # unreadable settings: the caller reports those itself
        LOG.debug("robots not read for the spool exemption: %s", exc)
        robots = []
    paths += [Path(str(r["spool"])) for r in robots if r.get("spool")]
    return paths


@dataclass
class Report:
    """What a check or a tightening found."""

    data_dir: str
    open_entries: int = 0  # entries other users could use (before tightening)
    examples: list[str] = field(default_factory=list)  # "path (mode)" of the first few
    tightened: int = 0
    failures: list[str] = field(default_factory=list)  # "path: error" where chmod failed
    missing: bool = False

    @property
    def private(self) -> bool:
        return not self.missing and self.open_entries == self.tightened and not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {"data_dir": self.data_dir, "private": self.private, "open_entries": self.open_entries,
                "examples": self.examples, "tightened": self.tightened, "failures": self.failures[:EXAMPLES],
                "message": self.message()}

    def message(self) -> str:
        if self.missing:
            return f"the data folder {self.data_dir} does not exist"
        if self.failures:
            return (f"{len(self.failures)} entr{'y' if len(self.failures) == 1 else 'ies'} of the data folder "
                    f"{self.data_dir} can be read or entered by other users and cannot be made owner-only "
                    f"(e.g. {self.failures[0]}): give the station's user ownership of the whole folder "
                    f"(chown -R <user> {self.data_dir}) or remove the group/other permissions "
                    f"(chmod -R go-rwx {self.data_dir}), then start again")
        if self.tightened:
            return (f"made {self.tightened} entr{'y' if self.tightened == 1 else 'ies'} of the data folder owner-only "
                    f"(they were open to other users, e.g. {', '.join(self.examples[:3])})")
        if self.open_entries:
            return (f"{self.open_entries} entr{'y' if self.open_entries == 1 else 'ies'} of the data folder can be "
                    f"read or entered by other users (e.g. {', '.join(self.examples[:3])}); "
                    f"`burnstation run` makes them owner-only at start")
        return "owner only (folders 0700, files 0600)"


def _is_open(mode: int) -> bool:
    return bool(mode & OPEN_BITS)


def _private_mode(mode: int) -> int:
    perms = stat.S_IMODE(mode) & ~OPEN_BITS
    return perms | 0o700 if stat.S_ISDIR(mode) else perms


def _walk(top: Path, exempt: set[str]) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry below `top` (post-order: a folder after its contents), symlinks and exempt
    folders skipped; `top` itself last."""
    stack: list[tuple[Path, os.stat_result, bool]] = [(top, top.lstat(), False)]
    while stack:
        path, st, expanded = stack.pop()
        if stat.S_ISDIR(st.st_mode) and not expanded:
            stack.append((path, st, True))
            try:
                entries = list(os.scandir(path))
            except OSError as exc:
                LOG.warning("cannot list %s: %s", path, exc)
                continue
            for entry in entries:
                child = Path(entry.path)
                if entry.is_symlink() or os.path.realpath(child) in exempt:
                    continue
                try:
                    stack.append((child, entry.stat(follow_symlinks=False), False))
                except FileNotFoundError:
                    continue
            continue
        yield path, st


def _top_is_open(top: Path, exempt: set[str]) -> bool:
    """The data folder or one of its direct entries is open to others (an older data folder)."""
    if _is_open(top.stat().st_mode):
        return True
    for entry in os.scandir(top):
        if entry.is_symlink() or os.path.realpath(entry.path) in exempt:
            continue
        try:
            if _is_open(entry.stat(follow_symlinks=False).st_mode):
                return True
        except FileNotFoundError:
            continue
    return False


def scan(data_dir: Path, exempt: Iterable[Path] = (), fix: bool = False) -> Report:
    """Find the entries of the data folder that others can use; with `fix`, make them owner-only.

    chmod failures are collected in the report (never raised): the caller decides."""
    top = Path(os.path.realpath(data_dir))
    report = Report(str(data_dir))
    if not top.is_dir():
        report.missing = True
        return report
    exempt_set = {os.path.realpath(p) for p in exempt}
    if not _top_is_open(top, exempt_set):
        return report
    for path, st in _walk(top, exempt_set):
        if not _is_open(st.st_mode):
            continue
        report.open_entries += 1
        if len(report.examples) < EXAMPLES:
            report.examples.append(f"{path} ({stat.S_IMODE(st.st_mode):04o})")
        if not fix:
            continue
        if path == top and report.failures:  # stays open: the next run walks again and refuses again
            continue
        try:
            os.chmod(path, _private_mode(st.st_mode))  # never a symlink: those were skipped
            report.tightened += 1
        except OSError as exc:
            report.failures.append(f"{path}: {exc.strerror or exc} (owner uid {st.st_uid}, "
                                   f"this process runs as uid {os.geteuid()})")
    return report


def secure(data_dir: Path, settings: Any = None) -> Report:
    """Make the data folder owner-only (init, run); logs what it changed and what it could not."""
    report = scan(Path(data_dir), exempt_paths(Path(data_dir), settings), fix=True)
    if report.tightened:
        LOG.warning("data folder %s: %s", data_dir, report.message())
    if report.failures:
        LOG.error("data folder %s: %s", data_dir, report.message())
    return report


def status(data_dir: Path, settings: Any = None) -> dict[str, Any]:
    """The finding for `burnstation status` (nothing is changed)."""
    return scan(Path(data_dir), exempt_paths(Path(data_dir), settings)).as_dict()


def render(finding: dict[str, Any] | None) -> str:
    """One line of `burnstation status`."""
    if not finding:
        return "Data folder permissions: (not checked)"
    return f"Data folder permissions: {'' if finding['private'] else 'NOT PRIVATE — '}{finding['message']}"
