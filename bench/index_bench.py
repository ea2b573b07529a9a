"""Index writes from several dicom worker processes: SQLite's busy handler against the writer lock.

Why: an earlier try of two dicom processes on one port (SO_REUSEPORT) was no faster than one.
This isolates the index write, the only step the processes share: P processes each index R
arrivals (index.add_instance, one transaction per record as the store handler did, or
ingest.IndexWriter with the `write_lock` flock), and the time each spends WAITING for the write
lock is measured apart from the time it holds it. SQLite's busy handler sleeps 1, 2, 5, 10 ...
ms before trying again, so a collision costs milliseconds where the transaction itself takes a
fraction of one; the flock wakes the next writer as soon as the holder is done.

    .venv/bin/python bench/index_bench.py [--procs 2] [--records 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance import db, index  # noqa: E402
from appliance.dicom import ingest  # noqa: E402


def _rec(proc: int, n: int) -> index.InstanceRecord:
    return index.InstanceRecord(
        sop_uid=f"1.2.826.0.1.{proc}.{n}", sop_class="1.2.840.10008.5.1.4.1.1.2", series_uid=f"1.2.826.1.{n // 100}",
        study_uid="1.2.826.2", path=f"/x/{proc}/{n}.dcm", size=8192, transfer_syntax="1.2.840.10008.1.2.1",
        patient={"patient_id": "BENCH", "patient_name": "BENCH^PATIENT"}, study={"accession": "A1"},
        series={"modality": "CT"}, instance_number=str(n), assoc_id=proc)


def worker(data: str, proc: int, records: int, mode: str, out: multiprocessing.Queue) -> None:
    os.environ["BURNSTATION_FASTPATH"] = "write_lock" if mode == "flock" else "reactors"
    conn = db.connect(data)
    writer = ingest.IndexWriter(Path(data))
    waits, holds = [], []
    cpu0 = time.process_time()
    start = time.perf_counter()
    for n in range(records):
        t0 = time.perf_counter()
        with writer.lock.held() if mode == "flock" else contextlib.nullcontext():
            conn.execute("BEGIN IMMEDIATE")  # without the flock, where SQLite's busy handler sleeps
            t1 = time.perf_counter()
            index._add_instance_in(conn, _rec(proc, n), True, time.time())  # add_instance's body
            conn.execute("COMMIT")
        t2 = time.perf_counter()
        waits.append(t1 - t0)
        holds.append(t2 - t1)
    out.put((proc, time.perf_counter() - start, time.process_time() - cpu0, waits, holds))


def run(procs: int, records: int, mode: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="index-bench-") as data:
        db.connect(data).close()
        out: multiprocessing.Queue = multiprocessing.Queue()
        ps = [multiprocessing.Process(target=worker, args=(data, p + 1, records, mode, out)) for p in range(procs)]
        start = time.perf_counter()
        for p in ps:
            p.start()
        results = [out.get() for _ in ps]
        for p in ps:
            p.join()
        wall = time.perf_counter() - start
    waits = [w for r in results for w in r[3]]
    return {"wall": wall, "cpu": sum(r[2] for r in results), "wait_ms_mean": statistics.mean(waits) * 1000,
            "wait_ms_p99": sorted(waits)[int(len(waits) * 0.99)] * 1000,
            "hold_ms_mean": statistics.mean([h for r in results for h in r[4]]) * 1000,
            "per_record_ms": wall / (procs * records) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    rows = {}
    for _rep in range(args.reps):
        for label, procs, mode in (("1 process", 1, "sqlite"), (f"{args.procs} processes, SQLite busy handler",
                                                                 args.procs, "sqlite"),
                                   (f"{args.procs} processes, writer flock", args.procs, "flock")):
            n = args.records * args.procs // procs
            rows.setdefault(label, []).append(run(procs, n, mode))
    print(f"load average: {os.getloadavg()[0]:.2f}; cores: {os.cpu_count()}; {args.procs * args.records} records "
          f"per run; medians of {args.reps}")
    print(f"{'case':42s} {'wall s':>7s} {'ms/rec':>7s} {'wait ms':>8s} {'wait p99':>9s} {'hold ms':>8s} {'CPU s':>6s}")
    for label, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(f"{label:42s} {med['wall']:7.2f} {med['per_record_ms']:7.3f} {med['wait_ms_mean']:8.3f} "
              f"{med['wait_ms_p99']:9.2f} {med['hold_ms_mean']:8.3f} {med['cpu']:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
