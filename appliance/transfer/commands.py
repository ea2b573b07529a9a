"""`burnstation query|retrieve|send|transfers|forward`: the station as a DICOM client, from the shell.

The commands never open an association themselves: they hand the request to the `transfer`
process through state.db (a query as a short request, the rest as durable transfers) and follow
it. cli.py only hooks them in.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance import db
from appliance.config import SettingError, Settings
from appliance.transfer import engine, jobs, rules

FOLLOW_SECONDS = 0.05  # a transfer's row is read this often while it is followed (one indexed SELECT)
PICKUP_SECONDS = 10.0  # a query not taken by the transfer process within this: it is not running


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=1, sort_keys=True, default=str))


def _clean(text: Any) -> str:
    return "".join(c if c.isprintable() else " " for c in str(text))


def _node(settings: Settings, aet: str):  # noqa: ANN202 - a Node
    node = settings.node(aet)
    if node is None:
        raise SettingError(f"{aet!r} is not a known node (add it with `burnstation nodes add`)")
    return node


def _service_running(data: Path) -> bool:
    """Whether a supervisor runs the transfer process now (else queued work waits for `burnstation run`)."""
    from appliance.supervisor.supervisor import read_state

    state = read_state(data)
    if not state or not state.get("alive"):
        return False
    return any(p.get("name") == "transfer" and p.get("state") in ("running", "starting")
               for p in state.get("processes", []))


# --------------------------------------------------------------------------- query


def parse_keys(items: list[str] | None) -> dict[str, str]:
    keys: dict[str, str] = {}
    for item in items or []:
        keyword, sep, value = item.partition("=")
        if not keyword.strip():
            raise SettingError(f"query key: expected Keyword=Value, not {item!r}")
        keys[keyword.strip()] = value if sep else ""
    return keys


def ask(settings: Settings, kind: str, node: str, params: dict[str, Any]) -> dict[str, Any]:
    """Hand a short request to the transfer process and wait for its answer (state done or failed)."""
    conn = db.connect(settings.data_dir)
    try:
        request_id = jobs.submit_request(conn, kind, node, params)
        timeout = float(settings.get("dicom.timeout"))
        started = time.monotonic()
        deadline = started + PICKUP_SECONDS + 3 * timeout + 30
        while True:
            req = jobs.get_request(conn, request_id)
            if req is None:
                return {"state": "failed", "error": "the request disappeared", "result": None}
            if req["state"] in ("done", "failed"):
                jobs.drop_request(conn, request_id)
                return req
            now = time.monotonic()
            if req["state"] == "queued" and now - started > PICKUP_SECONDS or now > deadline:
                jobs.drop_request(conn, request_id)
                return {"state": "failed", "result": None,
                        "error": "the transfer process did not answer (is `burnstation run` running?)"}
            time.sleep(0.05)
    finally:
        conn.close()


def echo(settings: Settings, node: str) -> tuple[bool, str]:
    """C-ECHO through the transfer process (within the cap); directly when `burnstation run` is not running."""
    if not _service_running(settings.data_dir):
        from appliance.dicom import scu

        return scu.echo(settings.data_dir, settings, _node(settings, node))
    req = ask(settings, "echo", node, {})
    if req["state"] == "failed":
        return False, req["error"]
    return bool(req["result"]["ok"]), str(req["result"]["message"])


def cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    node = _node(settings, args.node)
    keys = parse_keys(args.key)
    try:
        engine.build_identifier(args.level, keys)  # refuse a bad key here, with the reason
    except engine.QueryError as exc:
        raise SettingError(str(exc)) from None
    req = ask(settings, "query", node.aet, {"level": args.level.upper(), "keys": keys})
    if req["state"] == "failed":
        print(f"burnstation: query on {node.aet} failed: {req['error']}", file=sys.stderr)
        return 1
    results = req["result"] or []
    if args.json:
        _print_json(results)
        return 0
    columns = list(dict.fromkeys(k for row in results for k in row))
    for row in results:
        print("  ".join(f"{k}={_clean(row.get(k, ''))}" for k in columns))
    print(f"{len(results)} result(s) from {node.aet}")
    return 0


# --------------------------------------------------------------------------- transfers


def _line(t: dict[str, Any]) -> str:
    what = t["instance_uid"] or t["series_uid"] or t["study_uid"]
    kind = f"{t['kind']}/{t['method']}" if t["kind"] == jobs.RETRIEVE else t["kind"]
    if t["rule"]:
        kind += f"[{t['rule']}]"
    counts = f"{t['completed']} ok {t['warning']} warn {t['failed']} failed {t['remaining']} left"
    note = t["error"] or t["message"]
    return f"{t['id']}  {t['state']:9} {kind:14} {t['node']:16} {counts}  {_clean(note)}  {what}"


def follow(conn: Any, transfer_id: str, quiet: bool = False) -> dict[str, Any]:
    """Print a transfer's progress until it ends; returns its final row."""
    last = None
    while True:
        t = jobs.get(conn, transfer_id)
        assert t is not None
        shown = (t["state"], t["completed"], t["failed"], t["warning"], t["remaining"], t["message"])
        if shown != last and not quiet:
            print(_line(t), flush=True)
            last = shown
        if t["state"] in jobs.FINAL:
            return t
        time.sleep(FOLLOW_SECONDS)


