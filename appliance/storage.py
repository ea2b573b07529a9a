"""Received objects on disk: Part 10 files, written aside, fsync'd and renamed into place.

Layout: `storage/<study>/<series>/<sop>.dcm`, where each part is the UID when it is a valid UID
and a hash of it otherwise, so a hostile UID can never name a path outside the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import os
import re
import shutil
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class OutOfSpace(OSError):
    """Free space is below the configured threshold; nothing was written."""


def safe_component(uid: str) -> str:
    """A file-name component for a UID: the UID itself when valid, else a hash of it."""
    uid = uid.strip().rstrip("\x00")
    if uid and len(uid) <= 64 and _UID_RE.match(uid):
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


PURGE_LOCK_FILE = ".storage.lock"  # in the data folder, beside storage/ (never inside it)


class ThreadFd:
    """A descriptor kept in a thread-local: closed when the thread's locals go (the thread ended)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        weakref.finalize(self, os.close, fd)


class _LockFile:
    """A lock file in the data folder with one descriptor per thread (locks on it belong to an open
    file description: threads sharing one would release each other's locks), closed when the
    thread ends (the DICOM process runs each association in a thread of its own: the soak saw one
    descriptor left open per association)."""

    def __init__(self, data_dir: str | os.PathLike[str], name: str) -> None:
        self.path = Path(data_dir) / name
        self._local = threading.local()

    def _fd(self) -> int:
        held = getattr(self._local, "held", None)
        if held is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            held = ThreadFd(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            self._local.held = held
        return held.fd


class PurgeLock(_LockFile):
    """Keeps a purge and an arriving instance apart (across processes): C-STORE holds it shared
    from writing the file until the index row is committed, a purge holds it exclusively while
    it re-checks a study, deletes its rows and unlinks its files. So a purge never deletes a file
    whose arrival is not yet in the index, and an arrival after a purge simply starts the study anew.
    An flock, on a descriptor per thread (`_LockFile`).
    """

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        super().__init__(data_dir, PURGE_LOCK_FILE)

    @contextlib.contextmanager
    def _held(self, how: int) -> Iterator[None]:
        fd = self._fd()
        fcntl.flock(fd, how)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)

    def arrival(self) -> contextlib.AbstractContextManager[None]:
        """Held (shared) by an arriving instance: many arrivals at once, no purge meanwhile."""
        return self._held(fcntl.LOCK_SH)

    def purge(self) -> contextlib.AbstractContextManager[None]:
        """Held (exclusive) by a purge of one study: no arrival is between its file and its index row."""
        return self._held(fcntl.LOCK_EX)


PATH_LOCK_FILE = ".storage-paths.lock"  # beside PURGE_LOCK_FILE
_PATH_SLOTS = 1 << 20  # paths hashed to one byte each of the lock file; two paths sharing one only wait for each other


class PathLock(_LockFile):
    """Keeps two arrivals of one path apart (across processes) from the file until its index row:
    two copies of one instance sent at once (two associations, two workers, a C-GET) would
    otherwise interleave, the last rename winning the file and the last commit the row, and these
    could be different copies. Each holds a write lock on one byte of a shared lock file (an
    open-file-description lock on a descriptor per thread, `_LockFile`: threads of one process
    exclude each other too)."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        super().__init__(data_dir, PATH_LOCK_FILE)

    @contextlib.contextmanager
    def held(self, path: str | os.PathLike[str]) -> Iterator[None]:
        fd = self._fd()
        slot = zlib.crc32(os.fsencode(path)) % _PATH_SLOTS
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW, struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, slot, 1, 0))
        try:
            yield
        finally:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_UNLCK, os.SEEK_SET, slot, 1, 0))


def free_bytes(path: str | os.PathLike[str]) -> int:
    return shutil.disk_usage(path).free


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1457.1"
IMPLEMENTATION_VERSION = "BURNSTATION01"


def file_meta_bytes(sop_class: str, sop_uid: str, transfer_syntax: str, source_aet: str = "") -> bytes:
    """Preamble, 'DICM' and the File Meta Information group, packed directly (no pydicom round trip).

    Everything but the SOP Instance UID repeats from object to object: those parts are kept (per
    SOP class, transfer syntax and source AE title) and only the instance's element is packed."""
    key = (sop_class, transfer_syntax, source_aet)
    parts = _META_PARTS.get(key)
    if parts is None:
        head = b"".join([_element(0x0002, 0x0001, b"OB", b"\x00\x01"),
                         _element(0x0002, 0x0002, b"UI", sop_class.encode("ascii", "replace"))])
        tail = b"".join([
            _element(0x0002, 0x0010, b"UI", transfer_syntax.encode("ascii", "replace")),
            _element(0x0002, 0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode()),
            _element(0x0002, 0x0013, b"SH", IMPLEMENTATION_VERSION.encode()),
        ])
        if source_aet:
            tail += _element(0x0002, 0x0016, b"AE", source_aet.encode("ascii", "replace")[:16])
        parts = (head, tail)
        if len(_META_PARTS) < 256:
            _META_PARTS[key] = parts
    instance = _element(0x0002, 0x0003, b"UI", sop_uid.encode("ascii", "replace"))
    length = len(parts[0]) + len(instance) + len(parts[1])
    return b"".join([_PREAMBLE, _element(0x0002, 0x0000, b"UL", struct.pack("<I", length)), parts[0], instance,
                     parts[1]])


