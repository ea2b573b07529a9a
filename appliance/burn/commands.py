"""`burnstation robots …` and `burnstation jobs …`: the robot table and the job queue from the shell.

Kept here (not in cli.py) so the burn pipeline owns its commands; cli.py only hooks them in.
`--json` output is the stable form for scripts and tests.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from appliance import db
from appliance.burn import jobs, robots, routing
from appliance.config import SettingError, Settings


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=1, sort_keys=True, default=str))


def _fmt_time(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _clean(text: str) -> str:
    """One line, no control characters (job messages carry robot and patient text)."""
    return "".join(c if c.isprintable() else " " for c in str(text))


# --------------------------------------------------------------------------- robots


NO_DESIGN = "no label design: disc will be unprinted"


def _label_note(robot: dict[str, Any]) -> str:
    """Epson's TD Bridge prints only from a .tdd design (`--option label_template=...`): say when there is none."""
    if robot.get("driver") == "epson" and not robot.get("label_template"):
        return f"  ({NO_DESIGN}; set --option label_template=<design.tdd>, see README)"
    return ""


def cmd_robots(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "add":
        doc = {"name": args.name, "driver": args.driver, "spool": args.path, "role": args.role,
               "media": args.media, "engine_path": args.engine_path or "", "mode": args.mode,
               "verify": not args.no_verify, "source": "manual"}
        if args.copy_delay:
            doc["copy_delay"] = args.copy_delay
        for option in args.option or []:
            key, sep, value = option.partition("=")
            if not sep or key.strip() in doc:
                raise SettingError(f"--option {option!r}: expected key=value for a driver option")
            doc[key.strip()] = value
        robot = robots.add_robot(settings, doc)
        print(f"robot {robot['name']}: {robot['driver']} role {robot['role']} media {','.join(robot['media'])} "
              f"spool {robot['spool']} mode {robot['mode']}{'' if robot['verify'] else ' no-verify'}"
              f"{_label_note(robot)}")
        return 0
    if args.action == "delete":
        if not robots.delete_robot(settings, args.name):
            print(f"burnstation: no robot {args.name!r}", file=sys.stderr)
            return 1
        print(f"deleted robot {args.name}")
        return 0
    conn = db.connect(settings.data_dir)
    status = robots.status_rows(conn)
    items = []
    for robot in robots.list_robots(settings):
        row = status.get(robot["name"])
        items.append({**robot, "online": robots.is_online(row), "message": row["message"] if row else "no driver yet",
                      "status": row["status"] if row else {}, "heartbeat_at": row["heartbeat_at"] if row else None})
    if args.json:
        _print_json(items)
        return 0
    for item in items:
        print(f"{item['name']:16} {item['driver']:8} {item['role']:8} {','.join(item['media']):18} "
              f"{'online ' if item['online'] else 'offline'} {item['spool']}  {_clean(item['message'])}"
              f"{'' if NO_DESIGN in item['message'] else _label_note(item)}")
    return 0


# --------------------------------------------------------------------------- jobs


def _job_line(job: dict[str, Any]) -> str:
    discs = len(job["discs"])
    return (f"{job['id']:16} {job['state']:9} {job['role']:7} {job['robot'] or '-':12} {job['progress'] * 100:5.1f}% "
            f"{job['instances']:5} inst {discs} disc(s)  {_clean(job['error'] or job['message'])}")


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    conn = db.connect(settings.data_dir)
    try:
        return _jobs(args, settings, conn)
    except jobs.JobError as exc:
        print(f"burnstation: {exc}", file=sys.stderr)
        return 1


def _jobs(args: argparse.Namespace, settings: Settings, conn: Any) -> int:
    action = args.action
    if action == "list":
        states = [s.strip() for s in args.state.split(",")] if args.state else None
        if states and any(s not in jobs.STATES for s in states):
            raise jobs.JobError(f"--state: choose from {', '.join(jobs.STATES)}")
        listed = jobs.list_jobs(conn, states, limit=args.limit)
        groups = routing.pending_groups(conn)
        held = routing.held_associations(conn)
        if args.json:
            _print_json({"jobs": listed, "groups": groups, "held": held})
            return 0
        for job in listed:
            print(_job_line(job))
        if groups:
            print("pending groups (delayed burning):")
            now = time.time()
            for g in groups:
                follows = f", after job {g['follows_job']}" if g["follows_job"] else ""
                print(f"  group {g['id']} {g['role']} {_clean(g['group_key'])}: {g['instances']} inst in "
                      f"{g['series']} series, burns in {max(0.0, g['deadline_at'] - now):.0f} s{follows}")
        if held:
            print("associations not burned automatically:")
            for a in held:
                print(f"  association {a['assoc_id']} ({a['called_aet']}): {_clean(a['note'])}")
        return 0
    if action == "show":
        job = jobs.get_job(conn, args.id)
        if job is None:
            raise jobs.JobError(f"no job {args.id!r}")
        job["group"] = routing.group_of_job(conn, args.id)
        if args.json:
            _print_json(job)
            return 0
        for key in ("id", "state", "role", "robot", "robot_job_id", "priority", "copies", "attempts", "source",
                    "assoc_id", "group_id", "follows_job", "patient_id", "patient_name", "instances", "size",
                    "message", "error", "error_code", "cancel_requested", "exclude_robot"):
            print(f"{key:16} {_clean(job[key]) if isinstance(job[key], str) else job[key]}")
        print(f"{'progress':16} {job['progress'] * 100:.1f}%")
        for key in ("created_at", "build_started_at", "built_at", "submitted_at", "finished_at"):
            print(f"{key:16} {_fmt_time(job[key])}")
        print(f"{'studies':16} {', '.join(job['study_uids'])}")
        for disc in job["discs"]:
            print(f"disc {disc.get('disc_number')}/{disc.get('disc_count')}: {disc.get('media')} "
                  f"{disc.get('size', 0)} bytes {disc.get('image')}")
            for note in disc.get("off_profile") or []:
                print(f"  not in the profile's syntax: {_clean(note)}")
        return 0
    if action == "cancel":
        print(jobs.cancel_job(conn, args.id))
        return 0
    if action == "retry":
        print(jobs.retry_job(conn, args.id))
        return 0
    if action == "burn":
        if bool(args.study) == bool(args.assoc):
            raise jobs.JobError("jobs burn: give --study UID or --assoc N")
        if args.study:
            job_id = routing.burn_study(conn, settings, args.study, role=args.role or "any", copies=args.copies,
                                        priority=args.priority)
        else:
            job_id = routing.burn_association(conn, settings, args.assoc, role=args.role, copies=args.copies,
                                              priority=args.priority)
        print(job_id)
        return 0
    raise SettingError(f"jobs: unknown action {action!r}")


# --------------------------------------------------------------------------- parser


def add_parsers(add: Callable[[str, Any, str], argparse.ArgumentParser],
                settings_of: Callable[[argparse.Namespace], Settings]) -> None:
    """Hook `robots` and `jobs` into the main parser (`add` is cli.build_parser's helper)."""

    def data_arg(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data", default=argparse.SUPPRESS)
        return p

    p = add("robots", lambda a: cmd_robots(a, settings_of(a)), "configured robots (and the folder export)")
    rsub = p.add_subparsers(dest="action", required=True)
    ra = data_arg(rsub.add_parser("add", help="add or replace a robot"))
    ra.add_argument("name")
    ra.add_argument("--driver", required=True, choices=robots.DRIVERS)
    ra.add_argument("--path", required=True, help="spool folder (folder driver: the export folder)")
    ra.add_argument("--role", choices=robots.ROLES, help="jobs it takes (default: its driver; folder: any)")
    ra.add_argument("--media", help="comma list of CD,DVD,DVD-DL,BD")
    ra.add_argument("--engine-path", help="the spool folder as the vendor engine sees it")
    ra.add_argument("--mode", choices=robots.MODES, default="image")
    ra.add_argument("--no-verify", action="store_true", help="do not compare discs after burning")
    ra.add_argument("--copy-delay", type=float, default=0.0, help=argparse.SUPPRESS)  # tests: a slow folder
    ra.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="a driver option (publisher=…, robot_name=…, status_timeout=30, …); repeatable")
    rl = data_arg(rsub.add_parser("list"))
    rl.add_argument("--json", action="store_true")
    rd = data_arg(rsub.add_parser("delete"))
    rd.add_argument("name")

    p = add("jobs", lambda a: cmd_jobs(a, settings_of(a)), "the burn job queue")
    jsub = p.add_subparsers(dest="action", required=True)
    jl = data_arg(jsub.add_parser("list"))
    jl.add_argument("--json", action="store_true")
    jl.add_argument("--state", help="comma list of states")
    jl.add_argument("--limit", type=int, default=200)
    js = data_arg(jsub.add_parser("show"))
    js.add_argument("id")
    js.add_argument("--json", action="store_true")
    for name in ("retry", "cancel"):
        data_arg(jsub.add_parser(name)).add_argument("id")
    jb = data_arg(jsub.add_parser("burn", help="burn a study (or what one association delivered) on demand"))
    jb.add_argument("--study", help="Study Instance UID")
    jb.add_argument("--assoc", type=int, help="association id (e.g. one that was aborted)")
    jb.add_argument("--role", choices=robots.ROLES)
    jb.add_argument("--copies", type=int)
    jb.add_argument("--priority", type=int, default=0)
