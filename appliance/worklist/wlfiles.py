"""The worklist file folder: DICOM worklist files (`*.wl`) in `<data>/worklist/` are served too.

This is the format dcmtk's `wlmscpfs` and Orthanc's worklist plugin read, so tools that already
write such files keep working. Files are parsed once and cached by (mtime, size); the folder is
rescanned when a directory's mtime changes (a file was added, removed or renamed) and at most
every `RESCAN_SECONDS` otherwise (a file rewritten in place).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from pydicom import dcmread

from appliance.worklist import record as rec
from appliance.worklist.record import Record

LOG = logging.getLogger("burnstation.worklist")

FOLDER = "worklist"
RESCAN_SECONDS = 2.0


class WorklistFolder:
    """Parsed `.wl` files of one folder (recursively), refreshed on change."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._files: dict[str, tuple[tuple[int, int], Record | None]] = {}
        self._dirs: dict[str, int] = {}
        self._checked = 0.0
        self._lock = threading.Lock()
        self._records: list[Record] = []

    def _dirs_changed(self) -> bool:
        for path, mtime in self._dirs.items():
            try:
                if os.stat(path).st_mtime_ns != mtime:
                    return True
            except FileNotFoundError:
                return True
        return not self._dirs and self.folder.is_dir()

    def records(self) -> list[Record]:
        """The current items of the folder (files that cannot be read are skipped, logged once)."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked < RESCAN_SECONDS and not self._dirs_changed():
                return self._records
            self._scan()
            self._checked = time.monotonic()
            return self._records

    def _scan(self) -> None:
        if not self.folder.is_dir():
            self._files, self._dirs, self._records = {}, {}, []
            return
        files: dict[str, tuple[tuple[int, int], Record | None]] = {}
        dirs: dict[str, int] = {}
        changed = False
        for root, subdirs, names in os.walk(self.folder):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            try:
                dirs[root] = os.stat(root).st_mtime_ns
            except FileNotFoundError:
                continue
            for name in names:
                if not name.lower().endswith(".wl") or name.startswith("."):
                    continue
                path = os.path.join(root, name)
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    continue
                stamp = (st.st_mtime_ns, st.st_size)
                cached = self._files.get(path)
                if cached is not None and cached[0] == stamp:
                    files[path] = cached
                    continue
                files[path] = (stamp, self._read(path))
                changed = True
        if changed or files.keys() != self._files.keys():
            self._records = [r for _stamp, r in (files[p] for p in sorted(files)) if r is not None]
        self._files, self._dirs = files, dirs

    @staticmethod
    def _read(path: str) -> Record | None:
        try:
            ds = dcmread(path, force=True)
            record = rec.from_dataset(ds)
        except Exception as exc:
            LOG.warning("worklist file %s cannot be read: %s", path, exc)
            return None
        if not record:
            LOG.warning("worklist file %s holds no attributes", path)
            return None
        return record
