"""Fault runs (`make faults`): each kind of fault injected at seeded random moments into a running
station under the mixed workload (tests/reliability/workload.py), then the checks: every
acknowledged instance stored and indexed, no job stuck, the discs exactly what grouping says, and
the station answering again on DICOM, HL7 and the web.

    python tests/reliability/faults.py [--seed N] [--repeat R] [--seconds S] [--kinds a,b] [--out FILE]

Kinds: kill:<process> (each station process and the supervisor itself; SIGKILL), disk-ingest (the
data folder fills during ingest), disk-build (the disc build folder fills), spool-gone (a robot's
spool folder disappears and comes back, as an unmounted share), robot-offline (a robot stops
answering mid-job), clock (the station's wall clock jumps an hour forward and back, libfaketime on
the station's processes only). The disk faults use small tmpfs mounts when this runs as root and
mounting works, else the `dicom.min_free_mb` threshold (ingest) and are skipped (build).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload as w  # noqa: E402

KILLS = [f"kill:{name}" for name in (*w.SERVICES, "supervisor")]
KINDS = ["clock", "disk-build", "spool-gone", "robot-offline", "disk-ingest", *KILLS]


def can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", tmp], capture_output=True).returncode == 0
        if ok:
            subprocess.run(["umount", tmp], capture_output=True)
        return ok


def mount_tmpfs(path: Path, size_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(path)], check=True)


def umount(path: Path) -> None:
    for _ in range(20):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.5)
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path) -> Path:
    """A ballast file that takes every free byte of `folder`'s file system."""
    ballast = folder / ".ballast"
    with open(ballast, "wb") as fh, contextlib.suppress(OSError):
        chunk = b"\0" * (1 << 20)
        while True:
            fh.write(chunk)
            fh.flush()
    return ballast


def kill_process(rig: w.Rig, name: str, log: list[str]) -> float:
    """SIGKILL one station process; seconds until it (or, for the supervisor, the station) runs again."""
    pids = rig.processes()
    pid = pids.get(name)
    if pid is None:
        log.append(f"{name}: not running at the moment chosen")
        return 0.0
    start = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    if name == "supervisor":
        # what systemd does (Restart=on-failure, RestartSec=2): its children die with it (PDEATHSIG)
        rig.station.proc.wait(10)
        children = [p for n, p in pids.items() if n != "supervisor"]
        w.wait_for(lambda: not any(Path(f"/proc/{p}").exists() and "zombie" not in _state(p) for p in children),
                   20, "the supervisor's children to exit")
        time.sleep(2)
        rig.start_station()
    else:
        w.wait_for(lambda: rig.processes().get(name) not in (None, pid), 60, f"{name} restarted")
        if name == "dicom":
            w.wait_dicom(rig.station.port, w.AET, 60)
    return time.monotonic() - start


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:", 1)[1].split("\n", 1)[0].lower()
    except (OSError, IndexError):
        return "zombie"


