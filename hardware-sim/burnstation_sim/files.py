"""File writing the way each party does it: the engines rewrite status files in place, while
announcements, control replies and copies are written aside and renamed in (never seen half-done)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

Section = tuple[str, Iterable[tuple[str, object]]]


def render_ini(sections: Iterable[Section]) -> str:
    """INI text with CRLF line ends, as the Windows engines write it."""
    lines: list[str] = []
    for name, items in sections:
        lines.append(f"[{name}]")
        lines.extend(f"{key}={value}" for key, value in items)
        lines.append("")
    return "\r\n".join(lines) + "\r\n"


def rewrite_in_place(path: Path, text: str, chunk: int = 256) -> None:
    """Open, truncate, write in small pieces, close: the same inode every time, so a reader can
    catch the file empty or half-written, exactly as with the vendors' engines."""
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 0)
        for start in range(0, len(data), chunk):
            os.write(fd, data[start : start + chunk])
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write beside the target, fsync, rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def copy_into(source: Path, target_dir: Path, name: str | None = None) -> Path:
    """Copy one file into `target_dir` (aside, then renamed in)."""
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / (name or source.name)
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return target


def tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def rename_ext(path: Path, ext: str) -> Path:
    """Rename `NAME.OLD` to `NAME.<ext>` in the same folder (what the engines do to job files)."""
    target = path.with_suffix("." + ext)
    try:
        os.replace(path, target)
    except FileNotFoundError:  # someone removed the job file; the job goes on in the status file
        pass
    return target
