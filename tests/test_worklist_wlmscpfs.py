"""Differential test: the station's MWL C-FIND against dcmtk's wlmscpfs, serving the same `.wl` files.

dcmtk's example worklist (examples/wlistdb) and example queries (examples/wlistqry) are turned
into files with dump2dcm; wlmscpfs serves them from `<dir>/OFFIS/` (with its lockfile), the
station from `<data>/worklist/`. Each query goes through dcmtk's `findscu -W` to both; the
returned items must be the same, with the same values for the requested attributes.

Comparison: an attribute returned empty and one left out count as the same "no value". That is
where wlmscpfs departs from PS3.4: it leaves a requested sequence out of the response when the
item has none, where C.2.2.1 asks for every requested key to be returned (zero-length when
there is no value). `test_requested_sequence_returned_empty` asserts the station's standard
behaviour and wlmscpfs' deviation explicitly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from support import Station, dcmtk, free_port, wait_port

EXAMPLES = Path("/usr/share/doc/dcmtk/examples")
WLMSCPFS = Path("/usr/bin/wlmscpfs")

# dcmtk (wlmscpfs and its examples) is installed by `make test`: its absence is a failure, not a skip
assert WLMSCPFS.exists() and (EXAMPLES / "wlistdb").is_dir(), "install dcmtk (make deps)"

SPS = "ScheduledProcedureStepSequence[0]"
RETURN = ["PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID", "RequestedProcedureID",
          f"{SPS}.Modality", f"{SPS}.ScheduledStationAETitle", f"{SPS}.ScheduledProcedureStepStartDate",
          f"{SPS}.ScheduledProcedureStepStartTime", f"{SPS}.ScheduledProcedureStepID"]


def with_keys(**keys: str) -> list[str]:
    """Return keys plus matching keys (keyword → value; SPS_ prefix = inside the SPS sequence)."""
    out = []
    for key in RETURN:
        name = key.split(".")[-1]
        wanted = keys.get(("SPS_" if key.startswith(SPS) else "") + name)
        out.append(f"{key}={wanted}" if wanted is not None else key)
    return out


# queries on the keys scanners use (values from the example worklist); the name says what is matched
SCANNER_QUERIES = {
    "station_aet_single": with_keys(SPS_ScheduledStationAETitle="AA32"),  # also an entity with AA32\AA33
    "station_aet_unknown": with_keys(SPS_ScheduledStationAETitle="NOSUCH"),
    "date_single": with_keys(SPS_ScheduledProcedureStepStartDate="19960406"),
    "date_range": with_keys(SPS_ScheduledProcedureStepStartDate="19960101-19960430"),
    "date_open_start": with_keys(SPS_ScheduledProcedureStepStartDate="-19951231"),
    "date_open_end": with_keys(SPS_ScheduledProcedureStepStartDate="19960401-"),
    "time_range": with_keys(SPS_ScheduledProcedureStepStartTime="080000-120000"),
    "datetime_combined": with_keys(SPS_ScheduledProcedureStepStartDate="19960101-19960423",
                                   SPS_ScheduledProcedureStepStartTime="120000-110900"),
    "station_and_date": with_keys(SPS_ScheduledStationAETitle="AA32", SPS_ScheduledProcedureStepStartDate="19960103"),
    "modality": with_keys(SPS_Modality="CT"),
    "modality_and_date_range": with_keys(SPS_Modality="CR", SPS_ScheduledProcedureStepStartDate="19960101-19961231"),
    "patient_name_exact": with_keys(PatientName="HAYDN^FRANZ^JOSEPH"),
    "patient_name_wildcard": with_keys(PatientName="MOZ*"),
    "patient_name_inner_wildcard": with_keys(PatientName="*LUDWIG*"),
    "patient_name_partial_no_wildcard": with_keys(PatientName="HAYDN"),
    "patient_id": with_keys(PatientID="AV35674"),
    "accession": with_keys(AccessionNumber="00003"),
    "patient_name_lower_case": with_keys(PatientName="mozart*"),
    "performing_physician_wildcard": with_keys(SPS_ScheduledPerformingPhysicianName="JOHN*"),
    "requested_procedure_id": with_keys(RequestedProcedureID="RP472"),
    "patient_and_modality": with_keys(PatientID="HF", SPS_Modality="CR"),
    "universal_star": with_keys(PatientName="*"),
}


def _norm(ds: Dataset) -> tuple:
    """A response as a hashable value; empty attributes dropped (no value = left out)."""
    out = []
    for elem in ds:
        if elem.tag.group == 0x0002 or elem.tag == 0x00080005:
            continue
        if elem.VR == "SQ":
            items = tuple(sorted(_norm(item) for item in elem.value))
            if items:
                out.append((elem.keyword, items))
        elif elem.value not in (None, "", b""):
            value = elem.value
            text = "\\".join(str(v) for v in value) if isinstance(value, list | tuple) or \
                hasattr(value, "__iter__") and not isinstance(value, str | bytes) and elem.VR != "PN" else str(value)
            out.append((elem.keyword, text))
    return tuple(sorted(out))


def _keys(query: list[str]) -> list[str]:
    return [a for key in query for a in ("-k", key)]


@pytest.fixture(scope="module")
def peers(tmp_path_factory):
    root = tmp_path_factory.mktemp("wl")
    db = root / "wlmdb" / "OFFIS"
    db.mkdir(parents=True)
    (db / "lockfile").touch()
    for dump in sorted((EXAMPLES / "wlistdb" / "OFFIS").glob("*.dump")):
        dcmtk("dump2dcm", "-q", str(dump), str(db / f"{dump.stem}.wl"), check=True)
    queries = root / "queries"
    queries.mkdir()
    for dump in sorted((EXAMPLES / "wlistqry").glob("*.dump")):
        dcmtk("dump2dcm", "-q", str(dump), str(queries / f"{dump.stem}.dcm"), check=True)
    station = Station(root / "data")
    (station.data / "worklist").mkdir(exist_ok=True)
    for wl in db.glob("*.wl"):
        shutil.copy(wl, station.data / "worklist" / wl.name)
    port = free_port()
    wlm = subprocess.Popen([str(WLMSCPFS), "-dfp", str(root / "wlmdb"), "-csk", str(port)],
                           env=dict(os.environ, TCP_NODELAY="1"), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        station.start()
        wait_port(port)
        yield {"root": root, "station": station, "wlm_port": port, "queries": queries}
    finally:
        station.stop()
        wlm.terminate()
        wlm.wait(10)


def _find(port: int, aec: str, args: list[str], out: Path, files: list[str]) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    proc = dcmtk("findscu", "-W", "-X", "-od", str(out), "-aet", "SCANNER", "-aec", aec, *args, "127.0.0.1", str(port),
                 *files)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _both(peers, args: list[str], name: str, files: tuple[str, ...] = ()) -> tuple[list[Dataset], list[Dataset]]:
    root = peers["root"]
    reference = _find(peers["wlm_port"], "OFFIS", args, root / "out" / name / "wlmscpfs", list(files))
    ours = _find(peers["station"].port, "BURNSTATION", args, root / "out" / name / "station", list(files))
    return reference, ours


@pytest.mark.parametrize("query", sorted(p.stem for p in (EXAMPLES / "wlistqry").glob("*.dump")))
def test_example_queries_same_as_wlmscpfs(peers, query):
    reference, ours = _both(peers, [], query, (str(peers["queries"] / f"{query}.dcm"),))
    assert sorted(map(_norm, ours)) == sorted(map(_norm, reference))


@pytest.mark.parametrize("name", sorted(SCANNER_QUERIES))
def test_scanner_queries_same_as_wlmscpfs(peers, name):
    reference, ours = _both(peers, _keys(SCANNER_QUERIES[name]), name)
    assert sorted(map(_norm, ours)) == sorted(map(_norm, reference))


def test_differential_queries_are_selective(peers):
    """Guard against a vacuous comparison: the scanner queries return different, non-trivial sets."""
    counts = {}
    for name in ("station_aet_single", "date_range", "datetime_combined", "patient_name_wildcard", "accession",
                 "station_aet_unknown", "universal_star"):
        _ref, ours = _both(peers, _keys(SCANNER_QUERIES[name]), f"sel-{name}")
        counts[name] = len(ours)
    assert counts["universal_star"] == 10
    assert counts["station_aet_unknown"] == 0
    assert counts["accession"] == 1
    assert 0 < counts["station_aet_single"] < 10
    assert 0 < counts["patient_name_wildcard"] < 10
    # combined date-time: 19960103 16:57 is inside "19960101 12:00 .. 19960423 11:09" even though
    # 16:57 is outside 11:09-12:00 as separate ranges
    assert 0 < counts["datetime_combined"] < counts["date_range"] + 1


def test_requested_sequence_returned_empty(peers):
    """PS3.4 C.2.2.1: every requested key is returned, zero-length when the item has no value.

    wlmscpfs deviates: a requested sequence the item lacks (here the Requested Procedure Code
    Sequence, which no example item has) is left out of its responses. The station returns it
    empty, as the standard asks.
    """
    args = ["-k", "PatientName", "-k", "RequestedProcedureCodeSequence", "-k", "AccessionNumber=00003"]
    reference, ours = _both(peers, args, "empty-sequence")
    assert len(ours) == len(reference) == 1
    assert "RequestedProcedureCodeSequence" in ours[0]
    assert len(ours[0].RequestedProcedureCodeSequence) == 0
    assert "RequestedProcedureCodeSequence" not in reference[0]  # wlmscpfs' deviation


def test_wildcards_on_station_ae_title(peers):
    """PS3.4 C.2.2.2.4 allows wildcards for AE values; scanners rarely use them, but a "CT*" finds
    every CT room. wlmscpfs deviates: it matches Scheduled Station AE Title by single value only,
    so "A*" and "?B45" find nothing there."""
    expected = {"A*": {"00000", "00002", "00004", "00005", "00007", "00009"}, "?B45": {"00002", "00005"}}
    for pattern, accessions in expected.items():
        reference, ours = _both(peers, _keys(with_keys(SPS_ScheduledStationAETitle=pattern)), f"aet-{pattern[0]}")
        assert {ds.AccessionNumber for ds in ours} == accessions
        assert reference == []  # wlmscpfs' deviation


def test_study_uid_list_matching(peers):
    """List of UID matching (PS3.4 C.2.2.2.2) on Study Instance UID, an optional matching key.
    wlmscpfs does not support it as a matching key and ignores it (all 10 items come back)."""
    uids = "1.2.276.0.7230010.3.2.101\\1.2.276.0.7230010.3.2.109"
    reference, ours = _both(peers, _keys(with_keys(StudyInstanceUID=uids)), "uid-list")
    assert {ds.StudyInstanceUID for ds in ours} == set(uids.split("\\"))
    assert len(reference) == 10  # wlmscpfs ignores the key


def test_multiple_value_matching(peers):
    """PS3.4 C.2.2.2.8: a key with several values matches when any of them matches any value of the
    entity. wlmscpfs deviates: it compares "CT\\MR" as one literal value and finds nothing."""
    reference, ours = _both(peers, _keys(with_keys(SPS_Modality="CT\\MR")), "modality-list")
    modality = {ds.AccessionNumber: ds.ScheduledProcedureStepSequence[0].Modality for ds in ours}
    assert sorted(modality.values()) == ["CT", "CT", "CT", "CT", "MR", "MR"]
    assert reference == []  # wlmscpfs' deviation
