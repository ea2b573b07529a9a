"""C-FIND Patient Root and Study Root at every level, checked against what storescu sent.

Several patients and studies (names in ISO_IR 100 and ISO_IR 192 too) go in with dcmtk storescu;
each findscu query's matches are compared with the same predicate applied to the sent datasets,
so no expected number is written down by hand.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from support import Station, burnstation, dcmtk, findscu, make_dataset

# (patient id, name, charset, [(study date, time, accession, [(modality, n_instances), ...]), ...])
PLAN = [
    ("PAT001", "DOE^JOHN", None, [("20240115", "101500", "ACC1", [("CT", 3), ("CT", 2)]),
                                  ("20240220", "143000.25", "ACC2", [("MR", 2), ("CT", 1)])]),
    ("PAT002", "MÜLLER^JÜRGEN", "ISO_IR 100", [("20230610", "080000", "ACC3", [("MR", 2)])]),
    ("PAT003", "山田^太郎", "ISO_IR 192", [("20240301", "235959", "BCC4", [("OT", 1)])]),
    ("PAT010", "SMITH^ANNA", None, [("20240115", "2330", "XACC9", [("CT", 2)])]),
    ("PAT020", "Yamada^Tarou=山田^太郎=やまだ^たろう", "ISO 2022 IR 6\\ISO 2022 IR 87",
     [("20221231", "120000", "JP1", [("MR", 1)])]),
]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory):
    """A station holding the PLAN, the datasets sent, and a folder for findscu output."""
    root = tmp_path_factory.mktemp("query")
    sent: list[Dataset] = []
    files: list[str] = []
    for pid, name, charset, studies in PLAN:
        for s_no, (date, time, accession, series) in enumerate(studies):
            study_uid = generate_uid()
            for se_no, (modality, count) in enumerate(series):
                series_uid = generate_uid()
                for i in range(count):
                    ds = make_dataset(patient_id=pid, patient_name=name, charset=charset, study_uid=study_uid,
                                      series_uid=series_uid, modality=modality, study_date=date, study_time=time,
                                      accession=accession, series_number=se_no + 1, instance_number=i + 1,
                                      rows=8 + i, cols=8, study_description=f"STUDY {s_no}",
                                      series_description=f"{modality} SERIES {se_no}")
                    path = root / "in" / f"{len(files):03d}.dcm"
                    path.parent.mkdir(exist_ok=True)
                    ds.save_as(path, enforce_file_format=True)
                    files.append(str(path))
                    sent.append(ds)
    st = Station(root / "data")
    burnstation(st.data, "nodes", "add", "FINDSCU", "127.0.0.1", "104")
    st.start()
    r = dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *files)
    assert r.returncode == 0, r.stderr
    yield st, sent, root / "rsp"
    st.stop()


def run_find(archive, level: str, keys: dict[str, str], model: str = "-S") -> list[Dataset]:
    st, _sent, out = archive
    proc, responses = findscu(st.port, {"QueryRetrieveLevel": level, **keys}, out, model=model)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stderr or "Success" in proc.stdout, proc.stderr
    return responses


KEY_OF = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
          "IMAGE": "SOPInstanceUID"}


def expected(archive, level: str, predicate: Callable[[Dataset], bool]) -> set[str]:
    return {str(ds[KEY_OF[level]].value) for ds in archive[1] if predicate(ds)}


def keys_of(responses: list[Dataset], level: str) -> list[str]:
    return [str(r[KEY_OF[level]].value) for r in responses]


def check(archive, level: str, keys: dict[str, str], predicate: Callable[[Dataset], bool],
          model: str = "-S") -> list[Dataset]:
    keys = {KEY_OF[level]: "", **keys}
    responses = run_find(archive, level, keys, model)
    got = keys_of(responses, level)
    assert len(got) == len(set(got)), f"duplicate matches: {got}"
    want = expected(archive, level, predicate)
    assert want, "the query should match something in the test data"
    assert set(got) == want
    return responses


# --------------------------------------------------------------------------- PATIENT level


def test_patient_level_all_and_counts(archive) -> None:
    responses = check(archive, "PATIENT", {"PatientName": "", "NumberOfPatientRelatedStudies": "",
                                           "NumberOfPatientRelatedSeries": "",
                                           "NumberOfPatientRelatedInstances": ""},
                      lambda ds: True, model="-P")
    sent = archive[1]
    for rsp in responses:
        mine = [ds for ds in sent if ds.PatientID == rsp.PatientID]
        assert int(rsp.NumberOfPatientRelatedStudies) == len({ds.StudyInstanceUID for ds in mine})
        assert int(rsp.NumberOfPatientRelatedSeries) == len({ds.SeriesInstanceUID for ds in mine})
        assert int(rsp.NumberOfPatientRelatedInstances) == len(mine)
        assert str(rsp.PatientName) == str(mine[0].PatientName)


def test_patient_level_wildcards(archive) -> None:
    check(archive, "PATIENT", {"PatientID": "PAT00?"}, lambda ds: fnmatch.fnmatchcase(ds.PatientID, "PAT00?"),
          model="-P")
    check(archive, "PATIENT", {"PatientName": "*O*"}, lambda ds: "O" in str(ds.PatientName).upper(), model="-P")
    check(archive, "PATIENT", {"PatientID": "PAT010"}, lambda ds: ds.PatientID == "PAT010", model="-P")


def test_no_match_is_an_empty_success(archive) -> None:
    assert run_find(archive, "PATIENT", {"PatientID": "NOBODY"}, model="-P") == []
    assert run_find(archive, "STUDY", {"StudyDate": "19000101-19000102", "StudyInstanceUID": ""}) == []


def test_non_ascii_names_come_back_correctly(archive) -> None:
    sent = archive[1]
    for pid, name, charset, _studies in PLAN:
        responses = run_find(archive, "PATIENT", {"PatientID": pid, "PatientName": ""}, model="-P")
        assert len(responses) == 1
        assert str(responses[0].PatientName) == name
        if charset:
            got = responses[0].SpecificCharacterSet
            assert (got if isinstance(got, str) else "\\".join(got)) == charset
        responses = run_find(archive, "STUDY", {"PatientID": pid, "PatientName": "", "StudyInstanceUID": ""})
        assert {str(r.PatientName) for r in responses} == {name}
        assert len(responses) == len({ds.StudyInstanceUID for ds in sent if ds.PatientID == pid})


def test_non_ascii_name_as_matching_key(archive) -> None:
    for name in ("MÜLLER^JÜRGEN", "山田^太郎", "Yamada^Tarou=山田^太郎=やまだ^たろう"):
        responses = run_find(archive, "PATIENT", {"SpecificCharacterSet": "ISO_IR 192", "PatientName": name,
                                                  "PatientID": ""}, model="-P")
        assert [str(r.PatientName) for r in responses] == [name]
    responses = run_find(archive, "PATIENT", {"SpecificCharacterSet": "ISO_IR 192", "PatientName": "MÜ*",
                                              "PatientID": ""}, model="-P")
    assert [r.PatientID for r in responses] == ["PAT002"]
    for name in ("müller^jürgen", "Müller^Jürgen", "mü*", "doe^john"):  # names match regardless of case
        responses = run_find(archive, "PATIENT", {"SpecificCharacterSet": "ISO_IR 192", "PatientName": name,
                                                  "PatientID": ""}, model="-P")
        assert len(responses) == 1, name


# --------------------------------------------------------------------------- STUDY level


def test_study_level_patient_root_needs_patient(archive) -> None:
    check(archive, "STUDY", {"PatientID": "PAT001"}, lambda ds: ds.PatientID == "PAT001", model="-P")


def test_study_single_value_and_wildcards(archive) -> None:
    check(archive, "STUDY", {"AccessionNumber": "ACC2"}, lambda ds: ds.AccessionNumber == "ACC2")
    check(archive, "STUDY", {"AccessionNumber": "ACC*"}, lambda ds: ds.AccessionNumber.startswith("ACC"))
    check(archive, "STUDY", {"AccessionNumber": "?ACC9"}, lambda ds: fnmatch.fnmatchcase(ds.AccessionNumber,
                                                                                          "?ACC9"))
    check(archive, "STUDY", {"StudyDate": "20240115"}, lambda ds: ds.StudyDate == "20240115")


def test_study_date_ranges(archive) -> None:
    check(archive, "STUDY", {"StudyDate": "20240101-20240228"}, lambda ds: "20240101" <= ds.StudyDate <= "20240228")
    check(archive, "STUDY", {"StudyDate": "-20240115"}, lambda ds: ds.StudyDate <= "20240115")
    check(archive, "STUDY", {"StudyDate": "20240220-"}, lambda ds: ds.StudyDate >= "20240220")


def _time(ds: Dataset) -> float:
    text = str(ds.StudyTime)
    main, _, frac = text.partition(".")
    main = (main + "0000")[:6]
    return float(f"{main}.{frac or 0}")


def test_study_time_ranges(archive) -> None:
    check(archive, "STUDY", {"StudyTime": "1000-1500"}, lambda ds: 100000 <= _time(ds) <= 150000)
    check(archive, "STUDY", {"StudyTime": "230000-"}, lambda ds: _time(ds) >= 230000)
    check(archive, "STUDY", {"StudyTime": "-101500"}, lambda ds: _time(ds) <= 101500)
    check(archive, "STUDY", {"StudyDate": "20240115", "StudyTime": "2300-"},
          lambda ds: ds.StudyDate == "20240115" and _time(ds) >= 230000)


def test_study_uid_list(archive) -> None:
    uids = sorted({ds.StudyInstanceUID for ds in archive[1]})[:3]
    check(archive, "STUDY", {"StudyInstanceUID": "\\".join(uids)}, lambda ds: ds.StudyInstanceUID in uids)


def test_modalities_in_study(archive) -> None:
    sent = archive[1]

    def modalities(study_uid: str) -> set[str]:
        return {ds.Modality for ds in sent if ds.StudyInstanceUID == study_uid}

    responses = check(archive, "STUDY", {"ModalitiesInStudy": "MR"}, lambda ds: "MR" in modalities(ds.StudyInstanceUID))
    for rsp in responses:
        value = rsp.ModalitiesInStudy
        got = {value} if isinstance(value, str) else set(value)
        assert got == modalities(rsp.StudyInstanceUID)
    check(archive, "STUDY", {"ModalitiesInStudy": "OT\\MR"},
          lambda ds: bool({"OT", "MR"} & modalities(ds.StudyInstanceUID)))


def test_study_counts(archive) -> None:
    sent = archive[1]
    responses = check(archive, "STUDY", {"NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": "",
                                         "PatientID": "", "StudyDate": ""}, lambda ds: True)
    for rsp in responses:
        mine = [ds for ds in sent if ds.StudyInstanceUID == rsp.StudyInstanceUID]
        assert int(rsp.NumberOfStudyRelatedSeries) == len({ds.SeriesInstanceUID for ds in mine})
        assert int(rsp.NumberOfStudyRelatedInstances) == len(mine)
        assert rsp.PatientID == mine[0].PatientID
        assert rsp.StudyDate == mine[0].StudyDate


def test_return_key_not_in_the_index_is_read_from_the_file(archive) -> None:
    responses = check(archive, "STUDY", {"PatientID": "PAT001", "PatientBirthDate": "",
                                         "StudyDescription": "", "Manufacturer": ""},
                      lambda ds: ds.PatientID == "PAT001")
    for rsp in responses:
        assert rsp.Manufacturer == "BurnStation tests"
        assert rsp.PatientBirthDate == "19700101"
        assert rsp.StudyDescription.startswith("STUDY ")


def test_only_requested_keys_are_returned(archive) -> None:
    responses = run_find(archive, "STUDY", {"StudyInstanceUID": "", "PatientID": "PAT002"})
    assert len(responses) == 1
    keywords = {e.keyword for e in responses[0]} - {"SpecificCharacterSet", "QueryRetrieveLevel"}
    assert keywords <= {"StudyInstanceUID", "PatientID", "RetrieveAETitle"}


def test_keys_of_a_lower_level_come_back_empty(archive) -> None:
    """Modality or SeriesDescription in a STUDY query: no single instance speaks for the study."""
    responses = run_find(archive, "STUDY", {"AccessionNumber": "ACC2", "StudyInstanceUID": "", "Modality": "",
                                            "SeriesDescription": "", "NumberOfSeriesRelatedInstances": ""})
    assert len(responses) == 1
    for keyword in ("Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances"):
        assert keyword in responses[0] and responses[0][keyword].value in (None, "", []), keyword


# --------------------------------------------------------------------------- SERIES and IMAGE level


def test_series_level(archive) -> None:
    sent = archive[1]
    study = next(ds.StudyInstanceUID for ds in sent if ds.AccessionNumber == "ACC2")
    responses = check(archive, "SERIES", {"StudyInstanceUID": study, "Modality": "", "SeriesNumber": "",
                                          "NumberOfSeriesRelatedInstances": ""},
                      lambda ds: ds.StudyInstanceUID == study)
    for rsp in responses:
        mine = [ds for ds in sent if ds.SeriesInstanceUID == rsp.SeriesInstanceUID]
        assert int(rsp.NumberOfSeriesRelatedInstances) == len(mine)
        assert rsp.Modality == mine[0].Modality
        assert int(rsp.SeriesNumber) == int(mine[0].SeriesNumber)
    check(archive, "SERIES", {"StudyInstanceUID": study, "Modality": "MR"},
          lambda ds: ds.StudyInstanceUID == study and ds.Modality == "MR")
    # patient root: patient and study keys given
    check(archive, "SERIES", {"PatientID": "PAT001", "StudyInstanceUID": study, "SeriesDescription": "CT*"},
          lambda ds: ds.StudyInstanceUID == study and ds.SeriesDescription.startswith("CT"), model="-P")


def test_series_level_study_root_across_studies(archive) -> None:
    check(archive, "SERIES", {"Modality": "CT"}, lambda ds: ds.Modality == "CT")


def test_image_level(archive) -> None:
    sent = archive[1]
    series = next(ds.SeriesInstanceUID for ds in sent if ds.AccessionNumber == "ACC1")
    study = next(ds.StudyInstanceUID for ds in sent if ds.SeriesInstanceUID == series)
    responses = check(archive, "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series,
                                         "InstanceNumber": "", "SOPClassUID": "", "Rows": ""},
                      lambda ds: ds.SeriesInstanceUID == series)
    by_uid = {ds.SOPInstanceUID: ds for ds in sent}
    for rsp in responses:
        ds = by_uid[rsp.SOPInstanceUID]
        assert int(rsp.InstanceNumber) == int(ds.InstanceNumber)
        assert rsp.SOPClassUID == ds.SOPClassUID
        assert int(rsp.Rows) == int(ds.Rows)  # not in the index: read from the file
    check(archive, "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series, "InstanceNumber": "2"},
          lambda ds: ds.SeriesInstanceUID == series and int(ds.InstanceNumber) == 2)


def test_image_level_uid_list(archive) -> None:
    sent = archive[1]
    wanted = [sent[0].SOPInstanceUID, sent[4].SOPInstanceUID, sent[-1].SOPInstanceUID]
    check(archive, "IMAGE", {"SOPInstanceUID": "\\".join(wanted)}, lambda ds: ds.SOPInstanceUID in wanted)
    check(archive, "IMAGE", {"PatientID": sent[-1].PatientID, "StudyInstanceUID": sent[-1].StudyInstanceUID,
                             "SeriesInstanceUID": sent[-1].SeriesInstanceUID, "SOPInstanceUID": "\\".join(wanted)},
          lambda ds: ds.SOPInstanceUID == sent[-1].SOPInstanceUID, model="-P")


def test_bad_level_is_refused(archive) -> None:
    st, _sent, out = archive
    proc, responses = findscu(st.port, {"QueryRetrieveLevel": "FOO", "PatientID": ""}, out)
    assert responses == []
    assert "Success" not in proc.stderr, proc.stderr
