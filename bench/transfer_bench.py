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

    .venv/bin/python bench/transfer_bench.py [--small 1000] [--large 200]

Every received set is counted (storescp: files; Orthanc: REST; station: index rows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
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
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def timed(argv: list[str]) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True, env=ENV, timeout=3600)
    return time.monotonic() - t0


def station_transfer(data: Path, *args: str) -> tuple[float, float]:
    """(transfer start→end as recorded, CLI wall time) of one `burnstation send|retrieve`."""
    t0 = time.monotonic()
    out = burnstation(data, *args, timeout=3600)
    wall = time.monotonic() - t0
    tid = out.stdout.split()[0]
    with contextlib.closing(db.connect(data)) as conn:
        t = jobs.get(conn, tid)
    assert t is not None and t["state"] == "done", t
    return t["finished_at"] - t["started_at"], wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1000, help="64x64 16-bit instances (~8 KB)")
    parser.add_argument("--large", type=int, default=200, help="512x512 16-bit instances (~512 KB)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="transfer-bench-"))
    results = []
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
                # for reference: what the station's dicom process takes to receive the set (the
                # floor of a C-MOVE retrieve, whose instances arrive the same way) next to storescp
                received = timed(["/usr/bin/storescu", "-aec", "BURNSTATION", "127.0.0.1", str(st.port),
                                  *map(str, files)])
                with storescp(root / f"scp-{name}-receive") as port:
                    theirs = timed(["/usr/bin/storescu", "-aec", "DEST", "127.0.0.1", str(port), *map(str, files)])
                results.append(("receive (storescu)", name, len(files), received, received, theirs))
                # send to storescp
                with storescp(root / f"scp-{name}-station") as port:
                    burnstation(st.data, "nodes", "add", "DEST", "127.0.0.1", str(port))
                    ours, wall = station_transfer(st.data, "send", "DEST", "--study", study)
                    assert count_files(root / f"scp-{name}-station") == len(files)
                with storescp(root / f"scp-{name}-dcmtk") as port:
                    theirs = timed(["/usr/bin/storescu", "-aec", "DEST", "127.0.0.1", str(port), *map(str, files)])
                    assert count_files(root / f"scp-{name}-dcmtk") == len(files)
                results.append(("send to storescp", name, len(files), ours, wall, theirs))
                # send to Orthanc (each starts from an empty Orthanc: delete what is there)
                for oid in pacs.get("/studies"):
                    pacs.request("DELETE", f"/studies/{oid}")
                ours, wall = station_transfer(st.data, "send", "ORTHANC", "--study", study)
                assert pacs.instance_count() == len(files)
                for oid in pacs.get("/studies"):
                    pacs.request("DELETE", f"/studies/{oid}")
                theirs = timed(["/usr/bin/storescu", "-aec", "ORTHANC", "127.0.0.1", str(pacs.dicom_port),
                                *map(str, files)])
                assert pacs.instance_count() == len(files)
                results.append(("send to Orthanc", name, len(files), ours, wall, theirs))
                # retrieve from Orthanc: C-MOVE to the station, against movescu + its own storage SCP
                with contextlib.closing(db.connect(st.data)) as conn:
                    conn.execute("DELETE FROM instances WHERE study_uid=?", (study,))
                ours, wall = station_transfer(st.data, "retrieve", "ORTHANC", "--study", study)
                with contextlib.closing(db.connect(st.data)) as conn:
                    got = conn.execute("SELECT COUNT(*) FROM instances WHERE study_uid=?", (study,)).fetchone()[0]
                assert got == len(files), got
                out = root / f"movescu-{name}"
                out.mkdir()
                theirs = timed(["/usr/bin/movescu", "-S", "-aet", "MOVESCU", "-aec", "ORTHANC", "-aem", "MOVESCU",
                                "--port", str(movescu_port), "-od", str(out), "-k", "QueryRetrieveLevel=STUDY",
                                "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(pacs.dicom_port)])
                assert count_files(out) == len(files), count_files(out)
                results.append(("retrieve (C-MOVE)", name, len(files), ours, wall, theirs))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{'what':20} {'set':6} {'n':>5} {'station s':>10} {'(CLI wall)':>10} {'dcmtk s':>8} {'ratio':>6}")
    for what, name, n, ours, wall, theirs in results:
        print(f"{what:20} {name:6} {n:>5} {ours:>10.2f} {wall:>10.2f} {theirs:>8.2f} {ours / theirs:>6.2f}")
    print(json.dumps([dict(zip(("what", "set", "n", "station", "cli_wall", "dcmtk"), r, strict=True))
                      for r in results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