def _queued(args: argparse.Namespace, settings: Settings, conn: Any, transfer_id: str) -> int:
    print(f"{transfer_id} queued", flush=True)
    if args.no_wait:
        return 0
    if not _service_running(settings.data_dir):
        print("the transfer process is not running: the transfer starts with `burnstation run`")
        return 0
    t = follow(conn, transfer_id)
    if t["burn_job"]:
        print(f"burn job {t['burn_job']} queued")
    return 0 if t["state"] == jobs.DONE else 1


def cmd_retrieve(args: argparse.Namespace, settings: Settings) -> int:
    node = _node(settings, args.node)
    conn = db.connect(settings.data_dir)
    try:
        tid = jobs.create_retrieve(conn, node.aet, node.retrieve, args.study, args.series or "", burn=args.burn)
        return _queued(args, settings, conn, tid)
    finally:
        conn.close()


def cmd_send(args: argparse.Namespace, settings: Settings) -> int:
    node = _node(settings, args.node)
    if not (args.study or args.series or args.instance):
        raise SettingError("send: give --study, --series or --instance")
    conn = db.connect(settings.data_dir)
    try:
        uids = jobs.select_instances(conn, args.study or "", args.series or "", args.instance or "")
        tid = jobs.create_send(conn, node.aet, uids, study_uid=args.study or "", series_uid=args.series or "",
                               instance_uid=args.instance or "")
        return _queued(args, settings, conn, tid)
    finally:
        conn.close()


