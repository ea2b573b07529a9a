"""Transfer benchmark: the station as a client next to dcmtk, measured in the same run.

Why: issue 13 asks sends and retrieves to stay within 1.5x of dcmtk. This script is how that is
checked; it is not a test.

- send: `burnstation send NODE --study UID` (time from the transfer's start to its end, as the
  transfer process records it, and the CLI's wall time) against dcmtk `storescu` of the same
  files (wall time, one association), both to a fresh dcmtk `storescp` and to Orthanc;
- retrieve: `burnstation retrieve ORTHANC --study UID` (C-MOVE to the station) against dcmtk
  `movescu` with its own storage SCP (`--port`), from the same Orthanc;
- for reference, `receive`: dcmtk `storescu` to the station (its dicom process, the path a
  retrieve's instances take in) against `storescu` to `storescp`.

    TCP_NODELAY=1 PYTHONPATH=. .venv/bin/python bench/transfer_bench.py [--small 1000] [--large 200] [--reps 3]

Every received set is counted (storescp: files; Orthanc: REST; station: index rows). Each
comparison runs `--reps` times, interleaved; the table shows medians. Next to the wall times, CPU
seconds (less sensitive to a busy machine): the station's transfer process (plus its dicom
processes for receive and retrieve, which store what arrives) against the dcmtk client's own
(storescu; movescu with its storage SCP), and the load average during the run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from orthanc_support import Orthanc  # noqa: E402
from support import Station, burnstation, free_port, wait_for, wait_port, write_study  # noqa: E402

from appliance import db  # noqa: E402
from appliance.transfer import jobs  # noqa: E402

ENV = dict(os.environ, TCP_NODELAY="1")


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


@contextlib.contextmanager
def storescp(folder: Path, aet: str = "DEST"):  # noqa: ANN201
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(["/usr/bin/storescp", "-aet", aet, "-od", str(folder), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    try:
        wait_port(port)
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(10)


def timed(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of a dcmtk client run to its end.

    dcmtk clients and storescp each run in a session of their own, as the station does: with the
    kernel's autogroup scheduling a session is one scheduling group, and a storescu sharing the
    benchmark's group with storescp was favoured on a loaded machine (two groups to wake per
    object for the station, one for storescu)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, start_new_session=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr.read().decode(errors='replace')[-2000:]}")
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stderr.close()
    return wall, usage.ru_utime + usage.ru_stime


def pid_cpu(pid: int) -> float:
    """CPU seconds so far of a process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_cpu(data: Path, prefix: str) -> float:
    """CPU seconds so far of the station's processes whose name starts with `prefix` (all threads)."""
    from appliance.supervisor.supervisor import read_state

    total = 0.0
    for p in (read_state(data) or {}).get("processes", []):
        if str(p.get("name", "")).startswith(prefix) and p.get("pid"):
            with contextlib.suppress(OSError):
                total += pid_cpu(p["pid"])
    return total


def station_cpu(data: Path) -> float:
    return process_cpu(data, "transfer") + process_cpu(data, "dicom")


def station_transfer(data: Path, *args: str) -> tuple[float, float, float]:
    """(transfer start→end as recorded, CLI wall time, CPU seconds of the station's transfer and dicom
    processes) of one `burnstation send|retrieve`."""
    cpu0 = station_cpu(data)
    t0 = time.monotonic()
    out = burnstation(data, *args, timeout=3600)
    wall = time.monotonic() - t0
    cpu = station_cpu(data) - cpu0
    tid = out.stdout.split()[0]
    with contextlib.closing(db.connect(data)) as conn:
        t = jobs.get(conn, tid)
    assert t is not None and t["state"] == "done", t
    return t["finished_at"] - t["started_at"], wall, cpu


