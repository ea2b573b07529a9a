"""The fast C-STORE path: its attribute parser agrees with pydicom, and the store semantics hold.

Part 1 compares `rawparse.parse` with pydicom (what `event.dataset` does) through the very
function the handler indexes with (`index.record_from_dataset`), over many encodings and odd
data sets; garbage must make it fall back (None), never raise or invent values.
Part 2 runs a real station and checks the semantics the fast path must keep: a duplicate SOP
Instance UID replaces the old copy, A700 below the free-space threshold, failure statuses for
undecodable data, the association and called AE recorded per instance.
"""

from __future__ import annotations

import dataclasses
import io
import random
import sqlite3
import time
import zlib
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom.dsutils import decode
from support import Station, dcmtk, make_dataset

from appliance import db, index
from appliance.dicom import rawparse

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"
BIG = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def encode(ds: Dataset, syntax: str) -> bytes:
    implicit = syntax == IMPLICIT
    little = syntax != BIG
    buf = io.BytesIO()
    from pydicom.filebase import DicomFileLike

    fp = DicomFileLike(buf)
    fp.is_implicit_VR = implicit
    fp.is_little_endian = little
    write_dataset(fp, ds)
    data = buf.getvalue()
    if syntax == DEFLATED:
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return data


def pydicom_record(raw: bytes, syntax: str) -> dict:
    ds = decode(io.BytesIO(raw), syntax == IMPLICIT, syntax != BIG, syntax == DEFLATED)
    return dataclasses.asdict(index.record_from_dataset(ds, "p", 1, syntax))


def fast_record(raw: bytes, syntax: str) -> dict | None:
    attrs = rawparse.parse(raw, syntax)
    if attrs is None:
        return None
    return dataclasses.asdict(index.record_from_dataset(attrs, "p", 1, syntax))  # type: ignore[arg-type]


def code_item(value: str, nested: bool = False, undefined: bool = False) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = f"meaning {value}"
    if nested:
        inner = Dataset()
        inner.CodeValue = value + "X"
        inner.CodingSchemeDesignator = "99LOCAL"
        item.ConceptNameCodeSequence = Sequence([inner])
        item["ConceptNameCodeSequence"].is_undefined_length = undefined
        inner.is_undefined_length_sequence_item = undefined
    item.is_undefined_length_sequence_item = undefined
    return item


def with_sequences(ds: Dataset, undefined: bool) -> Dataset:
    """Sequences (one nested) that come before the indexed attributes in tag order."""
    ds.ProcedureCodeSequence = Sequence([code_item("P1", nested=True, undefined=undefined), code_item("P2")])
    ds["ProcedureCodeSequence"].is_undefined_length = undefined
    ds.ReferencedStudySequence = Sequence([])
    ds["ReferencedStudySequence"].is_undefined_length = undefined
    ds.AnatomicRegionSequence = Sequence([code_item("T-D3000", undefined=undefined)])  # (0008,2218)
    ds["AnatomicRegionSequence"].is_undefined_length = undefined
    return ds


def with_private(ds: Dataset) -> Dataset:
    block = ds.private_block(0x0009, "BURNSTATION TEST", create=True)
    block.add_new(0x01, "LO", "private text")
    block.add_new(0x02, "OB", b"\x01\x02\x03\x04")
    return ds


