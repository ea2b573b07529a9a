"""The transfer part of `burnstation status`: the transfer queue and each forwarding rule's backlog."""

from __future__ import annotations

import sqlite3
from typing import Any

from appliance.config import Settings
from appliance.transfer import jobs, rules


def collect(conn: sqlite3.Connection | None, settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {"queue": None, "rules": []}
    for rule in rules.list_rules(settings):
        doc: dict[str, Any] = {**rule.to_doc(), "description": rule.describe()}
        if conn is not None:
            try:
                doc.update(jobs.rule_backlog(conn, rule.name))
            except sqlite3.Error:  # a state.db from before the transfer tables
                pass
        out["rules"].append(doc)
    if conn is not None:
        try:
            out["queue"] = jobs.count_active(conn)
        except sqlite3.Error:
            pass
    return out


def render(report: dict[str, Any]) -> list[str]:
    queue = report.get("queue")
    lines = ["", "Transfers: " + ("(no transfers table yet)" if queue is None else
                                  ", ".join(f"{k} {v}" for k, v in sorted(queue.items())) or "none active")]
    lines.append("Forwarding rules:" if report["rules"] else "Forwarding rules: none")
    for rule in report["rules"]:
        last = rule.get("last") or {}
        state = f"; last send {last['state']}" + (f": {last['error']}" if last.get("error") else "") if last else ""
        lines.append(f"  {rule['name']:16} → {rule['node']}: backlog {rule.get('backlog', '?')} "
                     f"({rule.get('waiting', '?')} waiting for the delay), {rule.get('sent', '?')} sent{state}")
    return lines
