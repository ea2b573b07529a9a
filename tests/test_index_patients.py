"""Patients without a Patient ID keep their own index record (and their own name in C-FIND);
a state.db made before the record had a separate key is migrated in place."""

from __future__ import annotations

import sqlite3

from support import burnstation, dcmtk, findscu, make_dataset

from appliance import db, index


def test_patients_without_id_stay_apart(station, tmp_path):
    burnstation(station.data, "nodes", "add", "FINDSCU", "127.0.0.1", "104")
    files = []
    for n, (name, birth) in enumerate([("NOID^ANNA", "19800101"), ("NOID^BERT", "19900202")]):
        path = tmp_path / f"noid{n}.dcm"
        make_dataset(patient_id="", patient_name=name, birth_date=birth, seed=n).save_as(
            path, enforce_file_format=True)
        files.append(path)
    withid = tmp_path / "withid.dcm"
    make_dataset(patient_id="P77", patient_name="WITH^ID").save_as(withid, enforce_file_format=True)
    result = dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(station.port), *map(str, files), str(withid))
    assert result.returncode == 0, result.stderr

    proc, studies = findscu(station.port, ["QueryRetrieveLevel=STUDY", "PatientName", "PatientID",
                                           "PatientBirthDate", "StudyInstanceUID"], tmp_path / "f1")
    assert proc.returncode == 0, proc.stderr
    names = sorted((str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)) for ds in studies)
    assert names == [("NOID^ANNA", "", "19800101"), ("NOID^BERT", "", "19900202"), ("WITH^ID", "P77", "19700101")]

    proc, patients = findscu(station.port, ["QueryRetrieveLevel=PATIENT", "PatientName", "PatientID"],
                             tmp_path / "f2", model="-P")
    assert sorted(str(ds.PatientName) for ds in patients) == ["NOID^ANNA", "NOID^BERT", "WITH^ID"]
    # universal match on an empty Patient ID finds the ID-less ones by name only
    proc, bert = findscu(station.port, ["QueryRetrieveLevel=PATIENT", "PatientName=NOID^BERT", "PatientID"],
                         tmp_path / "f3", model="-P")
    assert [str(ds.PatientID) for ds in bert] == [""]


def test_old_database_is_migrated(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    old = sqlite3.connect(data / "state.db")
    old.executescript("""
        CREATE TABLE patients (patient_id TEXT PRIMARY KEY, patient_name TEXT NOT NULL DEFAULT '',
            birth_date TEXT NOT NULL DEFAULT '', sex TEXT NOT NULL DEFAULT '', issuer TEXT NOT NULL DEFAULT '',
            charset TEXT NOT NULL DEFAULT '');
        INSERT INTO patients (patient_id, patient_name) VALUES ('P1', 'OLD^ROW');
    """)
    old.commit()
    old.close()
    conn = db.connect(data)
    assert index.NO_ID_PREFIX  # the module registered its migration
    row = conn.execute("SELECT patient_id, id_value, patient_name FROM patients").fetchone()
    assert tuple(row) == ("P1", "P1", "OLD^ROW")


def test_study_listing_reads(tmp_path):
    """index.list_studies / get_study: the door for listings (web UI) instead of SQL on the tables."""
    from pydicom import dcmread
    from support import write_study

    conn = db.connect(tmp_path / "data")
    for folder, pid, n_series in (("a", "PA", 2), ("b", "PB", 1)):
        for f in write_study(tmp_path / folder, n_series=n_series, per_series=2, patient_id=pid):
            ds = dcmread(f, stop_before_pixels=True)
            index.add_instance(conn, index.record_from_dataset(ds, str(f), f.stat().st_size,
                                                               str(ds.file_meta.TransferSyntaxUID)))
    studies = {s["patient_id_value"]: s for s in index.list_studies(conn)}
    assert set(studies) == {"PA", "PB"}
    assert (studies["PA"]["series_count"], studies["PA"]["instance_count"]) == (2, 4)
    assert (studies["PB"]["series_count"], studies["PB"]["instance_count"]) == (1, 2)
    assert studies["PA"]["size"] > 0 and studies["PA"]["modalities"]
    assert [s["patient_id_value"] for s in index.list_studies(conn, patient_key="PB")] == ["PB"]
    assert len(index.list_studies(conn, limit=1)) == 1
    study = index.get_study(conn, studies["PA"]["study_uid"])
    assert [s["instance_count"] for s in study["series"]] == [2, 2]
    assert index.get_study(conn, "1.2.3.4.nothing") is None
    conn.close()
