"""Shared test helpers: make DICOM files, find free ports, run a station as a real process."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DCMTK = Path("/usr/bin")
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SC_IMAGE = "1.2.840.10008.5.1.4.1.1.7"
NOT_AUTHORISED = "Unknown Status: 0x124"  # how dcmtk prints C-STORE/C-MOVE status 0x0124 (refused: not authorised)


_handed_out: set[int] = set()

# (node id, marked `station`) of the running pytest test, set by tests/tiers.py; None outside pytest
running_test: tuple[str, bool] | None = None


class UnmarkedStationTest(AssertionError):
    """A test started a station process without the `station` mark (it would run in `make test-fast`)."""


def check_station_allowed() -> None:
    """Refuse to start a station from a test that is not marked `station` (see tests/tiers.py)."""
    if running_test is not None and not running_test[1]:
        raise UnmarkedStationTest(
            f"{running_test[0]} starts a station process but is not marked `station`: add "
            "@pytest.mark.station (or a module `pytestmark = pytest.mark.station`), or use a fixture "
            "that builds the Station, so that `make test-fast` leaves it out")


def _port_slice() -> range:
    """This test process's own ports: below the kernel's ephemeral range, where no outgoing
    connection of a parallel test (whose local port the kernel picks there) can take one between
    free_port() and the server's bind, and a slice per xdist worker, so that two workers never
    hand out the same one. Empty when the ephemeral range starts too low for that."""
    try:
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    number = int(worker[2:]) if worker[2:].isdigit() else 0
    size = (ephemeral_low - 10000) // 8
    if size < 500:
        return range(0)
    low = 10000 + (number % 8) * size
    return range(low, low + size)


_PORTS = _port_slice()
_next_port = [0]


def port_free(port: int) -> bool:
    """Whether a server could bind `port` on every address now."""
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A free TCP port, never one this test process handed out before: from this process's own
    slice below the ephemeral range (`_port_slice`), else one the kernel picks (which may then be
    taken by someone's outgoing connection before the server binds it)."""
    for _ in range(len(_PORTS)):
        port = _PORTS[_next_port[0] % len(_PORTS)]
        _next_port[0] += 1
        if port not in _handed_out and port_free(port):
            _handed_out.add(port)
            return port
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def make_dataset(*, patient_id: str = "PID1", patient_name: str = "DOE^JOHN", study_uid: str | None = None,
                 series_uid: str | None = None, sop_uid: str | None = None, modality: str = "CT",
                 study_date: str = "20240115", study_time: str = "101500", series_number: int = 1,
                 instance_number: int = 1, rows: int = 64, cols: int = 64, accession: str = "ACC1",
                 study_description: str = "CHEST", series_description: str = "AXIAL",
                 charset: str | None = None, birth_date: str = "19700101", sex: str = "M",
                 bits: int = 16, seed: int | None = None, photometric: str = "MONOCHROME2",
                 frames: int = 1) -> Dataset:
    """A small valid image instance (CT/MR/SC) with random pixels."""
    sop_class = {"CT": CT_IMAGE, "MR": MR_IMAGE}.get(modality, SC_IMAGE)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if charset:
        ds.SpecificCharacterSet = charset
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = birth_date
    ds.PatientSex = sex
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.SeriesDate = study_date
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.ReferringPhysicianName = "REF^DOC"
    ds.InstitutionName = "TEST HOSPITAL"
    ds.Modality = modality
    ds.Manufacturer = "BurnStation tests"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.ContentDate = study_date
    ds.ContentTime = study_time
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.PatientOrientation = ""
    ds.ImagePositionPatient = [0, 0, instance_number]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 1
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(ds.StudyInstanceUID), "frame of reference"])
    ds.PositionReferenceIndicator = ""
    rng = np.random.default_rng(seed if seed is not None else instance_number)
    if photometric == "RGB":
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        pixels = rng.integers(0, 255, (rows, cols, 3), dtype=np.uint8)
    else:
        ds.SamplesPerPixel = 1
        ds.BitsAllocated = bits
        ds.BitsStored = 12 if bits == 16 else 8
        ds.HighBit = ds.BitsStored - 1
        dtype = np.uint16 if bits == 16 else np.uint8
        shape = (frames, rows, cols) if frames > 1 else (rows, cols)
        pixels = rng.integers(0, 2 ** ds.BitsStored - 1, shape, dtype=dtype)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = cols
    ds.PixelRepresentation = 0
    if modality == "CT":
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.KVP = 120
    ds.PixelData = pixels.tobytes()
    return ds


