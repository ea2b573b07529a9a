"""The `burnstation` command line (the contract tests and other processes rely on)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from appliance import audit
from appliance.config import SPECS, SettingError, Settings, default_data_dir, make_node, parse_assignment


def _data(args: argparse.Namespace) -> Path:
    return Path(args.data) if args.data else default_data_dir()


def _settings(args: argparse.Namespace, must_exist: bool = True) -> Settings:
    settings = Settings(_data(args))
    if must_exist and not settings.exists():
        raise SystemExit(f"burnstation: no settings in {_data(args)}; run `burnstation init --data {_data(args)}` first")
    return settings


def cmd_init(args: argparse.Namespace) -> int:
    from appliance import db, permissions, tlsca

    data = _data(args)
    for sub in ("storage", "discs", "spool", "tls", "logs", "worklist"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    settings = Settings(data)
    settings.initialize()
    ca = tlsca.create_device_tls(data, settings.aet())
    db.connect(data).close()
    report = permissions.secure(data, settings)  # an older folder (0755, 0644) becomes owner-only too
    if report.failures:
        print(f"burnstation: {report.message()}", file=sys.stderr)
        return 2
    values = settings.all()
    print(f"BurnStation data folder: {data} (owner only)")
    print(f"AE titles: {', '.join(settings.derived_aets())}")
    print(f"DICOM port: {values['dicom.port'] or 'closed'}   DICOM TLS port: {values['dicom.tls_port'] or 'closed'}")
    print(f"HL7 port: {values['hl7.port'] or 'closed'}   HTTP port: {values['http.port'] or 'closed'}")
    print(f"TLS CA certificate (give it to peers): {ca}")
    _print_setup_code(data)
    return 0


def _print_setup_code(data: Path) -> None:
    """While no web user exists: the one-time code that creates the first admin at /setup."""
    from appliance import accounts

    code = accounts.current_setup_code(data)
    if code:
        print(f"Web setup code (creates the first admin at /setup, works once): {code}")
        print(f"  (also in {accounts.setup_code_path(data)}, readable by this user only)")


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.action == "show":
        values = settings.all()
        if args.json:
            print(json.dumps(values, indent=1, sort_keys=True))
        else:
            for key in SPECS:
                print(f"{key} = {json.dumps(values[key])}    # {SPECS[key].help}")
        return 0
    if args.action in ("export", "import"):
        from appliance import backup

        if args.action == "export":
            doc = backup.export_config(settings, args.file)
            print(f"exported {', '.join(doc['sections'])} to {args.file} (no patient data, device keys or tokens)")
            return 0
        counts = backup.import_config(settings, args.file)
        print("imported " + ", ".join(f"{name} ({n})" if name in ("nodes", "robots", "forward_rules", "users") else name
                                      for name, n in counts.items()) + f" from {args.file}")
        return 0
    changes = dict(parse_assignment(a) for a in args.assignments)
    if not changes:
        raise SettingError("config set: give at least one key=value")
    old = settings.all()
    converted = settings.update(changes)
    _audit(args, lambda conn, actor: audit.record_settings(conn, actor, old, converted))
    for key, value in converted.items():
        print(f"{key} = {json.dumps(value)}")
    return 0


def _audit(args: argparse.Namespace, write: Any) -> None:
    """Record a CLI change in the audit log as `cli:<unix user>` (never fails the command)."""
    from appliance import db

    try:
        conn = db.connect(_data(args))
        try:
            write(conn, audit.cli_actor())
        finally:
            conn.close()
    except Exception as exc:  # the change is made; a full disk must not turn it into an error
        print(f"burnstation: warning: not written to the audit log: {exc}", file=sys.stderr)


def cmd_users(args: argparse.Namespace) -> int:
    from appliance import accounts, db

    _settings(args)
    conn = db.connect(_data(args))
    try:
        if args.action == "list":
            for user in accounts.list_users(conn):
                print(f"{user['name']:24} {user['role']}")
            return 0
        if args.action == "delete":
            accounts.delete_user(conn, args.name)
            audit.record(conn, audit.cli_actor(), "user-delete", args.name)
            print(f"deleted user {args.name}")
            return 0
        password = _read_password()
        if args.action == "add":
            accounts.add_user(conn, args.name, args.role, password)
            audit.record(conn, audit.cli_actor(), "user-add", args.name, f"role {args.role}")
            accounts.setup_code_path(_data(args)).unlink(missing_ok=True)  # a user exists: setup is over
            print(f"added user {args.name} ({args.role})")
        else:
            accounts.set_password(conn, args.name, password)
            audit.record(conn, audit.cli_actor(), "user-passwd", args.name)
            print(f"password of {args.name} changed")
        return 0
    except accounts.AccountError as exc:
        print(f"burnstation: {exc}", file=sys.stderr)
        return 2
    finally:
        conn.close()


def _read_password() -> str:
    """The password from standard input (one line), or asked twice on a terminal."""
    import getpass

    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Password again: "):
            raise SettingError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def cmd_nodes(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.action == "add":
        node = make_node(args.aet, args.host, args.port, args.tls, args.services, args.description or "",
                         args.retrieve)
        settings.add_node(node)
        _audit(args, lambda conn, actor: audit.record(conn, actor, "node-add", node.aet, json.dumps(node.to_doc())))
        print(f"added {node.aet} {node.host}:{node.port}{' TLS' if node.tls else ''} [{','.join(node.services)}]")
    elif args.action == "list":
        for node in settings.nodes():
            print(f"{node.aet:16} {node.host}:{node.port}{' TLS' if node.tls else ''}  {','.join(node.services)}"
                  f"  retrieve={node.retrieve}{'  ' + node.description if node.description else ''}")
    elif args.action == "delete":
        if not settings.delete_node(args.aet):
            print(f"burnstation: no known node {args.aet!r}", file=sys.stderr)
            return 1
        _audit(args, lambda conn, actor: audit.record(conn, actor, "node-delete", args.aet))
        print(f"deleted {args.aet}")
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from appliance.transfer import commands as transfer_commands

    settings = _settings(args)
    node = settings.node(args.aet)
    if node is None:
        print(f"burnstation: {args.aet!r} is not a known node (add it with `burnstation nodes add`)", file=sys.stderr)
        return 2
    ok, message = transfer_commands.echo(settings, node.aet)
    print(message)
    return 0 if ok else 1


def cmd_reindex(args: argparse.Namespace) -> int:
    from appliance import db, index

    data = _data(args)
    _settings(args)
    conn = db.connect(data)
    indexed, bad = index.reindex(conn, data / "storage")
    print(f"indexed {indexed} instances" + (f"; {bad} unreadable files left alone" if bad else ""))
    return 0


def cmd_db_backup(args: argparse.Namespace) -> int:
    from appliance import dbguard

    _settings(args)
    print(f"state.db backed up to {dbguard.backup_now(_data(args))}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import importlib.util

    from appliance import permissions, pnd_release
    from appliance.services import station

    settings = _settings(args)
    try:  # before any process starts: the dicom service would refuse the same way
        pnd_release.check_library()
    except pnd_release.LibraryChanged as exc:
        print(f"burnstation: refusing to start: {exc}", file=sys.stderr)
        return 1
    if args.simulate and importlib.util.find_spec("burnstation_sim") is None:
        print("burnstation: --simulate needs the robot simulator, a development tool the appliance does "
              "not ship: install it with `pip install ./hardware-sim` (`make venv` does)", file=sys.stderr)
        return 1
    report = permissions.secure(_data(args), settings)  # logs what it tightened
    if report.failures:
        print(f"burnstation: not starting: {report.message()}", file=sys.stderr)
        return 2
    return station.run(_data(args), simulate=args.simulate, robots=args.robots, sim_speed=args.sim_speed)


def cmd_service(args: argparse.Namespace) -> int:
    from appliance.supervisor.child import run_service

    return run_service(_data(args), args.name, robot=args.robot, device=args.device, worker=args.worker)


def cmd_restart_process(args: argparse.Namespace) -> int:
    """Ask the running supervisor to start a failed process again; wait until it did (or say why not)."""
    import time

    from appliance.supervisor.requests import request_reset
    from appliance.supervisor.supervisor import read_state

    _settings(args)
    state = read_state(_data(args))
    if not state or not state.get("alive"):
        print("burnstation: the station is not running (start it with `burnstation run`)", file=sys.stderr)
        return 1
    procs = {p["name"]: p for p in state.get("processes", [])}
    if args.name not in procs:
        print(f"burnstation: no process {args.name!r}; there are {', '.join(procs) or 'none'}", file=sys.stderr)
        return 2
    if procs[args.name]["state"] != "failed":
        print(f"{args.name} is {procs[args.name]['state']}, not failed: nothing to do")
        return 0
    starts = procs[args.name]["starts"]
    request_reset(_data(args), args.name, audit.cli_actor())
    _audit(args, lambda conn, actor: audit.record(conn, actor, "process-reset", args.name))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = {p["name"]: p for p in (read_state(_data(args)) or {}).get("processes", [])}.get(args.name)
        if now and now["starts"] > starts:
            print(f"{args.name}: started again (now {now['state']})")
            return 0
        time.sleep(0.2)
    print("burnstation: the supervisor did not act on the request within 15 s", file=sys.stderr)
    return 1


def cmd_status(args: argparse.Namespace) -> int:
    from appliance import diagnostics

    _settings(args)
    report = diagnostics.collect(_data(args))
    print(json.dumps(report, indent=1, sort_keys=True, default=str) if args.json else diagnostics.render(report))
    return 0


def cmd_storage(args: argparse.Namespace) -> int:
    from appliance import db, retention

    settings = _settings(args)
    data = _data(args)
    conn = db.connect(data)
    try:
        if args.action == "status":
            report = retention.status(conn, settings, data)
            print(json.dumps(report, indent=1, sort_keys=True) if args.json else retention.render_status(report))
            return 0
        days = args.older_than_days
        if days is not None and not 0 <= days <= 36500:
            raise SettingError(f"--older-than-days: must be from 0 to 36500, not {days}")
        plan = retention.plan(conn, settings, data, older_than_days=days)
        if args.dry_run:
            listed = [{"study_uid": v.study_uid, "patient_id": v.patient_id, "study_date": v.study_date,
                       "instances": v.instances, "size": v.size, "reason": v.reason} for v in plan.delete]
        else:
            listed = retention.purge(conn, settings, data, plan, older_than_days=days)
        if args.json:
            print(json.dumps({"dry_run": bool(args.dry_run), "studies": listed}, indent=1, sort_keys=True))
        else:
            verb = "would delete" if args.dry_run else "deleted"
            for item in listed:
                print(f"{verb} {item['study_uid']}  {item['patient_id']}  {item['reason']}")
            print(f"{len(listed)} stud{'y' if len(listed) == 1 else 'ies'} {verb}")
        return 0
    finally:
        conn.close()


def cmd_network(args: argparse.Namespace) -> int:
    from appliance import network

    _settings(args)
    net = network.Network(_data(args))
    if args.action == "show":
        shown = net.show()
        if args.json:
            print(json.dumps(shown, indent=1, sort_keys=True))
            return 0
        for key in network.DEFAULTS:
            value = shown["values"][key]
            print(f"{key} = {' '.join(value) if isinstance(value, list) else value}")
        where = ("applied by burnstation-network-apply" if shown["applied"]
                 else "not applied: outside the appliance image")
        print(f"# files in {shown['files']} ({where})")
        status = shown.get("apply_status")
        if shown["applied"]:
            print(f"# {network.apply_summary(status)}")
        if shown["pending_seconds"] is not None:
            print(f"# unconfirmed address change: rolled back in {shown['pending_seconds']} s "
                  "unless `burnstation network confirm`")
        return 0
    if args.action == "confirm":
        if not net.confirm():
            print("burnstation: no network change waiting for confirmation", file=sys.stderr)
            return 1
        print("network change confirmed")
        return 0
    changes = network.parse_assignments(args.assignments)
    if not changes:
        raise SettingError("network set: give at least one key=value")
    result = net.set(changes)
    for key in changes:
        value = result["values"].get(key)
        print(f"{key} = {' '.join(value) if isinstance(value, list) else value}")
    if result["rollback_at"]:
        print(f"address change: confirm within {network.ROLLBACK_SECONDS} s with `burnstation network confirm` "
              "(from the new address), else the previous settings come back")
    if not result["applied"]:
        print(f"written to {result['files']} (not applied: outside the appliance image)")
    elif not result["failed"]:
        print("applied by burnstation-network-apply")
    for failed in result["failed"]:
        print(f"burnstation: could not apply: {failed}", file=sys.stderr)
    return 1 if result["failed"] else 0


# commands a station process runs (`run`: the supervisor, `service`: each service): their parser
# leaves out the client commands of other modules, whose imports (pynetdicom, pydicom) cost each of
# a station's processes about half a CPU-second at start
STATION_COMMANDS = ("run", "service")


def command_word(argv: list[str]) -> str | None:
    """The subcommand named in `argv` (the first word that is neither an option nor `--data`'s value)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--data":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def build_parser(station_only: bool = False) -> argparse.ArgumentParser:
    """The whole command line; with `station_only`, without the client commands of other modules
    (for `run` and `service`, see STATION_COMMANDS)."""
    parser = argparse.ArgumentParser(prog="burnstation", description="DICOM burn station")
    parser.add_argument("--data", help="data folder (default: $BURNSTATION_DATA, /var/lib/burnstation or ./var)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: object, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--data", default=argparse.SUPPRESS, help="data folder")
        p.set_defaults(func=func)
        return p

    add("init", cmd_init, "create settings, TLS keys and the database")
    p = add("config", cmd_config, "show or change settings")
    csub = p.add_subparsers(dest="action", required=True)
    show = csub.add_parser("show")
    show.add_argument("--json", action="store_true")
    show.add_argument("--data", default=argparse.SUPPRESS)
    setp = csub.add_parser("set")
    setp.add_argument("assignments", nargs="*", metavar="key=value")
    setp.add_argument("--data", default=argparse.SUPPRESS)
    exp = csub.add_parser("export", help="write settings, nodes, robots and network settings to FILE")
    exp.add_argument("file")
    exp.add_argument("--data", default=argparse.SUPPRESS)
    imp = csub.add_parser("import", help="replace this station's configuration with FILE (validated whole first)")
    imp.add_argument("file")
    imp.add_argument("--data", default=argparse.SUPPRESS)

    p = add("nodes", cmd_nodes, "known DICOM nodes")
    nsub = p.add_subparsers(dest="action", required=True)
    na = nsub.add_parser("add")
    na.add_argument("aet")
    na.add_argument("host")
    na.add_argument("port")
    na.add_argument("--tls", action="store_true")
    na.add_argument("--services", help="comma list of echo,store,find,move,get (default: all)")
    na.add_argument("--description")
    na.add_argument("--retrieve", default="move", help="how the station retrieves from it: move (default) or get")
    na.add_argument("--data", default=argparse.SUPPRESS)
    nl = nsub.add_parser("list")
    nl.add_argument("--data", default=argparse.SUPPRESS)
    nd = nsub.add_parser("delete")
    nd.add_argument("aet")
    nd.add_argument("--data", default=argparse.SUPPRESS)

    p = add("echo", cmd_echo, "C-ECHO a known node")
    p.add_argument("aet")
    add("reindex", cmd_reindex, "rebuild the index from the stored files")
    add("db-backup", cmd_db_backup, "online backup of state.db into db-backup/ now (also every db.backup_hours)")
    p = add("run", cmd_run, "run the station in the foreground")
    p.add_argument("--simulate", action="store_true", help="start the robot simulator beside the station")
    p.add_argument("--robots", default="epson,primera", help="simulated robots (with --simulate)")
    p.add_argument("--sim-speed", type=float, default=1.0,
                   help="simulator time multiplier (with --simulate): 1 realistic, 0 instant")
    if not station_only:
        from appliance.burn import commands as burn_commands  # robots, jobs

        burn_commands.add_parsers(add, _settings)
        from appliance.portal import commands as portal_commands  # tokens

        portal_commands.add_parsers(add, _settings)
    p = add("users", cmd_users, "web users (passwords are read from standard input)")
    usub = p.add_subparsers(dest="action", required=True)
    ua = usub.add_parser("add")
    ua.add_argument("name")
    ua.add_argument("--role", required=True, choices=("admin", "technician", "viewer"))
    ua.add_argument("--data", default=argparse.SUPPRESS)
    for action in ("delete", "passwd"):
        up = usub.add_parser(action)
        up.add_argument("name")
        up.add_argument("--data", default=argparse.SUPPRESS)
    usub.add_parser("list").add_argument("--data", default=argparse.SUPPRESS)
    p = add("restart-process", cmd_restart_process, "start a process in FAILED state again")
    p.add_argument("name", help="process name as `burnstation status` lists it (e.g. burner, driver:epson)")
    if not station_only:
        from appliance.transfer import commands as transfer_commands  # query, retrieve, send, transfers...

        transfer_commands.add_parsers(add, _settings)
    p = add("storage", cmd_storage, "disk usage and retention: what is deleted, when; purge now")
    ssub = p.add_subparsers(dest="action", required=True)
    st = ssub.add_parser("status", help="usage, what a purge would delete, what goes next and when")
    st.add_argument("--json", action="store_true")
    st.add_argument("--data", default=argparse.SUPPRESS)
    sp = ssub.add_parser("purge", help="delete what the retention rules say may go, now")
    sp.add_argument("--dry-run", action="store_true", help="list what would be deleted, delete nothing")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--older-than-days", type=int, metavar="N",
                    help="for this run, burned studies whose last disc is older than N days (0: all burned)")
    sp.add_argument("--data", default=argparse.SUPPRESS)
    p = add("network", cmd_network, "host name, address, DNS, NTP and time zone of the box (admin)")
    nwsub = p.add_subparsers(dest="action", required=True)
    nws = nwsub.add_parser("show")
    nws.add_argument("--json", action="store_true")
    nws.add_argument("--data", default=argparse.SUPPRESS)
    nwset = nwsub.add_parser("set", help="hostname= mode=dhcp|static address=IP/PREFIX gateway= dns= search= "
                                         "ntp= timezone= interface=")
    nwset.add_argument("assignments", nargs="*", metavar="key=value")
    nwset.add_argument("--data", default=argparse.SUPPRESS)
    nwc = nwsub.add_parser("confirm", help="keep an address change (else it is rolled back after 120 s)")
    nwc.add_argument("--data", default=argparse.SUPPRESS)
    p = add("status", cmd_status, "ports, processes, robots, queue, disk and certificate (troubleshooting)")
    p.add_argument("--json", action="store_true")
    # one service in its own process, as the supervisor runs it (no help line: not for people)
    p = sub.add_parser("service", description="run one station service (used by `burnstation run`)")
    p.add_argument("--data", default=argparse.SUPPRESS)
    p.add_argument("name")
    p.add_argument("--robot", help="driver: the robot's name")
    p.add_argument("--device", help="panel: the LCD's serial device")
    p.add_argument("--worker", type=int, default=1, help="dicom: which worker process this is (1..N)")
    p.set_defaults(func=cmd_service)
    return parser


def main(argv: list[str] | None = None) -> int:
    from appliance.permissions import set_private_umask

    set_private_umask()  # patient data: whatever the CLI and the station's processes create is owner only
    words = sys.argv[1:] if argv is None else argv
    parser = build_parser(station_only=command_word(words) in STATION_COMMANDS)
    args = parser.parse_args(argv)
    if not getattr(args, "data", None):
        args.data = os.environ.get("BURNSTATION_DATA") or None
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except SettingError as exc:
        print(f"burnstation: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
