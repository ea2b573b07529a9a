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
from appliance.worklist import items, link

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
            series: str | None = None, n: int = 2, at: float = T0, resend: list[str] | None = None) -> list[str]:
    """Store `n` new instances in the association (or the SOP Instance UIDs `resend`, again)."""
    study = study or generate_uid()
    series = series or generate_uid()
    uids = []
    for i, uid in enumerate(resend or [generate_uid() for _ in range(n)]):
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


def job_uids(conn, job_id: str) -> list[str]:
    return sorted(i["sop_uid"] for i in jobs.job_instances(conn, job_id))


@pytest.mark.parametrize("titles", [("E", "P"), ("P", "E"), ("E", "E")])
@pytest.mark.parametrize("timing", ["back to back", "burner looked in between", "interleaved",
                                    "interleaved, second closes first"])
def test_same_instances_twice_make_two_whole_discs(env, titles: tuple[str, str], timing: str) -> None:
    """A study sent again (a second copy) or to two burn titles at once: each released association
    makes its disc with everything it received, whichever association stored each file last."""
    settings, conn = env
    router = routing.Router(conn, settings)
    study, series = generate_uid(), generate_uid()
    uids = [generate_uid() for _ in range(6)]
    called = [f"BURNSTATION_{t}" for t in titles]
    if timing in ("back to back", "burner looked in between"):
        first = open_assoc(conn, called[0])
        receive(conn, first, called[0], study=study, series=series, resend=uids)
        close(conn, first)
        if timing == "burner looked in between":
            router.run_once()
        second = open_assoc(conn, called[1])
        receive(conn, second, called[1], study=study, series=series, resend=uids)
        close(conn, second)
    else:  # two storescu at once: the stores of both associations alternate
        first, second = open_assoc(conn, called[0]), open_assoc(conn, called[1])
        for k, uid in enumerate(uids):
            for a, aet in ((first, called[0]), (second, called[1]))[:: 1 if k % 2 else -1]:
                receive(conn, a, aet, study=study, series=series, resend=[uid])
        for a in ((second, first) if "second closes first" in timing else (first, second)):
            close(conn, a)
    router.run_once()
    made = {jobs.get_job(conn, j)["assoc_id"]: j for j in (j["id"] for j in all_jobs(conn))}
    assert sorted(made) == [first, second]
    for a, title in ((first, titles[0]), (second, titles[1])):
        job = jobs.get_job(conn, made[a])
        assert job["instances"] == 6 and job["role"] == {"E": "epson", "P": "primera"}[title]
        assert job_uids(conn, made[a]) == sorted(uids)
    assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 6  # one file per SOP Instance UID


def test_resend_into_a_pending_group_and_after_it_burned(env) -> None:
    """Delayed titles: a re-sent instance joins its pending group once (and pushes the deadline); re-sent
    after the group became a job, it makes a follow-up disc, as any late arrival does."""
    settings, conn = env
    router = routing.Router(conn, settings)
    study, series = generate_uid(), generate_uid()
    a = open_assoc(conn, "BURNSTATION_TE")
    uids = receive(conn, a, "BURNSTATION_TE", study=study, series=series, n=3, at=T0)
    close(conn, a)
    router.run_once(T0 + 1)
    b = open_assoc(conn, "BURNSTATION_TE")
    receive(conn, b, "BURNSTATION_TE", study=study, series=series, resend=uids[:2], at=T0 + 5)
    new = receive(conn, b, "BURNSTATION_TE", study=study, series=series, n=1, at=T0 + 5)
    close(conn, b)
    assert router.run_once(T0 + 6) == []
    [group] = routing.pending_groups(conn)
    assert group["instances"] == 4 and group["deadline_at"] == T0 + 15
    assert router.run_once(T0 + 12) == []  # the deadline moved with the re-sent instances
    [job_id] = router.run_once(T0 + 15.1)
    assert job_uids(conn, job_id) == sorted(uids + new)
    c = open_assoc(conn, "BURNSTATION_TE")
    receive(conn, c, "BURNSTATION_TE", study=study, series=series, resend=uids[:1], at=T0 + 30)
    close(conn, c)
    router.run_once(T0 + 31)
    [late] = routing.pending_groups(conn)
    assert late["follows_job"] == job_id and late["instances"] == 1
    [follow] = router.run_once(T0 + 40.1)
    assert jobs.get_job(conn, follow)["follows_job"] == job_id and job_uids(conn, follow) == uids[:1]


