"""Short smoke runs of the reliability suite (tests/reliability/): the long ones are `make faults`
and `make soak`; these keep each kind of fault and a few seconds of soak in the normal suite, so a
change that breaks recovery (or the harness) shows here first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "reliability"))

import faults  # noqa: E402
import soak  # noqa: E402
import workload  # noqa: E402

pytestmark = pytest.mark.station  # every test here starts a station process (tests/tiers.py)


def test_each_fault_once_under_the_mixed_workload(tmp_path: Path) -> None:
    """SIGKILL of the dicom process mid-ingest, the disk full during ingest (the `dicom.min_free_mb`
    threshold: no mount needed), a robot's spool folder gone and back, a robot offline mid-job:
    every acknowledged instance stored and indexed, the discs exactly what grouping says, no job
    stuck, the station answering again."""
    result = faults.run_kind(["kill:dicom", "disk-ingest", "spool-gone", "robot-offline"], tmp_path, seed=1,
                             repeat=1, seconds=24, senders=3, mount=False)
    assert result["injected"] == 4
    assert result["counts"].get("associations ok", 0) > 0 and result["acked"] > 0, result
    assert result["counts"].get("instances refused: out of resources", 0) > 0, "the disk-full window refused nothing"
    assert not result["problems"], result["problems"]


@pytest.mark.skipif(bool(workload.faketime_available()), reason=workload.faketime_available() or "")
def test_wall_clock_jumps_an_hour_forward_and_back(tmp_path: Path) -> None:
    """libfaketime on the station's processes only: +1 h, back, -1 h, back, under the workload."""
    result = faults.run_kind("clock", tmp_path, seed=2, repeat=1, seconds=20, senders=3)
    assert result["injected"] == 1 and result["acked"] > 0, result
    assert not result["problems"], result["problems"]


def test_a_few_seconds_of_soak(tmp_path: Path) -> None:
    """The soak's whole path (8 senders, 5 scanners, 3 web users, robot faults, /proc sampling); a
    disc-making association every 3 s per sender, so that 12 s reach every AE title."""
    result = soak.run(tmp_path, seconds=12, seed=3, disc_gap=3)
    assert result["acked"] > 0 and result["counts"].get("worklist queries ok", 0) > 0, result
    assert {"dicom", "web", "burner", "supervisor"} <= {t["process"] for t in result["trends"]}
    problems = [p for p in result["problems"] if "not flat" not in p]  # 12 s say nothing about trends
    assert not problems, problems
