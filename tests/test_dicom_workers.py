"""Ingest that scales: group commit of index writes, several dicom worker processes on one port.

The promise of a C-STORE success is unchanged: the file is fsync'd and its index row committed
before the response. Group commit only lets several associations share one commit; these tests
check it never answers before that commit, and that a study sent over 4 associations to 2
workers is indexed once and complete.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from support import DCMTK, Station, burnstation, make_dataset, wait_for

from appliance import db, index
from appliance.dicom import ingest


def _record(n: int, study: str = "1.2.3", series: str = "1.2.3.1") -> index.InstanceRecord:
    return index.InstanceRecord(
        sop_uid=f"1.2.3.1.{n}", sop_class="1.2.840.10008.5.1.4.1.1.2", series_uid=series, study_uid=study,
        path=f"/store/{n}.dcm", size=10, transfer_syntax="1.2.840.10008.1.2.1",
        patient={"patient_id": "P1", "patient_name": "DOE^JOHN"}, study={}, series={"modality": "CT"},
        instance_number=str(n), assoc_id=7)


def _indexed(data: Path) -> set[str]:
    conn = sqlite3.connect(data / "state.db", timeout=30)
    try:
        return {r[0] for r in conn.execute("SELECT sop_uid FROM instances")}
    finally:
        conn.close()


def _add_in_threads(writer: ingest.IndexWriter, data: Path, recs: list[index.InstanceRecord],
                    returned: list[str], errors: list[BaseException]) -> list[threading.Thread]:
    def add(rec: index.InstanceRecord) -> None:
        conn = db.connect(data)
        try:
            writer.add(conn, rec)
            returned.append(rec.sop_uid)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=add, args=(rec,)) for rec in recs]
    for t in threads:
        t.start()
    return threads


def test_group_commit_answers_only_after_the_commit_that_holds_the_record(tmp_path: Path) -> None:
    """The first commit is held until the 7 other arrivals are queued: they then go in one
    commit, and no add() returns before the commit holding its record has run."""
    db.connect(tmp_path).close()
    writer = ingest.IndexWriter(tmp_path)
    assert writer.group, "group commit is on by default"
    recs = [_record(n) for n in range(8)]
    returned: list[str] = []
    errors: list[BaseException] = []
    batches: list[list[str]] = []
    committed: set[str] = set()

    def before_commit(batch: list[index.InstanceRecord]) -> None:
        uids = [r.sop_uid for r in batch]
        assert not set(uids) & set(returned), "a record was acknowledged before its commit"
        assert set(returned) <= committed
        if not batches:  # hold the first commit until everyone else waits behind it
            wait_for(lambda: len(writer._pending) == len(recs) - 1, 30, "the others queued", every=0.01)
        batches.append(uids)
        committed.update(uids)

    writer.before_commit = before_commit
    first = _add_in_threads(writer, tmp_path, recs[:1], returned, errors)
    wait_for(lambda: writer._committing, 30, "the first commit started", every=0.01)
    rest = _add_in_threads(writer, tmp_path, recs[1:], returned, errors)
    for t in first + rest:
        t.join(30)
    assert not errors, errors
    assert [len(b) for b in batches] == [1, 7]
    assert sorted(returned) == sorted(r.sop_uid for r in recs)
    assert _indexed(tmp_path) == {r.sop_uid for r in recs}
    assert (writer.batches, writer.records) == (2, 8)


def test_a_failed_group_commit_acknowledges_none_of_its_records(tmp_path: Path) -> None:
    db.connect(tmp_path).close()
    writer = ingest.IndexWriter(tmp_path)
    returned: list[str] = []
    errors: list[BaseException] = []

    def fail(batch: list[index.InstanceRecord]) -> None:
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    writer.before_commit = fail
    for t in _add_in_threads(writer, tmp_path, [_record(n) for n in range(5)], returned, errors):
        t.join(30)
    assert returned == []
    assert len(errors) == 5 and all("disk I/O error" in str(e) for e in errors)
    assert _indexed(tmp_path) == set()
    writer.before_commit = None
    assert writer.add(db.connect(tmp_path), _record(9)) is None  # and the writer works on
    assert _indexed(tmp_path) == {"1.2.3.1.9"}


def test_one_bad_record_does_not_fail_the_others_in_its_commit(tmp_path: Path) -> None:
    conn = db.connect(tmp_path)
    bad = _record(2)
    bad.path = None  # type: ignore[assignment]  # instances.path is NOT NULL
    out = index.add_instances(conn, [_record(1), bad, _record(3)])
    assert out[0] is None and out[2] is None
    assert isinstance(out[1], sqlite3.IntegrityError)
    assert _indexed(tmp_path) == {"1.2.3.1.1", "1.2.3.1.3"}
    # the arrivals of the good ones are recorded too (burn routing reads them)
    assert index.association_sop_uids(conn, 7) == ["1.2.3.1.1", "1.2.3.1.3"]


def test_the_switch_turns_group_commit_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BURNSTATION_FASTPATH", "reactors,parser")
    db.connect(tmp_path).close()
    writer = ingest.IndexWriter(tmp_path)
    assert not writer.group and not writer.cross_process
    returned: list[str] = []
    errors: list[BaseException] = []
    for t in _add_in_threads(writer, tmp_path, [_record(n) for n in range(4)], returned, errors):
        t.join(30)
    assert not errors and (writer.batches, writer.records) == (4, 4)


def test_writer_lock_closes_each_threads_descriptor_when_the_thread_ends(tmp_path: Path) -> None:
    """The same leak the soak found in the purge lock: the dicom process runs an association per
    thread, and the writer lock's per-thread descriptor must go with its thread."""
    import gc

    lock = ingest.WriterLock(tmp_path)

    def commit() -> None:
        with lock.held():
            pass

    def open_on_lock() -> int:
        return sum(1 for fd in Path("/proc/self/fd").iterdir() if os.path.realpath(fd) == str(lock.path))

    threads = [threading.Thread(target=commit) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    assert open_on_lock() == 0
    with lock.held():
        assert open_on_lock() == 1


def test_close_interrupted_associations_closes_only_its_own_workers(tmp_path: Path) -> None:
    conn = db.connect(tmp_path)
    rows = {w: index.open_association(conn, "CT", "BURNSTATION", "127.0.0.1", 1, False, w) for w in (1, 2, 3)}
    assert index.close_interrupted_associations(conn, 2, 2) == 1  # worker 2 restarted
    result = {w: index.association(conn, r)["result"] for w, r in rows.items()}
    assert result == {1: "open", 2: "interrupted", 3: "open"}
    assert index.close_interrupted_associations(conn, 1, 2) == 2  # worker 1: its own and worker 3's
    assert {index.association(conn, r)["result"] for r in rows.values()} == {"interrupted"}


# --------------------------------------------------------------------------- real station, 2 workers


def _study(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(study_uid=generate_uid(), series_uid=generate_uid(), rows=16, cols=16, patient_id="PWORK")
    paths = []
    for n in range(count):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        path = folder / f"{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _senders(port: int, parts: list[list[Path]], aet: str = "BURNSTATION") -> list[subprocess.Popen]:
    env = dict(os.environ, TCP_NODELAY="1")
    return [subprocess.Popen([str(DCMTK / "storescu"), "-v", "-aec", aet, "127.0.0.1", str(port), *map(str, part)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            for part in parts]


def _workers_seen(data: Path) -> set[int]:
    conn = sqlite3.connect(data / "state.db", timeout=30)
    try:
        return {r[0] for r in conn.execute("SELECT DISTINCT worker FROM associations")}
    finally:
        conn.close()


@pytest.mark.station
def test_a_study_over_4_associations_to_2_workers_is_indexed_once_and_complete(tmp_path: Path) -> None:
    files = _study(tmp_path / "in", 120)
    with Station(tmp_path / "data", dicom__workers=2) as st:
        status = json.loads(burnstation(st.data, "status", "--json").stdout)
        wait_for(lambda: {p["name"]: p["state"] for p in json.loads(burnstation(
            st.data, "status", "--json").stdout)["processes"]}.get("dicom:2") == "running", 30, "dicom:2 running")
        wait_for(lambda: st.log().count("(plain) as") >= 2, 30, "both workers listening")
        senders = _senders(st.port, [files[k::4] for k in range(4)])
        for proc in senders:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0, out
        for _ in range(40):  # SO_REUSEPORT spreads by address hash: echo until both workers answered
            if _workers_seen(st.data) == {1, 2}:
                break
            subprocess.run([str(DCMTK / "echoscu"), "-aec", "BURNSTATION", "127.0.0.1", str(st.port)],
                           capture_output=True, timeout=30, check=True)
        assert _workers_seen(st.data) == {1, 2}
        conn = sqlite3.connect(st.data / "state.db", timeout=30)
        try:
            sops = [r[0] for r in conn.execute("SELECT sop_uid FROM instances WHERE study_uid=?",
                                               (str(make_study_uid(files[0])),))]
            arrivals = conn.execute("SELECT COUNT(*), COUNT(DISTINCT sop_uid) FROM association_instances").fetchone()
            studies = conn.execute("SELECT COUNT(*) FROM studies").fetchone()[0]
            stored = conn.execute("SELECT SUM(stored) FROM associations WHERE calling_aet='STORESCU'").fetchone()[0]
        finally:
            conn.close()
        assert len(sops) == len(set(sops)) == len(files)
        assert tuple(arrivals) == (len(files), len(files))
        assert studies == 1 and stored == len(files)
        assert len(list((st.data / "storage").rglob("*.dcm"))) == len(files)
        names = [p["name"] for p in status["processes"]]
        assert names.count("dicom") == 1 and names.count("dicom:2") == 1


def make_study_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)


@pytest.mark.station
def test_killing_a_worker_between_write_and_commit_loses_nothing_acknowledged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every commit waits 0.3 s with its files written (test hook), so the SIGKILL lands between
    write and commit; each instance storescu saw a success for is in the index afterwards."""
    files = _study(tmp_path / "in", 48)
    monkeypatch.setenv(ingest.COMMIT_PAUSE_ENV, "0.3")
    with Station(tmp_path / "data", dicom__workers=2) as st:
        wait_for(lambda: st.log().count("(plain) as") >= 2, 30, "both workers listening")
        senders = _senders(st.port, [files[k::4] for k in range(4)])
        acked: list[str] = []

        def read(proc: subprocess.Popen) -> None:
            current = None
            assert proc.stdout is not None
            for line in proc.stdout:
                if m := re.search(r"Sending file: (.+)$", line):
                    current = m.group(1).strip()
                elif "Received Store Response (Success" in line and current:
                    acked.append(current)

        readers = [threading.Thread(target=read, args=(p,)) for p in senders]
        for t in readers:
            t.start()
        wait_for(lambda: len(acked) >= 8, 60, "8 acknowledged instances", every=0.05)
        conn = sqlite3.connect(st.data / "state.db", timeout=30)
        try:
            busiest = conn.execute("SELECT worker FROM associations WHERE result='open' GROUP BY worker "
                                   "ORDER BY COUNT(*) DESC LIMIT 1").fetchone()[0]
        finally:
            conn.close()
        procs = {p["name"]: p for p in json.loads(burnstation(st.data, "status", "--json").stdout)["processes"]}
        victim = procs["dicom" if busiest == 1 else f"dicom:{busiest}"]["pid"]
        os.kill(victim, signal.SIGKILL)
        acked_at_kill = len(acked)
        for proc in senders:
            proc.wait(120)
        for t in readers:
            t.join(30)
        assert acked_at_kill >= 8
        sop_of = {str(p): make_sop_uid(p) for p in files}
        indexed = _indexed(st.data)
        missing = {sop_of[a] for a in acked} - indexed
        assert not missing, f"{len(missing)} acknowledged instances are not indexed"
        # the supervisor restarts the worker, which closes its own interrupted associations
        def closed() -> bool:
            c = sqlite3.connect(st.data / "state.db", timeout=30)
            try:
                return c.execute("SELECT COUNT(*) FROM associations WHERE worker=? AND result='interrupted'",
                                 (busiest,)).fetchone()[0] >= 1
            finally:
                c.close()

        wait_for(closed, 60, "the killed worker's associations marked interrupted")
        # ... and removes the files the kill left between their write and their commit (never acknowledged)
        swept = re.compile(r"never indexed: (\d+) removed")
        wait_for(lambda: swept.search(st.log()), 60, "the restarted worker's look for unindexed files")
        assert int(swept.search(st.log()).group(1)) >= 1, "the kill did not land between a write and its commit"
        assert not {sop_of[a] for a in acked} & {
            Path(m).stem for m in re.findall(r"removed (\S+\.dcm): written", st.log())}
        on_disk = {p.stem for p in (st.data / "storage").rglob("*.dcm")}
        assert on_disk == _indexed(st.data), "files on disk that the index does not name, or the other way round"


def _open_per_worker(data: Path) -> dict[int, int]:
    conn = db.connect(data)
    try:
        counts: dict[int, int] = {}
        for row in index.recent_associations(conn, 1000):
            if row["result"] == "open":
                counts[row["worker"]] = counts.get(row["worker"], 0) + 1
        return counts
    finally:
        conn.close()


@pytest.mark.station
def test_held_open_associations_are_spread_evenly_over_the_workers(tmp_path: Path) -> None:
    """The kernel picks a worker by address hash; a busier worker hands the connection on.

    12 associations (every third over TLS, whose handshake then happens in the receiving worker)
    are opened one after the other and held: after each, the two workers serve counts that differ
    by at most one. By the hash alone that would hold in about 1 run of 64.
    """
    import ssl

    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    with Station(tmp_path / "data", dicom__workers=2) as st:
        wait_for(lambda: st.log().count("(plain) as") >= 2 and st.log().count("(TLS)") >= 2
                 and st.log().count("takes connections handed over") >= 2, 30, "both workers listening")
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        tls = ssl.create_default_context(cafile=str(st.data / "tls" / "ca.pem"))
        tls.check_hostname = False
        held = []
        try:
            for n in range(12):
                over_tls = n % 3 == 2
                assoc = ae.associate("127.0.0.1", st.tls_port if over_tls else st.port, ae_title="BURNSTATION",
                                     tls_args=(tls, None) if over_tls else None)
                assert assoc.is_established, f"association {n + 1} (tls={over_tls}) not established"
                held.append(assoc)
                assert assoc.send_c_echo().Status == 0
                counts = wait_for(lambda n=n: (c := _open_per_worker(st.data)) and sum(c.values()) == n + 1 and c,
                                  30, f"{n + 1} open associations in the log")
                assert set(counts) <= {1, 2}
                assert max(counts.get(1, 0), counts.get(2, 0)) - min(counts.get(1, 0), counts.get(2, 0)) <= 1, \
                    f"after {n + 1} associations: {counts}"
        finally:
            for assoc in held:
                assoc.release()
        wait_for(lambda: not _open_per_worker(st.data), 30, "all released")
        assert "dropped a hand-over" not in st.log()


@pytest.mark.station
def test_a_burst_right_after_an_echo_is_spread_two_and_two(tmp_path: Path) -> None:
    """A C-ECHO (as a sender checks the station), then at once four associations together, six
    times over: each burst is served two and two. The echo's association thread lives on a moment
    after its connection closed, and its worker counted it still: it looked busier than it was and
    kept connections it should have handed on (3:1 in half of the benchmark's bursts)."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    with Station(tmp_path / "data", dicom__workers=2) as st:
        wait_for(lambda: st.log().count("(plain) as") >= 2 and st.log().count("takes connections handed over") >= 2,
                 30, "both workers listening")
        ae = AE(ae_title="BURST")
        ae.add_requested_context(Verification)
        for n in range(6):
            echo = subprocess.run([str(DCMTK / "echoscu"), "-aec", "BURNSTATION", "127.0.0.1", str(st.port)],
                                  capture_output=True, timeout=30)
            assert echo.returncode == 0, echo.stderr
            held: list[Any] = []

            def associate(into: list[Any] = held) -> None:
                into.append(ae.associate("127.0.0.1", st.port, ae_title="BURNSTATION"))

            openers = [threading.Thread(target=associate) for _ in range(4)]
            for thread in openers:
                thread.start()
            for thread in openers:
                thread.join(30)
            try:
                assert len(held) == 4 and all(a.is_established for a in held)
                counts = wait_for(lambda: (c := _open_per_worker(st.data)) and sum(c.values()) == 4 and c,
                                  30, "4 open associations in the log")
                assert counts == {1: 2, 2: 2}, f"burst {n + 1}: {counts}"
            finally:
                for assoc in held:
                    assoc.release()
            wait_for(lambda: not _open_per_worker(st.data), 30, "the burst released")


def make_sop_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


class _NoDevices:
    """Discovery that finds nothing (the plan's processes are then the services alone)."""

    def robots(self) -> dict:
        return {}

    def lcd(self) -> None:
        return None

    def poll(self) -> bool:
        return False

    def status(self) -> dict:
        return {}

    def close(self) -> None:
        pass


def test_the_plan_runs_one_dicom_process_per_worker(tmp_path: Path) -> None:
    from appliance.config import Settings
    from appliance.services.plan import StationPlan

    data = tmp_path / "data"
    burnstation(data, "init")
    plan = StationPlan(data, discovery=_NoDevices(), services=["dicom", "hl7"])  # type: ignore[arg-type]
    from appliance.config import SPECS

    default = SPECS["dicom.workers"].default or max(1, min(os.cpu_count() or 1, 4))  # 0: a worker per core, <= 4
    assert [s.name for s in plan()] == ["dicom", *(f"dicom:{k}" for k in range(2, default + 1)), "hl7"]
    burnstation(data, "config", "set", "dicom.workers=1")
    assert [s.name for s in plan()] == ["dicom", "hl7"]
    burnstation(data, "config", "set", "dicom.workers=3")
    specs = plan()
    assert [s.name for s in specs] == ["dicom", "dicom:2", "dicom:3", "hl7"]
    assert specs[2].argv[-3:] == ["dicom", "--worker", "3"] and specs[0].argv[-1] == "dicom"
    bad = burnstation(data, "config", "set", "dicom.workers=17", check=False)
    assert bad.returncode != 0 and "dicom.workers" in bad.stdout + bad.stderr
    burnstation(data, "config", "set", "dicom.workers=0")
    assert Settings(data).dicom_workers() == max(1, min(os.cpu_count() or 1, 4))