def cmd_transfers(args: argparse.Namespace, settings: Settings) -> int:
    conn = db.connect(settings.data_dir)
    try:
        if args.action == "list":
            states = [s.strip() for s in args.state.split(",")] if args.state else None
            bad = [s for s in states or [] if s not in jobs.STATES]
            if bad:
                raise SettingError(f"transfers list --state: unknown {', '.join(bad)}; "
                                   f"choose from {', '.join(jobs.STATES)}")
            rows = jobs.list_transfers(conn, states, args.limit)
            if args.json:
                _print_json(rows)
            else:
                for t in rows:
                    print(_line(t))
                if not rows:
                    print("no transfers")
            return 0
        if args.action == "show":
            t = jobs.get(conn, args.id)
            if t is None:
                raise jobs.TransferError(f"no transfer {args.id!r}")
            if args.json:
                _print_json({**t, "items": jobs.items(conn, args.id)})
            else:
                for key, value in t.items():
                    print(f"{key:16} {_clean(value)}")
            return 0
        if args.action == "cancel":
            print(jobs.cancel(conn, args.id))
        elif args.action == "retry":
            print(jobs.retry(conn, args.id))
        return 0
    except jobs.TransferError as exc:
        print(f"burnstation: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()


# --------------------------------------------------------------------------- forwarding rules


def cmd_forward(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "add":
        rule = rules.make_rule(settings, node=args.node, name=args.name, called=args.called, calling=args.calling,
                               modalities=args.modality, delay=args.delay)
        conn = db.connect(settings.data_dir)
        try:
            jobs.start_cursor(conn, rule.name)  # from now on, even before the transfer process reads the rule
            rules.add_rule(settings, rule)
        finally:
            conn.close()
        print(f"added rule {rule.name}: {rule.describe()}")
        return 0
    if args.action == "list":
        conn = db.connect(settings.data_dir)
        try:
            out = [{**r.to_doc(), **jobs.rule_backlog(conn, r.name)} for r in rules.list_rules(settings)]
        finally:
            conn.close()
        if args.json:
            _print_json(out)
        else:
            for r, doc in zip(rules.list_rules(settings), out, strict=True):
                print(f"{r.name:16} {r.describe()}; backlog {doc['backlog']} ({doc['waiting']} waiting for the "
                      f"delay), {doc['sent']} sent")
            if not out:
                print("no forwarding rules")
        return 0
    if not rules.delete_rule(settings, args.name):
        print(f"burnstation: no forwarding rule {args.name!r}", file=sys.stderr)
        return 1
    conn = db.connect(settings.data_dir)
    try:
        jobs.forget_rule(conn, args.name)
    finally:
        conn.close()
    print(f"deleted rule {args.name}")
    return 0


def _guard(func: Callable[[argparse.Namespace, Settings], int],
           settings_of: Callable[[argparse.Namespace], Settings]) -> Callable[[argparse.Namespace], int]:
    """A refused request (unknown transfer, nothing to send) prints its reason and exits 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args, settings_of(args))
        except jobs.TransferError as exc:
            print(f"burnstation: {exc}", file=sys.stderr)
            return 1

    return run


def add_parsers(add: Callable[[str, Any, str], argparse.ArgumentParser],
                settings_of: Callable[[argparse.Namespace], Settings]) -> None:
    """Hook the client commands into the main parser (`add` is cli.build_parser's helper)."""

    def data_arg(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data", default=argparse.SUPPRESS)
        return p

    p = add("query", _guard(cmd_query, settings_of), "C-FIND on a known node (results are not kept)")
    p.add_argument("node", help="the known node's AE title")
    p.add_argument("--level", default="study", choices=("patient", "study", "series"))
    p.add_argument("-k", "--key", action="append", metavar="Keyword=Value",
                   help="matching or return key (wildcards * ?, date ranges 20240101-20240131); repeatable")
    p.add_argument("--json", action="store_true")

    p = add("retrieve", _guard(cmd_retrieve, settings_of),
            "retrieve a study or series from a known node (C-MOVE to this station, or C-GET)")
    p.add_argument("node")
    p.add_argument("--study", required=True, help="Study Instance UID")
    p.add_argument("--series", help="only this Series Instance UID")
    p.add_argument("--burn", action="store_true", help="queue a burn job of what was retrieved once it is complete")
    p.add_argument("--no-wait", action="store_true", help="queue it and return at once")

    p = add("send", _guard(cmd_send, settings_of), "send a study, series or instance to a known node")
    p.add_argument("node")
    p.add_argument("--study")
    p.add_argument("--series")
    p.add_argument("--instance")
    p.add_argument("--no-wait", action="store_true", help="queue it and return at once")

    p = add("transfers", _guard(cmd_transfers, settings_of), "the transfer queue (retrieves and sends)")
    tsub = p.add_subparsers(dest="action", required=True)
    tl = data_arg(tsub.add_parser("list"))
    tl.add_argument("--json", action="store_true")
    tl.add_argument("--state", help="comma list of states")
    tl.add_argument("--limit", type=int, default=200)
    ts = data_arg(tsub.add_parser("show"))
    ts.add_argument("id")
    ts.add_argument("--json", action="store_true")
    for name in ("cancel", "retry"):
        data_arg(tsub.add_parser(name)).add_argument("id")

    p = add("forward", _guard(cmd_forward, settings_of), "forwarding rules (pass received data on)")
    fsub = p.add_subparsers(dest="action", required=True)
    fa = data_arg(fsub.add_parser("add", help="forward what is received (optionally filtered) to a known node"))
    fa.add_argument("node")
    fa.add_argument("--name", help="rule name (default: the node's AE title)")
    fa.add_argument("--called", help="only what is received on this station AE title (default: any)")
    fa.add_argument("--modality", help="comma list of modalities, e.g. CT,MR (default: any)")
    fa.add_argument("--calling", help="only what this AE title sends (default: any)")
    fa.add_argument("--delay", default=rules.DEFAULT_DELAY,
                    help=f"seconds a study must be quiet before it is sent (default {rules.DEFAULT_DELAY})")
    fl = data_arg(fsub.add_parser("list"))
    fl.add_argument("--json", action="store_true")
    data_arg(fsub.add_parser("delete")).add_argument("name")
