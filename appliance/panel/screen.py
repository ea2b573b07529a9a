"""What the front panel says: pages of 4 lines of 20 characters, built from the station's state.

Page 1: AE title, IP address, DICOM ports, station state. Page 2: state, what is wrong (or the
HL7/HTTP ports), current job or queue. Page 3: HL7/HTTP ports and further IP addresses. The state is one of OK / ROBOT FAULT / DISK LOW /
PROCESS FAILED / DB DAMAGED / DB RESTORED (for a week after state.db was restored from its backup),
judged from the robots' live status, free disk space, the supervisor's table and appliance.dbguard.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import shutil
import socket
import sqlite3
import struct
import time
from pathlib import Path
from typing import Any

from appliance import db, dbguard, network
from appliance.accounts import read_setup_code
from appliance.burn import jobs, robots
from appliance.config import Settings

SIOCGIFADDR = 0x8915


def ip_addresses() -> list[str]:
    """The host's IPv4 addresses, then global IPv6 ones; loopback only when there is nothing else."""
    found: list[str] = []
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _index, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(sock.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            addr = socket.inet_ntoa(packed[20:24])
            if addr not in found:
                found.append(addr)
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            addr = ipaddress.IPv6Address(bytes.fromhex(raw))
            if addr.is_global:
                found.append(str(addr))
    outside = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    outside.sort(key=lambda a: ":" in a)
    return outside or ["127.0.0.1"]


def _db(data_dir: Path) -> sqlite3.Connection | None:
    path = data_dir / "state.db"
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return None
    conn.row_factory = sqlite3.Row
    return conn


def station_state(data_dir: Path, settings: Settings, conn: sqlite3.Connection | None) -> tuple[str, str]:
    """(state, detail) for the panel."""
    free_mb = shutil.disk_usage(data_dir).free // 2**20
    if free_mb < max(int(settings.get("dicom.min_free_mb")), 1) * 2:
        return "DISK LOW", f"{free_mb} MB free"
    configured = {r.get("name") for r in settings.table_all("robots")}
    for name, row in (robots.status_rows(conn) if conn is not None else {}).items():
        if name not in configured:
            continue
        faults = row["status"].get("faults") or []
        if not robots.is_online(row) or faults:
            return "ROBOT FAULT", f"{name}: {', '.join(faults) or row['message'] or 'offline'}"
    try:
        sup = json.loads((data_dir / "run" / "supervisor.json").read_text())
    except (OSError, ValueError):
        sup = {}
    failed = [p["name"] for p in sup.get("processes", []) if p.get("state") == "failed"]
    if failed:
        return "PROCESS FAILED", ", ".join(failed)
    if (data_dir / db.DAMAGE_NOTE).exists():
        return "DB DAMAGED", "restoring state.db"
    report = dbguard.last_recovery(data_dir)
    if report and time.time() - report.get("at", 0) < dbguard.REPORT_SHOWN_SECONDS:
        lost = report.get("not_recovered") or {}
        return "DB RESTORED", ("lost: " + ",".join(f"{n} {k}" for k, n in sorted(lost.items()) if k != "-")
                               if lost and "-" not in lost else f"+{report.get('indexed', 0)} files reindexed")
    return "OK", ""


def current_job(conn: sqlite3.Connection | None) -> dict[str, Any] | None:
    return jobs.current(conn) if conn is not None else None


def queue_counts(conn: sqlite3.Connection | None) -> dict[str, int]:
    return jobs.state_counts(conn) if conn is not None else {}


def pages(data_dir: Path, settings: Settings, addresses: list[str] | None = None) -> list[list[str]]:
    values = settings.all()
    addresses = addresses if addresses is not None else ip_addresses()
    conn = _db(data_dir)
    try:
        state, detail = station_state(data_dir, settings, conn)
        job = current_job(conn)
        queue = queue_counts(conn)
    finally:
        if conn is not None:
            conn.close()

    def port(key: str) -> str:
        return str(values[key]) if values[key] else "off"

    dicom = f"DICOM {port('dicom.port')} TLS {port('dicom.tls_port')}"
    if len(dicom) > 20:
        dicom = f"DCM {port('dicom.port')} TLS {port('dicom.tls_port')}"
    first = [values["dicom.aet"], f"IP {addresses[0]}", dicom, f"State: {state}"]
    left = network.Network(data_dir).seconds_left()
    if left is not None:  # an unconfirmed address change: how long until it is rolled back
        first[3] = f"IP confirm {left}s"
    others = f"HL7 {port('hl7.port')} HTTP {port('http.port')}"
    if job:
        progress = job.get("progress") or 0
        pct = int(progress * 100) if progress <= 1 else int(progress)
        job_lines = [f"Job {job['id']}", f"{job['state']} {pct}% {job.get('robot') or ''}".strip()]
    else:
        waiting = sum(n for s, n in queue.items() if s in ("queued", "built", "building"))
        job_lines = ["No disc burning", f"Queue: {waiting} waiting" if queue else "Queue empty"]
    second = [f"State: {state}", detail or others, *job_lines]
    third = [others, *(f"IP {a}" for a in addresses[1:4])]
    out = [first, second, third]
    code = read_setup_code(data_dir)
    if code:  # no web user yet: the one-time code that makes the first admin (SPEC 9)
        out.insert(1, ["Web setup code:", code, f"http://{addresses[0]}"[:20], f":{port('http.port')}/setup"])
    for start in range(4, len(addresses), 4):
        out.append([f"IP {a}" for a in addresses[start:start + 4]])
    return out
