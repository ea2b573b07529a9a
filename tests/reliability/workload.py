"""The mixed workload of the fault runs and the soak, and the checks made after it.

A `Rig` is a station (`burnstation run`, real processes) with the robot simulator beside it (its
own process, as tests/test_robots_e2e.py runs it) and two robots, `epson` and `primera`. A
`Workload` drives it as a clinic would: DICOM senders (dcmtk `storescu`) to every AE title,
scanners polling the worklist (`findscu -W`), a RIS sending HL7 orders over MLLP, web users
clicking through pages (http.client), and robot faults on the simulator. Every instance a sender
got a success for is recorded; `check` then says whether each is stored, indexed and on exactly
the discs its AE title's grouping says, and whether any job is stuck.

Used by tests/reliability/faults.py (`make faults`), tests/reliability/soak.py (`make soak`) and
the short smoke tests in tests/test_reliability.py.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from pydicom import dcmread

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO / "tests"))

from support import BIN, DCMTK, Station, burnstation, wait_dicom, wait_for, write_study  # noqa: E402
from worklist_support import exchange, msa, order  # noqa: E402

AET = "BURNSTATION"
SUFFIXES = ("", "_E", "_P", "_TE", "_TP")
ROLE = {"_E": "epson", "_P": "primera", "_TE": "epson", "_TP": "primera"}
FINAL = ("done", "failed", "cancelled")
ACTIVE = ("queued", "building", "built", "submitted", "burning")
PASSWORD = "soak-password-1"
SERVICES = ("dicom", "hl7", "web", "burner", "transfer", "driver:epson", "driver:primera")
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
ROBOT_FAULTS = ("input_empty", "cover_open", "ink_low", "output_full")  # they pause a robot; none fails a job


# --------------------------------------------------------------------------- the rig


def build_monosleep(folder: Path) -> Path:
    """The libfaketime companion shim (monosleep.c) compiled into `folder`."""
    out = folder / "monosleep.so"
    if not out.exists():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(out), str(HERE / "monosleep.c"), "-ldl"],
                       check=True, capture_output=True, timeout=120)
    return out


def faketime_available() -> str:
    """Why the wall-clock fault cannot run here ('' when it can)."""
    if not FAKETIME_LIB.exists():
        return f"libfaketime missing ({FAKETIME_LIB}): apt-get install faketime"
    if shutil.which("gcc") is None:
        return "gcc missing (it builds tests/reliability/monosleep.c)"
    return ""


class Rig:
    """Station + simulator + two robots; `env` goes to the station's processes only."""

    def __init__(self, root: Path, *, speed: str = "0.02", data: Path | None = None, clock: bool = False,
                 status_timeout: int = 4, delay_seconds: int = 3) -> None:
        self.root = root
        self.spool, self.sim_root = root / "spool", root / "sim"
        self.sim_root.mkdir(parents=True, exist_ok=True)
        self.speed = speed
        self.sim: subprocess.Popen | None = None
        self.station = Station(data or root / "data", burn__delay_seconds=delay_seconds, http__port=0)
        self.data = self.station.data
        self.clock_file: Path | None = None
        self.env = dict(os.environ, BURNSTATION_TEST_SCRYPT_N="1024")
        if clock:
            shim = build_monosleep(root / "shim")
            self.clock_file = root / "faketime.txt"
            self.clock_file.write_text("+0\n")
            self.env.update(LD_PRELOAD=f"{shim} {FAKETIME_LIB}", FAKETIME_TIMESTAMP_FILE=str(self.clock_file),
                            FAKETIME_CACHE_DURATION="1", FAKETIME_DONT_FAKE_MONOTONIC="1")
        for name in ("epson", "primera"):
            burnstation(self.data, "robots", "add", name, "--driver", name, "--path", str(self.spool / name),
                        "--role", name, "--media", "CD,DVD", "--option", f"status_timeout={status_timeout}")
        self.http_port = self.station.http_port
        burnstation(self.data, "config", "set", f"http.port={self.http_port}")
        proc = subprocess.run([str(BIN / "burnstation"), "--data", str(self.data), "users", "add", "tech",
                               "--role", "technician"], input=PASSWORD + "\n", capture_output=True, text=True,
                              timeout=60, env=self.env)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    # processes

    def start(self) -> Rig:
        self.start_sim()
        self.start_station()
        wait_for(self.robots_online, 40, "both robots online")
        return self

    def start_sim(self) -> None:
        log = open(self.root / "sim.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.sim = subprocess.Popen([str(BIN / "burnstation-sim"), "--spool", str(self.spool), "--root",
                                     str(self.sim_root), "--robots", "epson,primera", "--speed", self.speed],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        for name in ("epson", "primera"):
            wait_for(lambda n=name: (self.sim_root / "devices" / f"{n}.json").exists(), 20, f"simulated {name}")

    def start_station(self) -> None:
        log = open(self.data / "station.log", "ab")  # noqa: SIM115 - lives as long as the process
        self.station.proc = subprocess.Popen([str(BIN / "burnstation"), "--data", str(self.data), "run"],
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                             env=self.env)
        wait_dicom(self.station.port, AET, 60)

    def stop(self) -> None:
        self.station.stop()
        if self.sim is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.sim.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.sim.wait(15)
            self.sim = None

    def processes(self) -> dict[str, int]:
        """name → pid of the running station processes (the supervisor as `supervisor`)."""
        try:
            doc = json.loads((self.data / "run" / "supervisor.json").read_text())
        except (OSError, ValueError):
            return {}
        found = {p["name"]: p["pid"] for p in doc.get("processes", []) if p.get("pid") and p.get("state") == "running"}
        if self.station.proc is not None and self.station.proc.poll() is None:
            found["supervisor"] = self.station.proc.pid
        return found

    def robots_online(self) -> bool:
        robots = json.loads(burnstation(self.data, "robots", "list", "--json").stdout)
        robots = robots["robots"] if isinstance(robots, dict) else robots
        return sum(1 for r in robots if r.get("online")) == 2

    def ctl(self, robot: str, *command: str) -> None:
        subprocess.run([str(BIN / "burnstation-sim"), "ctl", "--root", str(self.sim_root), robot, *command],
                       capture_output=True, text=True, timeout=30, check=True)

    def set_clock(self, offset: str) -> None:
        assert self.clock_file is not None
        tmp = self.clock_file.with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        tmp.replace(self.clock_file)

    # the station answers again

    def answers(self) -> dict[str, bool]:
        echo = subprocess.run([str(DCMTK / "echoscu"), "-aec", AET, "127.0.0.1", str(self.station.port)],
                              capture_output=True, timeout=30).returncode == 0
        try:
            ack = msa(exchange(self.station.hl7_port, order(control_id="PING", placer="PING", accession="PING")
                               .encode(), timeout=10) or b"")[0] == "AA"
        except (OSError, AssertionError):
            ack = False
        web = WebUser(self.http_port)
        try:
            web.login()
            page = web.get("/jobs")[0] == 200
        except OSError:
            page = False
        return {"dicom": echo, "hl7": ack, "web": page}


