"""Routing by called AE title, in process: exactly-once claims, delayed groups, restarts, history.

The index rows are written the way the DICOM process writes them (index.open_association,
add_instance, close_association); the Router runs with an explicit clock.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from appliance import db, index
from appliance.burn import jobs, routing
from appliance.config import Settings

T0 = float(int(time.time()))  # the clock the router is given (associations carry real times)


@pytest.fixture
def env(tmp_path: Path):
    settings = Settings(tmp_path)
    settings.initialize()
    settings.update({"burn.delay_seconds": 10})
    conn = db.connect(tmp_path)
    yield settings, conn
    conn.close()


def open_assoc(conn, called: str) -> int:
    return index.open_association(conn, "SCANNER", called, "127.0.0.1", 1234, False)


def close(conn, assoc_id: int, result: str = "released") -> None:
    index.close_association(conn, assoc_id, stored=0, failed=0, services=["store"], result=result)


def receive(conn, assoc_id: int, called: str, *, patient: str = "P1", study: str | None = None,
            series: str | None = None, n: int = 2, at: float = T0) -> list[str]:
    study = study or generate_uid()
    series = series or generate_uid()
    uids = []
    for i in range(n):
        uid = generate_uid()
        rec = index.InstanceRecord(sop_uid=uid, sop_class="1.2.840.10008.5.1.4.1.1.2", series_uid=series,
                                   study_uid=study, path=f"/nowhere/{uid}.dcm", size=1000,
                                   transfer_syntax="1.2.840.10008.1.2.1", patient={"patient_id": patient, "patient_name": "TEST^P"},
                                   study={}, series={}, instance_number=str(i + 1), assoc_id=assoc_id,
                                   called_aet=called, calling_aet="SCANNER", received_at=at)
        index.add_instance(conn, rec)
        uids.append(uid)
    return uids


def all_jobs(conn) -> list[dict]:
    return sorted(jobs.list_jobs(conn), key=lambda j: j["id"])


def test_E_association_becomes_one_job_when_released(env) -> None:
    settings, conn = env
    router = routing.Router(conn, settings)
    a = open_assoc(conn, "BURNSTATION_E")
    uids = receive(conn, a, "BURNSTATION_E", n=3) + receive(conn, a, "BURNSTATION_E", n=2)
    assert router.run_once() == []  # still open: nothing yet
    close(conn, a)
    made = router.run_once()
    assert len(made) == 1
    job = jobs.get_job(conn, made[0])
    assert job["role"] == "epson" and job["source"] == "assoc" and job["assoc_id"] == a and job["instances"] == 5
    assert {i["sop_uid"] for i in jobs.job_instances(conn, made[0])} == set(uids)
    assert router.run_once() == []
    assert routing.Router(conn, settings).run_once() == []  # a restarted burner does not make it again
    # _P → primera; the plain title never burns
    p = open_assoc(conn, "BURNSTATION_P")
    receive(conn, p, "BURNSTATION_P", n=1)
    close(conn, p)
    plain = open_assoc(conn, "BURNSTATION")
    receive(conn, plain, "BURNSTATION", n=1)
    close(conn, plain)
    made = router.run_once()
    assert [jobs.get_job(conn, j)["role"] for j in made] == ["primera"]
    assert len(all_jobs(conn)) == 2


def test_empty_and_aborted_associations(env) -> None:
    settings, conn = env
    router = routing.Router(conn, settings)
    empty = open_assoc(conn, "BURNSTATION_E")
    close(conn, empty)
    aborted = open_assoc(conn, "BURNSTATION_E")
    uids = receive(conn, aborted, "BURNSTATION_E", n=2)
    close(conn, aborted, "aborted")
    assert router.run_once() == []
    held = routing.held_associations(conn)
    assert [h["assoc_id"] for h in held] == [aborted] and "jobs burn --assoc" in held[0]["note"]
    job_id = routing.burn_association(conn, settings, aborted)
    job = jobs.get_job(conn, job_id)
    assert job["role"] == "epson" and job["source"] == "manual" and job["instances"] == 2
    assert {i["sop_uid"] for i in jobs.job_instances(conn, job_id)} == set(uids)
    assert routing.held_associations(conn) == []
    assert router.run_once() == []


def test_delayed_group_restarts_its_delay_and_survives_a_restart(env) -> None:
    settings, conn = env
    study = generate_uid()
    a1 = open_assoc(conn, "BURNSTATION_TE")
    s1 = receive(conn, a1, "BURNSTATION_TE", study=study, at=T0)
    close(conn, a1)
    router = routing.Router(conn, settings)
    assert router.run_once(T0 + 0.5) == []
    [group] = routing.pending_groups(conn)
    assert group["deadline_at"] == T0 + 10 and group["instances"] == 2
    a2 = open_assoc(conn, "BURNSTATION_TE")
    s2 = receive(conn, a2, "BURNSTATION_TE", study=study, at=T0 + 6)  # series 2 within the delay
    assert router.run_once(T0 + 6.5) == []
    [group] = routing.pending_groups(conn)
    assert group["deadline_at"] == T0 + 16 and group["instances"] == 4 and group["series"] == 2
    assert router.run_once(T0 + 12) == []  # the first deadline is gone
    restarted = routing.Router(db.connect(settings.data_dir), settings)  # a new burner process
    made = restarted.run_once(T0 + 16.1)
    assert len(made) == 1
    job = jobs.get_job(conn, made[0])
    assert job["source"] == "delayed" and job["instances"] == 4 and job["role"] == "epson"
    assert {i["sop_uid"] for i in jobs.job_instances(conn, made[0])} == set(s1 + s2)
    assert routing.pending_groups(conn) == [] and router.run_once(T0 + 30) == []
    # the still-open association delivers one more instance: a new group that says which job it follows
    s3 = receive(conn, a2, "BURNSTATION_TE", study=study, n=1, at=T0 + 40)
    close(conn, a2)
    assert router.run_once(T0 + 40.5) == []
    [late] = routing.pending_groups(conn)
    assert late["follows_job"] == made[0] and late["instances"] == 1
    later = router.run_once(T0 + 51)
    assert len(later) == 1 and jobs.get_job(conn, later[0])["follows_job"] == made[0]
    assert [i["sop_uid"] for i in jobs.job_instances(conn, later[0])] == s3


def test_group_by_patient_or_study(env) -> None:
    settings, conn = env
    router = routing.Router(conn, settings)
    for _ in range(2):  # two studies of one patient, two associations
        a = open_assoc(conn, "BURNSTATION_TP")
        receive(conn, a, "BURNSTATION_TP", patient="SAME", at=T0)
        close(conn, a)
    router.run_once(T0 + 1)
    made = router.run_once(T0 + 11)
    assert len(made) == 1 and jobs.get_job(conn, made[0])["role"] == "primera"
    assert len(jobs.get_job(conn, made[0])["study_uids"]) == 2
    settings.update({"burn.group_by": "study"})
    for _ in range(2):
        a = open_assoc(conn, "BURNSTATION_TP")
        receive(conn, a, "BURNSTATION_TP", patient="SAME", at=T0 + 20)
        close(conn, a)
    router.run_once(T0 + 21)
    assert [g["group_by"] for g in routing.pending_groups(conn)] == ["study", "study"]
    assert len(router.run_once(T0 + 31)) == 2
    # no Patient ID: grouped by study even when grouping by patient
    settings.update({"burn.group_by": "patient"})
    for _ in range(2):
        a = open_assoc(conn, "BURNSTATION_TE")
        receive(conn, a, "BURNSTATION_TE", patient="", at=T0 + 40)
        close(conn, a)
    router.run_once(T0 + 41)
    assert all(g["group_key"].startswith("study:") for g in routing.pending_groups(conn))
    assert len(router.run_once(T0 + 51)) == 2


def test_old_history_is_not_burned_on_first_start(env) -> None:
    settings, conn = env
    old = open_assoc(conn, "BURNSTATION_E")
    receive(conn, old, "BURNSTATION_E")
    close(conn, old)
    conn.execute("UPDATE associations SET ended_at=? WHERE id=?", (time.time() - 2 * routing.HISTORY_SECONDS, old))
    recent = open_assoc(conn, "BURNSTATION_E")
    receive(conn, recent, "BURNSTATION_E")
    close(conn, recent)
    made = routing.Router(conn, settings).run_once()
    assert [jobs.get_job(conn, j)["assoc_id"] for j in made] == [recent]


def test_two_burners_never_claim_twice(env) -> None:
    settings, conn = env
    expected = 0
    for k in range(12):
        called = "BURNSTATION_E" if k % 2 else "BURNSTATION_TE"
        a = open_assoc(conn, called)
        receive(conn, a, called, patient=f"P{k}", n=3, at=time.time() - 100)
        close(conn, a)
        expected += 1
    errors: list[BaseException] = []

    def run() -> None:
        try:
            router = routing.Router(db.connect(settings.data_dir), settings)
            for _ in range(20):
                router.run_once()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    made = all_jobs(conn)
    assert len(made) == expected
    claimed = conn.execute("SELECT COUNT(*) FROM job_items").fetchone()[0]
    assert claimed == 3 * expected
    assert conn.execute("SELECT COUNT(*) FROM burn_claims").fetchone()[0] == 3 * 6