def run_kind(kind: str | list[str], root: Path, *, seed: int, repeat: int, seconds: float, senders: int = 4,
             mount: bool | None = None, settle_timeout: float = 240) -> dict[str, Any]:
    """One rig, the workload for `seconds`, the fault (or each of several, in turn) injected `repeat`
    times at random moments, then the checks. `mount`: tmpfs mounts for the disk faults (default:
    when this runs as root and mounting works)."""
    kinds = [kind] if isinstance(kind, str) else list(kind)
    name = "+".join(kinds)
    rng = random.Random(f"{seed}:{name}")
    root.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    mounts: list[Path] = []
    data = root / "data"
    disk = {"disk-ingest", "disk-build"} & set(kinds)
    mounted = bool(disk) and (can_mount() if mount is None else mount)
    if "disk-build" in kinds and not mounted:
        return {"kind": name, "skipped": "needs root and tmpfs mounts (a disc build folder that fills)"}
    if "clock" in kinds and w.faketime_available():
        return {"kind": name, "skipped": w.faketime_available()}
    if "disk-ingest" in kinds and mounted:
        mount_tmpfs(data, 160)
        mounts.append(data)
    rig = w.Rig(root, data=data, clock="clock" in kinds)
    if "disk-build" in kinds:
        mount_tmpfs(data / "discs", 32)  # room for the built discs of the backlog once the ballast goes
        mounts.append(data / "discs")
    recover: list[float] = []
    injected = 0
    started = time.monotonic()
    load: w.Workload | None = None
    try:
        rig.start()
        load = w.Workload(rig, seed=seed, senders=senders).start()
        t_load = time.monotonic()
        plan = [k for k in kinds for _ in range(repeat)]
        moments = sorted(rng.uniform(3, max(4.0, seconds - 8)) for _ in plan)
        for at, k in zip(moments, plan, strict=True):
            delay = at - (time.monotonic() - t_load)
            if delay > 0:
                time.sleep(delay)
            injected += 1
            recover.append(inject(k, rig, rng, notes))
        rest = seconds - (time.monotonic() - t_load)
        if rest > 0:
            time.sleep(rest)
        load.stop()
        (root / "sends.json").write_text(json.dumps([{**vars(x), "acked": sorted(x.acked)} for x in load.sends]))
        result = w.check(rig, load.sends, settle_timeout)
        if result["problems"] and mounts:  # keep what a tmpfs would lose, to look into it
            for item in ("state.db", "state.db-wal", "station.log", "logs"):
                with contextlib.suppress(OSError):
                    (shutil.copytree if (data / item).is_dir() else shutil.copy2)(data / item, root / item)
    finally:
        if load is not None and not load.stopping.is_set():  # a fault that raised: end the traffic first
            load.stop()
        with contextlib.suppress(Exception):
            rig.stop()
        for m in reversed(mounts):
            umount(m)
    assert load is not None
    return {"kind": name, "injected": injected, "recover_max": max(recover, default=0.0),
            "counts": dict(load.counts.c), "notes": notes, "seconds": round(time.monotonic() - started), **result}


