"""The same study sent twice, end to end: storescu → station → both robots of the simulator (speed 0).

A technician sends a study to `_E` and again to `_E` or `_P` for a second copy, or a modality with
two burn destinations sends both at once (two storescu processes at the same time). Every released
association must make its disc with every instance it carried, whichever association stored each
file last; the discs are read back from the simulator's output bin (robots in data mode, so the bin
holds the burned tree).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from support import DCMTK, write_study
from support import wait_for_named as wait_for
from test_robots_e2e import Rig, rig

pytestmark = pytest.mark.station  # rig() starts a station and the simulator

ROBOT = {"E": "epson", "P": "primera"}
INSTANCES = 20  # 2 series of 10: enough for two concurrent associations to interleave their stores


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory):
    """One simulator (Epson + Primera, speed 0) and one station for every case here."""
    with rig(tmp_path_factory.mktemp("resend"), mode="data") as r:
        yield r


def burned_sops(r: Rig, robot: str, job_id: str) -> dict[str, bytes]:
    """SOP Instance UID → pixel data of every DICOM file the robot burned for the job."""
    out = r.bin(robot) / job_id
    found = {}
    for path in out.rglob("*"):
        if path.is_file() and "DICOM" in path.relative_to(out).parts[:-1]:
            ds = dcmread(path)
            found[str(ds.SOPInstanceUID)] = ds.PixelData
    return found


def storescu(r: Rig, aet: str, files: list[Path]) -> subprocess.Popen:
    return subprocess.Popen([str(DCMTK / "storescu"), "-aec", aet, "127.0.0.1", str(r.station.port),
                             *map(str, files)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def two_new_jobs(r: Rig, known: set[str]) -> list[dict[str, Any]]:
    return wait_for("two new jobs", lambda: (lambda new: new if len(new) >= 2 else None)(
        [j for j in r.jobs() if j["id"] not in known]))


@pytest.mark.parametrize("titles", [("E", "P"), ("P", "E"), ("E", "E")])
def test_study_sent_twice_back_to_back_makes_two_whole_discs(shared: Rig, tmp_path: Path,
                                                            titles: tuple[str, str]) -> None:
    """Sent again at once for a second copy (the second with other pixels, as a corrected re-send):
    two discs with every instance; the second disc carries the files stored last."""
    r = shared
    known = {j["id"] for j in r.jobs()}
    first = write_study(tmp_path / "first", n_series=2, per_series=INSTANCES // 2, patient_id=f"TWICE-{''.join(titles)}")
    study_uid = str(dcmread(first[0], stop_before_pixels=True).StudyInstanceUID)
    second = []
    for path in first:  # the same instances (same UIDs), other pixel values
        ds = dcmread(path)
        ds.PixelData = bytes(b ^ 0x01 for b in ds.PixelData)
        copy = tmp_path / "second" / path.name
        copy.parent.mkdir(exist_ok=True)
        ds.save_as(copy, enforce_file_format=True)
        second.append(copy)
    r.send(f"BURNSTATION_{titles[0]}", first)
    r.send(f"BURNSTATION_{titles[1]}", second)
    made = sorted(two_new_jobs(r, known), key=lambda j: j["assoc_id"])
    assert len(made) == 2 and all(study_uid in j["study_uids"] for j in made), made
    expected = {str(dcmread(p).SOPInstanceUID): dcmread(p).PixelData for p in second}
    for job, title in zip(made, titles, strict=True):
        done = r.final(job["id"])
        assert done["state"] == "done" and done["robot"] == ROBOT[title], done
        assert done["instances"] == INSTANCES, done
        burned = burned_sops(r, ROBOT[title], job["id"])
        assert set(burned) == set(expected), f"{job['id']}: {len(burned)} of {INSTANCES} instances on the disc"
    assert burned_sops(r, ROBOT[titles[1]], made[1]["id"]) == expected  # the file stored last


@pytest.mark.parametrize("titles", [("E", "P"), ("E", "E")])
def test_study_sent_twice_at_once_makes_two_whole_discs(shared: Rig, tmp_path: Path, titles: tuple[str, str]) -> None:
    """Two storescu processes at the same time with the same instances: two discs, each whole."""
    r = shared
    known = {j["id"] for j in r.jobs()}
    files = write_study(tmp_path / "study", n_series=2, per_series=INSTANCES // 2,
                        patient_id=f"ATONCE-{''.join(titles)}")
    senders = [storescu(r, f"BURNSTATION_{t}", files) for t in titles]
    for proc in senders:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
    made = two_new_jobs(r, known)
    assert sorted(j["role"] for j in made) == sorted(ROBOT[t] for t in titles)
    uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    for job in made:
        done = r.final(job["id"])
        assert done["state"] == "done" and done["instances"] == INSTANCES, done
        burned = burned_sops(r, done["robot"], job["id"])
        assert set(burned) == uids, f"{job['id']}: {len(burned)} of {INSTANCES} instances on the disc"
