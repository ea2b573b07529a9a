"""Portal download speed and memory: a ~200 MB study as a stored-DICOM zip, next to Orthanc's
`/studies/{id}/archive` on the same study in the same run.

Usage: .venv/bin/python bench/portal_bench.py [--instances 400] [--rounds 3] [--formats dicom,dicom-jpeg-lossless]

Generates N instances of 512 KB (512 × 512 × 16 bit CT, one study, 4 series), indexes them in a
temporary station data folder and uploads them to a temporary Orthanc (REST, free ports). The
portal runs in its own process (cheroot, as the web server would); each round downloads the
study from both over loopback, reading as fast as possible, alternating who goes first. Reported:
wall time, bytes, MB/s, and the portal process's resident memory before the downloads and its
peak (VmHWM from /proc) after them. Everything is deleted at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SERVE = """
import sys, threading
from cheroot import wsgi
from webui.portal import portal_app
server = wsgi.Server(("127.0.0.1", 0), portal_app(sys.argv[1]), numthreads=4)
server.prepare()
print(server.bind_addr[1], flush=True)
server.serve()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def fetch(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, float, int, dict[str, str]]:
    """GET, reading the body in 1 MB reads; (status, seconds, bytes, headers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    conn.request("GET", path, headers=headers or {})
    resp = conn.getresponse()
    total = 0
    while chunk := resp.read(1 << 20):
        total += len(chunk)
    seconds = time.perf_counter() - started
    conn.close()
    return resp.status, seconds, total, {k.lower(): v for k, v in resp.getheaders()}


def wait_http(port: int, path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing answers on port {port}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--formats", default="dicom", help="portal formats to time (comma list)")
    args = parser.parse_args()

    from pydicom.uid import generate_uid
    from support import make_dataset

    from appliance import db, index
    from appliance.portal import tokens

    root = Path(tempfile.mkdtemp(prefix="portal-bench-"))
    data = root / "data"
    store = data / "storage" / "bench"
    store.mkdir(parents=True)
    study, series = generate_uid(), [generate_uid() for _ in range(4)]
    files = []
    for i in range(args.instances):
        ds = make_dataset(study_uid=study, series_uid=series[i % 4], series_number=i % 4 + 1,
                          instance_number=i // 4 + 1, rows=512, cols=512, seed=i)
        path = store / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    conn = db.connect(data)
    index.reindex(conn, data / "storage")
    token, _ = tokens.create(conn, study, 30)
    conn.close()

    orthanc_port = free_port()
    (root / "orthanc").mkdir()
    config = {"Name": "bench", "HttpPort": orthanc_port, "DicomPort": free_port(), "RemoteAccessAllowed": False,
              "AuthenticationEnabled": False, "StorageDirectory": str(root / "orthanc"),
              "IndexDirectory": str(root / "orthanc"), "Plugins": [], "HttpCompressionEnabled": False}
    (root / "orthanc.json").write_text(json.dumps(config))
    orthanc = subprocess.Popen(["/usr/sbin/Orthanc", str(root / "orthanc.json")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    env = dict(os.environ, PYTHONPATH=f"{REPO}:{os.environ.get('PYTHONPATH', '')}")
    portal = subprocess.Popen([sys.executable, "-c", SERVE, str(data)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        portal_port = int(portal.stdout.readline())  # type: ignore[union-attr]
        wait_http(orthanc_port, "/system")
        for path in files:
            conn = http.client.HTTPConnection("127.0.0.1", orthanc_port, timeout=60)
            conn.request("POST", "/instances", body=path.read_bytes(), headers={"Content-Type": "application/dicom"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise SystemExit(f"Orthanc refused {path.name}: {resp.status}")
            conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", orthanc_port, timeout=60)
        conn.request("POST", "/tools/lookup", body=study)
        orthanc_study = json.loads(conn.getresponse().read())[0]["ID"]
        conn.close()
        status, _, _, headers = fetch(portal_port, "/token?" + token)
        cookie = {"Cookie": headers["set-cookie"].split(";")[0]}
        rss_before = proc_kb(portal.pid, "VmRSS")
        results: dict[str, list[tuple[float, int]]] = {"orthanc": []}
        formats = [f for f in args.formats.split(",") if f]
        for fmt in formats:
            results[f"portal {fmt}"] = []
        for round_no in range(args.rounds):
            order = ["orthanc", *formats] if round_no % 2 == 0 else [*formats, "orthanc"]
            for who in order:
                if who == "orthanc":
                    status, seconds, total, _ = fetch(orthanc_port, f"/studies/{orthanc_study}/archive")
                else:
                    status, seconds, total, h = fetch(portal_port, f"/portal/download/{who}", cookie)
                    if "content-length" in h and int(h["content-length"]) != total:
                        raise SystemExit(f"portal sent {total} bytes, announced {h['content-length']}")
                if status != 200:
                    raise SystemExit(f"{who}: HTTP {status}")
                results["orthanc" if who == "orthanc" else f"portal {who}"].append((seconds, total))
        peak = proc_kb(portal.pid, "VmHWM")
        print(f"study: {args.instances} instances, {size_mb:.0f} MB; {args.rounds} rounds; Orthanc "
              f"{subprocess.run(['/usr/sbin/Orthanc', '--version'], capture_output=True, text=True).stdout.split()[1]}")
        for who, runs in results.items():
            median = statistics.median(s for s, _ in runs)
            print(f"{who:28} median {median:6.2f} s  best {min(s for s, _ in runs):6.2f} s  "
                  f"{runs[0][1] / 1e6:7.1f} MB  {runs[0][1] / 1e6 / median:7.1f} MB/s")
        print(f"portal process memory: {rss_before / 1024:.0f} MB resident before, peak {peak / 1024:.0f} MB "
              f"over all downloads")
    finally:
        portal.terminate()
        orthanc.terminate()
        portal.wait(30)
        orthanc.wait(30)
        subprocess.run(["rm", "-rf", str(root)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