def inject(kind: str, rig: w.Rig, rng: random.Random, notes: list[str]) -> float:
    """One fault; returns the seconds until the station was whole again (as far as the harness sees)."""
    t0 = time.monotonic()
    if kind.startswith("kill:"):
        return kill_process(rig, kind.split(":", 1)[1], notes)
    if kind == "disk-ingest":
        if rig.data.is_mount():
            ballast = fill(rig.data)
            time.sleep(rng.uniform(4, 8))
            ballast.unlink()
        else:  # no mount here: the threshold says the disk is full
            w.burnstation(rig.data, "config", "set", "dicom.min_free_mb=10000000")
            time.sleep(rng.uniform(4, 8))
            w.burnstation(rig.data, "config", "set", "dicom.min_free_mb=0")
        return time.monotonic() - t0
    if kind == "disk-build":
        ballast = fill(rig.data / "discs")
        time.sleep(rng.uniform(4, 8))
        ballast.unlink()
        return time.monotonic() - t0
    if kind == "spool-gone":
        robot = rng.choice(("epson", "primera"))
        spool = rig.spool / robot
        away = spool.with_name(robot + ".unmounted")
        spool.rename(away)
        time.sleep(rng.uniform(3, 8))
        if spool.exists():  # made again meanwhile: the share mounted back over it hides what is there
            hidden = spool.with_name(f"{robot}.hidden-{len(notes)}")
            spool.rename(hidden)
            notes.append(f"{robot} spool made again during the outage; hidden by the share: "
                         f"{sorted(p.name for p in hidden.iterdir())[:6]}")
        away.rename(spool)
        notes.append(f"{robot} spool away")
        return time.monotonic() - t0
    if kind == "robot-offline":
        robot = rng.choice(("epson", "primera"))
        how = rng.choice(("offline", "unplug"))
        if how == "offline":
            rig.ctl(robot, "fault", "offline", "on")
        else:
            rig.ctl(robot, "unplug")
        time.sleep(rng.uniform(6, 10))  # beyond the robots' status_timeout (4 s): seen offline
        rig.ctl(robot, "fault", "offline", "off") if how == "offline" else rig.ctl(robot, "plug")
        notes.append(f"{robot} {how}")
        w.wait_for(rig.robots_online, 60, "both robots online again")
        return time.monotonic() - t0
    if kind == "clock":
        for offset in ("+1h", "+0", "-1h", "+0"):
            rig.set_clock(offset)
            time.sleep(rng.uniform(3, 5))
        return time.monotonic() - t0
    raise ValueError(f"unknown fault kind {kind!r}")


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "# Fault runs",
        "",
        f"`make faults` (`python tests/reliability/faults.py --seed {args.seed} --repeat {args.repeat} "
        f"--seconds {args.seconds}`), run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on the shared "
        "2-core machine. Each row is one station (real processes, simulator beside it, two robots) under the "
        f"mixed workload ({args.senders} DICOM senders cycling through every AE title, 2 worklist scanners "
        "every second, a RIS sending HL7 orders, 2 web users, random robot faults) for the given seconds, "
        "the fault injected at seeded random moments. After the workload: failed jobs retried once (as an "
        "operator would), then the checks.",
        "",
        "| fault | injected | assoc. ok / failed | instances acked | worklist ok / failed | HL7 AA / not | "
        "web 2xx / other | jobs (retried) | discs checked | back within | held |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    problems: list[str] = []
    for r in results:
        if "skipped" in r:
            lines.append(f"| {r['kind']} | skipped: {r['skipped']} | | | | | | | | | |")
            continue
        c = r["counts"]
        web_other = sum(v for k, v in c.items() if k.startswith("web") and k not in ("web pages 2xx", "web logins ok"))
        held = "yes" if not r["problems"] else f"**no** ({len(r['problems'])})"
        lines.append(
            f"| {r['kind']} | {r['injected']} | {c.get('associations ok', 0)} / {c.get('associations failed', 0)} | "
            f"{r['acked']} | {c.get('worklist queries ok', 0)} / {c.get('worklist queries failed', 0)} | "
            f"{c.get('HL7 orders AA', 0)} / {c.get('HL7 orders not acknowledged', 0)} | "
            f"{c.get('web pages 2xx', 0) + c.get('web logins ok', 0)} / {web_other} | {r['jobs']} ({r['retried']}) | "
            f"{r['discs']} | {r['recover_max']:.1f} s | {held} |")
        problems += [f"- {r['kind']}: {p}" for p in r["problems"][:20]]
    lines += ["", "Checked after each row: every instance whose C-STORE got a success is in the index and its file "
              "exists; sends to the plain AE title are on no disc; each completed association to `_E`/`_P` is "
              "exactly one job with exactly its instances (an interrupted one none: it is held); each instance "
              "to `_TE`/`_TP` is on exactly one delayed job of its role and patient; every job ends done and the "
              "simulator's disc image holds exactly the job's instances (DICOMDIR); no job or group is left "
              "active; C-ECHO, an HL7 order and a web login answer. Failed associations and refused requests "
              "during a fault are expected (the sender retries an `_E`/`_P` study); they are counted, not "
              "errors. \"back within\": the longest time from a fault to the station whole again as the "
              "harness saw it (process restarted, robot online, space freed)."]
    lines += ["", "## Problems", ""] + (problems or ["None in this run."])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=int(os.environ.get("FAULT_SEED", "16")))
    parser.add_argument("--repeat", type=int, default=int(os.environ.get("FAULT_REPEAT", "2")))
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("FAULT_SECONDS", "40")))
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--kinds", default=os.environ.get("FAULT_KINDS", ",".join(KINDS)))
    parser.add_argument("--out", type=Path, default=w.REPO / "docs" / "reliability" / "faults.md")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other kinds' rows of the last report (its .json beside it)")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        parser.error(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="faults-"))
    results: list[dict[str, Any]] = []
    previous: list[dict[str, Any]] = []
    sidecar = args.out.with_suffix(".json")
    if args.merge and sidecar.exists():  # rerun some kinds (e.g. after a fix): the other rows stay
        previous = [r for r in json.loads(sidecar.read_text()) if r["kind"] not in kinds]
    for n, kind in enumerate(kinds):
        print(f"[faults] {kind} …", flush=True)
        result = run_kind(kind, work / f"{n:02d}-{kind.replace(':', '-')}", seed=args.seed, repeat=args.repeat,
                          seconds=args.seconds, senders=args.senders)
        print(f"[faults] {kind}: {json.dumps({k: v for k, v in result.items() if k != 'counts'})[:600]}", flush=True)
        results.append(result)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        merged = previous + results
        merged.sort(key=lambda r: KINDS.index(r["kind"]) if r["kind"] in KINDS else len(KINDS))
        args.out.write_text(report(merged, args))
        sidecar.write_text(json.dumps(merged, indent=1, default=str) + "\n")
    failed = [r for r in results if r.get("problems")]
    print(f"[faults] report: {args.out}; {len(failed)} of {len(results)} kinds with problems; work in {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
