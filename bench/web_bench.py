"""Server time of the web UI's heavy pages with a large index (issue 11: target under 200 ms median).

Fills a fresh data folder with N studies (one instance each, through appliance.index) and M jobs
(through appliance.burn.jobs), then calls the WSGI app directly (no network: server time only) with
a logged-in admin session and prints the median and 90th percentile per page.

    PYTHONPATH=. python bench/web_bench.py [--studies 10000] [--jobs 2000] [--rounds 20]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("BURNSTATION_TEST_SCRYPT_N", "1024")  # the bench measures pages, not password hashing

from appliance import accounts, db, index  # noqa: E402
from appliance.burn import jobs  # noqa: E402
from appliance.config import Settings  # noqa: E402


def fill(data: Path, n_studies: int, n_jobs: int) -> str:
    Settings(data).initialize()
    conn = db.connect(data)
    modalities = ("CT", "MR", "US", "CR", "DX")
    conn.execute("PRAGMA synchronous=OFF")  # a throw-away index: fill it fast
    for i in range(n_studies):
        rec = index.InstanceRecord(
            sop_uid=f"1.2.3.{i}.1.1", sop_class="1.2.840.10008.5.1.4.1.1.2", series_uid=f"1.2.3.{i}.1",
            study_uid=f"1.2.3.{i}", path=f"/nonexistent/{i}.dcm", size=500_000, transfer_syntax="1.2.840.10008.1.2.1",
            patient={"patient_id": f"P{i % 3000:05d}", "patient_name": f"PATIENT^{i % 3000:05d}",
                     "birth_date": "19700101", "sex": "O"},
            study={"study_date": f"2024{1 + i % 12:02d}{1 + i % 28:02d}", "study_time": "101500",
                   "accession": f"ACC{i:06d}", "description": "BENCH"},
            series={"modality": modalities[i % len(modalities)], "series_number": "1"},
            received_at=time.time() - i)
        index.add_instance(conn, rec)
    for j in range(n_jobs):
        jobs.create_job(conn, role="any", sop_uids=[f"1.2.3.{j % n_studies}.1.1"], source="manual")
    accounts.add_user(conn, "bench", "admin", "bench-password")
    sid, _ = accounts.new_session(conn, "bench", "127.0.0.1", 3600)
    conn.close()
    return sid


def call(app, path: str, sid: str) -> float:
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "SERVER_NAME": "127.0.0.1",
               "SERVER_PORT": "8080", "HTTP_HOST": "127.0.0.1:8080", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr, "HTTP_COOKIE": f"bsid={sid}",
               "REMOTE_ADDR": "127.0.0.1", "SERVER_PROTOCOL": "HTTP/1.1"}
    status: list[str] = []
    started = time.perf_counter()
    body = b"".join(app(environ, lambda s, h, e=None: status.append(s)))
    took = time.perf_counter() - started
    if not status[0].startswith("200") or not body:
        raise SystemExit(f"{path}: {status[0]}")
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    from webui.app import make_app

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        started = time.perf_counter()
        sid = fill(data, args.studies, args.jobs)
        print(f"index: {args.studies} studies, {args.jobs} jobs (filled in {time.perf_counter() - started:.1f} s)")
        app = make_app(data)
        pages = ["/studies", "/studies?page=100", "/studies?name=PATIENT%5E00042", "/studies?modality=MR&from=2024-03-01",
                 "/studies/1.2.3.42", "/jobs", "/api/jobs", "/robots", "/logs/associations"]
        for page in pages:
            call(app, page, sid)  # warm (templates compiled, caches)
            times = sorted(call(app, page, sid) for _ in range(args.rounds))
            p90 = times[int(len(times) * 0.9) - 1]
            print(f"{page:42} median {statistics.median(times) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
