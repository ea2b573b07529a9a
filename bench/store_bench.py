"""C-STORE benchmark: the station against dcmtk storescp and Orthanc, measured in the same run.

Why: issue 2 asks the station to beat Orthanc and come close to storescp on the C-STORE path
(fsync and indexing included). This script is how those claims are checked; it is not a test.

Each measurement starts its server fresh (empty storage), then times dcmtk `/usr/bin/storescu`
(TCP_NODELAY=1) from spawn to exit: one association with the whole set, or N parallel storescu
processes each with its own subset. Every measurement is repeated (the machine is shared and
noisy) and reported as median and best; server order rotates between repetitions.
After each run the stored count is checked (station: index rows; storescp: files; Orthanc: REST).

    .venv/bin/python bench/store_bench.py [--reps 3] [--servers station,storescp,orthanc]
                                          [--sets small,large] [--conc 1,4] [--e2e | --e2e-only]
                                          [--station-config dicom.workers=2] [--servers station@KEY=V+env:E=V]

The station's CPU seconds (all its processes) are printed per run: on a shared, noisy machine
they say more about a change than the wall clock. BENCH_PROFILE_DIR=dir records each station run
with py-spy (pip install py-spy into the venv; summarise with bench/profile_summary.py), and
BURNSTATION_FASTPATH=0 or a list of parts (see appliance/dicom/pnd_tuning.py) measures the
station with speed-ups switched off, for A/B comparisons.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ORTHANC = "/usr/sbin/Orthanc"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"

# name -> (count, rows, cols): 16-bit pixels, so ~8 KB and ~512 KB objects
SETS = {"small": (1000, 64, 56), "large": (400, 512, 512)}


# --------------------------------------------------------------------------- data


def make_set(folder: Path, name: str, count: int, rows: int, cols: int) -> list[Path]:
    """`count` CT instances with fresh UIDs in one study (series of 100), written once per run."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng()
    pixels = rng.integers(0, 4095, (rows, cols), dtype=np.uint16).tobytes()
    study_uid = generate_uid()
    frame_uid = generate_uid()
    paths = []
    series_uid = ""
    for i in range(count):
        if i % 100 == 0:
            series_uid = generate_uid()
        sop_uid = generate_uid()
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240115"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
        ds.AccessionNumber = f"BENCH{name.upper()}"
        ds.Modality = "CT"
        ds.Manufacturer = "BurnStation bench"
        ds.InstitutionName = "BENCH HOSPITAL"
        ds.ReferringPhysicianName = "REF^DOC"
        ds.StudyDescription = f"BENCH {name}"
        ds.SeriesDescription = f"SERIES {i // 100 + 1}"
        ds.PatientName = "BENCH^PATIENT"
        ds.PatientID = f"BENCH-{name}"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.SliceThickness = 1
        ds.KVP = 120
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = i // 100 + 1
        ds.InstanceNumber = i % 100 + 1
        ds.ImagePositionPatient = [0, 0, i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = frame_uid
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = cols
        ds.PixelSpacing = [0.5, 0.5]
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.PixelData = pixels
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def split(paths: list[Path], n: int) -> list[list[Path]]:
    """n contiguous subsets of nearly equal size."""
    size, rest = divmod(len(paths), n)
    out, start = [], 0
    for k in range(n):
        end = start + size + (1 if k < rest else 0)
        out.append(paths[start:end])
        start = end
    return out


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} not ready after {timeout}s")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def dcmtk_env() -> dict[str, str]:
    return dict(os.environ, TCP_NODELAY="1")


def echo_ok(aet: str, port: int) -> bool:
    proc = subprocess.run(["/usr/bin/echoscu", "-aec", aet, "127.0.0.1", str(port)],
                          capture_output=True, env=dcmtk_env(), timeout=30)
    return proc.returncode == 0


