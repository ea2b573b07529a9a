"""`burnstation status`: the troubleshooting view of the seed guide (its netstat/tasklist steps).

Which of the station's ports listen on which addresses and in which process (from /proc/net/tcp
and tcp6, socket inodes mapped to pids through /proc/<pid>/fd), the state of every supervised
process and robot, the job queue, free disk space and the TLS certificate's expiry. `collect`
returns plain data (the CLI's --json and the web UI use it); `render` makes the text report.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from appliance import db, permissions
from appliance.burn import jobs, robots
from appliance.config import Settings
from appliance.transfer import report as transfer_report

# the station's listening ports: setting key -> what it is
PORT_KEYS = {
    "dicom.port": "DICOM",
    "dicom.tls_port": "DICOM TLS",
    "hl7.port": "HL7",
    "http.port": "HTTP",
}
TCP_LISTEN = "0A"


# --------------------------------------------------------------------------- /proc/net/tcp


def _decode_address(hex_addr: str, v6: bool) -> str:
    raw = bytes.fromhex(hex_addr)
    if not v6:
        return str(ipaddress.IPv4Address(raw[::-1]))
    # four little-endian 32-bit words
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    return str(ipaddress.IPv6Address(words))


def listening_sockets(proc_root: str = "/proc") -> list[dict[str, Any]]:
    """Every TCP socket in LISTEN state: address, port, inode."""
    out = []
    for name, v6 in (("tcp", False), ("tcp6", True)):
        try:
            lines = Path(proc_root, "net", name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != TCP_LISTEN:
                continue
            addr, port = fields[1].split(":")
            out.append({"address": _decode_address(addr, v6), "port": int(port, 16),
                        "inode": int(fields[9]), "family": "ipv6" if v6 else "ipv4"})
    return out


def socket_owners(inodes: set[int], proc_root: str = "/proc") -> dict[int, int]:
    """socket inode -> pid, for the sockets we can see (our own processes, or all as root)."""
    found: dict[int, int] = {}
    if not inodes:
        return found
    for entry in os.scandir(proc_root):
        if not entry.name.isdigit():
            continue
        fd_dir = os.path.join(entry.path, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(os.path.join(fd_dir, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in inodes:
                    found[inode] = int(entry.name)
        if len(found) == len(inodes):
            break
    return found


def process_name(pid: int, proc_root: str = "/proc") -> str:
    try:
        raw = Path(proc_root, str(pid), "cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


# --------------------------------------------------------------------------- the report


def _ports(settings: Settings, sup: dict[str, Any] | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    values = settings.all()
    sockets = listening_sockets()
    owners = socket_owners({s["inode"] for s in sockets})
    by_pid = {}
    if sup:
        by_pid = {p["pid"]: p["name"] for p in sup.get("processes", []) if p.get("pid")}
        by_pid[sup.get("pid")] = "supervisor"
    rows = []
    for key, label in PORT_KEYS.items():
        port = int(values.get(key) or 0)
        listeners = []
        if port:
            for s in sockets:
                if s["port"] != port:
                    continue
                pid = owners.get(s["inode"])
                listeners.append({"address": s["address"], "pid": pid,
                                  "process": by_pid.get(pid) or (process_name(pid)[:60] if pid else "?")})
        state = "closed" if not port else ("listening" if listeners else "NOT LISTENING")
        rows.append({"name": label, "key": key, "port": port, "state": state, "listeners": listeners})
    # sockets held by station processes on ports that are not the station's own
    ours = set(by_pid)
    station_ports = {r["port"] for r in rows if r["port"]}
    others = [{"address": s["address"], "port": s["port"], "pid": owners[s["inode"]],
               "process": by_pid.get(owners[s["inode"]], "")}
              for s in sockets if owners.get(s["inode"]) in ours and s["port"] not in station_ports]
    return rows, others


def _robots(data_dir: Path, settings: Settings, conn: sqlite3.Connection | None,
            sup: dict[str, Any] | None) -> list[dict[str, Any]]:
    status: dict[str, dict[str, Any]] = {}
    if conn is not None:
        with contextlib.suppress(sqlite3.Error):
            status = robots.status_rows(conn)
    drivers = {}
    if sup:
        drivers = {p.get("robot"): p for p in sup.get("processes", []) if p.get("robot")}
    plugged = set((sup or {}).get("discovery", {}).get("robots", []))
    out = []
    for robot in settings.table_all("robots"):
        name = robot.get("name", "?")
        st = status.get(name, {})
        proc = drivers.get(name)
        age = time.time() - float(st.get("heartbeat_at") or 0) if st else None
        out.append({
            "name": name, "driver": robot.get("driver"), "role": robot.get("role"),
            "source": robot.get("source", "manual"), "spool": robot.get("spool"),
            "plugged": name in plugged if robot.get("source") in ("udev", "simulated") else None,
            "online": robots.is_online(st or None),
            "message": st.get("message", ""), "heartbeat_age": round(age, 1) if age is not None else None,
            "process": proc.get("state") if proc else "not running",
        })
    return out


def _queue(conn: sqlite3.Connection | None, errors: list[str] | None = None) -> dict[str, int] | None:
    """Jobs per state; None without a readable jobs table (the error appended to `errors`)."""
    if conn is None:
        return None
    try:
        return jobs.state_counts(conn)
    except sqlite3.Error as exc:
        if errors is not None:
            errors.append(str(exc))
        return None


def _waiting(conn: sqlite3.Connection | None) -> list[dict[str, Any]]:
    """Why jobs wait: each distinct message of queued/built jobs not yet with a robot, with a count."""
    if conn is None:
        return []
    try:
        rows = jobs.waiting_reasons(conn, limit=10)
    except sqlite3.Error:
        return []
    return [{"state": state, "message": message, "jobs": n} for state, message, n in rows]


def collect(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    from appliance import dbguard, tlsca
    from appliance.supervisor.supervisor import read_state

    data_dir = Path(data_dir)
    settings = Settings(data_dir)
    sup = read_state(data_dir)
    conn = None
    if (data_dir / "state.db").exists():
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(f"file:{data_dir / 'state.db'}?mode=ro", uri=True, timeout=5)
            conn.row_factory = sqlite3.Row
    errors: list[str] = []
    try:
        ports, other_ports = _ports(settings, sup)
        robots = _robots(data_dir, settings, conn, sup)
        queue = _queue(conn, errors)
        waiting = _waiting(conn)
        transfers = transfer_report.collect(conn, settings)
    finally:
        if conn is not None:
            conn.close()
    db_error = next((e for e in errors if db.is_damage(sqlite3.DatabaseError(e))), None)
    if db_error:  # a damaged state.db: the station restores it (appliance.dbguard)
        db.note_damage(data_dir, sqlite3.DatabaseError(db_error))
    usage = shutil.disk_usage(data_dir)
    min_free_mb = int(settings.get("dicom.min_free_mb"))
    expiry = tlsca.certificate_expiry(data_dir)
    now = datetime.datetime.now(datetime.UTC)
    return {
        "data_dir": str(data_dir),
        "aet": settings.aet(),
        "supervisor": {
            "running": bool(sup and sup.get("alive")), "pid": (sup or {}).get("pid"),
            "state": (sup or {}).get("state", "never started"), "updated_at": (sup or {}).get("updated_at"),
            "simulate": (sup or {}).get("simulate", False),
        },
        "discovery": (sup or {}).get("discovery"),
        "ports": ports,
        "other_listening_ports": other_ports,
        "processes": (sup or {}).get("processes", []),
        "robots": robots,
        "queue": queue,
        "waiting": waiting,
        "transfers": transfers,
        "disk": {"path": str(data_dir), "free_mb": usage.free // 2**20, "total_mb": usage.total // 2**20,
                 "min_free_mb": min_free_mb, "low": usage.free // 2**20 < max(min_free_mb, 1) * 2,
                 "retention": {k.split(".", 1)[1]: settings.get(k) for k in (
                     "storage.purge_after_days", "storage.high_water_percent", "storage.low_water_percent",
                     "storage.purge_unburned_after_days")}},
        "data_permissions": permissions.status(data_dir, settings),
        "state_db": {**dbguard.status(data_dir), "error": db_error},
        "tls_certificate": {
            "expires": expiry.isoformat() if expiry else None,
            "days_left": (expiry - now).days if expiry else None,
            "expired": bool(expiry and expiry < now),
        },
    }


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def render(report: dict[str, Any]) -> str:
    lines = [f"BurnStation status — data {report['data_dir']}, AE title {report['aet']}", ""]
    sup = report["supervisor"]
    if sup["running"]:
        lines.append(f"Supervisor: running (pid {sup['pid']}){' with the simulator' if sup['simulate'] else ''}")
    else:
        lines.append(f"Supervisor: NOT running (last state: {sup['state']}, updated {_when(sup['updated_at'])})")
    disc = report.get("discovery")
    if disc:
        lines.append(f"Discovery: {disc['backend']}{'' if disc['working'] else ' (off)'} — {disc['message']}")
    lines += ["", "Ports (netstat):", f"  {'service':10} {'port':>6}  {'state':14} listening on (process)"]
    for row in report["ports"]:
        where = ", ".join(f"{ln['address']} ({ln['process'] or '?'}, pid {ln['pid'] or '?'})"
                          for ln in row["listeners"])
        lines.append(f"  {row['name']:10} {row['port'] or '-':>6}  {row['state']:14} {where}")
    for row in report["other_listening_ports"]:
        lines.append(f"  (other)    {row['port']:>6}  listening      {row['address']} ({row['process']}, pid {row['pid']})")
    lines += ["", "Processes (tasklist):", f"  {'name':22} {'state':10} {'pid':>7} {'starts':>6}  since / last exit"]
    for proc in report["processes"]:
        note = proc.get("message") or ""
        lines.append(f"  {proc['name']:22} {proc['state']:10} {proc.get('pid') or '-':>7} {proc['starts']:>6}  "
                     f"{_when(proc.get('since'))}  {proc.get('last_exit') or ''}  {note}")
    if not report["processes"]:
        lines.append("  (none: the supervisor is not running)")
    lines += ["", "Robots:"]
    for robot in report["robots"]:
        plug = "" if robot["plugged"] is None else (" plugged in" if robot["plugged"] else " UNPLUGGED")
        lines.append(f"  {robot['name']:16} {robot['driver'] or '?':8} role {robot['role'] or '?':8} "
                     f"{robot['source']}{plug}; {'online' if robot['online'] else 'OFFLINE'}; "
                     f"driver process {robot['process']}; {robot['message']}")
    if not report["robots"]:
        lines.append("  (none configured)")
    queue = report["queue"]
    if queue is None:
        lines += ["", "Queue: (no jobs table yet)"]
    else:
        lines += ["", "Queue: " + (", ".join(f"{k} {v}" for k, v in sorted(queue.items())) or "empty")]
        for item in report.get("waiting", []):
            lines.append(f"  {item['jobs']} {item['state']}: {item['message'] or '(no message)'}")
    lines += transfer_report.render(report["transfers"])
    lines += state_lines(report)
    return "\n".join(lines)


def state_lines(report: dict[str, Any]) -> list[str]:
    """Disk, retention, data-folder permissions, state.db backups and the TLS certificate as text lines:
    the end of `burnstation status`, and the same lines on the web's Diagnostics page."""
    lines: list[str] = []
    disk = report["disk"]
    lines.append(f"Disk: {disk['free_mb']} MB free of {disk['total_mb']} MB at {disk['path']}"
                 f"{' — LOW' if disk['low'] else ''} ("
                 + (f"C-STORE refused below {disk['min_free_mb']} MB free)" if disk["min_free_mb"]
                    else "no minimum free space set for C-STORE: dicom.min_free_mb = 0)"))
    keep = disk.get("retention")
    if keep:
        lines.append(f"Retention: burned studies deleted {keep['purge_after_days']} days after their last disc"
                     f"{' (never)' if not keep['purge_after_days'] else ''}; above {keep['high_water_percent']}% used "
                     f"the oldest burned go until {keep['low_water_percent']}%; archive studies "
                     + (f"after {keep['purge_unburned_after_days']} days" if keep["purge_unburned_after_days"]
                        else "never") + " (`burnstation storage status`)")
    lines.append(permissions.render(report.get("data_permissions")))
    guard = report.get("state_db")
    if guard:
        lines.append(f"state.db backup: {guard['backups']} kept, newest {_when(guard['latest_backup_at'])}"
                     + (f" ({guard['latest_backup']})" if guard["latest_backup"] else " — NONE YET"))
        if guard.get("error"):
            lines.append(f"state.db cannot be read: {guard['error']}")
        if guard["damage_noted"]:
            lines.append(f"state.db DAMAGED ({guard['damage_noted']}): the station restores it now")
        for text in guard["last_recovery_text"]:
            lines.append(f"  last restore: {text}")
    tls = report["tls_certificate"]
    if tls["expires"]:
        lines.append(f"TLS certificate: expires {tls['expires']} ({tls['days_left']} days)"
                     f"{' — EXPIRED' if tls['expired'] else ''}")
    else:
        lines.append("TLS certificate: none (run burnstation init)")
    return lines