class Run:
    """One run of the comparisons on one set: the station's way and dcmtk's, each a method."""

    def __init__(self, root: Path, st: Station, pacs: Orthanc, movescu_port: int, tag: str, rep: int,
                 files: list[Path], study: str) -> None:
        self.root, self.st, self.pacs, self.movescu_port = root, st, pacs, movescu_port
        self.tag, self.rep, self.files, self.study = tag, rep, files, study

    def station_to_storescp(self) -> tuple[float, float, float]:
        folder, aet = self.root / f"scp-{self.tag}-station", f"DEST{self.rep}"
        with storescp(folder, aet) as (port, _scp):
            burnstation(self.st.data, "nodes", "add", aet, "127.0.0.1", str(port))
            result = station_transfer(self.st.data, "send", aet, "--study", self.study)
            assert count_files(folder) == len(self.files)
        return result

    def storescu_to_storescp(self) -> tuple[float, float]:
        folder = self.root / f"scp-{self.tag}-dcmtk"
        with storescp(folder) as (port, _scp):
            result = timed(["/usr/bin/storescu", "-aec", "DEST", "127.0.0.1", str(port), *map(str, self.files)])
            assert count_files(folder) == len(self.files)
        return result

    def _empty_orthanc(self) -> None:
        """Each send starts from an empty Orthanc."""
        for oid in self.pacs.get("/studies"):
            self.pacs.request("DELETE", f"/studies/{oid}")

    def station_to_orthanc(self) -> tuple[float, float, float]:
        self._empty_orthanc()
        result = station_transfer(self.st.data, "send", "ORTHANC", "--study", self.study)
        assert self.pacs.instance_count() == len(self.files)
        return result

    def storescu_to_orthanc(self) -> tuple[float, float]:
        self._empty_orthanc()
        result = timed(["/usr/bin/storescu", "-aec", "ORTHANC", "127.0.0.1", str(self.pacs.dicom_port),
                        *map(str, self.files)])
        assert self.pacs.instance_count() == len(self.files)
        return result

    def station_retrieve(self) -> tuple[float, float, float]:
        """C-MOVE to the station (the study taken out of its index first)."""
        with contextlib.closing(db.connect(self.st.data)) as conn:
            conn.execute("DELETE FROM instances WHERE study_uid=?", (self.study,))
        result = station_transfer(self.st.data, "retrieve", "ORTHANC", "--study", self.study)
        with contextlib.closing(db.connect(self.st.data)) as conn:
            got = conn.execute("SELECT COUNT(*) FROM instances WHERE study_uid=?", (self.study,)).fetchone()[0]
        assert got == len(self.files), got
        return result

    def movescu_retrieve(self) -> tuple[float, float]:
        """dcmtk movescu with its own storage SCP (--port)."""
        out = self.root / f"movescu-{self.tag}"
        out.mkdir()
        result = timed(["/usr/bin/movescu", "-S", "-aet", "MOVESCU", "-aec", "ORTHANC", "-aem", "MOVESCU",
                        "--port", str(self.movescu_port), "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                        "-k", f"StudyInstanceUID={self.study}", "127.0.0.1", str(self.pacs.dicom_port)])
        assert count_files(out) == len(self.files), count_files(out)
        return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="64x64 16-bit instances (~8 KB)")
    parser.add_argument("--large", type=int, default=200, help="512x512 16-bit instances (~512 KB)")
    parser.add_argument("--reps", type=int, default=3, help="runs of each comparison (the table shows medians)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="transfer-bench-"))
    runs: dict[tuple[str, str], list[tuple[int, float, float, float, float, float]]] = {}
    loads = [os.getloadavg()[0]]

    def note(what: str, name: str, n: int, ours: tuple[float, float, float], theirs: tuple[float, float]) -> None:
        runs.setdefault((what, name), []).append((n, *ours, *theirs))
        loads.append(os.getloadavg()[0])

    try:
        sets = {}
        if args.small:
            sets["small"] = write_study(root / "small", 1, args.small, patient_id="BSMALL", rows=64, cols=64)
        if args.large:
            sets["large"] = write_study(root / "large", 1, args.large, patient_id="BLARGE", rows=512, cols=512)
        st = Station(root / "data")
        movescu_port = free_port()
        pacs = Orthanc(root / "orthanc", "ORTHANC", {"station": ("BURNSTATION", st.port),
                                                     "movescu": ("MOVESCU", movescu_port)})
        burnstation(st.data, "nodes", "add", "ORTHANC", "127.0.0.1", str(pacs.dicom_port))
        with pacs, st:
            wait_for(lambda: b'"transfer"' in subprocess.run(
                [sys.executable, "-m", "appliance.cli", "--data", str(st.data), "status", "--json"],
                capture_output=True).stdout, 60, "the transfer process")
            for name, files in sets.items():
                study = str(__import__("pydicom").dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
                for rep in range(args.reps):
                    tag = f"{name}-{rep}"
                    # for reference: what the station's dicom process takes to receive the set (the
                    # floor of a C-MOVE retrieve, whose instances arrive the same way) next to storescp
                    cpu0 = station_cpu(st.data)
                    received = timed(["/usr/bin/storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port),
                                      *map(str, files)])
                    received_cpu = station_cpu(st.data) - cpu0
                    with storescp(root / f"scp-{tag}-receive") as (port, scp):
                        scp_cpu = pid_cpu(scp.pid)
                        theirs = timed(["/usr/bin/storescu", "-aec", "DEST", "127.0.0.1", str(port), *map(str, files)])
                        scp_cpu = pid_cpu(scp.pid) - scp_cpu
                    # the receivers' CPU: the station's dicom (and transfer) processes against storescp's
                    note("receive (storescu)", name, len(files), (received[0], received[0], received_cpu),
                         (theirs[0], scp_cpu))
                    # who goes first alternates from run to run (a load that rises or falls during
                    # a run then favours neither)
                    run = Run(root, st, pacs, movescu_port, tag, rep, files, study)
                    for what, station_way, dcmtk_way in (
                            ("send to storescp", run.station_to_storescp, run.storescu_to_storescp),
                            ("send to Orthanc", run.station_to_orthanc, run.storescu_to_orthanc),
                            ("retrieve (C-MOVE)", run.station_retrieve, run.movescu_retrieve)):
                        if rep % 2:
                            dcmtk_result = dcmtk_way()
                            note(what, name, len(files), station_way(), dcmtk_result)
                        else:
                            station_result = station_way()
                            note(what, name, len(files), station_result, dcmtk_way())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"load average (1 min) during the run: min {min(loads):.1f}, median {statistics.median(loads):.1f}, "
          f"max {max(loads):.1f}; medians of {args.reps} run(s)")
    print(f"{'what':20} {'set':6} {'n':>5} {'station s':>10} {'(CLI wall)':>10} {'dcmtk s':>8} {'ratio':>6} "
          f"{'CLI ratio':>9} {'cpu ms/obj':>10} {'dcmtk cpu':>9}")
    table = []
    for (what, name), rows in runs.items():
        n = rows[0][0]
        ours, wall, cpu, theirs, their_cpu = (statistics.median(r[i] for r in rows) for i in range(1, 6))
        ratio = statistics.median(r[1] / r[4] for r in rows)
        wall_ratio = statistics.median(r[2] / r[4] for r in rows)
        print(f"{what:20} {name:6} {n:>5} {ours:>10.2f} {wall:>10.2f} {theirs:>8.2f} {ratio:>6.2f} {wall_ratio:>9.2f} "
              f"{1000 * cpu / n:>10.3f} {1000 * their_cpu / n:>9.3f}")
        table.append({"what": what, "set": name, "n": n, "station": ours, "cli_wall": wall, "dcmtk": theirs,
                      "ratio": ratio, "cli_ratio": wall_ratio, "station_cpu": cpu, "dcmtk_cpu": their_cpu,
                      "runs": rows})
    print(json.dumps({"load": loads, "results": table}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