# --------------------------------------------------------------------------- the workload


@dataclass
class Send:
    """One storescu run: what was sent, what the station acknowledged."""

    sender: int
    suffix: str
    patient_id: str
    sops: list[str]
    acked: set[str] = field(default_factory=set)
    complete: bool = False
    detail: str = ""
    study: str = ""


def run_storescu(port: int, aec: str, files: list[Path], timeout: float = 120) -> tuple[set[Path], bool, str, int]:
    """storescu -v: the files that got a Success/Warning response, whether the whole run succeeded,
    the last line when not, and how many were refused "Out of Resources" (A7xx: disk full)."""
    try:
        proc = subprocess.run([str(DCMTK / "storescu"), "-v", "-aec", aec, "-to", "20", "-ta", "20", "-td", "20",
                               "127.0.0.1", str(port), *map(str, files)], capture_output=True, text=True,
                              timeout=timeout, env=dict(os.environ, TCP_NODELAY="1"))
    except subprocess.TimeoutExpired:
        return set(), False, "storescu timed out", 0
    acked: set[Path] = set()
    refused = 0
    current: Path | None = None
    failed = False
    for line in (proc.stdout + proc.stderr).splitlines():
        if "Sending file: " in line:
            current = Path(line.split("Sending file: ", 1)[1].strip())
        elif "Received Store Response" in line and current is not None:
            if "(Success" in line or "Warning" in line:
                acked.add(current)
            else:
                failed = True
                refused += any(word in line.lower() for word in ("out of resources", "outofresources"))
            current = None
    complete = proc.returncode == 0 and not failed and len(acked) == len(files)
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] if not complete else []
    return acked, complete, " ".join(tail)[:200], refused


