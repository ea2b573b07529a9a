"""Helpers for the hardware simulator tests (the simulator always runs as its own process), and
unit tests of its small parsers."""

from __future__ import annotations

import configparser
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pycdlib
import pytest

REPO = Path(__file__).resolve().parent.parent


def dicomdir_bytes() -> bytes:
    """A (minimal) DICOM Part 10 file: preamble, DICM, a meta group length element."""
    return b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\x00\x00\x00\x00"


def make_iso(path: Path, dicomdir: bool = True, udf: bool = False, extra: int = 0) -> Path:
    """A small ISO 9660 + Joliet (+ UDF) image holding DICOMDIR and a DICOM/ folder."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, udf="2.60" if udf else None, vol_ident="TESTDISC")

    def add(data: bytes, iso_path: str, name: str) -> None:
        kw = {"iso_path": iso_path, "joliet_path": name}
        if udf:
            kw["udf_path"] = name
        iso.add_fp(io.BytesIO(data), len(data), **kw)

    iso.add_directory("/DICOM", joliet_path="/DICOM", **({"udf_path": "/DICOM"} if udf else {}))
    if dicomdir:
        add(dicomdir_bytes(), "/DICOMDIR.;1", "/DICOMDIR")
    add(b"x" * (1000 + extra), "/DICOM/IM1.;1", "/DICOM/IM1")
    add(b"README\r\n", "/README.TXT;1", "/README.TXT")
    iso.write(str(path))
    iso.close()
    return path


def make_tree(folder: Path) -> Path:
    (folder / "DICOM").mkdir(parents=True)
    (folder / "DICOMDIR").write_bytes(dicomdir_bytes())
    (folder / "DICOM" / "IM1").write_bytes(b"y" * 500)
    return folder


def wait_for(condition: Callable[[], object], timeout: float = 15.0, what: str = "condition") -> object:
    """Poll until `condition()` returns something truthy (exceptions count as not yet)."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
        except (OSError, ValueError, KeyError, configparser.Error) as exc:
            last_exc, value = exc, None
        if value:
            return value
        time.sleep(0.03)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def parse_ini(path: Path, last_section: str) -> configparser.ConfigParser:
    """Parse a status file; raises when it is caught half-written (it must end with a complete
    `last_section`, the section the engine writes last)."""
    text = path.read_bytes().decode("utf-8")
    if not text.endswith("\r\n\r\n"):
        raise ValueError("status file caught half-written")
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # keep key case
    parser.read_string(text)
    if not parser.has_section(last_section):
        raise ValueError("status file caught half-written")
    return parser


def read_ini(path: Path, last_section: str) -> configparser.ConfigParser:
    """A complete status file (retries while the engine is rewriting it)."""
    return wait_for(lambda: parse_ini(path, last_section), timeout=5, what=f"a complete {path.name}")


