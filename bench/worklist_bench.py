"""Worklist benchmark (not a test): HL7 order throughput and MWL C-FIND latency vs dcmtk wlmscpfs.

    .venv/bin/python bench/worklist_bench.py [--orders 1000] [--items 5000] [--queries 30]

1. A real station (`burnstation run`) on free ports; `--orders` ORM^O01 messages over ONE MLLP
   connection, each waiting for its ACK (as a RIS does) → messages per second.
2. More orders until the worklist holds `--items` items (spread over 10 station AE titles and 10
   days around today, so a typical scanner query matches about 1 % of them).
3. The same items exported as `.wl` files and served by dcmtk's wlmscpfs.
4. The typical scanner query (Scheduled Station AE Title + today's SPS start date, a dozen return
   keys), each on a new association as scanners do, alternating between the two servers;
   median and p95 latency (association request to final C-FIND response) for each.
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import AE  # noqa: E402
from support import Station, free_port, wait_port  # noqa: E402
from worklist_support import Replies, frame, msa, order  # noqa: E402

from appliance.worklist import record as rec  # noqa: E402

MWL = "1.2.840.10008.5.1.4.31"
AETS = [f"CT{i:02d}" for i in range(1, 11)]


def days_around_today(n: int = 10) -> list[str]:
    now = time.time()
    return [time.strftime("%Y%m%d", time.localtime(now + (d - n // 2) * 86400)) for d in range(n)]


def make_order(i: int, days: list[str]) -> bytes:
    aet = AETS[i % len(AETS)]
    day = days[(i // len(AETS)) % len(days)]
    text = order(placer=f"B{i:06d}", accession=f"BA{i:06d}", patient_id=f"BP{i:06d}",
                 name=f"PATIENT{i:06d}^TEST", station=aet, start=f"{day}{8 + i % 10:02d}{i % 60:02d}",
                 modality="CT", control_id=f"B{i}")
    return text.encode("latin_1")


def send_orders(port: int, start: int, count: int, days: list[str]) -> float:
    """Send `count` orders on one connection, one at a time; returns seconds taken."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        replies = Replies(sock)
        t0 = time.perf_counter()
        for i in range(start, start + count):
            sock.sendall(frame(make_order(i, days)))
            reply = replies.next(30)
            if reply is None or msa(reply)[0] != "AA":
                raise SystemExit(f"order {i} not accepted: {reply!r}")
        return time.perf_counter() - t0


def export_wl(state_db: Path, folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lockfile").touch()
    conn = sqlite3.connect(state_db)
    n = 0
    for item_id, text in conn.execute("SELECT id, dataset FROM worklist_items"):
        ds = rec.to_dataset(rec.from_json(text))
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = "1.2.276.0.7230010.3.1.0.1"
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.save_as(folder / f"item{item_id:06d}.wl", enforce_file_format=True)
        n += 1
    conn.close()
    return n


def scanner_query(aet: str, day: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber",
                    "StudyInstanceUID", "RequestedProcedureID", "RequestedProcedureDescription",
                    "ReferringPhysicianName"):
        setattr(ds, keyword, "")
    step = Dataset()
    step.ScheduledStationAETitle = aet
    step.ScheduledProcedureStepStartDate = day
    for keyword in ("Modality", "ScheduledProcedureStepStartTime", "ScheduledProcedureStepID",
                    "ScheduledProcedureStepDescription"):
        setattr(step, keyword, "")
    ds.ScheduledProcedureStepSequence = [step]
    return ds


def one_query(port: int, called: str, query: Dataset) -> tuple[float, int]:
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MWL)
    t0 = time.perf_counter()
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise SystemExit(f"association to {called}@{port} failed")
    found = 0
    for status, identifier in assoc.send_c_find(query, MWL):
        if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
            found += 1
    assoc.release()
    return time.perf_counter() - t0, found


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--queries", type=int, default=30)
    args = parser.parse_args()
    days = days_around_today()
    today = time.strftime("%Y%m%d")
    with tempfile.TemporaryDirectory(prefix="wlbench") as tmp:
        root = Path(tmp)
        station = Station(root / "data")
        station.start()
        wlm = None
        try:
            wait_port(station.hl7_port)
            seconds = send_orders(station.hl7_port, 0, args.orders, days)
            print(f"HL7: {args.orders} orders over one MLLP connection in {seconds:.2f} s "
                  f"= {args.orders / seconds:.0f} messages/s (each ACKed after commit)")
            if args.items > args.orders:
                send_orders(station.hl7_port, args.orders, args.items - args.orders, days)
            n = export_wl(station.data / "state.db", root / "wlmdb" / "BENCH")
            print(f"worklist: {n} items in the station (state.db), the same {n} as .wl files for wlmscpfs")
            wlm_port = free_port()
            wlm = subprocess.Popen(["/usr/bin/wlmscpfs", "-dfp", str(root / "wlmdb"), "-csk", str(wlm_port)],
                                   env=dict(os.environ, TCP_NODELAY="1"), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            wait_port(wlm_port)
            query = scanner_query(AETS[0], today)
            # warm-up (first query loads the cache / page cache on both sides)
            _t, found_station = one_query(station.port, "BURNSTATION", query)
            _t, found_wlm = one_query(wlm_port, "BENCH", query)
            print(f"query: ScheduledStationAETitle={AETS[0]} and SPS start date {today}: "
                  f"{found_station} items from the station, {found_wlm} from wlmscpfs")
            if found_station != found_wlm:
                print("WARNING: the two servers returned different numbers of items")
            times: dict[str, list[float]] = {"station": [], "wlmscpfs": []}
            for _ in range(args.queries):
                times["station"].append(one_query(station.port, "BURNSTATION", query)[0])
                times["wlmscpfs"].append(one_query(wlm_port, "BENCH", query)[0])
            for name, values in times.items():
                print(f"{name:9s}: median {statistics.median(values) * 1000:7.1f} ms   "
                      f"p95 {p95(values) * 1000:7.1f} ms   ({len(values)} queries, new association each)")
        finally:
            station.stop()
            if wlm is not None:
                wlm.terminate()
                wlm.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
