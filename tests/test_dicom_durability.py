"""What the station promised survives: kill -9 in the middle of a storescu run, and a full disk.

An instance counts as promised when dcmtk storescu logged a success status for it; after a
restart each of those is on disk, complete, and found by C-FIND at IMAGE level.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from support import DCMTK, Station, burnstation, configure, dcmtk, findscu, make_dataset, port_open, wait_for


def _write_files(folder: Path, count: int, **kw: object) -> list[Path]:
    """`count` instances of one series (one pixel set, fresh UIDs: quick to make)."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = make_dataset(study_uid=generate_uid(), series_uid=generate_uid(), rows=32, cols=32,
                      **kw)  # type: ignore[arg-type]
    paths = []
    for i in range(count):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory):
    st = Station(tmp_path_factory.mktemp("durable") / "data")
    burnstation(st.data, "nodes", "add", "CHECKER", "127.0.0.1", "104")
    st.start()
    yield st
    st.stop()


def _stored(st: Station) -> dict[str, Path]:
    return {p.stem: p for p in (st.data / "storage").rglob("*.dcm")}


def _temp_files(st: Station) -> list[Path]:
    return [p for p in (st.data / "storage").rglob("*") if p.is_file() and not p.name.endswith(".dcm")]


def test_kill_9_during_storescu_keeps_every_acknowledged_instance(station: Station, tmp_path: Path) -> None:
    files = _write_files(tmp_path / "in", 300, patient_id="PKILL")
    st = station
    env = dict(os.environ, TCP_NODELAY="1")
    sender = subprocess.Popen([str(DCMTK / "storescu"), "-v", "-aec", "BURNSTATION", "127.0.0.1", str(st.port),
                               *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env)
    acknowledged: list[str] = []
    current = None
    killed = False
    assert sender.stdout is not None
    for line in sender.stdout:
        if m := re.search(r"Sending file: (.+)$", line):
            current = m.group(1).strip()
        elif "Received Store Response (Success" in line and current:
            acknowledged.append(current)
            if len(acknowledged) == 40 and not killed:
                st.stop(signal.SIGKILL)
                killed = True
    sender.wait(60)
    assert killed, "storescu finished before the station could be killed"
    assert 40 <= len(acknowledged) < len(files), f"{len(acknowledged)} acknowledged"
    # a temp file as a crash in the middle of a write leaves it: never indexed, removed at start
    stale = st.data / "storage" / "1.2.3" / "1.2.3.4" / ".1.2.3.4.5.dcm.999.1.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")

    wait_for(lambda: not port_open(st.port), 10, "the killed station to stop listening", every=0.1)
    opened = st.log().count("(plain) as")
    st.start()
    deadline = time.monotonic() + 30
    while st.log().count("(plain) as") <= opened:  # this station's own listener, not a stranger's
        assert time.monotonic() < deadline, "the restarted station did not open its port"
        time.sleep(0.1)
    stored = _stored(st)
    assert not _temp_files(st), _temp_files(st)
    originals = {str(dcmread(p).SOPInstanceUID): dcmread(p) for p in map(Path, acknowledged)}
    for sop, original in originals.items():
        assert sop in stored, f"acknowledged {sop} is not on disk"
        copy = dcmread(stored[sop])
        assert np.array_equal(copy.pixel_array, original.pixel_array)
    proc, responses = findscu(st.port, {"QueryRetrieveLevel": "IMAGE", "PatientID": "PKILL",
                                        "SOPInstanceUID": ""}, tmp_path / "rsp", aet="CHECKER")
    found = {str(r.SOPInstanceUID) for r in responses}
    assert set(originals) <= found, f"{len(set(originals) - found)} acknowledged instances not indexed"
    assert found <= set(stored), "the index names files that are not there"
    # a file written whose commit the kill prevented (never acknowledged) is removed after the restart
    wait_for(lambda: "never indexed:" in st.log(), 30, "the restarted worker's look for unindexed files")
    assert set(_stored(st)) == found, "files on disk that the index does not name"
    # the association log says what happened to the killed association
    conn = sqlite3.connect(st.data / "state.db", timeout=10)
    try:
        rows = conn.execute("SELECT result, stored FROM associations WHERE calling_aet='STORESCU'").fetchall()
    finally:
        conn.close()
    assert [r[0] for r in rows] == ["interrupted"], rows
    assert rows[0][1] >= len(acknowledged)
    # and the station takes the rest of the study
    r = dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, files))
    assert r.returncode == 0, r.stderr
    assert len(_stored(st)) >= len(files)


def test_below_free_space_threshold_answers_a700_and_keeps_serving(station: Station, tmp_path: Path) -> None:
    st = station
    free_mb = shutil.disk_usage(st.data).free // (1024 * 1024)
    files = _write_files(tmp_path / "in", 3, patient_id="PFULL")
    configure(st.data, f"dicom.min_free_mb={free_mb + 1000}")
    deadline = time.monotonic() + 20
    probes = iter(_write_files(tmp_path / "probe", 100, patient_id="PPROBE"))
    while True:  # the running station picks the raised threshold up by itself
        r = dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), str(next(probes)))
        if r.returncode != 0 or "OutOfResources" in r.stdout + r.stderr:
            break
        assert time.monotonic() < deadline, "the station never noticed the higher threshold"
        time.sleep(0.3)
    before = _stored(st)
    r = dcmtk("storescu", "-d", "-nh", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, files))
    out = r.stdout + r.stderr
    assert out.count("DIMSE Status                  : 0xa700") == len(files), out
    assert "Received Store Response (Success" not in out, out
    assert _stored(st) == before
    assert not _temp_files(st)
    echo = dcmtk("echoscu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port))
    assert echo.returncode == 0, echo.stderr
    proc, responses = findscu(st.port, {"QueryRetrieveLevel": "IMAGE", "PatientID": "PFULL",
                                        "SOPInstanceUID": ""}, tmp_path / "rsp", aet="CHECKER")
    assert responses == []

    configure(st.data, "dicom.min_free_mb=0")
    first = str(dcmread(files[0]).SOPInstanceUID)
    deadline = time.monotonic() + 20
    while True:  # and the lower one, again without a restart
        dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), str(files[0]))
        if first in _stored(st):
            break
        assert time.monotonic() < deadline, "the station never noticed the lower threshold"
        time.sleep(0.3)
    r = dcmtk("storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port), *map(str, files))
    assert r.returncode == 0, r.stderr
    assert set(_stored(st)) - set(before) == {str(dcmread(p).SOPInstanceUID) for p in files}