def write_study(folder: Path, n_series: int = 2, per_series: int = 3, **kw: object) -> list[Path]:
    """Write a multi-series study to `folder`; returns the file paths."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = kw.pop("study_uid", None) or generate_uid()
    paths = []
    for s in range(n_series):
        series_uid = generate_uid()
        for i in range(per_series):
            ds = make_dataset(study_uid=study_uid, series_uid=series_uid, series_number=s + 1,
                              instance_number=i + 1, **kw)  # type: ignore[arg-type]
            path = folder / f"s{s}_i{i}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
    return paths


def wait_port(port: int, timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_dicom(port: int, called_aet: str = "BURNSTATION", timeout: float = 30.0, host: str = "127.0.0.1") -> None:
    """Wait until a DICOM SCP answers on the port: an A-ASSOCIATE (accepted, then a C-ECHO and a
    release; or rejected), never a bare TCP connect, which pynetdicom would keep as an association
    waiting for its request until the server stops."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="READYPROBE")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = 5
    deadline = time.monotonic() + timeout
    quiet = logging.getLogger("pynetdicom")
    while time.monotonic() < deadline:
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # "connection refused" is the expected answer until it is up
        try:
            assoc = ae.associate(host, port, ae_title=called_aet)
        finally:
            quiet.setLevel(level)
        if assoc.is_rejected:
            return
        if assoc.is_established:
            status = assoc.send_c_echo()
            assoc.release()
            if status and status.get("Status") == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"no DICOM association with {called_aet} on {host}:{port} after {timeout}s")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts a connection on the port right now."""
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    """`count` bytes from `sock` (a test's proxy or peer reading whole PDUs); ConnectionError when
    the other end closes first."""
    data = b""
    while len(data) < count:
        more = sock.recv(count - len(data))
        if not more:
            raise ConnectionError(f"closed after {len(data)} of {count} bytes")
        data += more
    return data


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition", every: float = 0.2) -> Any:
    """Poll `check()` every `every` s until it returns something truthy, and return that;
    AssertionError when it has not after `timeout` s (checked once more at the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def holds_for(check: Callable[[], Any], seconds: float, what: str = "condition", every: float = 0.1) -> None:
    """Assert that `check()` stays truthy for `seconds` (for "it does not happen" checks: a window
    is their nature), polled every `every` s; fails at the first falsy answer, not at the end."""
    deadline = time.monotonic() + seconds
    while True:
        if not check():
            raise AssertionError(f"{what} stopped holding before {seconds}s")
        if time.monotonic() > deadline:
            return
        time.sleep(every)


def wait_for_named(what: str, check: Callable[[], Any], timeout: float = 60.0, every: float = 0.2) -> Any:
    """`wait_for` with the description first (the order the robot end-to-end tests use)."""
    return wait_for(check, timeout, what, every)


def dcmtk(tool: str, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run([str(DCMTK / tool), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, check=check)


def burnstation(data: Path, *args: str, check: bool = True, timeout: float = 60, input: str | None = None,
                process: bool = False) -> subprocess.CompletedProcess:
    """`burnstation --data <data> ARGS`, its password (if any) on standard input. In this process
    (`appliance.cli.main`, about a second of imports less per call) unless `process`: a real
    process, for the tests of the entry point itself (exit status of the script, environment)."""
    argv = ["--data", str(data), *args]
    if process or os.environ.get("BURNSTATION_TEST_CLI_PROCESS") == "1":  # (every call a process: to compare)
        proc = subprocess.run([str(BIN / "burnstation"), *argv], capture_output=True, text=True, timeout=timeout,
                              input=input)
    else:
        proc = run_cli(argv, input)
    if check and proc.returncode != 0:
        raise AssertionError(f"burnstation {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_cli(argv: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    """`burnstation ARGV` run in this process as the script would run it: standard input, output and
    error of its own, its log lines on its standard error (as `logging.basicConfig` in a process
    would), the exit status of `SystemExit` or an uncaught exception (1, with the traceback); the
    umask it sets is put back. Not for `run` or `service` (they are the station's processes)."""
    import io
    import traceback

    from appliance import cli

    words = [a for i, a in enumerate(argv) if not a.startswith("-") and (i == 0 or argv[i - 1] != "--data")]
    if words[:1] in (["run"], ["service"]):
        raise ValueError("`burnstation run` and `service` run as real processes (Station, subprocess)")
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    level, umask, stdin = root.level, os.umask(0o022), sys.stdin
    os.umask(umask)
    root.addHandler(handler)  # before main: its basicConfig then adds no handler of its own
    root.setLevel(logging.DEBUG if "-v" in argv or "--verbose" in argv else logging.INFO)
    sys.stdin = io.StringIO(input or "")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code: Any = cli.main(argv)
            except SystemExit as exc:
                code = exc.code
                if isinstance(code, str):
                    print(code, file=sys.stderr)
                    code = 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        sys.stdin = stdin
        root.removeHandler(handler)
        root.setLevel(level)
        os.umask(umask)
    return subprocess.CompletedProcess(["burnstation", *argv], int(code or 0), out.getvalue(), err.getvalue())


class Station:
    """A station run as a real process (`burnstation run`) on free ports."""

    def __init__(self, data: Path, **settings: object) -> None:
        self.data = data
        self.port = free_port()
        self.tls_port = free_port()
        self.hl7_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None
        if not (data / "settings.json").exists():
            burnstation(data, "init")
        # one dicom worker unless a test asks for more (the default is one per core): a second
        # interpreter per station start costs ~0.9 CPU-s, and the suite starts ~150 stations; the
        # several-worker behaviour has its own tests (test_dicom_workers.py, test_dicom_balance.py)
        values = {"dicom.port": self.port, "dicom.tls_port": self.tls_port, "hl7.port": self.hl7_port,
                  "http.port": self.http_port, "dicom.min_free_mb": 0, "dicom.workers": 1}
        values.update({k.replace("__", "."): v for k, v in settings.items()})
        burnstation(data, "config", "set", *(f"{k}={v}" for k, v in values.items()))
        self.aet = "BURNSTATION"

    def start(self, *extra: str) -> Station:
        check_station_allowed()
        log = open(self.data / "station.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([str(BIN / "burnstation"), "--data", str(self.data), "run", *extra],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_dicom(self.port, self.aet, timeout=90)  # generous: four xdist workers on two cores
        except BaseException:  # not up in time: stop it, else it outlives the test (nobody else will)
            self.stop()
            raise
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        code = self.proc.returncode
        self.proc = None
        return code

    def log(self) -> str:
        path = self.data / "station.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> Station:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def parse_findscu(output: str) -> list[dict[str, str]]:
    """Responses of `findscu` (its dump on stderr/stdout) as keyword → value dicts."""
    results: list[dict[str, str]] = []
    current: dict[str, str] | None = None
    for line in output.splitlines():
        if "Find Response:" in line and "Pending" in line or line.startswith("I: Find Response:") and "Pending" in line:
            current = {}
            results.append(current)
            continue
        if current is None:
            continue
        line = line.removeprefix("I: ").strip()
        if line.startswith("(") and "#" in line:
            tag_part, _, rest = line.partition(" ")
            body, _, tail = line.partition("#")
            keyword = tail.strip().split()[-1] if tail.strip() else ""
            value = body.split(None, 2)[2] if len(body.split(None, 2)) > 2 else ""
            value = value.strip()
            if value.startswith("[") and "]" in value:
                value = value[1:value.rindex("]")]
            elif value.startswith("(no value"):
                value = ""
            current[keyword] = value
        elif line.startswith("---") or line.startswith("W:"):
            continue
    return results


@contextlib.contextmanager
def storescp(folder: Path, aet: str = "DEST", port: int | None = None, *extra: str) -> Iterator[int]:
    """dcmtk storescp writing into `folder`, yields its port."""
    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TCP_NODELAY="1")
    proc = subprocess.Popen([str(DCMTK / "storescp"), "-aet", aet, "-od", str(folder), *extra, str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def findscu(port: int, keys: dict[str, str] | list[str], out_dir: Path, *, model: str = "-S",
            aet: str = "FINDSCU", aec: str = "BURNSTATION", extra: tuple[str, ...] = ()
            ) -> tuple[subprocess.CompletedProcess, list]:
    """dcmtk findscu (`model` -S study root, -P patient root); returns (process, response datasets).

    `keys` are `-k` arguments (`Keyword=value`, or just `Keyword` for a return key); the
    responses are extracted to files (`-X`) and read back with pydicom, in arrival order.
    """
    from pydicom import dcmread

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rsp*.dcm"):
        old.unlink()
    items = [f"{k}={v}" for k, v in keys.items()] if isinstance(keys, dict) else list(keys)
    args = [model, "-v", "-X", "-od", str(out_dir), "-aet", aet, "-aec", aec, *extra]
    for item in items:
        args += ["-k", item]
    proc = dcmtk("findscu", *args, "127.0.0.1", str(port), timeout=60)
    return proc, [dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]


def configure(data: Path, *assignments: str) -> None:
    """`burnstation config set` without a process start (same validation, for speed in tests)."""
    from appliance.config import Settings

    Settings(data).update(dict(item.split("=", 1) for item in assignments))


@contextlib.contextmanager
def dicom_server(data: Path, *assignments: str) -> Iterator[Any]:
    """The DICOM SCP run in this process (no station) on a free plain port (`.port`), TLS off;
    `assignments` are more settings. The library patches it installs are taken out afterwards."""
    from appliance.config import Settings
    from appliance.dicom import pnd_tuning
    from appliance.dicom.server import DicomServer

    Settings(data).initialize()
    port = free_port()
    configure(data, f"dicom.port={port}", "dicom.tls_port=0", "dicom.min_free_mb=0", *assignments)
    srv = DicomServer(data)
    srv.start()
    srv.port = port  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.stop(grace=0)
        pnd_tuning.uninstall()  # build_ae installed the patches in this process
        pnd_tuning.set_protocol_logging(True)
