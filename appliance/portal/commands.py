"""`burnstation tokens …`: patient study links from the shell (the portal owns its commands)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable

from appliance import db
from appliance import index as _index  # noqa: F401 - registers the study tables tokens join on
from appliance.config import SettingError, Settings
from appliance.portal import tokens


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t else "-"


def cmd_tokens(args: argparse.Namespace, settings: Settings) -> int:
    conn = db.connect(settings.data_dir)
    try:
        if args.action == "create":
            days = args.days if args.days is not None else int(settings.get("http.token_days"))
            token, row = tokens.create(conn, args.study, days, origin="cli")
            print(tokens.link(settings.all(), token))
            print(f"token {row.id} for study {row.study_uid}, valid until {_when(row.expires_at)}", file=sys.stderr)
            return 0
        if args.action == "revoke":
            row = tokens.revoke(conn, args.id)
            print(f"token {row.id} revoked ({_when(row.revoked_at)})")
            return 0
        items = tokens.list_tokens(conn)
        if args.json:
            print(json.dumps(items, indent=1, sort_keys=True))
            return 0
        for t in items:
            name = "".join(c if c.isprintable() else " " for c in t["patient_name"])
            print(f"{t['id']:5} {t['state']:8} until {_when(t['expires_at'])}  uses {t['uses']:3}  "
                  f"{t['study_date'] or '-':8} {name[:30]:30} {t['study_uid']}")
        return 0
    except tokens.TokenError as exc:
        raise SettingError(str(exc)) from None
    finally:
        conn.close()


def add_parsers(add: Callable[..., argparse.ArgumentParser], settings_of: Callable[[argparse.Namespace], Settings]
                ) -> None:
    def data_arg(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data", default=argparse.SUPPRESS)
        return p

    p = add("tokens", lambda a: cmd_tokens(a, settings_of(a)), "patient links to one study (the portal)")
    tsub = p.add_subparsers(dest="action", required=True)
    tc = data_arg(tsub.add_parser("create", help="make a link for a stored study (printed once)"))
    tc.add_argument("--study", required=True, help="Study Instance UID")
    tc.add_argument("--days", type=int, help="days of validity (default: http.token_days)")
    tl = data_arg(tsub.add_parser("list"))
    tl.add_argument("--json", action="store_true")
    tr = data_arg(tsub.add_parser("revoke"))
    tr.add_argument("id", type=int)