def test_instance_stored_again_by_the_same_association_after_its_group_burned(env) -> None:
    """An association held open (e.g. a modality that keeps it) stores an instance again after its
    group became a job: a follow-up disc, as for any late arrival."""
    settings, conn = env
    router = routing.Router(conn, settings)
    study, series = generate_uid(), generate_uid()
    a = open_assoc(conn, "BURNSTATION_TE")
    uids = receive(conn, a, "BURNSTATION_TE", study=study, series=series, n=2, at=T0)
    router.run_once(T0 + 1)
    [first] = router.run_once(T0 + 10.1)
    assert router.run_once(T0 + 15) == []  # nothing new: no group
    receive(conn, a, "BURNSTATION_TE", study=study, series=series, resend=uids[1:], at=T0 + 20)
    close(conn, a)
    router.run_once(T0 + 21)
    [late] = routing.pending_groups(conn)
    assert late["follows_job"] == first and late["instances"] == 1
    [follow] = router.run_once(T0 + 30.1)
    assert job_uids(conn, follow) == uids[1:] and job_uids(conn, first) == sorted(uids)
    assert router.run_once(T0 + 60) == [] and routing.pending_groups(conn) == []


def test_delayed_group_after_the_wall_clock_went_back_an_hour(env) -> None:
    """Found by the clock fault run: arrivals while the clock ran an hour ahead set a deadline an
    hour away once NTP set it right; the group waited that hour. A deadline beyond now + delay is
    brought back to now + delay."""
    settings, conn = env
    a = open_assoc(conn, "BURNSTATION_TE")
    uids = receive(conn, a, "BURNSTATION_TE", at=T0 + 3600)
    close(conn, a)
    router = routing.Router(conn, settings)
    assert router.run_once(T0 + 3600.5) == []  # the clock an hour ahead: deadline T0 + 3610
    assert router.run_once(T0 + 1) == []  # set back: not yet, the quiet period starts again
    [group] = routing.pending_groups(conn)
    assert group["deadline_at"] == T0 + 11
    made = router.run_once(T0 + 11.5)
    assert len(made) == 1 and {i["sop_uid"] for i in jobs.job_instances(conn, made[0])} == set(uids)


def test_an_association_marked_stale_by_a_clock_jump_is_still_routed(env) -> None:
    """Found by the clock fault run: an association opened while the clock ran an hour behind
    looked an hour old once the clock was set right, was marked `stale`, and what it delivered
    afterwards joined no group (an acknowledged instance on no disc); an `_E` one that then
    released made no job. A stale association is still followed and routed when it ends."""
    settings, conn = env
    late = T0 + routing.STALE_SECONDS + 5
    d = open_assoc(conn, "BURNSTATION_TE")
    e = open_assoc(conn, "BURNSTATION_E")
    first = receive(conn, e, "BURNSTATION_E", n=1)
    conn.execute("UPDATE associations SET started_at=? WHERE id IN (?, ?)", (T0, d, e))  # the clock an hour behind
    router = routing.Router(conn, settings)
    assert router.run_once(late) == []
    assert {h["assoc_id"] for h in routing.held_associations(conn)} == {d, e}  # stale: shown, as before
    uids = receive(conn, d, "BURNSTATION_TE", n=2, at=late)
    rest = receive(conn, e, "BURNSTATION_E", n=1, at=late)
    close(conn, d)
    close(conn, e)
    made = router.run_once(late + 1)
    assert len(made) == 1 and {i["sop_uid"] for i in jobs.job_instances(conn, made[0])} == set(first + rest)
    made = router.run_once(late + 11)
    assert len(made) == 1 and {i["sop_uid"] for i in jobs.job_instances(conn, made[0])} == set(uids)
    assert routing.held_associations(conn) == []


