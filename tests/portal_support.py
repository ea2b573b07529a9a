"""Helpers of the portal tests: a data folder with studies in storage and in the index."""

from __future__ import annotations

from pathlib import Path

from appliance import db, index
from tests.support import write_study


def stored_study(data: Path, name: str, **kw: object) -> str:
    """Write a study under data/storage/<name>, index it; returns its Study Instance UID."""
    paths = write_study(data / "storage" / name, **kw)  # type: ignore[arg-type]
    conn = db.connect(data)
    try:
        index.reindex(conn, data / "storage")
        from pydicom import dcmread

        return str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
    finally:
        conn.close()
