"""Files in the spool: job files written aside then renamed in, engine files read briefly, staging."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from appliance import atomicfile
from drivers.encoding import encode_strict

ASIDE_DIR = ".burnstation-aside"  # inside the spool: same file system, so the rename is atomic
STAGE_DIR = "jobfiles"  # inside the spool: disc images, trees, labels the engine must read


def write_aside_then_rename(folder: Path, name: str, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `folder/name` so that the file appears complete or not at all.

    Written (and fsync'd) in a side folder inside `folder`, then moved in. An existing file of that
    name is never replaced (FileExistsError): the engine may already be working on it.
    """
    folder.mkdir(parents=True, exist_ok=True)
    aside = folder / ASIDE_DIR
    aside.mkdir(exist_ok=True)
    data = encode_strict(text, encoding, name)  # never a silent "?" (drivers/encoding.py)
    return atomicfile.write_bytes(folder / name, data, exclusive=True, temp_dir=aside)


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