def test_delayed_and_per_association_titles_share_instances(env) -> None:
    """The same instances to _TE and to _E before the burner looked: the group and the disc each
    have all of them."""
    settings, conn = env
    router = routing.Router(conn, settings)
    study, series = generate_uid(), generate_uid()
    te = open_assoc(conn, "BURNSTATION_TE")
    uids = receive(conn, te, "BURNSTATION_TE", study=study, series=series, n=3, at=T0)
    e = open_assoc(conn, "BURNSTATION_E")
    receive(conn, e, "BURNSTATION_E", study=study, series=series, resend=uids, at=T0 + 1)
    close(conn, te)
    close(conn, e)
    [per_assoc] = router.run_once(T0 + 2)
    assert job_uids(conn, per_assoc) == sorted(uids)
    [group] = routing.pending_groups(conn)
    assert group["instances"] == 3
    [delayed] = router.run_once(T0 + 12)
    assert job_uids(conn, delayed) == sorted(uids)


def test_held_and_interrupted_associations_keep_what_they_received(env) -> None:
    """`jobs burn --assoc N` burns what N received even when another association stored the same
    instances since; an association cut by a crash is logged with what it stored."""
    settings, conn = env
    router = routing.Router(conn, settings)
    study, series = generate_uid(), generate_uid()
    aborted = open_assoc(conn, "BURNSTATION_E")
    uids = receive(conn, aborted, "BURNSTATION_E", study=study, series=series, n=3)
    close(conn, aborted, "aborted")
    retry = open_assoc(conn, "BURNSTATION_P")
    receive(conn, retry, "BURNSTATION_P", study=study, series=series, resend=uids)
    close(conn, retry)
    [made] = router.run_once()
    assert jobs.get_job(conn, made)["assoc_id"] == retry
    [held] = routing.held_associations(conn)
    assert held["assoc_id"] == aborted and "after 3 instance(s)" in held["note"]
    on_demand = routing.burn_association(conn, settings, aborted)
    assert job_uids(conn, on_demand) == sorted(uids)
    cut = open_assoc(conn, "BURNSTATION")
    receive(conn, cut, "BURNSTATION", study=study, series=series, resend=uids)
    again = open_assoc(conn, "BURNSTATION")
    receive(conn, again, "BURNSTATION", study=study, series=series, resend=uids)
    assert index.close_interrupted_associations(conn) == 2
    stored = dict(conn.execute("SELECT id, stored FROM associations WHERE result='interrupted'").fetchall())
    assert stored == {cut: 3, again: 3}
    assert sorted(r["sop_uid"] for r in index.instances_of_association(conn, cut)) == sorted(uids)


def test_reindex_leaves_the_association_records_alone(env, tmp_path: Path) -> None:
    """`reindex` rebuilds the index from the files; what each association received is history, kept
    as it was, and still burns afterwards."""
    from support import make_dataset

    settings, conn = env
    storage = tmp_path / "storage"
    storage.mkdir()
    study, series = generate_uid(), generate_uid()
    files = []
    for k in range(4):
        ds = make_dataset(study_uid=study, series_uid=series, instance_number=k + 1, rows=8, cols=8)
        path = storage / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append((ds, path))
    assocs = [open_assoc(conn, "BURNSTATION_E"), open_assoc(conn, "BURNSTATION_P")]
    for a, part in ((assocs[0], files), (assocs[1], files[1:3])):
        for ds, path in part:
            rec = index.record_from_dataset(ds, str(path), path.stat().st_size, str(ds.file_meta.TransferSyntaxUID))
            rec.assoc_id, rec.called_aet, rec.received_at = a, "x", T0
            index.add_instance(conn, rec)
        close(conn, a)

    def snapshot() -> tuple[list, list]:
        return ([tuple(r) for r in conn.execute("SELECT * FROM associations ORDER BY id")],
                [tuple(r) for r in conn.execute("SELECT * FROM association_instances ORDER BY id")])

    before = snapshot()
    assert len(before[1]) == 6
    files[0][1].unlink()  # a file lost: its instance leaves the index, not the association's record
    assert index.reindex(conn, storage) == (3, 0)
    assert snapshot() == before
    made = routing.Router(conn, settings).run_once()
    by_assoc = {jobs.get_job(conn, j)["assoc_id"]: job_uids(conn, j) for j in made}
    uids = [str(ds.SOPInstanceUID) for ds, _ in files]
    assert by_assoc == {assocs[0]: sorted(uids[1:]), assocs[1]: sorted(uids[1:3])}