def stop_process(proc: subprocess.Popen, timeout: float = 30) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def run_storescu(aet: str, port: int, subsets: list[list[Path]]) -> float:
    """Wall time of len(subsets) storescu processes run in parallel (one association each)."""
    procs = []
    start = time.perf_counter()
    for files in subsets:
        procs.append(subprocess.Popen([STORESCU, "-aet", "BENCH", "-aec", aet, "127.0.0.1", str(port),
                                       *map(str, files)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dcmtk_env()))
    errors = []
    for proc in procs:
        _out, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            errors.append(err.decode(errors="replace")[-2000:])
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError("storescu failed:\n" + "\n".join(errors))
    return elapsed


# --------------------------------------------------------------------------- servers


class Server:
    name = ""
    aet = ""
    port = 0

    @contextlib.contextmanager
    def running(self, work: Path, concurrency: int) -> Iterator[Server]:
        raise NotImplementedError

    def stored(self) -> int:
        raise NotImplementedError


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _process_name(pid: int) -> str:
    with contextlib.suppress(OSError):
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"service" in args:
            return " ".join(a.decode() for a in args[args.index(b"service") + 1:] if a)
        return "run"
    return str(pid)


def cpu_seconds(pids: list[int], part: str = "both") -> float:
    """user+system (or only "user" / "system") CPU time of the given processes (from /proc; 0 for
    those gone). System time is the kernel's share (socket I/O, writes, fsync), outside the GIL."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) if part != "system" else 0) + (int(fields[12]) if part != "user" else 0)
    return total / os.sysconf("SC_CLK_TCK")


class StationServer(Server):
    """`burnstation run` (the real process: fsync, index, association log)."""

    name = "station"
    aet = "BURNSTATION"
    pids: list[int] = []
    last_cpu = 0.0
    last_system = 0.0
    env: dict[str, str] = {}

    def cpu(self) -> float:
        return cpu_seconds(self.pids)

    def system_cpu(self) -> float:
        return cpu_seconds(self.pids, "system")

    def __init__(self, root: Path, extra: dict[str, str] | None = None) -> None:
        self.data = root / "station-data"
        self.port = free_port()
        bs = str(VENV_BIN / "burnstation")
        subprocess.run([bs, "--data", str(self.data), "init"], check=True, capture_output=True)
        settings = {"dicom.port": self.port, "dicom.tls_port": 0, "hl7.port": free_port(),
                    "http.port": free_port(), "dicom.min_free_mb": 500, **(extra or {})}
        subprocess.run([bs, "--data", str(self.data), "config", "set",
                        *(f"{k}={v}" for k, v in settings.items())], check=True, capture_output=True)

    @contextlib.contextmanager
    def running(self, work: Path, concurrency: int) -> Iterator[Server]:
        shutil.rmtree(self.data / "storage", ignore_errors=True)
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            with contextlib.suppress(FileNotFoundError):
                (self.data / name).unlink()
        log = open(work / "station.log", "ab")  # noqa: SIM115
        log_start = log.tell()  # this run's lines start here (the log is kept across runs)
        cmd = [str(VENV_BIN / "burnstation"), "--data", str(self.data), "run"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, **self.env))
        profiler = None
        try:
            wait_until(lambda: port_open(self.port) or proc.poll() is not None, 60, "station")
            if proc.poll() is not None:
                raise RuntimeError(f"station exited: {(work / 'station.log').read_text()[-2000:]}")
            wait_until(lambda: echo_ok(self.aet, self.port), 30, "station C-ECHO")
            # a C-ECHO is answered as soon as one dicom worker listens: a burst sent before the
            # others have opened their inboxes all stays on that one (measured: 4:0 at a cold start)
            wait_until(lambda: workers_ready(work / "station.log", log_start), 30, "every dicom worker")
            self.pids = [proc.pid, *_children(proc.pid)]
            profile_dir = os.environ.get("BENCH_PROFILE_DIR")  # py-spy raw profiles of the station
            if profile_dir:
                out = Path(profile_dir) / f"station-{time.strftime('%H%M%S')}-x{concurrency}.txt"
                profiler = subprocess.Popen([str(VENV_BIN / "py-spy"), "record", "--pid", str(proc.pid),
                                             "-r", "250", "-f", "raw", "--threads", "--subprocesses",
                                             *(["--idle"] if os.environ.get("BENCH_PROFILE_IDLE") else []),
                                             "-o", str(out)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1.0)  # let py-spy attach before the timed part
            yield self
        finally:
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(60)
            stop_process(proc)
            log.close()

    def stored(self) -> int:
        with contextlib.closing(sqlite3.connect(self.data / "state.db")) as conn:
            return conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0]


def workers_ready(log: Path, start: int = 0) -> bool:
    """Whether every dicom worker of the station logging to `log` (from byte `start`) takes
    handed-over connections."""
    with open(log, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    workers = re.findall(r"\[worker \d+ of (\d+)\]", text)
    if not workers:
        return True  # one worker: nothing to hand over
    return len(set(re.findall(r"dicom worker (\d+) takes connections", text))) >= int(workers[-1])


class StorescpServer(Server):
    """dcmtk storescp writing into a temp dir (--fork for concurrent associations)."""

    name = "storescp"
    aet = "STORESCP"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.out = root / "storescp-out"

    @contextlib.contextmanager
    def running(self, work: Path, concurrency: int) -> Iterator[Server]:
        shutil.rmtree(self.out, ignore_errors=True)
        self.out.mkdir()
        self.port = free_port()
        extra = ["--fork"] if concurrency > 1 else []
        proc = subprocess.Popen([STORESCP, "-aet", self.aet, "-od", str(self.out), *extra, str(self.port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dcmtk_env(),
                                start_new_session=True)
        try:
            wait_until(lambda: port_open(self.port), 30, "storescp")
            yield self
        finally:
            stop_process(proc)

    def stored(self) -> int:
        return sum(len(files) for _root, _dirs, files in os.walk(self.out))


class OrthancServer(Server):
    """Orthanc with its own storage/index dirs, DICOM and HTTP ports, no auth, no plugins."""

    name = "orthanc"
    aet = "ORTHANC"

    def __init__(self, root: Path) -> None:
        self.root = root / "orthanc"
        self.http_port = 0

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=5) as rsp:
            return json.loads(rsp.read())

    def _ready(self) -> bool:
        try:
            return int(self._get("/system").get("DicomPort", -1)) == self.port and port_open(self.port)
        except (OSError, ValueError):
            return False

    @contextlib.contextmanager
    def running(self, work: Path, concurrency: int) -> Iterator[Server]:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.port, self.http_port = free_port(), free_port()
        config = {
            "Name": "bench", "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "index"), "DicomAet": self.aet, "DicomPort": self.port,
            "HttpPort": self.http_port, "HttpServerEnabled": True, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "Plugins": [],
            "StorageCompression": False, "DicomServerEnabled": True, "SslEnabled": False,
        }
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(config, indent=1))
        log = open(work / "orthanc.log", "ab")  # noqa: SIM115
        # Orthanc's DICOM layer is dcmtk: TCP_NODELAY=1 spares it the Nagle/delayed-ACK stall
        # (~40 ms per object), as for storescu and storescp
        proc = subprocess.Popen([ORTHANC, str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                env=dcmtk_env(), start_new_session=True)
        try:
            wait_until(lambda: self._ready() or proc.poll() is not None, 60, "Orthanc")
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(work / 'orthanc.log').read_text()[-2000:]}")
            yield self
        finally:
            stop_process(proc)
            log.close()

    def stored(self) -> int:
        return int(self._get("/statistics")["CountInstances"])


# --------------------------------------------------------------------------- release to spool

JOB_EXTS = {".JDF", ".RJD", ".INP", ".DON", ".ERR", ".STP"}  # an Epson job file in any of its states


def job_files(spool: Path) -> dict[str, float]:
    """Job files anywhere under the spool (the simulator moves finished ones): stem -> mtime, which
    is when the driver wrote it (written aside, renamed in; the engine only renames it on)."""
    out = {}
    for path in spool.rglob("*"):
        if path.suffix.upper() in JOB_EXTS and ".burnstation-aside" not in path.parts:
            with contextlib.suppress(OSError):
                out.setdefault(path.stem, path.stat().st_mtime)
    return out


def release_to_spool(root: Path, study: list[Path], load_files: list[Path], reps: int,
                     extra: dict[str, str]) -> dict[str, list[float]]:
    """Seconds from the release of an `_E` association carrying `study` (storescu exits right after
    its A-RELEASE-RP) to the job file in the simulated Epson's spool (`run --simulate`, speed 0),
    with the station idle and while 4 other associations ingest `load_files` (again and again)."""
    data = root / "e2e-data"
    bs = str(VENV_BIN / "burnstation")
    port = free_port()
    subprocess.run([bs, "--data", str(data), "init"], check=True, capture_output=True)
    settings = {"dicom.port": port, "dicom.tls_port": 0, "hl7.port": free_port(), "http.port": free_port(),
                "dicom.min_free_mb": 500, **extra}
    subprocess.run([bs, "--data", str(data), "config", "set", *(f"{k}={v}" for k, v in settings.items())],
                   check=True, capture_output=True)
    log = open(root / "e2e-station.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([bs, "--data", str(data), "run", "--simulate", "--robots", "epson", "--sim-speed", "0"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    results: dict[str, list[float]] = {"idle": [], "4 assoc ingesting": []}
    try:
        wait_until(lambda: port_open(port) or proc.poll() is not None, 60, "station")
        wait_until(lambda: echo_ok("BURNSTATION_E", port), 30, "station C-ECHO")
        spool = data / "spool" / "epson"
        wait_until(lambda: spool.is_dir(), 30, "the simulated robot's spool")
        for rep in range(reps):
            for case in results:
                loaders: list[subprocess.Popen] = []
                stop_load = False
                if case != "idle":
                    def load(files: list[Path]) -> subprocess.Popen:
                        return subprocess.Popen([STORESCU, "-aet", "LOAD", "-aec", "BURNSTATION", "127.0.0.1",
                                                 str(port), *map(str, files)], stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL, env=dcmtk_env())
                    parts = split(load_files, 4)
                    loaders = [load(part) for part in parts]
                    time.sleep(0.5)  # the 4 associations are up and storing
                seen = set(job_files(spool))
                subprocess.run([STORESCU, "-aet", "CT", "-aec", "BURNSTATION_E", "127.0.0.1", str(port),
                                *map(str, study)], check=True, capture_output=True, env=dcmtk_env(), timeout=600)
                released = time.time()
                deadline = time.monotonic() + 300
                new: dict[str, float] = {}
                while not new:
                    if time.monotonic() > deadline:
                        raise TimeoutError("no job file in the spool 300 s after the release")
                    if case != "idle":  # keep 4 associations ingesting until the job file is there
                        for n, loader in enumerate(loaders):
                            if loader.poll() is not None and not stop_load:
                                loaders[n] = load(parts[n])
                    new = {k: v for k, v in job_files(spool).items() if k not in seen}
                    time.sleep(0.02)
                stop_load = True
                for loader in loaders:
                    loader.wait(600)
                elapsed = min(new.values()) - released
                results[case].append(elapsed)
                print(f"  rep {rep + 1}: release to spool, {case}: {elapsed:6.2f}s", flush=True)
                wait_until(lambda: not any(p.suffix.upper() in (".JDF", ".RJD", ".INP") for p in spool.glob("*")),
                           300, "the simulated robot idle")
    finally:
        stop_process(proc)
        log.close()
    return results


# --------------------------------------------------------------------------- main


def machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every CPU so far, from /proc/stat (idle and iowait are not busy)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


class RunCost:
    """What one measurement cost the machine besides its wall time: the senders' CPU (the storescu
    processes, reaped within the run) and the share of every core that was busy. With the
    station's CPU they give the floor a run on `cores` cores cannot go under: (station CPU +
    senders' CPU) / cores. When that floor at 4 associations is above 0.7x the 1-association wall
    time, the x4 target is out of reach without less CPU per object (bench/INGEST.md section 10)."""

    senders = 0.0
    busy = 0.0  # fraction of all cores' time, 0..1


LAST_COST = RunCost()


def measure(server: Server, work: Path, files: list[Path], concurrency: int) -> float:
    with server.running(work, concurrency):
        cpu0 = server.cpu() if isinstance(server, StationServer) else 0.0
        sys0 = server.system_cpu() if isinstance(server, StationServer) else 0.0
        per0 = {pid: cpu_seconds([pid]) for pid in server.pids} if isinstance(server, StationServer) else {}
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        busy0, all0 = machine_ticks()
        elapsed = run_storescu(server.aet, server.port, split(files, concurrency))
        busy1, all1 = machine_ticks()
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        LAST_COST.senders = (children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)
        LAST_COST.busy = (busy1 - busy0) / max(all1 - all0, 1)
        if isinstance(server, StationServer):
            server.last_cpu = server.cpu() - cpu0
            server.last_system = server.system_cpu() - sys0
            if os.environ.get("BENCH_CPU_DETAIL"):  # which station process used the CPU
                print("    CPU by process: " + ", ".join(
                    f"{_process_name(pid)} {cpu_seconds([pid]) - before:.2f}s" for pid, before in per0.items()))
        if isinstance(server, OrthancServer):
            count = server.stored()
    if not isinstance(server, OrthancServer):
        count = server.stored()
    if count != len(files):
        raise RuntimeError(f"{server.name}: {count} of {len(files)} objects stored")
    return elapsed


def station_variant(root: Path, name: str, extra: dict[str, str]) -> StationServer:
    """`station@dicom.workers=1+env:BURNSTATION_FASTPATH=recv:parser`: the station with other
    settings (and environment; ':' in an env value stands for ','), measured in the same run as
    the others, in its own data folder."""
    server = StationServer(root / name.replace("/", "_"), {**extra, **{
        k: v for k, _, v in (p.partition("=") for p in name.split("@", 1)[1].split("+")) if not k.startswith("env:")}})
    server.name = name
    server.env = {k[4:]: v.replace(":", ",") for k, _, v in (p.partition("=") for p in name.split("@", 1)[1].split("+"))
                  if k.startswith("env:")}
    return server


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:5.2f}x" if b else "  -  "


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median of the repetitions' own ratios a[i] / b[i]: both were measured within the same
    repetition, minutes apart at most, so a host whose speed drifts between repetitions (this one
    moves by 2x within an hour) cancels out, which a ratio of two medians does not."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def print_paired(times: dict[tuple[str, str, int], list[float]], server_names: list[str], set_names: list[str],
                 concs: list[int], ratio_cols: list[str]) -> None:
    """The ratios the targets are stated in, paired within each repetition."""
    print("paired ratios (median of each repetition's own ratio):")
    for set_name in set_names:
        for name in server_names:
            for conc in concs[1:]:
                ratio = paired_ratio(times[(name, set_name, conc)], times[(name, set_name, concs[0])])
                print(f"  {name} {set_name} x{conc} / x{concs[0]}: {ratio:.2f}")
        for conc in concs:
            for name in ratio_cols:
                ratio = paired_ratio(times[("station", set_name, conc)], times[(name, set_name, conc)])
                print(f"  station / {name} {set_name} x{conc}: {ratio:.2f}")


def print_floors(times: dict[tuple[str, str, int], list[float]], floors: dict[tuple[str, str, int], list[float]],
                 concs: list[int]) -> None:
    """Each station row's CPU floor, (station CPU + senders' CPU) / cores, against its wall time,
    and the floor of the x4 run over the x1 wall time (paired): the best x4 / x1 that this much
    CPU per object allows here, however well the work is spread over the cores."""
    print(f"CPU floor ((station CPU + senders' CPU) / {os.cpu_count()} cores), median:")
    for key in sorted(floors):
        name, set_name, conc = key
        line = (f"  {name} {set_name} x{conc}: floor {statistics.median(floors[key]):.2f}s, "
                f"wall / floor {paired_ratio(times[key], floors[key]):.2f}")
        base = (name, set_name, concs[0])
        if conc != concs[0] and base in times:
            line += f"; floor / x{concs[0]} wall {paired_ratio(floors[key], times[base]):.2f} (the best x{conc} / x{concs[0]})"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="repetitions of every measurement (default 3)")
    parser.add_argument("--servers", default="station,storescp,orthanc")
    parser.add_argument("--sets", default="small,large")
    parser.add_argument("--conc", default="1,4", help="concurrent associations to measure (default 1,4)")
    parser.add_argument("--json", help="also write the raw timings here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for inspection")
    parser.add_argument("--e2e", action="store_true",
                        help="also time release-to-spool of a 500-image CT study sent to _E (idle and under load)")
    parser.add_argument("--e2e-only", action="store_true", help="only the release-to-spool figure")
    parser.add_argument("--station-config", action="append", default=[], metavar="KEY=VALUE",
                        help="a station setting for the runs (e.g. dicom.workers=1); repeatable")
    args = parser.parse_args(argv)
    server_names = args.servers.split(",")
    set_names = args.sets.split(",")
    concs = [int(c) for c in args.conc.split(",")]

    root = Path(tempfile.mkdtemp(prefix="store-bench-"))
    try:
        t0 = time.perf_counter()
        if args.e2e_only:
            set_names, server_names = [], []
        files = {name: make_set(root / "sets" / name, name, *SETS[name]) for name in set_names}
        sizes = {name: sum(p.stat().st_size for p in paths) / len(paths) for name, paths in files.items()}
        print(f"generated {', '.join(f'{n}: {len(files[n])} x {sizes[n] / 1024:.0f} KB' for n in set_names)}"
              f" in {time.perf_counter() - t0:.1f}s (fresh UIDs)", flush=True)
        extra = dict(item.split("=", 1) for item in args.station_config)
        factories = {"station": lambda r: StationServer(r, extra), "storescp": StorescpServer,
                     "orthanc": OrthancServer}
        servers = [station_variant(root, name, extra) if name.startswith("station@") else factories[name](root)
                   for name in server_names]
        work = root / "logs"
        work.mkdir()
        times: dict[tuple[str, str, int], list[float]] = {}
        cpus: dict[tuple[str, str, int], list[float]] = {}
        floors: dict[tuple[str, str, int], list[float]] = {}
        for rep in range(args.reps if servers else 0):
            order = servers[rep % len(servers):] + servers[:rep % len(servers)]
            for server in order:
                for set_name in set_names:
                    for conc in concs:
                        elapsed = measure(server, work, files[set_name], conc)
                        times.setdefault((server.name, set_name, conc), []).append(elapsed)
                        cpu = (f"  (station CPU {server.last_cpu:.2f}s, of it system {server.last_system:.2f}s)"
                               if isinstance(server, StationServer) else "")
                        if isinstance(server, StationServer):
                            cpus.setdefault((server.name, set_name, conc), []).append(server.last_cpu)
                            floors.setdefault((server.name, set_name, conc), []).append(
                                (server.last_cpu + LAST_COST.senders) / (os.cpu_count() or 1))
                        cost = f"  senders' CPU {LAST_COST.senders:.2f}s, cores busy {100 * LAST_COST.busy:.0f}%"
                        print(f"  rep {rep + 1}: {server.name:8s} {set_name:5s} x{conc}: {elapsed:6.2f}s{cpu}{cost}",
                              flush=True)
        print()
        print(f"load average now: {os.getloadavg()[0]:.2f}; cores: {os.cpu_count()}; reps: {args.reps}")
        header = f"{'set':6s} {'assoc':>5s} " + " ".join(f"{n + ' med/best':>17s}" for n in server_names)
        ratio_cols = [n for n in server_names if n != "station" and "station" in server_names]
        header += "".join(f"  {'st/' + n[:12] + ' med/best':>17s}" for n in ratio_cols)
        print(header)
        print("-" * len(header))
        for set_name in set_names:
            for conc in concs:
                line = f"{set_name:6s} {conc:5d} "
                stats = {}
                for name in server_names:
                    values = times[(name, set_name, conc)]
                    stats[name] = (statistics.median(values), min(values))
                    line += f" {stats[name][0]:7.2f}s/{stats[name][1]:6.2f}s "
                for name in ratio_cols:
                    line += (f"  {fmt_ratio(stats['station'][0], stats[name][0])}/"  # station / other
                             f"{fmt_ratio(stats['station'][1], stats[name][1])}    ")
                print(line)
        if len(concs) > 1 or ratio_cols:
            print_paired(times, server_names, set_names, concs, ratio_cols)
        if floors:
            print_floors(times, floors, concs)
        if args.e2e or args.e2e_only:
            study = make_set(root / "sets" / "ct500", "ct", 500, 512, 512)
            load_set = files.get("small") or make_set(root / "sets" / "small", "small", *SETS["small"])
            e2e = release_to_spool(root, study, load_set, args.reps, extra)
            for case, values in e2e.items():
                print(f"release to spool (500 x 512 KB CT to _E), {case}: median {statistics.median(values):.2f}s"
                      f" best {min(values):.2f}s  ({', '.join(f'{v:.2f}' for v in values)})")
            print(f"load average now: {os.getloadavg()[0]:.2f}")
        for key, values in sorted(cpus.items()):
            print(f"CPU seconds (all station processes), median: {key[0]} {key[1]} x{key[2]}: "
                  f"{statistics.median(values):.2f}s")
        if args.json:
            Path(args.json).write_text(json.dumps(
                [{"server": s, "set": n, "conc": c, "seconds": v} for (s, n, c), v in times.items()], indent=1))
        return 0
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