def submit(folder: Path, name: str, text: str | bytes) -> Path:
    """Write a job file aside and rename it in, as a client must."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(data)
    target = folder / name
    os.replace(tmp, target)
    return target


class Sim:
    """`burnstation-sim` as a real process."""

    def __init__(self, tmp: Path, robots: str = "epson,primera", speed: str = "0", faults: str = "",
                 extra: tuple[str, ...] = ()) -> None:
        self.spool = tmp / "spool"
        self.root = tmp / "simroot"
        self.robots = [item.split(":")[-1] for item in robots.split(",")]
        self.args = [sys.executable, "-m", "burnstation_sim", "--spool", str(self.spool), "--root",
                     str(self.root), "--robots", robots, "--speed", speed]
        if faults:
            self.args += ["--faults", faults]
        self.args += list(extra)
        self.log = tmp / "sim.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Sim:
        self.spool.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)
        for name in self.robots:
            try:
                wait_for(lambda n=name: self.device(n) is not None and self.proc.poll() is None, timeout=30,
                         what=f"device {name} announced")
            except AssertionError:
                self.stop()
                raise AssertionError(f"simulator did not start:\n{self.output()}") from None
        return self

    def device(self, name: str) -> dict | None:
        path = self.root / "devices" / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._log.close()
        return rc

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ctl(self, robot: str, *words: str, check: bool = True, process: bool = False) -> subprocess.CompletedProcess:
        """`burnstation-sim ctl`: its main in this process (the client only drops a command file and
        waits for the reply; a process start each was most of these tests' time), or a real process."""
        argv = ["ctl", "--root", str(self.root), robot, *words]
        if process:
            result = subprocess.run([sys.executable, "-m", "burnstation_sim", *argv], capture_output=True, text=True,
                                    timeout=30, cwd=REPO)
        else:
            from burnstation_sim.control import ctl_main

            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = ctl_main(argv[1:])
                except SystemExit as exc:  # argparse
                    code = exc.code if isinstance(exc.code, int) else 2
            result = subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def sync(self) -> None:
        """A round trip through the simulator's loop: whatever was seen on disk before this call has
        its status-file rewrite finished after it (each tick renames, then rewrites the status)."""
        self.ctl(self.robots[0], "status")

    def wait_ext(self, folder: Path, stem: str, ext: str, timeout: float = 15.0) -> Path:
        """Wait for a job file to reach `ext`, then for the status files written with that step."""
        path = wait_ext(folder, stem, ext, timeout)
        self.sync()
        return path

    def status(self, robot: str) -> dict:
        return json.loads(self.ctl(robot, "status").stdout)

    def __enter__(self) -> Sim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        rc = self.stop()
        assert rc == 0, f"simulator exit code {rc}\n{self.output()}"


def jobfile(folder: Path, stem: str) -> Path | None:
    """The job file whatever its current extension."""
    found = [p for p in folder.glob(stem + ".*") if not p.name.startswith(".")]
    return found[0] if len(found) == 1 else None


def wait_ext(folder: Path, stem: str, ext: str, timeout: float = 15.0) -> Path:
    path = folder / f"{stem}.{ext}"
    wait_for(path.exists, timeout, what=f"{path.name} (have {[p.name for p in folder.iterdir()]})")
    return path


# -- unit tests of the small parsers (in-process) --------------------------------------------------
def test_fault_spec_parsing():
    from burnstation_sim.control import CommandError, parse_fault_spec

    assert parse_fault_spec("epson:cover_open, primera:write_error=2") == [
        ("epson", ["fault", "cover_open", "on"]), ("primera", ["fault", "write_error", "2", "on"])]
    for bad in ("epson", "epson:melted", "epson:write_error", "epson:write_error=0"):
        with pytest.raises(CommandError):
            parse_fault_spec(bad)


def test_robot_list_parsing():
    from burnstation_sim.simulator import parse_robots

    specs = parse_robots("epson,primera:bravo2")
    assert [(s.kind, s.name) for s in specs] == [("epson", "epson"), ("primera", "bravo2")]
    for bad in ("", "rimage", "epson,epson", "epson:a/b"):
        with pytest.raises(ValueError):
            parse_robots(bad)


def test_image_check(tmp_path):
    from burnstation_sim.discs import check_image

    assert check_image(make_iso(tmp_path / "a.iso")) is None
    assert check_image(make_iso(tmp_path / "u.iso", udf=True)) is None
    assert "no DICOMDIR" in check_image(make_iso(tmp_path / "n.iso", dicomdir=False))
    (tmp_path / "junk.iso").write_bytes(b"\0" * 70000)
    assert check_image(tmp_path / "junk.iso") is not None


def test_realistic_timing_scales_with_speed():
    from burnstation_sim import epson
    from burnstation_sim.robot import Job

    job = Job(job_id="J", path=Path("J.JDF"), received_name="J.JDF", size=650_000_000, media="CD")
    slow, fast = epson.make_robot("e", 1.0), epson.make_robot("e", 0.1)
    assert 150 < slow.seconds("write", job) < 250  # ~3 min for a full CD at 24x
    assert abs(fast.seconds("write", job) - slow.seconds("write", job) / 10) < 1e-6
    assert epson.make_robot("e", 0).seconds("print", job) == 0


def test_encoding_option_parsing():
    from burnstation_sim.simulator import RobotSpec, parse_encodings

    robots = [RobotSpec("epson", "epson"), RobotSpec("primera", "bravo")]
    assert parse_encodings(["epson=CP932", "bravo=ascii"], robots) == {"epson": "cp932", "bravo": "ascii"}
    for bad in ("epson", "nosuch=cp1252", "epson=klingon"):
        with pytest.raises(ValueError):
            parse_encodings([bad], robots)