class Counters:
    """Thread-safe tallies by name."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.c: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.c[key] += n


class WebUser:
    """A cookie-keeping HTTP client (no redirects followed)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, form: dict[str, str] | None = None) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}
            body = None
            if form is not None:
                body = urlencode(form)
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", "replace")
            for item in resp.headers.get_all("Set-Cookie") or []:
                name, _, rest = item.partition("=")
                value = rest.split(";", 1)[0]
                if value and "1970" not in item:
                    self.cookies[name.strip()] = value
                else:
                    self.cookies.pop(name.strip(), None)
            return resp.status, text
        finally:
            conn.close()

    def get(self, path: str) -> tuple[int, str]:
        return self.request("GET", path)

    def login(self) -> int:
        self.cookies.clear()
        status, text = self.get("/login")
        match = re.search(r'name="csrf" value="([^"]*)"', text)
        if status != 200 or not match:
            return status
        return self.request("POST", "/login", {"csrf": match.group(1), "username": "tech", "password": PASSWORD})[0]


PAGES = ("/jobs", "/studies", "/robots", "/diagnostics", "/transfers", "/api/jobs", "/api/robots", "/api/status")


class Workload:
    """The mixed traffic, in threads, until `stop()`; every outcome is counted."""

    def __init__(self, rig: Rig, *, seed: int, senders: int = 4, scanners: int = 2, web_users: int = 2,
                 orders: bool = True, robot_faults: bool = True, work: Path | None = None,
                 fault_gap: tuple[float, float] = (4, 10), suffixes: tuple[str, ...] = SUFFIXES,
                 disc_gap: float = 0.0) -> None:
        if disc_gap < 0:
            raise ValueError("disc_gap must be 0 or more seconds")
        self.rig = rig
        self.rng = random.Random(seed)
        self.seed = seed
        self.suffixes = suffixes
        self.disc_gap = disc_gap
        self.work = work or rig.root / "work"
        self.stopping = threading.Event()
        self.sends: list[Send] = []
        self.sends_lock = threading.Lock()
        self.counts = Counters()
        self.orders_acked: list[str] = []
        self.threads: list[threading.Thread] = []
        for n in range(senders):
            self._spawn(self._sender, n)
        for n in range(scanners):
            self._spawn(self._scanner, n)
        for n in range(web_users):
            self._spawn(self._web_user, n)
        if orders:
            self._spawn(self._ris, 0)
        if robot_faults:
            self._spawn(self._robot_faults, 0, fault_gap)

    def _spawn(self, target: Any, *args: Any) -> None:
        self.threads.append(threading.Thread(target=target, args=args, daemon=True, name=f"{target.__name__}{args[0]}"))

    def start(self) -> Workload:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(180)

    # senders: each association is one study of a patient of its own per AE title; a run to _E/_P
    # that did not complete is sent again (as a modality retries), a run to _TE/_TP is not
    # (a re-send after its group burned would make a follow-up disc: correct, but not what is checked).
    # With `disc_gap` a sender sends to the plain title except for one association to a burning
    # title (in turn) every `disc_gap` seconds: a clinic's disc rate, which the robots keep up with.

    def _next_suffix(self, n: int, k: int, state: dict[str, float]) -> str:
        if not self.disc_gap:
            return self.suffixes[(n + k) % len(self.suffixes)]
        burning = [s for s in self.suffixes if s]
        now = time.monotonic()
        if not burning or now < state["next_disc"]:
            return ""
        state["next_disc"] = now + self.disc_gap
        state["discs"] += 1
        return burning[(n + int(state["discs"])) % len(burning)]

    def _sender(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        k = 0
        retry: Send | None = None
        retry_files: list[Path] = []
        # the first disc-making association at a random moment of the first gap, so senders spread out
        pace = {"next_disc": time.monotonic() + rng.uniform(0, self.disc_gap), "discs": -1.0}
        while not self.stopping.is_set():
            if retry is not None:
                suffix, patient, files = retry.suffix, retry.patient_id, retry_files
            else:
                k += 1
                suffix = self._next_suffix(n, k, pace)
                patient = f"S{n}{suffix or '_A'}-{rng.randrange(3) if suffix in ('_TE', '_TP') else k}"
                folder = self.work / f"sender{n}" / f"{k}"
                files = write_study(folder, n_series=rng.randint(1, 2), per_series=rng.randint(1, 3),
                                    patient_id=patient, patient_name=f"SOAK^S{n}", accession=f"A{n}-{k}",
                                    rows=32, cols=32)
            heads = {f: dcmread(f, stop_before_pixels=True) for f in files}
            uid_of = {f: str(ds.SOPInstanceUID) for f, ds in heads.items()}
            sops = [uid_of[f] for f in files]
            acked, complete, detail, refused = run_storescu(self.rig.station.port, AET + suffix, files)
            if refused:
                self.counts.add("instances refused: out of resources", refused)
            send = Send(n, suffix, patient, sops, {uid_of[f] for f in acked}, complete, detail,
                        str(heads[files[0]].StudyInstanceUID))
            with self.sends_lock:
                self.sends.append(send)
            self.counts.add("associations ok" if complete else "associations failed")
            self.counts.add("instances acknowledged", len(send.acked))
            retry, retry_files = (send, files) if not complete and suffix in ("_E", "_P") else (None, [])
            if not complete:
                self.stopping.wait(1.0)  # the station may be restarting a process
            self.stopping.wait(rng.uniform(0.1, 0.6))

    def _scanner(self, n: int) -> None:
        out = self.work / f"scanner{n}"
        out.mkdir(parents=True, exist_ok=True)
        while not self.stopping.is_set():
            try:
                proc = subprocess.run([str(DCMTK / "findscu"), "-W", "-aet", f"CT0{n}", "-aec", AET, "-to", "20",
                                       "-k", "PatientName", "-k", "AccessionNumber", "127.0.0.1",
                                       str(self.rig.station.port)], capture_output=True, text=True, timeout=60)
                self.counts.add("worklist queries ok" if proc.returncode == 0 else "worklist queries failed")
            except subprocess.TimeoutExpired:
                self.counts.add("worklist queries failed")
            self.stopping.wait(1.0)

    def _ris(self, _n: int) -> None:
        k = 0
        while not self.stopping.is_set():
            k += 1
            acc = f"R{self.seed}-{k}"
            text = order(placer=f"P{self.seed}-{k}", accession=acc, patient_id=f"W{k}", control_id=f"M{k}")
            try:
                reply = exchange(self.rig.station.hl7_port, text.encode("latin_1"), timeout=15)
                ok = reply is not None and msa(reply)[0] == "AA"
            except (OSError, AssertionError):
                ok = False
            if ok:
                self.orders_acked.append(acc)
            self.counts.add("HL7 orders AA" if ok else "HL7 orders not acknowledged")
            self.stopping.wait(2.0)

    def _web_user(self, n: int) -> None:
        rng = random.Random(self.seed * 7 + n)
        user = WebUser(self.rig.http_port)
        logged_in = False
        while not self.stopping.is_set():
            try:
                if not logged_in:
                    status = user.login()
                    logged_in = status == 303 or status == 302
                    self.counts.add("web logins ok" if logged_in else f"web logins {status}")
                else:
                    status, _ = user.get(rng.choice(PAGES))
                    if status in (302, 303, 401):
                        logged_in = False
                    self.counts.add("web pages 2xx" if status < 300 else f"web pages {status}")
            except OSError:
                logged_in = False
                self.counts.add("web requests failed to connect")
            self.stopping.wait(rng.uniform(0.5, 1.5))

    def _robot_faults(self, _n: int, gap: tuple[float, float]) -> None:
        rng = random.Random(self.seed * 13)
        while not self.stopping.wait(rng.uniform(*gap)):
            robot, fault = rng.choice(("epson", "primera")), rng.choice(ROBOT_FAULTS)
            try:
                self.rig.ctl(robot, "fault", fault, "on")
                self.counts.add(f"robot fault {fault}")
                self.stopping.wait(rng.uniform(1, 3))
            finally:
                with contextlib.suppress(subprocess.SubprocessError):
                    self.rig.ctl(robot, "fault", fault, "off")
                    for name in ("epson", "primera"):  # the operator keeps blanks in and the output bin empty
                        self.rig.ctl(name, "refill")


# --------------------------------------------------------------------------- the checks


def read_db(data: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{data / 'state.db'}?mode=ro", uri=True, timeout=30)
    conn.row_factory = sqlite3.Row
    return conn


def job_state(data: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    doc = json.loads(burnstation(data, "jobs", "list", "--json", "--limit", "100000").stdout)
    return doc["jobs"], doc["groups"]


def settle(rig: Rig, timeout: float = 240) -> dict[str, Any]:
    """Wait until no group is pending and no job active; failed jobs are retried once (what an
    operator does after a disk-full build or a write error). A job is stuck when nothing moved for
    `timeout` s (at most 120 s of no progress once the queue drains). Returns what happened."""
    retried: list[str] = []
    started = time.monotonic()
    deadline = started + timeout
    best, moved_at = None, time.monotonic()
    while True:
        for name in ("epson", "primera"):  # the operator keeps blanks in and the output bins empty
            with contextlib.suppress(subprocess.SubprocessError):
                rig.ctl(name, "refill")
        jobs, groups = job_state(rig.data)
        active = [j for j in jobs if j["state"] in ACTIVE]
        left = len(active) + len(groups)
        if best is None or left < best:  # a queue still draining is not stuck: more time while it moves
            best, moved_at = left, time.monotonic()
            deadline = max(deadline, moved_at + min(120.0, timeout))
        failed = [j for j in jobs if j["state"] == "failed" and j["id"] not in retried]
        for job in failed:
            burnstation(rig.data, "jobs", "retry", job["id"], check=False)
            retried.append(job["id"])
        if not active and not groups and not failed:
            return {"retried": retried, "stuck": [], "jobs": jobs, "seconds": time.monotonic() - started}
        if time.monotonic() > deadline:
            return {"retried": retried, "jobs": jobs, "seconds": time.monotonic() - started, "stuck": [
                f"{j['id']} {j['state']} {j['message'][:80]}" for j in active] + [
                f"group {g['id']} {g['group_key']} pending" for g in groups]}
        time.sleep(1)


def disc_sops(rig: Rig, job: dict[str, Any]) -> set[str] | None:
    """The SOP Instance UIDs on the disc the simulator burned for a job (DICOMDIR of its image)."""
    import pycdlib
    # the job's folder, and those of the same job under a name the driver gave it later
    # (`<id>-R2` when the engine still knew the id, `<id>-2` after a retry)
    base = rig.sim_root / "bin" / job["robot"]
    rid = job["robot_job_id"]
    folders = [p for p in base.glob(f"{rid}*") if p.name == rid or p.name.startswith(rid + "-")]
    found: set[str] = set()
    images = sorted(i for f in folders for i in f.glob("*.iso"))
    if not images:
        return None
    for image in images:
        iso = pycdlib.PyCdlib()
        iso.open(str(image))
        try:
            buf = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(buf, joliet_path="/DICOMDIR")
            except Exception:  # noqa: BLE001 - a UDF disc: its ISO 9660 bridge name
                iso.get_file_from_iso_fp(buf, iso_path="/DICOMDIR.;1")
        finally:
            iso.close()
        buf.seek(0)
        for record in dcmread(buf).DirectoryRecordSequence:
            if "ReferencedSOPInstanceUIDInFile" in record:
                found.add(str(record.ReferencedSOPInstanceUIDInFile))
    return found


def purged_studies(data: Path) -> dict[str, dict[str, Any]]:
    """study UID → the audit-trail record of its deletion by the retention rules (disk above the
    high water mark: burned studies go, oldest first; README "Storage retention")."""
    found = {}
    path = data / "logs" / "audit-trail.log"
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if doc.get("action") == "study.purged":
                    found[doc.get("study_uid", "")] = doc
    return found


def check(rig: Rig, sends: list[Send], settle_timeout: float = 240) -> dict[str, Any]:
    """Every acknowledged instance stored and indexed, on exactly the discs its grouping says; no job stuck.

    An instance of a study the retention rules deleted (it was burned and the disk went above the
    high water mark) is no longer required in the index; a deleted study that was never burned is
    a problem."""
    from appliance import index

    problems: list[str] = []
    settled = settle(rig, settle_timeout)
    problems += [f"stuck: {s}" for s in settled["stuck"]]
    purged = purged_studies(rig.data)
    for s in sends:
        if s.study in purged and s.acked and not purged[s.study].get("jobs"):
            problems.append(f"study {s.study} ({s.suffix or 'plain'}) was purged though never burned")
    acked = {sop for s in sends for sop in s.acked}
    if not acked:
        problems.append(f"no instance acknowledged in {len(sends)} association(s)")
    kept = {sop for s in sends if s.study not in purged for sop in s.acked}
    conn = read_db(rig.data)
    try:
        rows = {r["sop_uid"]: r for r in index.instances_by_uid(conn, acked)}
        for sop in sorted(kept - set(rows)):
            problems.append(f"acknowledged but not indexed: {sop}")
        for sop, row in rows.items():
            path = Path(row["path"])
            path = path if path.is_absolute() else rig.data / "storage" / path
            if not path.exists():
                problems.append(f"indexed but no file: {sop} ({row['path']})")
        all_jobs = [j for j in settled["jobs"] if j["state"] != "cancelled"]
        # the harness reads the job's own list (job_instances leaves out what a purge deleted)
        items = {j["id"]: {r[0] for r in conn.execute("SELECT sop_uid FROM job_items WHERE job_id=?", (j["id"],))}
                 for j in all_jobs}
    finally:
        conn.close()
    by_sop: dict[str, list[str]] = {}
    for job_id, sops in items.items():
        for sop in sops:
            by_sop.setdefault(sop, []).append(job_id)
    job = {j["id"]: j for j in all_jobs}
    # plain AE title: never on a disc
    for s in sends:
        if s.suffix == "":
            for sop in s.acked:
                if sop in by_sop:
                    problems.append(f"{sop} sent to {AET} (no burning) is on job(s) {by_sop[sop]}")
    # _E / _P: one job per completed association with exactly its instances; none for the others
    wanted: Counter[tuple[str, frozenset[str]]] = Counter(
        (ROLE[s.suffix], frozenset(s.sops)) for s in sends if s.suffix in ("_E", "_P") and s.complete)
    made: Counter[tuple[str, frozenset[str]]] = Counter(
        (j["role"], frozenset(items[j["id"]])) for j in all_jobs if j["source"] == "assoc")
    for key in wanted.keys() | made.keys():
        if wanted[key] != made[key]:
            problems.append(f"{key[0]} association of {len(key[1])} instances: {wanted[key]} completed, "
                            f"{made[key]} job(s)")
    # _TE / _TP: every acknowledged instance on exactly one delayed job of its role and patient
    for s in sends:
        if s.suffix in ("_TE", "_TP"):
            for sop in s.acked:
                on = [j for j in by_sop.get(sop, []) if job[j]["source"] == "delayed"]
                if len(on) != 1 or job[on[0]]["role"] != ROLE[s.suffix] or job[on[0]]["patient_id"] != s.patient_id:
                    problems.append(f"{sop} ({s.suffix} {s.patient_id}) is on delayed job(s) {on}")
    # the burned discs hold exactly their job's instances
    discs_checked = 0
    for j in all_jobs:
        if j["state"] != "done":
            problems.append(f"job {j['id']} ended {j['state']}: {j['message'][:100]} {j['error'][:100]}")
            continue
        on_disc = disc_sops(rig, j)
        discs_checked += 1
        if on_disc is None:
            problems.append(f"job {j['id']} done but no disc image in the simulator's bin")
        elif on_disc != items[j["id"]]:
            problems.append(f"job {j['id']}: disc holds {len(on_disc)} instances, the job {len(items[j['id']])}")
    answers = rig.answers()
    problems += [f"the station does not answer on {k}" for k, ok in answers.items() if not ok]
    return {"problems": problems, "acked": len(acked), "jobs": len(all_jobs), "retried": len(settled["retried"]),
            "discs": discs_checked, "answers": answers, "purged_studies": len(purged),
            "drain_seconds": settled["seconds"]}


# --------------------------------------------------------------------------- /proc sampling


TCP_STATES = {"0A": "listen", "08": "close_wait"}  # any other state: a connection open or closing


def socket_tables() -> dict[str, str]:
    """socket inode → `tcp listen`, `tcp close_wait` (the peer closed and the process did not: a leak
    when it grows), `tcp open` (any other state: a connection open or closing) or `unix`."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9:
                    found[cols[9]] = "tcp " + TCP_STATES.get(cols[3], "open")
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            cols = line.split()
            if len(cols) > 6:
                found[cols[6]] = "unix"
    return found


# descriptors that come and go with the clients: open TCP connections, and sockets closed between
# listing the descriptors and reading the socket tables
CONNECTION_KINDS = ("tcp open", "socket gone")


# SQLite (unix VFS) cannot close a connection's descriptor on state.db while another connection of
# the process holds a POSIX lock on the file (closing would drop that lock), and a WAL connection
# always does: it parks the descriptor and hands it to the next connection the process opens. So a
# process with a connection per association keeps about one state.db descriptor per association it
# ever had open at once: the count follows the peak of simultaneous associations, not their number.
# (A connection left open also keeps its -wal descriptor: that one counts as a `file`.)
STATE_DB = "state.db"


def fd_kinds(pid: int) -> Counter[str]:
    """What a process's open descriptors are: `state.db` (see STATE_DB), any other regular `file`,
    `pipe`, `anon` (eventfd, epoll ...),
    sockets by socket_tables(), and `socket gone` (closed while this looked: the tables are read
    after the descriptors, so a socket missing from them had just closed)."""
    kinds: Counter[str] = Counter()
    targets = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return kinds
    for name in names:
        with contextlib.suppress(OSError):
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
    tables = socket_tables() if any(t.startswith("socket:[") for t in targets) else {}
    for target in targets:
        if target.startswith("socket:["):
            kinds[tables.get(target[8:-1], "socket gone")] += 1
        elif target.startswith("pipe:"):
            kinds["pipe"] += 1
        elif target.startswith("anon_inode:"):
            kinds["anon"] += 1
        elif target.endswith("/state.db"):
            kinds["state.db"] += 1
        else:
            kinds["file"] += 1
    return kinds


def sample(pids: dict[str, int]) -> dict[str, tuple[int, int]]:
    """name → (RSS in kB, open file descriptors) from /proc."""
    out = {}
    for name, pid in pids.items():
        try:
            rss = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        except (OSError, StopIteration, ValueError):
            continue
        out[name] = (rss, fds)
    return out


def slope_at_constant_load(points: list[tuple[float, float, float]]) -> float:
    """Least-squares slope in t of (t, load, y) points with the load as a second regressor
    (y = a + b·t + c·load): how y grows at a constant number of open connections, per second."""
    n = len(points)
    if n < 3:
        return slope([(t, y) for t, _, y in points])
    mt, mc, my = (sum(p[i] for p in points) / n for i in range(3))
    stt = sum((t - mt) ** 2 for t, _, _ in points)
    scc = sum((c - mc) ** 2 for _, c, _ in points)
    stc = sum((t - mt) * (c - mc) for t, c, _ in points)
    sty = sum((t - mt) * (y - my) for t, _, y in points)
    scy = sum((c - mc) * (y - my) for _, c, y in points)
    det = stt * scc - stc * stc
    if stt == 0 or det <= 1e-9 * stt * max(scc, 1e-9):  # the load did not vary (or only with time)
        return slope([(t, y) for t, _, y in points])
    return (sty * scc - scy * stc) / det


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (t, y) points, per second (0 with fewer than two)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (y - my) for t, y in points) / var if var else 0.0

