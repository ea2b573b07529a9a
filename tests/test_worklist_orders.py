"""HL7 orders → worklist items → `findscu -W` (dcmtk), end to end on a real station process.

Covers the ORC-1 life cycle (new, change, cancel, discontinue, status), the mapping table of
reference/dicom-hl7.md attribute by attribute, character sets (MSH-18 empty → default charset),
and the link to studies: images that arrive mark the item done and the RIS is told (IP), a
finished disc is reported too (CM), an unreachable RIS gets the messages later, and done items
leave the worklist after `worklist.done_retention_hours`.
"""

from __future__ import annotations

import socketserver
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from support import Station, dcmtk, free_port, make_dataset, wait_for, wait_port
from worklist_support import EB, SB, msa, order, send_order, worklist

pytestmark = pytest.mark.station  # every test here starts a station process (tests/tiers.py)

SPS = "ScheduledProcedureStepSequence[0]"
KEYS = ["SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
        "AccessionNumber", "ReferringPhysicianName", "StudyInstanceUID", "RequestingPhysician",
        "RequestedProcedureDescription", "RequestedProcedureCodeSequence", "RequestedProcedureID",
        "RequestedProcedurePriority", "ReasonForTheRequestedProcedure", "PlacerOrderNumberImagingServiceRequest",
        "FillerOrderNumberImagingServiceRequest", f"{SPS}.Modality", f"{SPS}.ScheduledStationAETitle",
        f"{SPS}.ScheduledProcedureStepStartDate", f"{SPS}.ScheduledProcedureStepStartTime",
        f"{SPS}.ScheduledPerformingPhysicianName", f"{SPS}.ScheduledProcedureStepDescription",
        f"{SPS}.ScheduledProtocolCodeSequence", f"{SPS}.ScheduledProcedureStepID",
        f"{SPS}.ScheduledProcedureStepStatus"]


