"""Robots end to end: storescu → station (burner + driver processes) → the vendor job files →
the hardware simulator (`burnstation-sim`, its own process) → discs in its output bin.

The drivers meet the simulator only through the spool folders, as they would meet TD Bridge or
PTBurn. Every wait polls (the CLI, the bin folder) with a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support import BIN, Station, burnstation, dcmtk, write_study
from support import wait_for_named as wait_for  # (what, check, timeout, every): also imported from here

from drivers.epson.jdf import parse_jdf
from drivers.primera.jrq import parse_jrq

pytestmark = pytest.mark.station  # every test here starts a station process (tests/tiers.py)

TIMEOUT = 60.0
JDF_KEYS = ["JOB_ID", "PUBLISHER", "COPIES", "DISC_TYPE", "FORMAT", "COMPARE", "CLOSE_DISC", "IMAGE",
            "VOLUME_LABEL", "LABEL", "REPLACE_FIELD"]  # with a .tdd design configured
JRQ_HEAD = ["JobID", "ClientID", "Importance", "ImageFile", "ImageType", "CloseDisc", "VerifyDisc",
            "RejectIfNotBlank", "Copies", "PrintLabel"]
JRQ_TAIL = ["VolumeName", "RobotName"]
NASTY_NAME = "DOE^JOHN\nDATA=/etc"


@dataclass
class Rig:
    station: Station
    sim: subprocess.Popen
    spool: Path
    root: Path

    @property
    def data(self) -> Path:
        return self.station.data

    def ctl(self, robot: str, *command: str) -> str:
        proc = subprocess.run([str(BIN / "burnstation-sim"), "ctl", "--root", str(self.root), robot, *command],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    def send(self, aet: str, files: list[Path]) -> None:
        result = dcmtk("storescu", "-aec", aet, "127.0.0.1", str(self.station.port), *map(str, files))
        assert result.returncode == 0, result.stdout + result.stderr

    def jobs(self) -> list[dict[str, Any]]:
        return json.loads(burnstation(self.data, "jobs", "list", "--json").stdout)["jobs"]

    def job(self, job_id: str) -> dict[str, Any]:
        return json.loads(burnstation(self.data, "jobs", "show", job_id, "--json").stdout)

    def new_job(self, known: set[str]) -> dict[str, Any]:
        return wait_for("a new job", lambda: next((j for j in self.jobs() if j["id"] not in known), None))

    def final(self, job_id: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        return wait_for(f"job {job_id} to finish", lambda: (lambda j: j if j["state"] in (
            "done", "failed", "cancelled") else None)(self.job(job_id)), timeout)

    def bin(self, robot: str) -> Path:
        return self.root / "bin" / robot


def start_sim(spool: Path, root: Path, speed: str, robots: str = "epson,primera") -> subprocess.Popen:
    log = open(root.parent / "sim.log", "ab")  # noqa: SIM115 - lives as long as the process
    sim = subprocess.Popen([str(BIN / "burnstation-sim"), "--spool", str(spool), "--root", str(root),
                            "--robots", robots, "--speed", speed], stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    for name in [r.split(":")[-1] for r in robots.split(",")]:
        wait_for(f"simulated robot {name}", lambda n=name: (root / "devices" / f"{n}.json").exists(), 20)
    return sim


@contextlib.contextmanager
def rig(tmp_path: Path, speed: str = "0", roles: dict[str, str] | None = None, mode: str = "image",
        robot_options: dict[str, dict[str, Any]] | None = None, **options: Any) -> Iterator[Rig]:
    """Simulator + station with one robot per entry of `roles` (name = kind); `options` go into each
    robot's configuration (driver settings such as status_timeout), `robot_options[name]` into one."""
    roles = roles or {"epson": "epson", "primera": "primera"}
    spool, root = tmp_path / "spool", tmp_path / "sim"
    root.mkdir()
    sim = start_sim(spool, root, speed, ",".join(roles))
    station = Station(tmp_path / "data", burn__delay_seconds=3)
    for name, role in roles.items():
        burnstation(station.data, "robots", "add", name, "--driver", name, "--path", str(spool / name),
                    "--role", role, "--media", "CD,DVD", "--mode", mode)
    if options or robot_options:
        from appliance.burn.robots import add_robot, get_robot
        from appliance.config import Settings

        settings = Settings(station.data)
        for name in roles:
            add_robot(settings, {**get_robot(settings, name), **options, **(robot_options or {}).get(name, {})})
    try:
        station.start()
        r = Rig(station, sim, spool, root)
        def online() -> bool:
            lines = burnstation(station.data, "robots", "list").stdout.splitlines()
            return sum(1 for ln in lines if ln.split()[:1] and ln.split()[0] in roles and " online " in ln) == len(roles)

        wait_for("the robots online", online, 30)
        yield r
    finally:
        station.stop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sim.pid, signal.SIGTERM)
        sim.wait(15)