CHARSET_NAMES = [
    (None, "DOE^JOHN"),
    ("ISO_IR 100", "Müller^Jörg"),
    ("ISO_IR 192", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ("ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ("ISO_IR 144", "Люкceмбypг^Гeнpиx"),
    ("GB18030", "Wang^XiaoDong=王^小东="),
    ("ISO_IR 6", "O'NEIL^MARY ANN"),
]


def variants() -> list[tuple[str, str, bytes]]:
    out = []
    for syntax in (EXPLICIT, IMPLICIT, DEFLATED, BIG):
        for charset, name in CHARSET_NAMES:
            ds = make_dataset(patient_name=name, charset=charset, rows=8, cols=8)
            if charset and charset.startswith("ISO 2022"):
                ds.SpecificCharacterSet = ["", charset]  # "\ISO 2022 IR 87": ASCII default, escapes
            ds.StudyDescription = f"{name.split('=')[0]} study"
            out.append((f"{syntax}-{charset}", syntax, encode(ds, syntax)))
        for undefined in (False, True):
            ds = with_private(with_sequences(make_dataset(rows=8, cols=8), undefined))
            out.append((f"{syntax}-sequences-undefined={undefined}", syntax, encode(ds, syntax)))
    odd = make_dataset(rows=4, cols=4, instance_number=7)
    odd.StudyDescription = "FIRST\\SECOND "     # multi-valued LO
    odd.SeriesDescription = "  leading and trailing  "
    odd.InstanceNumber = "0007"
    odd.SeriesNumber = "+3"
    odd.AccessionNumber = ""
    odd.PatientSex = ""
    odd.IssuerOfPatientID = "ISSUER\\OTHER"
    odd.BodyPartExamined = "CHEST"
    odd.ReferringPhysicianName = "A^B\\C^D"
    del odd.StudyTime
    for syntax in (EXPLICIT, IMPLICIT):
        out.append((f"{syntax}-odd-values", syntax, encode(odd, syntax)))
    # explicit VR with 'UN' for an indexed attribute (pydicom replaces it with the dictionary VR)
    un = make_dataset(rows=4, cols=4)
    un["PatientID"].VR = "UN"
    un["PatientID"].value = b"UNPID1"
    out.append(("explicit-UN-attribute", EXPLICIT, encode(un, EXPLICIT)))
    # encapsulated pixel data (undefined-length OB with fragments) after the attributes
    enc = make_dataset(rows=4, cols=4)
    enc.PixelData = b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\xfe\xff\x00\xe0\x04\x00\x00\x00\xff\xd8\xff\xd9"
    enc["PixelData"].VR = "OB"
    enc["PixelData"].is_undefined_length = True
    out.append(("encapsulated", JPEG_BASELINE, encode(enc, EXPLICIT)))
    return out


@pytest.mark.parametrize("name,syntax,raw", variants(), ids=[v[0] for v in variants()])
def test_fast_parser_matches_pydicom(name: str, syntax: str, raw: bytes):
    expected = pydicom_record(raw, syntax)
    got = fast_record(raw, syntax)
    if syntax in (DEFLATED, BIG):
        assert got is None, "deflate and big endian must go through pydicom"
        return
    assert got is not None, f"{name}: the fast parser should handle this data set"
    assert got == expected
    assert got["patient"]["patient_name"] and got["sop_uid"]


def test_fast_parser_takes_non_ascii_through_pydicom_converters():
    ds = make_dataset(patient_name="Yamada^Tarou=山田^太郎=やまだ^たろう", charset="ISO 2022 IR 87")
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    raw = encode(ds, EXPLICIT)
    attrs = rawparse.parse(raw, EXPLICIT)
    assert attrs is not None
    assert attrs.get("PatientName") == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert attrs.get("SpecificCharacterSet") == ["", "ISO 2022 IR 87"]


def test_unknown_keyword_is_refused_not_guessed():
    attrs = rawparse.parse(encode(make_dataset(), EXPLICIT), EXPLICIT)
    assert attrs is not None
    with pytest.raises(LookupError):
        attrs.get("Manufacturer")


def garbage_cases() -> list[tuple[str, str, bytes]]:
    good = encode(make_dataset(rows=8, cols=8), EXPLICIT)
    rng = random.Random(1234)
    cases = [
        ("empty-ish", EXPLICIT, b"\x00"),
        ("random", EXPLICIT, bytes(rng.randrange(256) for _ in range(3000))),
        ("random-implicit", IMPLICIT, bytes(rng.randrange(256) for _ in range(3000))),
        ("truncated", EXPLICIT, good[: len(good) // 2]),
        ("truncated-header", EXPLICIT, good[:5]),
        ("trailing-junk", EXPLICIT, good + b"\x01\x02\x03"),
        ("implicit-read-as-explicit", EXPLICIT, encode(make_dataset(), IMPLICIT)),
        ("length-past-end", EXPLICIT, b"\x08\x00\x18\x00UI\xff\x00" + b"1.2.3\x00"),
        ("unclosed-sequence", IMPLICIT, b"\x08\x00\x10\x11\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\x00\x00\x00\x00"),
        ("bad-item-tag", IMPLICIT, b"\x08\x00\x10\x11\xff\xff\xff\xff" + b"\x08\x00\x18\x00\x00\x00\x00\x00"),
        ("unknown-syntax", "1.2.3.4", good),
    ]
    # tags out of order: swap the first two elements
    first_len = 8 + int.from_bytes(good[6:8], "little")
    second_len = 8 + int.from_bytes(good[first_len + 6:first_len + 8], "little")
    swapped = good[first_len:first_len + second_len] + good[:first_len] + good[first_len + second_len:]
    cases.append(("out-of-order", EXPLICIT, swapped))
    # single flipped bytes anywhere in the header area
    for k in range(30):
        data = bytearray(good)
        pos = rng.randrange(0, 600)
        data[pos] ^= 0xFF
        cases.append((f"flipped-{pos}-{k}", EXPLICIT, bytes(data)))
    return cases


@pytest.mark.parametrize("name,syntax,raw", garbage_cases(), ids=[c[0] for c in garbage_cases()])
def test_garbage_falls_back_or_agrees(name: str, syntax: str, raw: bytes):
    """Garbage never raises from parse(); whatever it accepts, pydicom reads the same way."""
    attrs = rawparse.parse(raw, syntax)
    if name.startswith(("random", "truncated", "trailing", "implicit-read", "length", "unclosed", "bad-item",
                        "unknown", "out-of-order", "empty")):
        assert attrs is None, name
        return
    if attrs is None:
        return
    try:
        got = dataclasses.asdict(index.record_from_dataset(attrs, "p", 1, syntax))  # type: ignore[arg-type]
    except Exception:
        return  # the handler falls back to pydicom on any error from the fast path
    try:
        expected = pydicom_record(raw, syntax)
    except Exception:
        pytest.fail(f"{name}: fast path accepted data pydicom cannot decode")
    assert got == expected, name


# --------------------------------------------------------------------------- part 2: real station


def write_file(path: Path, ds: Dataset) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def db_rows(data: Path, sql: str, *args: object) -> list[sqlite3.Row]:
    conn = sqlite3.connect(data / "state.db")
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def send_raw_store(assoc, msg_id: int, sop_uid: str, payload: bytes) -> int | None:
    """Send `payload` as the data set of a C-STORE request (as pynetdicom's send_c_store does
    internally: reactor paused, message through the DIMSE provider); returns the status."""
    from pynetdicom.dimse_primitives import C_STORE

    req = C_STORE()
    req.MessageID = msg_id
    req.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    req.AffectedSOPInstanceUID = sop_uid
    req.Priority = 2
    req.DataSet = io.BytesIO(payload)
    context_id = assoc.accepted_contexts[0].context_id
    assoc._reactor_checkpoint.clear()
    try:
        while not assoc._is_paused:
            time.sleep(0.0001)
        assoc.dimse.send_msg(req, context_id)
        _cx, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return None if rsp is None else rsp.Status


def storescu(port: int, *files: Path, aec: str = "BURNSTATION", aet: str = "TESTSCU"):
    return dcmtk("storescu", "-aet", aet, "-aec", aec, "127.0.0.1", str(port), *map(str, files))


@pytest.mark.station
def test_store_semantics_on_a_running_station(tmp_path: Path):
    station = Station(tmp_path / "data")
    with station:
        data = station.data
        # 1. a study through the derived title _E: every instance indexed with association and called AE
        files = [write_file(tmp_path / f"a{i}.dcm", make_dataset(instance_number=i + 1, rows=16, cols=16,
                                                                  study_uid="1.2.826.0.1.3680043.10.1457.99.1",
                                                                  series_uid="1.2.826.0.1.3680043.10.1457.99.2"))
                 for i in range(5)]
        result = storescu(station.port, *files, aec="BURNSTATION_E")
        assert result.returncode == 0, result.stderr
        rows = db_rows(data, "SELECT * FROM instances ORDER BY CAST(instance_number AS INTEGER)")
        assert [r["instance_number"] for r in rows] == ["1", "2", "3", "4", "5"]
        assocs = db_rows(data, "SELECT * FROM associations WHERE calling_aet='TESTSCU'")
        assert len(assocs) == 1
        assert {r["assoc_id"] for r in rows} == {assocs[0]["id"]}
        assert {r["called_aet"] for r in rows} == {"BURNSTATION_E"}
        assert {r["calling_aet"] for r in rows} == {"TESTSCU"}
        for row in rows:
            assert Path(row["path"]).exists()
        patient = db_rows(data, "SELECT * FROM patients")[0]
        assert patient["patient_name"] == "DOE^JOHN"

        # 2. duplicate SOP Instance UID, different study: replaces the old copy (file and row)
        first = rows[0]
        moved = make_dataset(sop_uid=first["sop_uid"], instance_number=1, patient_name="DOE^JANE",
                             study_uid="1.2.826.0.1.3680043.10.1457.99.3",
                             series_uid="1.2.826.0.1.3680043.10.1457.99.4")
        result = storescu(station.port, write_file(tmp_path / "dup.dcm", moved), aec="BURNSTATION_TE")
        assert result.returncode == 0, result.stderr
        same = db_rows(data, "SELECT * FROM instances WHERE sop_uid=?", first["sop_uid"])
        assert len(same) == 1
        assert same[0]["study_uid"] == "1.2.826.0.1.3680043.10.1457.99.3"
        assert same[0]["called_aet"] == "BURNSTATION_TE"
        assert Path(same[0]["path"]).exists() and not Path(first["path"]).exists()
        assert len(db_rows(data, "SELECT * FROM instances")) == 5
        # what the first association received is unchanged: a disc of it still has all five
        conn = db.connect(data)
        try:
            assert sorted(index.association_sop_uids(conn, assocs[0]["id"])) == sorted(r["sop_uid"] for r in rows)
            dup_assoc = same[0]["assoc_id"]
            assert dup_assoc != assocs[0]["id"] and index.association_sop_uids(conn, dup_assoc) == [first["sop_uid"]]
        finally:
            conn.close()

        # 3. undecodable data sets get failure statuses, nothing is stored (raw bytes sent as the
        #    data set: storescu and send_c_store refuse to send what they cannot parse themselves)
        from pynetdicom import AE

        ae = AE(ae_title="BADSCU")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", EXPLICIT)
        assoc = ae.associate("127.0.0.1", station.port, ae_title="BURNSTATION")
        assert assoc.is_established
        good_uid = generate_uid()
        raw = encode(make_dataset(sop_uid=good_uid), EXPLICIT)
        mismatch = encode(make_dataset(), EXPLICIT)
        statuses = {}
        try:
            for n, (name, uid, payload) in enumerate([("truncated", good_uid, raw[:200]),
                                                      ("random", generate_uid(), random.Random(7).randbytes(2000)),
                                                      ("mismatch", generate_uid(), mismatch)]):
                statuses[name] = send_raw_store(assoc, n + 1, uid, payload)
        finally:
            assoc.release()
        assert statuses["mismatch"] == 0xA900
        for name in ("truncated", "random"):
            assert statuses[name] is not None and (statuses[name] >> 12) in (0xA, 0xC), (name, statuses[name])
        assert len(db_rows(data, "SELECT * FROM instances")) == 5
        stored = [p for p in (data / "storage").rglob("*") if p.is_file()]
        assert len(stored) == 5, stored

    # 4. free space below the threshold: A700 and nothing written; the station keeps running
    station2 = Station(tmp_path / "data2", dicom__min_free_mb=10_000_000)
    with station2:
        result = dcmtk("storescu", "-v", "-aec", "BURNSTATION", "127.0.0.1", str(station2.port), str(files[0]))
        assert "Refused: OutOfResources" in result.stdout + result.stderr, result.stdout + result.stderr
        ae = AE(ae_title="SCU")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", EXPLICIT)
        assoc = ae.associate("127.0.0.1", station2.port, ae_title="BURNSTATION")
        assert assoc.is_established
        try:
            status = send_raw_store(assoc, 1, good_uid, raw)
        finally:
            assoc.release()
        assert status == 0xA700
        assert db_rows(station2.data, "SELECT * FROM instances") == []
        assert [p for p in (station2.data / "storage").rglob("*") if p.is_file()] == []
        echo = dcmtk("echoscu", "-aec", "BURNSTATION", "127.0.0.1", str(station2.port))
        assert echo.returncode == 0


def test_purge_lock_closes_each_threads_descriptor_when_the_thread_ends(tmp_path: Path):
    """Found by the soak: the DICOM process runs each association in a thread of its own, and the
    purge lock's per-thread descriptor stayed open after the thread ended (one more open file per
    association, without end). Twenty threads that each took the lock leave none open."""
    import gc
    import os
    import threading

    from appliance.storage import PURGE_LOCK_FILE, PurgeLock

    lock = PurgeLock(tmp_path)

    def arrive() -> None:
        with lock.arrival():
            pass

    def open_on_lock() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == str(tmp_path / PURGE_LOCK_FILE))

    threads = [threading.Thread(target=arrive) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gc.collect()
    assert open_on_lock() == 0
    with lock.purge():  # this thread's own descriptor still works, and is reused
        assert open_on_lock() == 1
    with lock.arrival():
        assert open_on_lock() == 1