_META_PARTS: dict[tuple[str, str, str], tuple[bytes, bytes]] = {}
_PREAMBLE = b"\x00" * 128 + b"DICM"


_PID = [os.getpid()]  # this process's id for temp names, without a system call per object
os.register_at_fork(after_in_child=lambda: _PID.__setitem__(0, os.getpid()))
FREE_RECHECK = 0.2  # seconds between statvfs calls of check_space while far above the threshold
FREE_MARGIN = 256 * 1024 * 1024  # "far above": more than this over it


class Store:
    """The `storage/` folder of a data directory."""

    def __init__(self, data_dir: str | os.PathLike[str], min_free_mb: int = 0) -> None:
        self.root = Path(data_dir) / "storage"
        self.root.mkdir(parents=True, exist_ok=True)
        self._root_text = str(self.root)
        self.min_free = min_free_mb * 1024 * 1024
        self._made: set[str] = set()
        self._serial = itertools.count()  # temp names unique within the process (with the pid)
        self.lock = PurgeLock(self.root.parent)
        self.path_lock = PathLock(self.root.parent)
        self._free_seen = (0.0, 0)  # (monotonic time, free bytes) of the last statvfs (check_space)

    @contextlib.contextmanager
    def arrival(self, path: str | os.PathLike[str]) -> Iterator[None]:
        """Held by an arriving instance from its file to its index row (C-STORE, C-GET): no purge
        meanwhile (PurgeLock, shared) and no other arrival of the same path (PathLock)."""
        with self.lock.arrival(), self.path_lock.held(path):
            yield

    def path_for(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return Path(self.path_text_for(study_uid, series_uid, sop_uid))

    def path_text_for(self, study_uid: str, series_uid: str, sop_uid: str) -> str:
        """`path_for` as text (the C-STORE path needs no Path object)."""
        return f"{self._root_text}/{safe_component(study_uid)}/{safe_component(series_uid)}/{safe_component(sop_uid)}.dcm"

    def check_space(self, incoming: int = 0) -> None:
        """Raise OutOfSpace when storing `incoming` bytes would leave less than the threshold free.

        The file system is asked at most every FREE_RECHECK seconds while the free space is far
        above the threshold (a statvfs per object was one more system call on every C-STORE); near
        the threshold, every time."""
        seen_at, free = self._free_seen
        now = time.monotonic()
        if now - seen_at > FREE_RECHECK or free - incoming < self.min_free + FREE_MARGIN:
            free = free_bytes(self.root)
            seen_at = now
        self._free_seen = (seen_at, free - incoming)  # what is left once this object is written
        if free - incoming < self.min_free:
            raise OutOfSpace(
                f"free space {free // (1024 * 1024)} MB is below the threshold {self.min_free // (1024 * 1024)} MB"
            )

    def write(self, path: str | Path, chunks: list[bytes]) -> int:
        """Write `chunks` to `path` atomically and durably; returns the size."""
        fd, tmp, size = self._write_temp(path, chunks)
        try:
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            unlink_quietly(tmp)
            raise
        os.close(fd)
        try:
            os.replace(tmp, path)
        except BaseException:  # e.g. ENOSPC for the directory entry: the temp file must not stay
            unlink_quietly(tmp)
            raise
        return size

    def write_unsynced(self, path: str | Path, chunks: list[bytes]) -> tuple[int, int]:
        """Write `chunks` aside and rename them into `path`, WITHOUT the fsync: returns (descriptor,
        size), and the caller must fsync and close that descriptor before it calls the object safe
        (the store handler fsyncs it while the index commit runs: BURNSTATION_FASTPATH part
        `overlap_fsync`). The rename comes first so that the index row committed meanwhile never
        names a path that does not exist, not even after a crash of the process (the written
        bytes are in the page cache by then)."""
        fd, tmp, size = self._write_temp(path, chunks)
        try:
            os.replace(tmp, path)
        except BaseException:
            os.close(fd)
            unlink_quietly(tmp)
            raise
        return fd, size

    def remove_unless_named(self, path: str, named_now: Callable[[], str | None]) -> bool:
        """Unlink a replaced copy of an instance (or the file of an arrival whose index commit
        failed) unless `named_now()`, the path the index names for that instance, is `path` (again):
        another copy may have been written there meanwhile, committed or about to be. The purge
        lock held exclusively waits for every arrival between its file and its index row (they
        hold it shared), so the index read under it says whether the path is in use. True when
        the file was removed."""
        with self.lock.purge():
            if named_now() != path:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    return False
                return True
        return False

    def open_temp(self) -> tuple[int, str]:
        """A new temp file in the store's top folder, open for reading and writing: (descriptor,
        name). For a data set written as it arrives, before its study and series are known; `place`
        then renames it into its folder (same file system). A crash leaves it to
        `remove_stale_temp_files`."""
        tmp = f"{self._root_text}/.stream.{_PID[0]}.{next(self._serial)}.tmp"
        return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), tmp  # owner only

    def place(self, tmp: str, path: str | Path) -> None:
        """Rename a temp file of `open_temp` to `path`, making its folders."""
        directory = os.fspath(path).rpartition("/")[0]
        if directory not in self._made:
            os.makedirs(directory, exist_ok=True)
            self._made.add(directory)
        try:
            os.replace(tmp, path)
        except FileNotFoundError:  # a purge removed the study's folder since we made it
            os.makedirs(directory, exist_ok=True)
            os.replace(tmp, path)

    def _write_temp(self, path: str | Path, chunks: list[bytes]) -> tuple[int, str, int]:
        """A temp file beside `path` holding `chunks`: (open descriptor, its name, size)."""
        text = str(path)
        directory, _, name = text.rpartition("/")
        if directory not in self._made:
            os.makedirs(directory, exist_ok=True)
            self._made.add(directory)
        tmp = f"{directory}/.{name}.{_PID[0]}.{next(self._serial)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)  # patient data: owner only
        except FileNotFoundError:  # a purge removed the study's folder since we made it
            os.makedirs(directory, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        size = 0
        try:
            for chunk in chunks:
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                    size += n
        except BaseException:
            os.close(fd)
            unlink_quietly(tmp)
            raise
        return fd, tmp, size

    def files_written_since(self, since: float) -> Iterator[str]:
        """Paths of the stored objects (`<study>/<series>/<sop>.dcm`) last written at or after
        `since` (time.time()). Only series folders changed since then are listed: a file written
        or renamed into a folder changes the folder's time. Folders removed meanwhile (a purge) are
        skipped."""
        for study in _scan(self._root_text):
            if not study.is_dir(follow_symlinks=False):
                continue
            for series in _scan(study.path):
                try:
                    if not series.is_dir(follow_symlinks=False) or series.stat(follow_symlinks=False).st_mtime < since:
                        continue
                except FileNotFoundError:
                    continue
                for entry in _scan(series.path):
                    if entry.name.startswith(".") or not entry.name.endswith(".dcm"):
                        continue
                    try:
                        if entry.stat(follow_symlinks=False).st_mtime >= since:
                            yield entry.path
                    except FileNotFoundError:
                        continue

    def remove_stale_temp_files(self) -> int:
        """Delete temp files left by a crash mid-write (they were never acknowledged); those of a
        live process (another dicom worker writing now: the pid is in the name) stay."""
        removed = 0
        for root, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp") and not _writer_alive(name):
                    try:
                        os.unlink(os.path.join(root, name))
                        removed += 1
                    except FileNotFoundError:
                        pass
        return removed


def _writer_alive(temp_name: str) -> bool:
    """Whether the process named in a temp file's name (`.<sop>.dcm.<pid>.<n>.tmp`) is a process
    that writes the store still running: another dicom worker, or the transfer process (C-GET
    retrievals are written with `Store.write`)."""
    parts = temp_name.split(".")
    try:
        pid = int(parts[-3])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"\x00service\x00dicom" in cmdline or b"\x00service\x00transfer" in cmdline


def _scan(folder: str) -> list[os.DirEntry[str]]:
    """The entries of `folder`, or none when it is gone (a purge removed it)."""
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def unlink_quietly(path: str) -> None:
    """Remove `path` if it is there."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_study_files(storage_root: str | os.PathLike[str], paths: list[str]) -> tuple[int, int]:
    """Unlink the given files of a purged study (only files inside the store), then the folders
    they leave empty; returns (files removed, bytes freed). Call under `PurgeLock.purge()`."""
    root = Path(storage_root).resolve()
    removed = freed = 0
    folders: set[Path] = set()
    for text in paths:
        path = Path(text)
        try:
            resolved = path.resolve()
        except OSError:
            continue
        if root not in resolved.parents:
            continue  # never outside the store, whatever the index says
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        removed += 1
        freed += size
        folders.add(path.parent)
        folders.add(path.parent.parent)
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        if folder.resolve() != root and root in folder.resolve().parents:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: anything else arrived there stays
    return removed, freed