@pytest.fixture
def station(tmp_path: Path):
    """A station of its own (for tests that list the whole worklist)."""
    st = Station(tmp_path / "data", worklist__done_retention_hours=24)
    st.start()
    wait_port(st.hl7_port)
    yield st
    st.stop()


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One station for the tests that only look at their own orders."""
    st = Station(tmp_path_factory.mktemp("shared") / "data")
    st.start()
    wait_port(st.hl7_port)
    yield st
    st.stop()


def items_by_placer(st: Station, out: Path, extra: list[str] | None = None) -> dict[str, object]:
    found = worklist(st.port, KEYS + (extra or []), out)
    return {str(ds.PlacerOrderNumberImagingServiceRequest): ds for ds in found}


def test_order_life_cycle(station, tmp_path):
    port = station.hl7_port
    assert send_order(port, order("NW", placer="P1", accession="A1", patient_id="PID1", name="ALPHA^ANN",
                                  control_id="M1")) == "AA"
    assert send_order(port, order("NW", placer="P2", accession="A2", patient_id="PID2", name="BETA^BOB",
                                  station="MR01", modality="MR", control_id="M2")) == "AA"
    assert send_order(port, order("NW", placer="P3", accession="A3", patient_id="PID3", name="GAMMA^GUS",
                                  control_id="M3")) == "AA"
    assert send_order(port, order("NW", placer="P4", accession="A4", patient_id="PID4", name="DELTA^DAN",
                                  control_id="M4")) == "AA"
    items = items_by_placer(station, tmp_path / "q1")
    assert sorted(items) == ["P1", "P2", "P3", "P4"]
    p1_uid = items["P1"].StudyInstanceUID  # generated: the orders carry no ZDS
    assert p1_uid and p1_uid != items["P2"].StudyInstanceUID

    # XO changes P1 (name, modality, station, time); the generated Study Instance UID stays
    assert send_order(port, order("XO", placer="P1", accession="A1", patient_id="PID1", name="ALPHA^ANNA",
                                  station="CT02", modality="CT", start="202611261615", control_id="M5")) == "AA"
    assert send_order(port, order("CA", placer="P2", accession="A2", control_id="M6")) == "AA"
    assert send_order(port, order("DC", placer="P3", accession="A3", control_id="M7")) == "AA"
    assert send_order(port, order("SC", placer="P4", status="IP", control_id="M8")) == "AA"
    # a change or status for an order the station does not know is an error, not silence
    assert send_order(port, order("CA", placer="NOSUCH", accession="", control_id="M9")) == "AE"

    items = items_by_placer(station, tmp_path / "q2")
    assert sorted(items) == ["P1", "P3", "P4"]  # P2 cancelled: gone
    p1 = items["P1"]
    assert str(p1.PatientName) == "ALPHA^ANNA"
    assert p1.StudyInstanceUID == p1_uid
    step = p1.ScheduledProcedureStepSequence[0]
    assert (step.ScheduledStationAETitle, step.ScheduledProcedureStepStartDate,
            step.ScheduledProcedureStepStartTime) == ("CT02", "20261126", "1615")
    assert step.ScheduledProcedureStepStatus == "SCHEDULED"
    assert items["P3"].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "DISCONTINUED"
    assert items["P4"].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "STARTED"

    # SC with ORC-5=CA cancels too
    assert send_order(port, order("SC", placer="P4", status="CA", control_id="M10")) == "AA"
    assert sorted(items_by_placer(station, tmp_path / "q3")) == ["P1", "P3"]
    # a scanner asking for scheduled steps only does not see the discontinued one
    scheduled = worklist(station.port, ["PatientName", f"{SPS}.ScheduledProcedureStepStatus=SCHEDULED"],
                         tmp_path / "q4")
    assert [str(ds.PatientName) for ds in scheduled] == ["ALPHA^ANNA"]


def test_mapping_table(shared, tmp_path):
    """Every row of the mapping table in reference/dicom-hl7.md."""
    text = order("NW", placer="PL77", filler="FI88", accession="ACC77", patient_id="PAT77", issuer="HOSPA",
                 name="SMITH^JOHN^Q^III^DR", birth="19800215", sex="F", station="CT_ROOM1", modality="CT",
                 start="202611270930", priority="S", procedure="CTHEAD^CT Head^LOCAL",
                 rp_code="RPH1^Head study^LOCAL", study_uid="1.2.3.4.5.77", rp_id="RP77", sps_id="SPS77",
                 referring="R1^REFERRER^RITA", requesting="Q1^REQUESTER^QUINN",
                 performing="T1&PERFORMER&PAT", reason="R01^Headache^LOCAL", control_id="MAP1")
    assert send_order(shared.hl7_port, text) == "AA"
    ds = items_by_placer(shared, tmp_path / "q")["PL77"]
    assert ds.PatientID == "PAT77" and ds.IssuerOfPatientID == "HOSPA"
    assert str(ds.PatientName) == "SMITH^JOHN^Q^DR^III"  # XPN suffix/prefix order → DICOM PN order
    assert (ds.PatientBirthDate, ds.PatientSex) == ("19800215", "F")
    assert str(ds.ReferringPhysicianName) == "REFERRER^RITA"
    assert ds.AccessionNumber == "ACC77"
    assert ds.RequestedProcedureID == "RP77"
    assert ds.StudyInstanceUID == "1.2.3.4.5.77"
    assert str(ds.RequestingPhysician) == "REQUESTER^QUINN"
    assert ds.RequestedProcedureDescription == "Head study"
    code = ds.RequestedProcedureCodeSequence[0]
    assert (code.CodeValue, code.CodeMeaning, code.CodingSchemeDesignator) == ("RPH1", "Head study", "LOCAL")
    assert ds.ReasonForTheRequestedProcedure == "Headache"
    assert ds.RequestedProcedurePriority == "STAT"
    assert ds.PlacerOrderNumberImagingServiceRequest == "PL77"
    assert ds.FillerOrderNumberImagingServiceRequest == "FI88"
    step = ds.ScheduledProcedureStepSequence[0]
    assert step.Modality == "CT"
    assert step.ScheduledStationAETitle == "CT_ROOM1"
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == ("20261127", "0930")
    assert str(step.ScheduledPerformingPhysicianName) == "PERFORMER^PAT"
    assert step.ScheduledProcedureStepDescription == "CT Head"
    protocol = step.ScheduledProtocolCodeSequence[0]
    assert (protocol.CodeValue, protocol.CodeMeaning, protocol.CodingSchemeDesignator) == ("CTHEAD", "CT Head", "LOCAL")
    assert step.ScheduledProcedureStepID == "SPS77"
    assert step.ScheduledProcedureStepStatus == "SCHEDULED"


def test_omi_o23_v251_with_tq1(shared, tmp_path):
    """OMI^O23 in v2.5.1: start time and priority from TQ1-7 / TQ1-9."""
    text = order("NW", placer="OMI1", accession="ACCOMI", msg_type="OMI^O23^OMI_O23", version="2.5.1",
                 use_tq1=True, start="20261128081500", priority="A", control_id="OMI-1")
    assert send_order(shared.hl7_port, text) == "AA"
    ds = items_by_placer(shared, tmp_path / "q")["OMI1"]
    step = ds.ScheduledProcedureStepSequence[0]
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == ("20261128", "081500")
    assert ds.RequestedProcedurePriority == "HIGH"


@pytest.mark.parametrize("version", ["2.3", "2.3.1", "2.4", "2.5", "2.5.1"])
def test_versions_accepted(shared, tmp_path, version):
    assert send_order(shared.hl7_port, order(placer=f"V{version}", control_id=f"V{version}",
                                              version=version)) == "AA"


def test_latin1_order_without_msh18(shared, tmp_path):
    """MSH-18 empty, default charset ISO 8859-1: MÜLLER^JÜRGEN comes back as ISO_IR 100 text."""
    text = order("NW", placer="LAT1", name="MÜLLER^JÜRGEN", control_id="LAT1")
    raw = text.encode("latin_1")
    assert b"M\xdcLLER" in raw  # really Latin-1 bytes on the wire
    assert send_order(shared.hl7_port, text, encoding="latin_1") == "AA"
    found = worklist(shared.port, ["SpecificCharacterSet", "PatientName=M*LLER^J*"], tmp_path / "q")
    assert len(found) == 1
    assert found[0].SpecificCharacterSet == "ISO_IR 100"
    assert str(found[0].PatientName) == "MÜLLER^JÜRGEN"
    # the bytes findscu received are Latin-1, as the character set says
    files = sorted((tmp_path / "q").glob("rsp*.dcm"))
    assert b"M\xdcLLER^J\xdcRGEN" in files[0].read_bytes()
    # a query in Latin-1 with the umlaut matches too (written as a query file: exact bytes)
    query = Dataset()
    query.SpecificCharacterSet = "ISO_IR 100"
    query.PatientName = "MÜLLER^J*"
    query.PlacerOrderNumberImagingServiceRequest = ""
    query_file = tmp_path / "query.dcm"
    query.save_as(query_file, implicit_vr=False, little_endian=True)
    assert b"M\xdcLLER" in query_file.read_bytes()
    out = tmp_path / "latin1-query"
    out.mkdir()
    proc = dcmtk("findscu", "-W", "-X", "-od", str(out), "-aec", "BURNSTATION", "127.0.0.1", str(shared.port),
                 str(query_file))
    assert proc.returncode == 0, proc.stderr
    answers = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    assert [a.PlacerOrderNumberImagingServiceRequest for a in answers] == ["LAT1"]


def test_utf8_order_with_msh18(shared, tmp_path):
    text = order("NW", placer="UTF1", name="ŁUKASZ^ŻÓŁW", charset="UNICODE UTF-8", control_id="UTF1")
    assert send_order(shared.hl7_port, text, encoding="utf-8") == "AA"
    found = worklist(shared.port, ["SpecificCharacterSet", "PatientName", "PlacerOrderNumberImagingServiceRequest=UTF1"],
                     tmp_path / "q")
    assert found[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(found[0].PatientName) == "ŁUKASZ^ŻÓŁW"


def test_invalid_bytes_for_charset_answered_ae(shared, tmp_path):
    """UTF-8 declared, Latin-1 bytes sent: AE with a clear text, nothing stored."""
    text = order("NW", placer="BAD8", name="MÜLLER^X", charset="UNICODE UTF-8", control_id="BAD8")
    from worklist_support import exchange
    reply = exchange(shared.hl7_port, text.encode("latin_1"))
    fields = msa(reply)
    assert fields[0] == "AE" and fields[1] == "BAD8" and "not valid" in fields[2]
    assert worklist(shared.port, ["PlacerOrderNumberImagingServiceRequest=BAD8"], tmp_path / "q") == []


def test_scanner_query_station_and_today(shared, tmp_path):
    today = time.strftime("%Y%m%d")
    for i, (aet, day) in enumerate([("SQ_CT01", today), ("SQ_CT01", "20200101"), ("SQ_MR01", today),
                                    ("SQ_CT01", today)]):
        assert send_order(shared.hl7_port, order(placer=f"S{i}", accession=f"SA{i}", station=aet,
                                                 start=f"{day}0800", control_id=f"S{i}")) == "AA"
    found = worklist(shared.port, ["AccessionNumber", f"{SPS}.ScheduledStationAETitle=SQ_CT01",
                                   f"{SPS}.ScheduledProcedureStepStartDate={today}"], tmp_path / "q")
    assert sorted(ds.AccessionNumber for ds in found) == ["SA0", "SA3"]


# --------------------------------------------------------------------------- link to studies, RIS


class FakeRIS(socketserver.ThreadingTCPServer):
    """A RIS that receives MLLP messages and answers AA."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int) -> None:
        self.messages: list[str] = []
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                buf = b""
                while True:
                    data = self.request.recv(65536)
                    if not data:
                        return
                    buf += data
                    while EB in buf:
                        raw, _, buf = buf.partition(EB + b"\r")
                        text = raw.lstrip(SB).decode("latin_1")
                        outer.messages.append(text)
                        control = text.split("\r")[0].split("|")[9]
                        self.request.sendall(SB + f"MSH|^~\\&|RIS|HOSP|||20260101||ACK|A{control}|P|2.3.1\r"
                                             f"MSA|AA|{control}\r".encode() + EB + b"\r")

        super().__init__(("127.0.0.1", port), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def store_image(st: Station, folder: Path, **kw: str) -> None:
    ds = make_dataset(**kw)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    proc = dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def status_of(st: Station, out: Path, placer: str) -> str | None:
    found = worklist(st.port, [f"{SPS}.ScheduledProcedureStepStatus",
                               f"PlacerOrderNumberImagingServiceRequest={placer}"], out)
    return found[0].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus if found else None


def test_images_mark_item_done_and_ris_is_told(tmp_path):
    ris_port = free_port()
    st = Station(tmp_path / "data", hl7__destination_host="127.0.0.1", hl7__destination_port=ris_port,
                 hl7__sending_application="BURNSTATION_TEST", hl7__sending_facility="RADIOLOGY")
    st.start()
    ris = None
    try:
        wait_port(st.hl7_port)
        # by Study Instance UID (ZDS-1) and by accession number
        assert send_order(st.hl7_port, order(placer="L1", accession="LACC1", study_uid="1.2.826.0.1.99.1",
                                             name="MÜLLER^JÜRGEN", control_id="L1")) == "AA"
        assert send_order(st.hl7_port, order(placer="L2", accession="LACC2", control_id="L2")) == "AA"
        assert send_order(st.hl7_port, order(placer="L3", accession="LACC3", control_id="L3")) == "AA"
        store_image(st, tmp_path / "img1", study_uid="1.2.826.0.1.99.1", accession="OTHER", patient_id="PID1")
        store_image(st, tmp_path / "img2", accession="LACC2", patient_id="PID1")
        wait_for(lambda: status_of(st, tmp_path / "s1", "L1") == "COMPLETED", timeout=20.0)
        wait_for(lambda: status_of(st, tmp_path / "s2", "L2") == "COMPLETED", timeout=20.0)
        assert status_of(st, tmp_path / "s3", "L3") == "SCHEDULED"
        # the RIS was down: the messages wait in state.db
        conn = sqlite3.connect(st.data / "state.db")
        wait_for(lambda: conn.execute("SELECT COUNT(*) = 2 AND MAX(attempts) >= 1 FROM hl7_outbox "
                                      "WHERE state='pending'").fetchone()[0] == 1, timeout=20.0)
        ris = FakeRIS(ris_port)
        wait_for(lambda: len(ris.messages) == 2, timeout=30)
        by_placer = {m.split("ORC|")[1].split("|")[1]: m for m in ris.messages}
        msg = by_placer["L1"]
        msh = msg.split("\r")[0].split("|")
        assert (msh[2], msh[3], msh[8]) == ("BURNSTATION_TEST", "RADIOLOGY", "ORM^O01")
        orc = next(s for s in msg.split("\r") if s.startswith("ORC|")).split("|")
        assert (orc[1], orc[2], orc[5]) == ("SC", "L1", "IP")
        assert "MÜLLER^JÜRGEN" in msg and msh[17] == "8859/1"  # MSH-18 (index 0 is MSH, 1 is MSH-1)
        assert "1.2.826.0.1.99.1" in msg
        assert "LACC2" in by_placer["L2"]
        wait_for(lambda: conn.execute("SELECT COUNT(*) FROM hl7_outbox WHERE state='sent'").fetchone()[0] == 2, timeout=20.0)

        # the disc of L1's study is done (burn pipeline jobs table) → CM
        from appliance import db
        from appliance.burn import jobs
        jc = db.connect(st.data)
        with db.transaction(jc):
            sops = jobs.study_sop_uids(jc, "1.2.826.0.1.99.1")
            job_id = jobs.create_job_in(jc, role="any", sop_uids=sops, source="manual")
            assert jobs.move(jc, job_id, ["queued"], "done")
        wait_for(lambda: len(ris.messages) == 3, timeout=30)
        orc = next(s for s in ris.messages[2].split("\r") if s.startswith("ORC|")).split("|")
        assert (orc[1], orc[2], orc[5]) == ("SC", "L1", "CM")
        conn.close()
        jc.close()
    finally:
        st.stop()
        if ris is not None:
            ris.shutdown()
            ris.server_close()


def test_done_items_leave_after_retention(tmp_path):
    st = Station(tmp_path / "data", worklist__done_retention_hours=0)
    st.start()
    try:
        wait_port(st.hl7_port)
        assert send_order(st.hl7_port, order(placer="R1", accession="RACC1", control_id="R1")) == "AA"
        assert send_order(st.hl7_port, order(placer="R2", accession="RACC2", control_id="R2")) == "AA"
        assert status_of(st, tmp_path / "a", "R1") == "SCHEDULED"
        store_image(st, tmp_path / "img", accession="RACC1")
        wait_for(lambda: status_of(st, tmp_path / "b", "R1") is None, timeout=20.0)
        assert status_of(st, tmp_path / "c", "R2") == "SCHEDULED"
        conn = sqlite3.connect(st.data / "state.db")
        assert conn.execute("SELECT COUNT(*) FROM worklist_items WHERE placer='R1'").fetchone()[0] == 0
        conn.close()
    finally:
        st.stop()


def test_wl_files_served_and_reread_on_change(station, tmp_path):
    """`.wl` files in <data>/worklist are served next to the HL7 items and re-read when they change."""
    folder = station.data / "worklist"
    folder.mkdir(exist_ok=True)

    def write(name: str, accession: str, patient: str) -> None:
        ds = Dataset()
        ds.AccessionNumber = accession
        ds.PatientName = patient
        ds.PatientID = "WL1"
        step = Dataset()
        step.Modality = "US"
        step.ScheduledStationAETitle = "US01"
        step.ScheduledProcedureStepStartDate = "20261126"
        ds.ScheduledProcedureStepSequence = [step]
        tmp = folder / f".{name}.tmp"
        ds.save_as(tmp, implicit_vr=False, little_endian=True)
        tmp.rename(folder / name)

    write("one.wl", "WL-A", "FILE^ONE")
    assert send_order(station.hl7_port, order(placer="H1", accession="HL-A", control_id="H1")) == "AA"
    found = worklist(station.port, ["AccessionNumber", "PatientName"], tmp_path / "a")
    assert sorted(ds.AccessionNumber for ds in found) == ["HL-A", "WL-A"]
    write("one.wl", "WL-B", "FILE^CHANGED")
    write("two.wl", "WL-C", "FILE^TWO")
    found = worklist(station.port, ["AccessionNumber", f"{SPS}.ScheduledStationAETitle=US01"], tmp_path / "b")
    assert sorted(ds.AccessionNumber for ds in found) == ["WL-B", "WL-C"]
    (folder / "two.wl").unlink()
    (folder / "broken.wl").write_bytes(b"not dicom at all")
    found = worklist(station.port, ["AccessionNumber", f"{SPS}.ScheduledStationAETitle=US01"], tmp_path / "c")
    assert [ds.AccessionNumber for ds in found] == ["WL-B"]


def test_order_that_arrives_after_its_images(shared, tmp_path):
    """Images first, order later (a late RIS): the item is marked done when it arrives."""
    store_image(shared, tmp_path / "img", accession="LATEACC", patient_id="LATE1")
    assert send_order(shared.hl7_port, order(placer="LATE1", accession="LATEACC", patient_id="LATE1",
                                             control_id="LATE1")) == "AA"
    wait_for(lambda: status_of(shared, tmp_path / "s", "LATE1") == "COMPLETED", timeout=20.0)


def test_resent_images_with_a_corrected_accession_mark_the_item(shared, tmp_path):
    """The modality sent a study with a mistyped accession, then the same instances again with the right
    one: the re-send is an arrival of its own, so the item is marked done."""
    assert send_order(shared.hl7_port, order(placer="FIX1", accession="FIXACC", patient_id="FIX1",
                                             control_id="FIX1")) == "AA"
    assert send_order(shared.hl7_port, order(placer="FIX2", accession="FIXACC2", patient_id="FIX2",
                                             control_id="FIX2")) == "AA"
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    store_image(shared, tmp_path / "typo", accession="FIXACX", patient_id="FIX1", study_uid=study,
                series_uid=series, sop_uid=sop)
    store_image(shared, tmp_path / "other", accession="FIXACC2", patient_id="FIX2")
    # the link has looked past the mistyped study (arrivals are taken in order): FIX1 stayed scheduled
    wait_for(lambda: status_of(shared, tmp_path / "s2", "FIX2") == "COMPLETED", timeout=20.0)
    assert status_of(shared, tmp_path / "s1", "FIX1") == "SCHEDULED"
    store_image(shared, tmp_path / "fixed", accession="FIXACC", patient_id="FIX1", study_uid=study,
                series_uid=series, sop_uid=sop)
    wait_for(lambda: status_of(shared, tmp_path / "s3", "FIX1") == "COMPLETED", timeout=20.0)


def test_malformed_query_answered_with_error_status(shared, tmp_path):
    proc = dcmtk("findscu", "-W", "-v", "-aec", "BURNSTATION", "-k",
                 f"{SPS}.ScheduledProcedureStepStartDate=2026-11-26-", "-k", "PatientName",
                 "127.0.0.1", str(shared.port))
    text = proc.stdout + proc.stderr
    assert "DataSetDoesNotMatchSOPClass" in text, text  # status A900
    # and the worklist keeps answering
    assert worklist(shared.port, ["PatientName"], tmp_path / "q") is not None


def test_default_charset_setting_is_used_when_msh18_is_empty(shared, tmp_path):
    """`hl7.default_charset` decides how bytes without MSH-18 are read (here UTF-8 instead of Latin-1)."""
    from support import burnstation
    burnstation(shared.data, "config", "set", "hl7.default_charset=UNICODE UTF-8")
    try:
        text = order("NW", placer="DEF8", name="ŠTĚPÁN^ŽOFIE", control_id="DEF8")
        assert send_order(shared.hl7_port, text, encoding="utf-8") == "AA"  # settings are read per message
    finally:
        burnstation(shared.data, "config", "set", "hl7.default_charset=ISO_IR 100")
    found = worklist(shared.port, ["SpecificCharacterSet", "PatientName",
                                   "PlacerOrderNumberImagingServiceRequest=DEF8"], tmp_path / "q")
    assert found[0].SpecificCharacterSet == "ISO_IR 192"
    assert str(found[0].PatientName) == "ŠTĚPÁN^ŽOFIE"


def test_worklist_on_the_tls_port(shared, tmp_path):
    """The MWL C-FIND is served on port 2 (TLS) as well."""
    assert send_order(shared.hl7_port, order(placer="TLS1", accession="TLSACC", control_id="TLS1")) == "AA"
    wait_port(shared.tls_port)  # the TLS listener comes up after the plain one
    ca = str(shared.data / "tls" / "ca.pem")
    out = tmp_path / "tls"
    out.mkdir()
    proc = dcmtk("findscu", "-W", "+tla", "+cf", ca, "-X", "-od", str(out), "-aec", "BURNSTATION",
                 "-k", "AccessionNumber=TLSACC", "-k", "PatientName", "127.0.0.1", str(shared.tls_port))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    answers = [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
    assert [a.AccessionNumber for a in answers] == ["TLSACC"]


def test_two_orders_in_one_message(shared, tmp_path):
    """Each ORC (with its OBR) is one order: one message, two worklist items, one ACK."""
    first = order(placer="MULTI1", accession="MACC1", modality="CT", control_id="MULTI")
    second = order(placer="MULTI2", accession="MACC2", modality="MR", station="MR01")
    orc_obr = "\r".join(s for s in second.split("\r") if s.startswith(("ORC|", "OBR|"))) + "\r"
    assert send_order(shared.hl7_port, first + orc_obr) == "AA"
    found = worklist(shared.port, ["AccessionNumber", f"{SPS}.Modality", "PatientID",
                                   "PlacerOrderNumberImagingServiceRequest=MULTI*"], tmp_path / "q")
    assert sorted((ds.AccessionNumber, ds.ScheduledProcedureStepSequence[0].Modality) for ds in found) == [
        ("MACC1", "CT"), ("MACC2", "MR")]
    assert {ds.PatientID for ds in found} == {"PID1"}