def test_existing_database_gets_association_instances_from_the_index(tmp_path: Path) -> None:
    """A state.db from before `association_instances`: each association's instances are copied from
    `instances.assoc_id` when it is first opened, once."""
    import sqlite3

    old_schema = index.SCHEMA.split("-- what each association received")[0]
    old_routing = routing.SCHEMA.replace("    arrival_id INTEGER NOT NULL DEFAULT 0,\n", "")
    assert old_routing != routing.SCHEMA
    raw = sqlite3.connect(tmp_path / db.DB_FILE)
    raw.executescript(old_schema + old_routing)
    raw.execute("INSERT INTO associations (id, called_aet, started_at, ended_at, result) "
                "VALUES (7, 'BURNSTATION_TE', ?, ?, 'released')", (T0, T0 + 1))
    uids = [generate_uid() for _ in range(3)]
    for uid in uids:
        raw.execute("INSERT INTO instances (sop_uid, series_uid, study_uid, path, assoc_id, received_at) "
                    "VALUES (?, 'se', 'st', '/x', 7, ?)", (uid, T0))
    raw.execute("INSERT INTO instances (sop_uid, series_uid, study_uid, path) VALUES ('loose', 'se', 'st', '/x')")
    # the burner had put association 7's instances in a group that became a job; the association row
    # is still 'open' for it (as when the station stopped between the two)
    raw.execute("INSERT INTO burn_cursor (name, value) VALUES ('associations', 7)")
    raw.execute("INSERT INTO burn_assocs (assoc_id, called_aet, role, mode, seen_at, updated_at) "
                "VALUES (7, 'BURNSTATION_TE', 'epson', 'delayed', ?, ?)", (T0, T0))
    raw.execute("INSERT INTO burn_groups (id, role, group_by, group_key, state, created_at, last_arrival_at, "
                "deadline_at, job_id, updated_at) VALUES (1, 'epson', 'patient', 'study:st', 'job', ?, ?, ?, 'J1', ?)",
                (T0, T0, T0 + 10, T0 + 10))
    for uid in uids:
        raw.execute("INSERT INTO burn_claims (sop_uid, assoc_id, group_id, claimed_at) VALUES (?, 7, 1, ?)", (uid, T0))
    raw.commit()
    raw.close()
    conn = db.connect(tmp_path)
    assert index.association_sop_uids(conn, 7) == uids
    assert conn.execute("SELECT COUNT(*) FROM association_instances").fetchone()[0] == 3
    settings = Settings(tmp_path)
    settings.initialize()
    assert routing.Router(conn, settings).run_once() == []  # nothing grouped again
    assert routing.pending_groups(conn) == []
    # the worklist link had followed `instances` by rowid: it goes on from the arrivals copied, not from 0
    items.meta_set(conn, link.OLD_HWM_KEY, 3)
    link.link_images(conn, settings)
    assert items.meta_get(conn, link.HWM_KEY) == index.last_arrival_id(conn) == 3
    # from now on each store adds to it: the same instance stored by another association adds a row
    later = open_assoc(conn, "BURNSTATION_P")
    receive(conn, later, "BURNSTATION_P", study="st", series="se", resend=uids[:1])
    assert index.association_sop_uids(conn, 7) == uids and index.association_sop_uids(conn, later) == uids[:1]
    conn.close()
