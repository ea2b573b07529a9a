"""Write a file so that it is, after a crash or power loss, either the old one or the new one.

The one helper for it (settings, the supervisor's table, folder export requests, robot job files):
a temp file in the same folder (so the rename is atomic), written, fsync'd, renamed over the
target, then the folder fsync'd (so the rename itself survives a power loss). Drivers may import
it; it imports nothing of the appliance.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Make a rename or a new name in `folder` durable (a file system that cannot is let be)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def install(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Put a finished temp file in place durably: fsync it, rename it over `final`, fsync the folder."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, mode: int | None = None,
                exclusive: bool = False, temp_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write `data` to `path` atomically and durably; returns the path.

    `mode`: the file's permissions (default: the umask's). `exclusive`: never replace an existing
    file (FileExistsError), for files another program picks up the moment they appear.
    `temp_dir`: where the temp file is written (same file system as `path`; default its folder),
    for a watched folder that must never see a temp file.
    """
    path = Path(path)
    folder = path.parent
    tmp = Path(temp_dir or folder) / f".{path.name}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if mode is not None:
                os.fchmod(fd, mode)  # the umask does not narrow an explicit mode
            os.fsync(fd)
        finally:
            os.close(fd)
        if not exclusive:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic, and refuses to replace an existing file
            except FileExistsError:
                raise
            except OSError:  # shares without hard links: check, then rename
                if path.exists():
                    raise FileExistsError(str(path)) from None
                os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(folder)
    return path


def write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8", errors: str = "strict", *,
               mode: int | None = None, exclusive: bool = False,
               temp_dir: str | os.PathLike[str] | None = None) -> Path:
    """`write_bytes` of `text` encoded."""
    return write_bytes(path, text.encode(encoding, errors), mode=mode, exclusive=exclusive, temp_dir=temp_dir)
