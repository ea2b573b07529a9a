"""Adversarial cases of the C-STORE index/fsync path (review of the ingest speed work): each one a
way a Success could be sent for what is not safely stored, or something already stored be lost."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from appliance import db, index
from appliance.dicom import ingest

EXPLICIT = "1.2.840.10008.1.2.1"


def _record(n: int, tmp_path: Path) -> index.InstanceRecord:
    return index.InstanceRecord(
        sop_uid=f"1.2.3.1.{n}", sop_class="1.2.840.10008.5.1.4.1.1.2", series_uid="1.2.3.1", study_uid="1.2.3",
        path=str(tmp_path / f"{n}.dcm"), size=10, transfer_syntax=EXPLICIT,
        patient={"patient_id": "P1", "patient_name": "DOE^JOHN"}, study={}, series={"modality": "CT"},
        instance_number=str(n))


@pytest.mark.parametrize("group", [True, False])
def test_a_commit_that_fails_leaves_no_transaction_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        group: bool) -> None:
    """A COMMIT can fail and leave its transaction open (SQLite: SQLITE_BUSY always, SQLITE_FULL and
    SQLITE_IOERR 'may or may not' roll back). The writer's own connection lives as long as the
    worker: left in that transaction it would refuse every later arrival ('cannot start a transaction
    within a transaction') and hold state.db's write lock against every other process."""
    monkeypatch.setenv("BURNSTATION_FASTPATH", "1" if group else "writer_conn,write_lock")
    writer = ingest.IndexWriter(tmp_path)
    assert writer.shared_conn and writer.group is group
    failures = [sqlite3.OperationalError("database is locked")]
    real_execute = db.Connection.execute

    def execute(self: db.Connection, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT" and failures:  # the COMMIT refused, its transaction still open
            raise failures.pop()
        return real_execute(self, sql, *args)

    monkeypatch.setattr(db.Connection, "execute", execute)
    with contextlib.closing(db.connect(tmp_path)) as conn:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            writer.add(conn, _record(1, tmp_path))
        assert not failures
        assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0  # answered failure: not there
        assert writer.add(conn, _record(2, tmp_path)) is None  # the next arrival is indexed
        other = db.connect(tmp_path, timeout=1.0)  # another process can write state.db
        with contextlib.closing(other), db.transaction(other):
            other.execute("UPDATE studies SET updated_at=0")
        assert [r[0] for r in conn.execute("SELECT sop_uid FROM instances")] == ["1.2.3.1.2"]
    writer.close()
