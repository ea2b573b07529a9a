"""Transfers without a peer: the state machine, forwarding rules (validation, pick-up, stability
delay), the connection cap and query identifiers. No station process is started."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from support import make_dataset, wait_for

from appliance import db, index
from appliance.config import SettingError, Settings, make_node
from appliance.dicom import slots
from appliance.transfer import engine, jobs, rules


@pytest.fixture
def data(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    Settings(folder).initialize()
    return folder


def add_instance(conn, study_uid: str, modality: str = "CT", called: str = "BURNSTATION",
                 calling: str = "MOD1") -> str:
    ds = make_dataset(study_uid=study_uid, modality=modality, rows=4, cols=4)
    rec = index.record_from_dataset(ds, f"/nowhere/{ds.SOPInstanceUID}.dcm", 10, "1.2.840.10008.1.2.1")
    rec.called_aet, rec.calling_aet, rec.received_at = called, calling, time.time()
    index.add_instance(conn, rec)
    return str(ds.SOPInstanceUID)


def test_state_machine_cancel_retry_recover(data: Path) -> None:
    conn = db.connect(data)
    uids = [add_instance(conn, "1.2.3") for _ in range(3)]
    first = jobs.create_send(conn, "PACS", uids, study_uid="1.2.3")
    second = jobs.create_retrieve(conn, "PACS", "get", "1.2.3", burn=True)
    assert first != second and jobs.get(conn, first)["remaining"] == 3
    assert jobs.next_queued(conn)["id"] == first  # in queue order
    assert "cancelled" in jobs.cancel(conn, second)
    with pytest.raises(jobs.TransferError, match="cannot cancel"):
        jobs.cancel(conn, second)
    assert jobs.claim(conn, first) and not jobs.claim(conn, first)
    jobs.record_item(conn, first, uids[0], "done", "0x0000")
    jobs.record_item(conn, first, uids[1], "failed", "0xA700 out of resources")
    assert [r["sop_uid"] for r in jobs.pending_rows(conn, first)] == [uids[2]]
    assert "cancel requested" in jobs.cancel(conn, first) and jobs.cancel_requested(conn, first)
    assert jobs.recover(conn) == 1 and jobs.get(conn, first)["state"] == "queued"
    assert jobs.claim(conn, first)
    assert jobs.finish(conn, first, jobs.FAILED, error="refused")
    with pytest.raises(jobs.TransferError, match="only a failed or cancelled"):
        jobs.retry(conn, jobs.create_send(conn, "PACS", uids))
    assert "queued again (attempt 2)" in jobs.retry(conn, first)
    # the acknowledged instance is not sent again; the refused one is
    assert {r["sop_uid"] for r in jobs.pending_rows(conn, first)} == {uids[1], uids[2]}
    with pytest.raises(jobs.TransferError, match="no instances"):
        jobs.create_send(conn, "PACS", [])
    with pytest.raises(jobs.TransferError, match="move or get"):
        jobs.create_retrieve(conn, "PACS", "fetch", "1.2.3")
    conn.close()


def test_rule_validation(data: Path) -> None:
    settings = Settings(data)
    settings.add_node(make_node("PACS", "127.0.0.1", 104))
    settings.add_node(make_node("VIEWER", "127.0.0.1", 105, services="echo,find"))
    for kwargs, reason in (({"node": "NOPE"}, "not a known node"), ({"node": "VIEWER"}, "store service"),
                           ({"node": "PACS", "name": "a b"}, "forward name"),
                           ({"node": "PACS", "called": "OTHER"}, "station's AE titles"),
                           ({"node": "PACS", "calling": "HAS SPACE"}, "forward calling"),
                           ({"node": "PACS", "modalities": "CT,c t"}, "forward modality"),
                           ({"node": "PACS", "delay": "soon"}, "forward delay"),
                           ({"node": "PACS", "delay": 86401}, "forward delay")):
        with pytest.raises(SettingError, match=reason):
            rules.make_rule(settings, **kwargs)
    rule = rules.make_rule(settings, node="PACS", called="BURNSTATION_TE", modalities="ct, MR", delay="5")
    assert (rule.name, rule.modalities, rule.delay) == ("PACS", ("CT", "MR"), 5)
    rules.add_rule(settings, rule)
    with pytest.raises(SettingError, match="exists already"):
        rules.add_rule(settings, rule)
    assert rules.list_rules(settings) == [rule]
    assert rules.delete_rule(settings, "PACS") and rules.list_rules(settings) == []


def test_forward_picks_up_matching_instances_once_and_waits_for_the_delay(data: Path) -> None:
    conn = db.connect(data)
    add_instance(conn, "9.1")  # before the rule: not forwarded
    jobs.start_cursor(conn, "r")
    ct = [add_instance(conn, "9.2", "CT", "BURNSTATION_TE") for _ in range(2)]
    add_instance(conn, "9.2", "MR", "BURNSTATION_TE")  # other modality
    add_instance(conn, "9.3", "CT", "BURNSTATION")  # other called AE title
    add_instance(conn, "9.4", "CT", "BURNSTATION_TE", calling="OTHER")  # other calling AE title
    assert jobs.collect_new(conn, "r", "BURNSTATION_TE", "MOD1", ["CT"]) == 2
    assert jobs.collect_new(conn, "r", "BURNSTATION_TE", "MOD1", ["CT"]) == 0  # never twice
    assert jobs.queue_stable(conn, "r", "PACS", delay=60) == []  # not quiet long enough
    assert jobs.rule_backlog(conn, "r")["waiting"] == 2
    created = jobs.queue_stable(conn, "r", "PACS", delay=0)
    assert len(created) == 1
    t = jobs.get(conn, created[0])
    assert (t["kind"], t["node"], t["rule"], t["remaining"]) == ("send", "PACS", "r", 2)
    assert {r["sop_uid"] for r in jobs.pending_rows(conn, t["id"])} == set(ct)
    backlog = jobs.rule_backlog(conn, "r")
    assert (backlog["waiting"], backlog["unsent"], backlog["sent"]) == (0, 2, 0)
    for uid in ct:
        jobs.record_item(conn, t["id"], uid, "done", "0x0000")
    assert jobs.rule_backlog(conn, "r")["backlog"] == 0 and jobs.rule_backlog(conn, "r")["sent"] == 2
    assert jobs.queue_stable(conn, "r", "PACS", delay=0) == []
    jobs.forget_rule(conn, "r")
    assert jobs.collect_new(conn, "r", "", "", []) == 0  # a re-added rule starts from now
    conn.close()


def test_ack_journal_keeps_answers_a_killed_send_had_not_written(data: Path) -> None:
    conn = db.connect(data)
    uids = [add_instance(conn, "1.2.9") for _ in range(4)]
    tid = jobs.create_send(conn, "PACS", uids, study_uid="1.2.9")
    journal = jobs.AckJournal(data, tid)
    journal.record(uids[0], "done", "0x0000")
    journal.flush(conn)  # in state.db, the journal emptied
    assert journal.path.stat().st_size == 0
    journal.record(uids[1], "warning", "0xB000 coerced\tvalues\n")
    journal.record(uids[2], "failed", "0xA700 out of resources")
    assert {r["sop_uid"] for r in jobs.pending_rows(conn, tid)} == set(uids[1:])  # not flushed yet
    # the process dies here: the journal holds the answers (a torn last line is left out)
    with open(journal.path, "a") as fp:
        fp.write(f"done\t0x0000\t{uids[3][:10]}")
    assert jobs.apply_journals(conn, data) == 2 and not journal.path.exists()
    assert [r["sop_uid"] for r in jobs.pending_rows(conn, tid)] == [uids[3]]
    states = {i["sop_uid"]: (i["state"], i["status"]) for i in jobs.items(conn, tid)}
    assert states[uids[1]] == ("warning", "0xB000 coerced values")
    assert states[uids[2]] == ("failed", "0xA700 out of resources")
    assert jobs.apply_journals(conn, data) == 0
    conn.close()


def test_slots_cap_concurrency_across_processes_and_follow_the_setting(data: Path) -> None:
    settings = Settings(data)
    settings.set("dicom.max_connections", 2)
    cap = slots.OutgoingSlots(data, lambda: int(settings.get("dicom.max_connections")))
    # another process (the dicom process's C-MOVE SCP) holds one slot: only one is left here
    holder = subprocess.Popen([sys.executable, "-c", HOLD_ONE_SLOT, str(data)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        first = cap.try_acquire()
        assert first is not None and cap.try_acquire() is None
        started = time.monotonic()
        assert cap.acquire(0.3) is None and time.monotonic() - started >= 0.3
        with pytest.raises(slots.Busy, match="dicom.timeout=0.1s"):
            slots.take(data, 2, 0.1)
        holder.kill()  # a process that dies lets go of its slot
        holder.wait()
        second = cap.acquire(5)
        assert second is not None
        threading.Timer(0.2, first.release).start()
        third = cap.acquire(5)
        assert third is not None
        settings.set("dicom.max_connections", 3)
        assert cap.try_acquire() is not None and cap.try_acquire() is None
        assert cap.peak == 3
    finally:
        holder.kill()
        holder.wait()


HOLD_ONE_SLOT = """
import sys, time
from appliance.dicom import slots
slot = slots.OutgoingSlots(sys.argv[1], lambda: 2).try_acquire()
print("held" if slot is not None else "none", flush=True)
time.sleep(60)
"""


def test_query_identifier() -> None:
    ds = engine.build_identifier("study", {"PatientName": "DOE*", "StudyDate": "20240101-20240131"})
    assert ds.QueryRetrieveLevel == "STUDY" and ds.PatientName == "DOE*" and "StudyInstanceUID" in ds
    for level, keys, reason in (("image", {}, "query level"), ("study", {"Nonsense": "1"}, "not a DICOM keyword"),
                                ("study", {"ReferencedSeriesSequence": ""}, "sequence"),
                                ("series", {}, "StudyInstanceUID")):
        with pytest.raises(engine.QueryError, match=reason):
            engine.build_identifier(level, keys)


def test_many_fast_stores_over_one_association_never_lose_a_response(data: Path, tmp_path: Path) -> None:
    """Regression: pynetdicom's reactor could take a fast C-STORE-RSP off the queue before the
    send waited for it (one in ~1000 on loopback with TCP_NODELAY): the send then timed out and
    the association was aborted. `scu.associate` keeps the reactor parked."""
    from support import storescp

    from appliance.dicom import scu
    from appliance.dicom.handlers.retrieve import contexts_for

    # 1000 instances of one series: one file written by pydicom, the others its bytes with a SOP
    # Instance UID of the same length put in (pydicom writing each took most of this test's time)
    template = "1.2.826.0.1.3680043.8.498.7." + "9" * 30
    ds = make_dataset(sop_uid=template, rows=8, cols=8)
    ds.save_as(tmp_path / "template.dcm", enforce_file_format=True)
    raw = (tmp_path / "template.dcm").read_bytes()
    assert raw.count(template.encode()) == 2  # the file meta and the data set
    (tmp_path / "many").mkdir()
    rows = []
    for i in range(1000):
        uid = f"1.2.826.0.1.3680043.8.498.7.{i:030d}"
        path = tmp_path / "many" / f"i{i}.dcm"
        path.write_bytes(raw.replace(template.encode(), uid.encode()))
        rows.append({"path": str(path), "sop_class": str(ds.SOPClassUID), "sop_uid": uid,
                     "transfer_syntax": str(ds.file_meta.TransferSyntaxUID)})
    settings = Settings(data)
    settings.set("dicom.timeout", 5)
    with storescp(tmp_path / "out", "DEST") as port:
        assoc = scu.associate(data, settings, make_node("DEST", "127.0.0.1", port), contexts_for(rows))
        try:
            codes = [code for _row, code, _comment in scu.store_rows(assoc, rows)]
        finally:
            scu.close(assoc)
        assert not assoc.is_established
    assert codes == [0] * len(rows)
    assert sum(1 for p in (tmp_path / "out").rglob("*") if p.is_file()) == len(rows)


def test_queued_sends_start_without_waiting_for_the_poll(data: Path, tmp_path: Path, monkeypatch) -> None:
    """Work queued through jobs wakes the transfer process (transfer/wake.py), and a finished
    transfer lets the next queued one start at once: with a one-minute poll, three sends over one
    connection all end within seconds (without the wake-ups the first would wait a minute)."""
    from pynetdicom import _config
    from support import storescp

    from appliance.dicom import pnd_tuning
    from appliance.services import transfer as service
    from appliance.transfer import wake

    monkeypatch.setattr(service, "POLL_SECONDS", 60.0)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", _config.STORE_SEND_CHUNKED_DATASET)
    first_pass = threading.Event()  # set when the engine's pass at start is over
    original_step = service.Engine.step

    def step(self):  # noqa: ANN001, ANN202
        try:
            return original_step(self)
        finally:
            first_pass.set()
    monkeypatch.setattr(service.Engine, "step", step)
    settings = Settings(data)
    settings.set("dicom.max_connections", 1)
    conn = db.connect(data)
    uids = []
    for i in range(3):
        ds = make_dataset(study_uid=f"1.2.3.{i}", rows=4, cols=4)
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        rec = index.record_from_dataset(ds, str(path), path.stat().st_size, str(ds.file_meta.TransferSyntaxUID))
        rec.called_aet, rec.calling_aet, rec.received_at = "BURNSTATION", "MOD1", time.time()
        index.add_instance(conn, rec)
        uids.append(str(ds.SOPInstanceUID))
    stop, ready = threading.Event(), threading.Event()
    with storescp(tmp_path / "out", "DEST") as port:
        settings.add_node(make_node("DEST", "127.0.0.1", port))
        thread = threading.Thread(target=service.serve, args=(data, stop, ready), daemon=True)
        thread.start()
        try:
            assert ready.wait(30)
            assert first_pass.wait(30)  # the pass at start is over: only a wake-up starts what comes next
            ids = [jobs.create_send(conn, "DEST", [uid]) for uid in uids]
            wait_for(lambda: all(jobs.get(conn, t)["state"] in jobs.FINAL for t in ids), 20, "3 sends ended",
                     every=0.02)
            assert [jobs.get(conn, t)["state"] for t in ids] == [jobs.DONE] * 3
        finally:
            stop.set()
            thread.join(30)
            pnd_tuning.uninstall()
            pnd_tuning.set_protocol_logging(True)
    assert not thread.is_alive()
    assert sum(1 for p in (tmp_path / "out").rglob("*") if p.is_file()) == 3
    conn.close()
    # nobody listening any more (or never): queuing work neither blocks nor fails
    before = time.monotonic()
    wake.notify(data)
    wake.notify(tmp_path / "no-such-folder")
    assert time.monotonic() - before < 1.0


def test_wake_listener_replaces_what_is_not_a_fifo(data: Path) -> None:
    from appliance.transfer import wake

    path = wake.fifo_path(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("left over")
    listener = wake.Listener(data)
    try:
        assert not listener.wait(0.01)
        wake.notify(data)
        wake.notify(data)
        assert listener.wait(5.0)
        assert not listener.wait(0.01)  # both wake-ups consumed by one wait
    finally:
        listener.close()