def job_file(folder: Path, ext: str) -> Path:
    files = list(folder.glob(f"*.{ext}"))
    assert len(files) == 1, f"expected one .{ext} in {folder}: {sorted(p.name for p in folder.iterdir())}"
    return files[0]


def disc_listing(image: Path) -> set[str]:
    out = subprocess.run(["xorriso", "-indev", str(image), "-find", "/", "-maxdepth", "1"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return {line.strip().strip("'").lstrip("/") for line in out.stdout.splitlines() if line.strip()}


def check_disc(image: Path, tmp: Path, verify_dicomdir: bool = True) -> None:
    """The disc checks of the burn pipeline: PDI layout, and a DICOMDIR dciodvfy has no error with."""
    names = disc_listing(image)
    for name in ("DICOMDIR", "README.TXT", "INDEX.HTM", "IHE_PDI", "DICOM"):
        assert name in names, f"{name} missing on {image}: {sorted(names)}"
    if not verify_dicomdir:
        return
    out = tmp / f"dicomdir-{image.parent.name}"
    out.mkdir()
    got = subprocess.run(["xorriso", "-osirrox", "on", "-indev", str(image), "-extract", "/DICOMDIR",
                          str(out / "DICOMDIR")], capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    report = subprocess.run(["/usr/bin/dciodvfy", str(out / "DICOMDIR")], capture_output=True, text=True, timeout=60)
    text = report.stdout + report.stderr
    assert "BasicDirectory" in text and "Error" not in text, text


def jrq_keys(pairs: list[tuple[str, str]]) -> list[str]:
    keys = [k for k, _ in pairs]
    merges = keys.count("MergeField")
    assert merges >= 2
    assert keys == JRQ_HEAD + ["MergeField"] * merges + JRQ_TAIL, keys
    return keys


def test_epson_and_primera_burn_with_exactly_the_expected_keys(tmp_path: Path) -> None:
    """_E → one disc from the Epson simulator, _P → one from the Primera one; a patient name with a
    line break and `DATA=/etc` adds no key to either job file (nor to the merge file). Both robots
    have a label design (.tdd, .STD) the merge fields fill, in the robot's code page (cp1252 keeps
    MÜLLER; ascii cannot spell 山田, so the Patient ID stands in)."""
    designs = {"epson": tmp_path / "burnstation.tdd", "primera": tmp_path / "burnstation.std"}
    for design in designs.values():
        design.write_bytes(b"design stand-in")
    with rig(tmp_path, robot_options={k: {"label_template": str(v)} for k, v in designs.items()}) as r:
        seen: set[str] = set()
        made = {}
        for aet, robot, name in (("BURNSTATION_E", "epson", "MÜLLER^HANS"), ("BURNSTATION_P", "primera", "山田^花子"),
                                 ("BURNSTATION_E", "epson", NASTY_NAME), ("BURNSTATION_P", "primera", NASTY_NAME)):
            files = write_study(tmp_path / f"in-{len(made)}", n_series=1, per_series=2, patient_name=name,
                                patient_id=f"P{len(made)}", charset="ISO_IR 192")
            r.send(aet, files)
            job = r.new_job(seen)
            seen.add(job["id"])
            made[job["id"]] = (robot, name)
        for job_id, (robot, _) in made.items():
            done = r.final(job_id)
            assert done["state"] == "done" and done["robot"] == robot, done
    for job_id, (robot, name) in made.items():
        out = r.bin(robot) / job_id
        assert out.is_dir(), sorted(p.name for p in r.bin(robot).iterdir())
        image = job_file(out, "iso")
        check_disc(image, tmp_path, verify_dicomdir=name != NASTY_NAME)  # dciodvfy rightly flags a LF in a PN
        if robot == "epson":
            text = job_file(out, "JDF").read_bytes().decode("cp1252")
            pairs = parse_jdf(text)
            assert [k for k, _ in pairs] == JDF_KEYS, text
            values = dict(pairs)
            assert values["JOB_ID"] == job_id and values["DISC_TYPE"] == "CD" and values["FORMAT"] == "JOLIET"
            assert values["LABEL"] == str(designs["epson"])
            merge = next((out / "label").glob("*FIELDS*")).read_bytes().decode("cp1252")
            lines = [ln for ln in merge.split("\r\n") if ln]
            assert all(ln.count("=") == 1 for ln in lines), merge
            assert [ln.split("=")[0] for ln in lines][:2] == ["patient_name", "patient_id"]
            if name != NASTY_NAME:
                assert lines[0] == "patient_name=MÜLLER, HANS", merge  # cp1252 holds Ü
        else:
            text = job_file(out, "JRQ").read_bytes().decode("ascii")
            pairs = parse_jrq(text)
            jrq_keys(pairs)
            values = dict(pairs)
            assert values["JobID"] == job_id and values["PrintLabel"] == str(designs["primera"])
            merged = [v for k, v in pairs if k == "MergeField"]
            patient_id = f"P{list(made).index(job_id)}"
            assert merged[1] == patient_id
            if name != NASTY_NAME:
                assert merged[0] == patient_id  # 山田 cannot be spelled in ascii
        assert "/etc" not in [v for _, v in pairs], text
        assert len(text.splitlines()) == len(pairs)  # one line per key: nothing split a line


def test_input_empty_waits_then_write_error_fails_and_retry_succeeds(tmp_path: Path) -> None:
    robots = {"epson": ("BURNSTATION_E", "input stacker empty"), "primera": ("BURNSTATION_P", "Input bin empty")}
    with rig(tmp_path) as r:
        seen: set[str] = set()
        waiting = {}
        for robot, (aet, _) in robots.items():
            r.ctl(robot, "fault", "input_empty", "on")
            r.send(aet, write_study(tmp_path / f"in-{robot}", n_series=1, per_series=1))
            waiting[robot] = r.new_job(seen)["id"]
            seen.add(waiting[robot])
        for robot, job_id in waiting.items():
            words = robots[robot][1]
            job = wait_for(f"{robot}'s message", lambda j=job_id, w=words: (
                lambda x: x if w in x["message"] else None)(r.job(j)))
            assert job["state"] in ("submitted", "burning"), job
        for robot, job_id in waiting.items():
            for _ in range(2):  # two more passes of its driver (each rewrites the row): it waits, it does not fail
                since = r.job(job_id)["updated_at"]
                job = wait_for(f"{robot}'s driver to poll {job_id} again", lambda j=job_id, s=since: (
                    lambda x: x if x["updated_at"] > s else None)(r.job(j)))
                assert job["state"] in ("submitted", "burning"), job
        for robot in waiting:
            r.ctl(robot, "fault", "input_empty", "off")
            r.ctl(robot, "refill")
        for robot, job_id in waiting.items():
            assert r.final(job_id)["state"] == "done"
            assert (r.bin(robot) / job_id).is_dir()

        bad = {}
        for robot, (aet, _) in robots.items():
            r.ctl(robot, "fault", "write_error", "1", "on")
            r.send(aet, write_study(tmp_path / f"in2-{robot}", n_series=1, per_series=1))
            bad[robot] = r.new_job(seen)["id"]
            seen.add(bad[robot])
        for robot, job_id in bad.items():
            failed = r.final(job_id)
            assert failed["state"] == "failed", failed
            text = failed.get("error") or failed["message"]
            if robot == "epson":
                assert failed["error_code"].startswith("CAN") and "device fault" in text, failed
            else:
                assert failed["error_code"] == "18" and "record (write) error" in text, failed
            assert "attempt 2" in burnstation(r.data, "jobs", "retry", job_id).stdout
        for robot, job_id in bad.items():
            again = r.final(job_id)
            assert again["state"] == "done" and again["robot"] == robot and again["attempts"] == 2, again
            assert (r.bin(robot) / f"{job_id}-2").is_dir()


def test_data_mode_and_a_job_of_two_discs(tmp_path: Path) -> None:
    """`--mode data`: DATA= / Data= lines name the disc's staged tree instead of an image; a job too big
    for one disc becomes one robot job per disc (`<job>-D1of2`, `<job>-D2of2`)."""
    from appliance.burn import media

    with rig(tmp_path, mode="data") as r:
        seen: set[str] = set()
        made = {}
        for aet, robot in (("BURNSTATION_E", "epson"), ("BURNSTATION_P", "primera")):
            r.send(aet, write_study(tmp_path / f"d-{robot}", n_series=1, per_series=1))
            job = r.new_job(seen)
            seen.add(job["id"])
            made[job["id"]] = robot
        for job_id, robot in made.items():
            done = r.final(job_id)
            assert done["state"] == "done" and done["robot"] == robot, done
            if robot == "epson":  # no .tdd design configured here: every job says so
                assert "no label design: disc will be unprinted" in done["message"], done

        files = write_study(tmp_path / "big-a", n_series=1, per_series=2, rows=256, cols=256, patient_id="BIG")
        files += write_study(tmp_path / "big-b", n_series=1, per_series=2, rows=256, cols=256, patient_id="BIG")
        study = sum(f.stat().st_size for f in files) // 2
        capacity_kb = (media.FIXED_OVERHEAD + media.PER_SERIES_OVERHEAD + study) // 1000 + 200
        burnstation(r.data, "config", "set", f"burn.capacity_override_kb={capacity_kb}")
        r.send("BURNSTATION_E", files)
        split = r.new_job(seen)
        done = r.final(split["id"])
        assert done["state"] == "done" and len(done["discs"]) == 2, done
    for number in (1, 2):
        out = r.bin("epson") / f"{split['id']}-D{number}of2"
        pairs = dict(parse_jdf(job_file(out, "JDF").read_bytes().decode()))
        assert pairs["JOB_ID"] == out.name
        assert "DICOMDIR" in {p.name for p in out.rglob("*")}
    for job_id, robot in made.items():
        out = r.bin(robot) / job_id
        if robot == "epson":
            pairs = parse_jdf(job_file(out, "JDF").read_bytes().decode())
            data = [v for k, v in pairs if k == "DATA"]
            # the disc root: DATA=<source> alone, without the TAB and destination
            assert len(data) == 1 and "\t" not in data[0] and "IMAGE" not in dict(pairs)
        else:
            pairs = parse_jrq(job_file(out, "JRQ").read_bytes().decode())
            assert [k for k, _ in pairs].count("Data") == 1 and dict(pairs)["DataImageType"] == "JOLIET"
        burned = {p.name for p in out.rglob("*")}  # what the simulator put on the disc
        for name in ("DICOMDIR", "README.TXT", "INDEX.HTM", "IHE_PDI", "DICOM"):
            assert name in burned, (robot, sorted(burned))



def test_epson_robot_without_label_design_says_so(tmp_path: Path) -> None:
    """TD Bridge prints only from a .tdd design: `robots add` and `robots list` say when there is none."""
    data = tmp_path / "data"
    burnstation(data, "init")
    out = burnstation(data, "robots", "add", "pp100", "--driver", "epson", "--path", str(tmp_path / "spool"),
                      "--role", "epson").stdout
    assert "no label design: disc will be unprinted" in out and "label_template" in out
    assert "no label design: disc will be unprinted" in burnstation(data, "robots", "list").stdout
    out = burnstation(data, "robots", "add", "pp100", "--driver", "epson", "--path", str(tmp_path / "spool"),
                      "--role", "epson", "--option", "label_template=C:\\Designs\\burnstation.tdd").stdout
    assert "no label design" not in out and "no label design" not in burnstation(data, "robots", "list").stdout
    bad = burnstation(data, "robots", "add", "pp100", "--driver", "epson", "--path", str(tmp_path / "spool"),
                      "--option", "encoding=utf-8", check=False)
    assert bad.returncode != 0 and "never UTF" in bad.stderr
