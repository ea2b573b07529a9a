"""The soak (`make soak`): a station under the mixed workload for SOAK_SECONDS (default 600) —
8 concurrent DICOM senders to every AE title, 5 scanners polling the worklist every second, a RIS
sending HL7 orders, 3 web users clicking through pages, both simulated robots burning with random
faults — then the checks of tests/reliability/workload.py (every acknowledged instance stored,
indexed and on exactly the discs its grouping says; no job stuck) and the memory (RSS) and open
file counts of every station process, sampled from /proc, which must be flat over the last half.

    python tests/reliability/soak.py [--seconds S] [--seed N] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import workload as w  # noqa: E402

SAMPLE_EVERY = 5.0
# half the associations to the plain AE title (an archive send), the rest one to each burning title:
# a disc per association or group is already more than two robots burn in a real clinic's day
SUFFIXES = ("", "_E", "", "_P", "", "_TE", "", "_TP")
# flat: what the fitted slope adds over the last half stays below these
RSS_GROWTH_KB = 8 * 1024   # and below 10 % of the process's mean RSS
FD_GROWTH = 4


def sampler(rig: w.Rig, stop: threading.Event, out: dict[str, list[tuple[float, int, int]]], t0: float) -> None:
    while True:
        now = time.monotonic() - t0
        for name, (rss, fds) in w.sample(rig.processes()).items():
            out.setdefault(name, []).append((now, rss, fds))
        if stop.wait(SAMPLE_EVERY):
            return


def trends(samples: dict[str, list[tuple[float, int, int]]], seconds: float) -> list[dict[str, Any]]:
    """Per process: the RSS and open-file slopes over the last half, and whether both are flat."""
    rows = []
    for name, points in sorted(samples.items()):
        half = [p for p in points if p[0] >= seconds / 2]
        span = (half[-1][0] - half[0][0]) if len(half) > 1 else 0.0
        rss_slope = w.slope([(t, r) for t, r, _ in half])  # kB/s
        fd_slope = w.slope([(t, f) for t, _, f in half])
        mean_rss = sum(r for _, r, _ in half) / len(half) if half else 0
        rss_growth, fd_growth = rss_slope * span, fd_slope * span
        flat = len(half) >= 3 and rss_growth < min(RSS_GROWTH_KB, 0.1 * mean_rss) and fd_growth < FD_GROWTH
        rows.append({"process": name, "samples": len(half), "rss_mb_first": half[0][1] / 1024 if half else 0,
                     "rss_mb_last": half[-1][1] / 1024 if half else 0,
                     "rss_kb_per_min": rss_slope * 60, "fds_first": half[0][2] if half else 0,
                     "fds_last": half[-1][2] if half else 0, "fds_per_min": fd_slope * 60, "flat": flat})
    return rows


def run(root: Path, *, seconds: float, seed: int, senders: int = 8, scanners: int = 5, web_users: int = 3,
        speed: str = "0.005") -> dict[str, Any]:
    """The soak in `root`; the simulated robots run at `speed` (0.005: about a second a disc, so two
    robots keep up with eight senders' discs) and the queue is given as long to drain as the run took."""
    rig = w.Rig(root, speed=speed)
    samples: dict[str, list[tuple[float, int, int]]] = {}
    stop = threading.Event()
    try:
        rig.start()
        t0 = time.monotonic()
        watch = threading.Thread(target=sampler, args=(rig, stop, samples, t0), daemon=True)
        watch.start()
        load = w.Workload(rig, seed=seed, senders=senders, scanners=scanners, web_users=web_users,
                          suffixes=SUFFIXES).start()
        time.sleep(seconds)
        load.stop()
        stop.set()
        watch.join(30)
        result = w.check(rig, load.sends, max(300.0, seconds))
    finally:
        stop.set()
        rig.stop()
    rows = trends(samples, seconds)
    not_flat = [r["process"] for r in rows if not r["flat"]]
    problems = result["problems"] + [f"{p}: RSS or open files not flat over the last half" for p in not_flat]
    return {**result, "problems": problems, "trends": rows, "counts": dict(load.counts.c), "seconds": seconds}


def report(r: dict[str, Any], args: argparse.Namespace) -> str:
    c = r["counts"]
    held = "yes" if not r["problems"] else f"**no** ({len(r['problems'])} problems)"
    lines = [
        "# Soak",
        "",
        f"The simulated robots run at `--speed {args.speed}` (0.005: about a second per disc); half the associations go to "
        "the plain AE title, the others in turn to `_E`, `_P`, `_TE`, `_TP` (each association to `_E`/`_P` "
        "and each delayed group is a disc). The checks wait while the disc queue still drains.",
        "",
        f"`make soak SOAK_SECONDS={args.seconds:g}` (`python tests/reliability/soak.py --seconds {args.seconds:g} "
        f"--seed {args.seed}`), run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on the shared 2-core "
        f"machine (other work ran beside it){'; shorter than the 10-minute default' if args.seconds < 600 else ''}.",
        "",
        "| what | how much | held |",
        "|---|---|---|",
        f"| DICOM senders ({args.senders}, storescu, every AE title in turn) | {c.get('associations ok', 0)} "
        f"associations completed, {c.get('associations failed', 0)} failed; {r['acked']} instances acknowledged | "
        f"{'every one stored and indexed' if not any(p.startswith(('acknowledged', 'indexed')) for p in r['problems']) else 'no'} |",
        f"| worklist scanners (5, findscu -W every second) | {c.get('worklist queries ok', 0)} queries answered, "
        f"{c.get('worklist queries failed', 0)} failed | {'yes' if not c.get('worklist queries failed') else 'no'} |",
        f"| HL7 orders (MLLP, one every 2 s) | {c.get('HL7 orders AA', 0)} AA, "
        f"{c.get('HL7 orders not acknowledged', 0)} not | {'yes' if not c.get('HL7 orders not acknowledged') else 'no'} |",
        f"| web users (3, login + pages) | {c.get('web logins ok', 0)} logins, {c.get('web pages 2xx', 0)} pages 2xx, "
        f"{sum(v for k, v in c.items() if k.startswith('web') and k not in ('web pages 2xx', 'web logins ok'))} "
        f"other | {'yes' if all(k in ('web pages 2xx', 'web logins ok') for k in c if k.startswith('web')) else 'no'} |",
        f"| robot faults on the simulator ({', '.join(w.ROBOT_FAULTS)}) | "
        f"{sum(v for k, v in c.items() if k.startswith('robot fault'))} | jobs waited and carried on |",
        f"| disc jobs | {r['jobs']} (retried after a failure: {r['retried']}); {r['discs']} disc images checked "
        f"against their job | {'yes' if not any(p.startswith(('job', 'stuck')) or 'association' in p for p in r['problems']) else 'no'} |",
        f"| overall | | {held} |",
        "",
        "## Memory and open files over the last half",
        "",
        f"Sampled from /proc every {SAMPLE_EVERY:g} s; slope by least squares. Flat: the fitted growth over the "
        f"last half is under {RSS_GROWTH_KB // 1024} MB and 10 % of the mean RSS, and under {FD_GROWTH} open files.",
        "",
        "| process | samples | RSS MB (first → last) | RSS slope kB/min | open files (first → last) | files/min | flat |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in r["trends"]:
        lines.append(f"| {t['process']} | {t['samples']} | {t['rss_mb_first']:.1f} → {t['rss_mb_last']:.1f} | "
                     f"{t['rss_kb_per_min']:+.1f} | {t['fds_first']} → {t['fds_last']} | {t['fds_per_min']:+.2f} | "
                     f"{'yes' if t['flat'] else '**no**'} |")
    lines += ["", "## Problems", ""] + ([f"- {p}" for p in r["problems"][:40]] or ["None in this run."])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "600")))
    parser.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "16")))
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--speed", default=os.environ.get("SOAK_SPEED", "0.005"),
                        help="the simulated robots' --speed (0: as fast as they go, so a long run's queue drains)")
    parser.add_argument("--out", type=Path, default=w.REPO / "docs" / "reliability" / "soak.md")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds (SOAK_SECONDS) must be above 0")
    work = args.work or Path(tempfile.mkdtemp(prefix="soak-"))
    result = run(work, seconds=args.seconds, seed=args.seed, senders=args.senders, speed=args.speed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(result, args))
    print(json.dumps({k: v for k, v in result.items() if k != "trends"}, indent=1)[:4000])
    print(f"[soak] report: {args.out}; work in {work}")
    return 1 if result["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
