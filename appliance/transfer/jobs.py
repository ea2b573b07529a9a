"""Transfers in state.db: the only module that reads or writes the transfer tables.

Tables:
- `transfers`: one row per retrieve or send (a forwarding rule's sends too), moved through
      queued ──▶ running ──▶ done / failed / cancelled      (retry: failed/cancelled → queued)
  by conditional updates, with the counts (remaining, completed, failed, warning), the peer's last
  status and error comment, and `not_before` (a forward waits for its node with backoff).
- `transfer_items`: the instances of a send, each `pending` until the peer acknowledged it
  (`done`/`warning`) or refused it (`failed`); a restarted send only sends what is not acknowledged.
- `transfer_requests`: short requests (C-FIND) the CLI hands to the transfer process; the answer
  comes back in the row and the row is deleted by the asker.
- `forward_items` / `forward_cursor`: what each forwarding rule picked up from the index (one row
  per rule and instance, so an instance is never queued twice by one rule) and how far it read.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from appliance import db, index
from appliance.transfer import wake

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING)
FINAL = (DONE, FAILED, CANCELLED)
RETRIEVE, SEND = "retrieve", "send"
ACKED = ("done", "warning")

SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    node             TEXT NOT NULL,
    method           TEXT NOT NULL DEFAULT '',
    level            TEXT NOT NULL DEFAULT '',
    study_uid        TEXT NOT NULL DEFAULT '',
    series_uid       TEXT NOT NULL DEFAULT '',
    instance_uid     TEXT NOT NULL DEFAULT '',
    rule             TEXT NOT NULL DEFAULT '',
    burn             INTEGER NOT NULL DEFAULT 0,
    burn_job         TEXT NOT NULL DEFAULT '',
    state            TEXT NOT NULL DEFAULT 'queued',
    remaining        INTEGER NOT NULL DEFAULT 0,
    completed        INTEGER NOT NULL DEFAULT 0,
    failed           INTEGER NOT NULL DEFAULT 0,
    warning          INTEGER NOT NULL DEFAULT 0,
    peer_status      TEXT NOT NULL DEFAULT '',
    error            TEXT NOT NULL DEFAULT '',
    message          TEXT NOT NULL DEFAULT '',
    attempts         INTEGER NOT NULL DEFAULT 1,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    not_before       REAL NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL
);
CREATE INDEX IF NOT EXISTS transfers_state ON transfers(state, created_at);
CREATE TABLE IF NOT EXISTS transfer_items (
    transfer_id TEXT NOT NULL,
    sop_uid     TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT 'pending',
    status      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (transfer_id, sop_uid)
);
CREATE TABLE IF NOT EXISTS transfer_seq (
    day TEXT PRIMARY KEY,
    n   INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS transfer_requests (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT NOT NULL,
    node       TEXT NOT NULL,
    params     TEXT NOT NULL DEFAULT '{}',
    state      TEXT NOT NULL DEFAULT 'queued',
    result     TEXT NOT NULL DEFAULT '',
    error      TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS forward_items (
    rule        TEXT NOT NULL,
    sop_uid     TEXT NOT NULL,
    study_uid   TEXT NOT NULL,
    received_at REAL NOT NULL,
    transfer_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rule, sop_uid)
);
CREATE INDEX IF NOT EXISTS forward_items_waiting ON forward_items(rule, transfer_id, study_uid);
CREATE TABLE IF NOT EXISTS forward_cursor (
    rule    TEXT PRIMARY KEY,
    last_id INTEGER NOT NULL
);
"""
MIGRATIONS: tuple = ()  # (name, function(conn)) for tables an older version made


class TransferError(ValueError):
    """A transfer request was refused (unknown transfer, wrong state); the message says why."""


# --------------------------------------------------------------------------- transfers


def id_sequence(conn: sqlite3.Connection) -> dict[str, int]:
    """Day → the last transfer number handed out (read from a damaged state.db by appliance.dbguard)."""
    return {row[0]: int(row[1]) for row in conn.execute("SELECT day, n FROM transfer_seq")}


def keep_ids_above(conn: sqlite3.Connection, sequence: dict[str, int]) -> None:
    """Never hand out again a transfer id that `sequence` (a damaged copy's `id_sequence`) says was
    used: a transfer lost with the damaged file keeps its id (and its files) to itself."""
    for day, n in sequence.items():
        conn.execute("INSERT INTO transfer_seq (day, n) VALUES (?, ?) ON CONFLICT(day) DO UPDATE SET n=max(n, excluded.n)",
                     (day, int(n)))


def _new_id(conn: sqlite3.Connection, now: float) -> str:
    day = time.strftime("%Y%m%d", time.gmtime(now))
    conn.execute("INSERT INTO transfer_seq (day, n) VALUES (?, 1) ON CONFLICT(day) DO UPDATE SET n=n+1", (day,))
    n = conn.execute("SELECT n FROM transfer_seq WHERE day=?", (day,)).fetchone()["n"]
    return f"T{day}-{n:04d}"


def _insert(conn: sqlite3.Connection, **fields: Any) -> str:
    now = time.time()
    transfer_id = _new_id(conn, now)
    fields = {"id": transfer_id, "created_at": now, "updated_at": now, **fields}
    conn.execute(f"INSERT INTO transfers ({', '.join(fields)}) VALUES ({', '.join('?' * len(fields))})",
                 tuple(fields.values()))
    return transfer_id


def create_retrieve(conn: sqlite3.Connection, node: str, method: str, study_uid: str, series_uid: str = "",
                    burn: bool = False) -> str:
    """Queue a retrieve of a study (or one of its series) from `node` by C-MOVE or C-GET."""
    if method not in ("move", "get"):
        raise TransferError(f"retrieve method: move or get, not {method!r}")
    if not study_uid.strip():
        raise TransferError("retrieve: give the Study Instance UID")
    with db.transaction(conn):
        transfer_id = _insert(conn, kind=RETRIEVE, node=node, method=method,
                              level="SERIES" if series_uid else "STUDY", study_uid=study_uid.strip(),
                              series_uid=series_uid.strip(), burn=int(bool(burn)), message="waiting for a connection")
    _wake(conn)
    return transfer_id


def _wake(conn: sqlite3.Connection) -> None:
    """New work for the transfer process: wake it (committed first; else it finds it at its next poll)."""
    if not conn.in_transaction:
        wake.notify(getattr(conn, "data_dir", ""))


def select_instances(conn: sqlite3.Connection, study_uid: str = "", series_uid: str = "",
                     instance_uid: str = "") -> list[str]:
    """SOP Instance UIDs in the index for a study, series or instance (the narrowest given)."""
    return index.sop_uids_of(conn, study_uid, series_uid, instance_uid)


def create_send(conn: sqlite3.Connection, node: str, sop_uids: Iterable[str], *, study_uid: str = "",
                series_uid: str = "", instance_uid: str = "", rule: str = "") -> str:
    """Queue a C-STORE of indexed instances to `node` (inside its own transaction)."""
    with db.transaction(conn):
        transfer_id = create_send_in(conn, node, sop_uids, study_uid=study_uid, series_uid=series_uid,
                                     instance_uid=instance_uid, rule=rule)
    _wake(conn)
    return transfer_id


def create_send_in(conn: sqlite3.Connection, node: str, sop_uids: Iterable[str], *, study_uid: str = "",
                   series_uid: str = "", instance_uid: str = "", rule: str = "") -> str:
    uids = list(dict.fromkeys(sop_uids))
    if not uids:
        raise TransferError("send: no instances of that study/series/instance in the index")
    level = "IMAGE" if instance_uid else "SERIES" if series_uid else "STUDY"
    transfer_id = _insert(conn, kind=SEND, node=node, level=level, study_uid=study_uid, series_uid=series_uid,
                          instance_uid=instance_uid, rule=rule, remaining=len(uids),
                          message="waiting for a connection")
    conn.executemany("INSERT INTO transfer_items (transfer_id, sop_uid) VALUES (?, ?)",
                     [(transfer_id, u) for u in uids])
    return transfer_id


def get(conn: sqlite3.Connection, transfer_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM transfers WHERE id=?", (transfer_id,)).fetchone()
    return dict(row) if row else None


def list_transfers(conn: sqlite3.Connection, states: Sequence[str] | None = None, limit: int = 200,
                   rule: str | None = None) -> list[dict[str, Any]]:
    where, args = [], []
    if states:
        where.append(f"state IN ({','.join('?' * len(states))})")
        args += list(states)
    if rule is not None:
        where.append("rule=?")
        args.append(rule)
    sql = "SELECT * FROM transfers" + (" WHERE " + " AND ".join(where) if where else "")
    return [dict(r) for r in conn.execute(sql + " ORDER BY created_at DESC, id DESC LIMIT ?", (*args, limit))]


def next_queued(conn: sqlite3.Connection, skip: Iterable[str] = ()) -> dict[str, Any] | None:
    """The oldest queued transfer that may start now (its backoff over), not in `skip`."""
    skip = list(skip)
    extra = f" AND id NOT IN ({','.join('?' * len(skip))})" if skip else ""
    row = conn.execute(f"SELECT * FROM transfers WHERE state='queued' AND not_before<=?{extra} "
                       "ORDER BY created_at, id LIMIT 1", (time.time(), *skip)).fetchone()
    return dict(row) if row else None


def claim(conn: sqlite3.Connection, transfer_id: str) -> bool:
    """queued → running; False when another worker (or a cancel) got there first."""
    now = time.time()
    return conn.execute("UPDATE transfers SET state='running', started_at=?, updated_at=?, message='connecting' "
                        "WHERE id=? AND state='queued'", (now, now, transfer_id)).rowcount == 1


def update(conn: sqlite3.Connection, transfer_id: str, **fields: Any) -> bool:
    """Change fields of a running transfer (counts, status, message)."""
    fields = {"updated_at": time.time(), **fields}
    sets = ", ".join(f"{k}=?" for k in fields)
    return conn.execute(f"UPDATE transfers SET {sets} WHERE id=? AND state='running'",
                        (*fields.values(), transfer_id)).rowcount == 1


def finish(conn: sqlite3.Connection, transfer_id: str, state: str, **fields: Any) -> bool:
    """running → done / failed / cancelled."""
    if state not in FINAL:
        raise TransferError(f"finish: {state!r} is not a final state")
    now = time.time()
    fields = {"state": state, "updated_at": now, "finished_at": now, **fields}
    sets = ", ".join(f"{k}=?" for k in fields)
    return conn.execute(f"UPDATE transfers SET {sets} WHERE id=? AND state='running'",
                        (*fields.values(), transfer_id)).rowcount == 1


def set_burn_job(conn: sqlite3.Connection, transfer_id: str, job_id: str, message: str) -> None:
    """Retrieve and burn: the disc job queued once the retrieve was done."""
    conn.execute("UPDATE transfers SET burn_job=?, message=?, updated_at=? WHERE id=?",
                 (job_id, message, time.time(), transfer_id))


def requeue(conn: sqlite3.Connection, transfer_id: str, delay: float, message: str, error: str = "") -> bool:
    """running → queued again, not before `delay` seconds (a forward whose node is down)."""
    now = time.time()
    return conn.execute("UPDATE transfers SET state='queued', not_before=?, updated_at=?, message=?, error=?, "
                        "attempts=attempts+1 WHERE id=? AND state='running'",
                        (now + delay, now, message, error, transfer_id)).rowcount == 1


def cancel_requested(conn: sqlite3.Connection, transfer_id: str) -> bool:
    row = conn.execute("SELECT cancel_requested FROM transfers WHERE id=?", (transfer_id,)).fetchone()
    return bool(row and row["cancel_requested"])


def cancel(conn: sqlite3.Connection, transfer_id: str) -> str:
    """Cancel a transfer: at once when queued, at the next instance/response when running."""
    transfer = get(conn, transfer_id)
    if transfer is None:
        raise TransferError(f"no transfer {transfer_id!r}")
    now = time.time()
    if conn.execute("UPDATE transfers SET state='cancelled', cancel_requested=1, message='cancelled by the user', "
                    "updated_at=?, finished_at=? WHERE id=? AND state='queued'", (now, now, transfer_id)).rowcount:
        return f"{transfer_id}: cancelled"
    if conn.execute("UPDATE transfers SET cancel_requested=1, message='cancel requested', updated_at=? "
                    "WHERE id=? AND state='running'", (now, transfer_id)).rowcount:
        return f"{transfer_id}: cancel requested (the transfer stops at its next step)"
    raise TransferError(f"{transfer_id}: cannot cancel a transfer that is {transfer['state']}")


def retry(conn: sqlite3.Connection, transfer_id: str) -> str:
    """Queue a failed or cancelled transfer again; a send only sends what the peer did not acknowledge."""
    transfer = get(conn, transfer_id)
    if transfer is None:
        raise TransferError(f"no transfer {transfer_id!r}")
    with db.transaction(conn):
        moved = conn.execute(
            "UPDATE transfers SET state='queued', attempts=attempts+1, cancel_requested=0, not_before=0, "
            "error='', peer_status='', message=?, finished_at=NULL, updated_at=? "
            "WHERE id=? AND state IN ('failed', 'cancelled')",
            (f"retry {transfer['attempts']}", time.time(), transfer_id)).rowcount
        if moved:
            conn.execute("UPDATE transfer_items SET state='pending', status='' WHERE transfer_id=? AND state='failed'",
                         (transfer_id,))
    if moved:
        _wake(conn)
        return f"{transfer_id}: queued again (attempt {transfer['attempts'] + 1})"
    raise TransferError(f"{transfer_id}: only a failed or cancelled transfer can be retried; it is {transfer['state']}")


def interrupted_retrievals_since(conn: sqlite3.Connection) -> float | None:
    """When the earliest C-GET retrieval that `recover` will queue again started (None: none was
    running). Its files are written here, each before its index commit (C-MOVE's arrive through
    the dicom workers)."""
    row = conn.execute("SELECT MIN(started_at) FROM transfers WHERE state='running' AND kind=? AND method='get'",
                       (RETRIEVE,)).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def recover(conn: sqlite3.Connection) -> int:
    """At start: transfers left running by a stop or a crash go back to the queue, in their place."""
    return conn.execute("UPDATE transfers SET state='queued', message='resumed after a restart', updated_at=? "
                        "WHERE state='running'", (time.time(),)).rowcount


def count_active(conn: sqlite3.Connection) -> dict[str, int]:
    return {r["state"]: r["n"] for r in conn.execute(
        "SELECT state, COUNT(*) AS n FROM transfers WHERE state IN ('queued', 'running') GROUP BY state")}


# --------------------------------------------------------------------------- items of a send


def pending_rows(conn: sqlite3.Connection, transfer_id: str) -> list[dict[str, Any]]:
    """Index rows of the instances a send still has to deliver (pending, still in the index)."""
    pending = [r["sop_uid"] for r in conn.execute(
        "SELECT sop_uid FROM transfer_items WHERE transfer_id=? AND state='pending'", (transfer_id,))]
    return index.instances_by_uid(conn, pending)


def mark_missing(conn: sqlite3.Connection, transfer_id: str) -> int:
    """Pending items no longer in the index: failed (there is nothing left to send)."""
    pending = [r["sop_uid"] for r in conn.execute(
        "SELECT sop_uid FROM transfer_items WHERE transfer_id=? AND state='pending'", (transfer_id,))]
    gone = set(pending) - index.indexed_sop_uids(conn, pending)
    return conn.executemany(
        "UPDATE transfer_items SET state='failed', status='not in the index any more' "
        "WHERE transfer_id=? AND state='pending' AND sop_uid=?", [(transfer_id, uid) for uid in gone]).rowcount


def record_item(conn: sqlite3.Connection, transfer_id: str, sop_uid: str, state: str, status: str) -> None:
    """What the peer said about one instance (written at once: an acknowledged one is never sent again)."""
    conn.execute("UPDATE transfer_items SET state=?, status=? WHERE transfer_id=? AND sop_uid=?",
                 (state, status, transfer_id, sop_uid))


def journal_dir(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "run" / "transfer-acks"


class AckJournal:
    """What the peer said about each instance of a running send, kept at once and cheaply.

    Why: a state.db commit per acknowledged instance cost more than sending it. Each answer is
    appended to `<data>/run/transfer-acks/<id>` with one write() before the next instance goes
    out (a killed process loses nothing the kernel has), and reaches `transfer_items` in one
    transaction per `flush`; `apply_journals` at the next start puts what a crash left there into
    state.db. So an acknowledged instance is still never sent again.
    """

    def __init__(self, data_dir: str | os.PathLike[str], transfer_id: str) -> None:
        folder = journal_dir(data_dir)
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / transfer_id
        self.transfer_id = transfer_id
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.batch: list[tuple[str, str, str, str]] = []

    def record(self, sop_uid: str, state: str, status: str) -> None:
        status = " ".join(status.split())
        os.write(self.fd, f"{state}\t{status}\t{sop_uid}\n".encode())
        self.batch.append((state, status, self.transfer_id, sop_uid))

    def flush(self, conn: sqlite3.Connection) -> None:
        """The recorded answers into transfer_items (one transaction), then an empty journal."""
        if not self.batch:
            return
        with db.transaction(conn):
            conn.executemany("UPDATE transfer_items SET state=?, status=? WHERE transfer_id=? AND sop_uid=?",
                             self.batch)
        self.batch = []
        os.ftruncate(self.fd, 0)

    def close(self, conn: sqlite3.Connection) -> None:
        try:
            self.flush(conn)
        finally:
            os.close(self.fd)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def apply_journals(conn: sqlite3.Connection, data_dir: str | os.PathLike[str]) -> int:
    """At start: the answers a stopped or killed send journaled but had not written yet; their count."""
    folder = journal_dir(data_dir)
    applied = 0
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        rows = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
            fields = line.rstrip("\n").split("\t")
            if line.endswith("\n") and len(fields) == 3 and fields[0] in ("done", "warning", "failed"):
                rows.append((fields[0], fields[1], path.name, fields[2]))
        with db.transaction(conn):
            conn.executemany("UPDATE transfer_items SET state=?, status=? WHERE transfer_id=? AND sop_uid=?", rows)
        path.unlink()
        applied += len(rows)
    return applied


def item_counts(conn: sqlite3.Connection, transfer_id: str) -> dict[str, int]:
    counts = {"pending": 0, "done": 0, "warning": 0, "failed": 0}
    for r in conn.execute("SELECT state, COUNT(*) AS n FROM transfer_items WHERE transfer_id=? GROUP BY state",
                          (transfer_id,)):
        counts[r["state"]] = r["n"]
    return counts


def items(conn: sqlite3.Connection, transfer_id: str) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT sop_uid, state, status FROM transfer_items WHERE transfer_id=? "
                                          "ORDER BY sop_uid", (transfer_id,))]


def acked_sop_uids(conn: sqlite3.Connection, node: str) -> set[str]:
    """Every instance `node` acknowledged in any transfer (tests and the status page)."""
    return {r["sop_uid"] for r in conn.execute(
        "SELECT t.sop_uid FROM transfer_items t JOIN transfers x ON x.id=t.transfer_id "
        "WHERE x.node=? AND t.state IN ('done', 'warning')", (node,))}


# --------------------------------------------------------------------------- short requests (query)


def submit_request(conn: sqlite3.Connection, kind: str, node: str, params: dict[str, Any]) -> int:
    now = time.time()
    request_id = int(conn.execute("INSERT INTO transfer_requests (kind, node, params, created_at, updated_at) "
                                  "VALUES (?, ?, ?, ?, ?)", (kind, node, json.dumps(params), now, now)).lastrowid)
    _wake(conn)
    return request_id


def get_request(conn: sqlite3.Connection, request_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT * FROM transfer_requests WHERE id=?", (request_id,)).fetchone()
    if row is None:
        return None
    out = dict(row)
    out["params"] = json.loads(out["params"] or "{}")
    out["result"] = json.loads(out["result"]) if out["result"] else None
    return out


def claim_request(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The oldest queued request, moved to running (None when there is none)."""
    row = conn.execute("SELECT id FROM transfer_requests WHERE state='queued' ORDER BY id LIMIT 1").fetchone()
    if row is None:
        return None
    if not conn.execute("UPDATE transfer_requests SET state='running', updated_at=? WHERE id=? AND state='queued'",
                        (time.time(), row["id"])).rowcount:
        return None
    return get_request(conn, row["id"])


def answer_request(conn: sqlite3.Connection, request_id: int, result: Any = None, error: str = "") -> None:
    conn.execute("UPDATE transfer_requests SET state=?, result=?, error=?, updated_at=? WHERE id=?",
                 ("failed" if error else "done", json.dumps(result) if result is not None else "", error,
                  time.time(), request_id))


def drop_request(conn: sqlite3.Connection, request_id: int) -> None:
    conn.execute("DELETE FROM transfer_requests WHERE id=?", (request_id,))


def drop_stale_requests(conn: sqlite3.Connection, older_than: float) -> int:
    """Requests nobody came back for (the asker gave up or died)."""
    return conn.execute("DELETE FROM transfer_requests WHERE updated_at<?", (time.time() - older_than,)).rowcount


def fail_interrupted_requests(conn: sqlite3.Connection) -> int:
    return conn.execute("UPDATE transfer_requests SET state='failed', error='the transfer process restarted', "
                        "updated_at=? WHERE state='running'", (time.time(),)).rowcount


# --------------------------------------------------------------------------- forwarding rules


def start_cursor(conn: sqlite3.Connection, rule: str) -> None:
    """A new rule forwards what arrives from now on."""
    last = index.last_instance_rowid(conn)
    conn.execute("INSERT OR IGNORE INTO forward_cursor (rule, last_id) VALUES (?, ?)", (rule, last))


def forget_rule(conn: sqlite3.Connection, rule: str) -> None:
    """A deleted rule: its cursor and the instances it had not queued yet (queued sends stay)."""
    with db.transaction(conn):
        conn.execute("DELETE FROM forward_cursor WHERE rule=?", (rule,))
        conn.execute("DELETE FROM forward_items WHERE rule=? AND transfer_id=''", (rule,))


def collect_new(conn: sqlite3.Connection, rule: str, called: str, calling: str, modalities: Sequence[str]) -> int:
    """Pick up instances indexed since the rule's cursor that match its filter; returns how many."""
    with db.transaction(conn):
        row = conn.execute("SELECT last_id FROM forward_cursor WHERE rule=?", (rule,)).fetchone()
        if row is None:
            start_cursor(conn, rule)
            return 0
        last = row["last_id"]
        top = index.last_instance_rowid(conn)
        if top <= last:
            return 0
        rows = index.instances_between_rowids(conn, last, top, called=called, calling=calling,
                                              modalities=modalities)
        n = 0
        for row in rows:
            n += conn.execute("INSERT OR IGNORE INTO forward_items (rule, sop_uid, study_uid, received_at) "
                              "VALUES (?, ?, ?, ?)",
                              (rule, row["sop_uid"], row["study_uid"], row["received_at"])).rowcount
        conn.execute("UPDATE forward_cursor SET last_id=? WHERE rule=?", (top, rule))
    return n


def queue_stable(conn: sqlite3.Connection, rule: str, node: str, delay: float) -> list[str]:
    """One send per study whose newest waiting instance is older than `delay`; returns the new transfer ids."""
    created = []
    cutoff = time.time() - delay
    studies = [r["study_uid"] for r in conn.execute(
        "SELECT study_uid FROM forward_items WHERE rule=? AND transfer_id='' GROUP BY study_uid "
        "HAVING MAX(received_at) <= ?", (rule, cutoff))]
    for study_uid in studies:
        with db.transaction(conn):
            waiting = [r["sop_uid"] for r in conn.execute(
                "SELECT sop_uid FROM forward_items WHERE rule=? AND transfer_id='' AND study_uid=?",
                (rule, study_uid))]
            present = index.indexed_sop_uids(conn, waiting)
            uids = [uid for uid in waiting if uid in present]
            if not uids:
                conn.execute("DELETE FROM forward_items WHERE rule=? AND transfer_id='' AND study_uid=?",
                             (rule, study_uid))
                continue
            transfer_id = create_send_in(conn, node, uids, study_uid=study_uid, rule=rule)
            conn.executemany("UPDATE forward_items SET transfer_id=? WHERE rule=? AND sop_uid=?",
                             [(transfer_id, rule, u) for u in uids])
        created.append(transfer_id)
    return created


def rule_backlog(conn: sqlite3.Connection, rule: str) -> dict[str, Any]:
    """What a rule still has to deliver: instances waiting for the delay, and those queued in sends."""
    waiting = conn.execute("SELECT COUNT(*) AS n FROM forward_items WHERE rule=? AND transfer_id=''",
                           (rule,)).fetchone()["n"]
    unsent = conn.execute(
        "SELECT COUNT(*) AS n FROM forward_items f JOIN transfer_items t ON t.transfer_id=f.transfer_id "
        "AND t.sop_uid=f.sop_uid WHERE f.rule=? AND f.transfer_id<>'' AND t.state NOT IN ('done', 'warning')",
        (rule,)).fetchone()["n"]
    sent = conn.execute(
        "SELECT COUNT(*) AS n FROM forward_items f JOIN transfer_items t ON t.transfer_id=f.transfer_id "
        "AND t.sop_uid=f.sop_uid WHERE f.rule=? AND t.state IN ('done', 'warning')", (rule,)).fetchone()["n"]
    last = conn.execute("SELECT state, message, error, updated_at FROM transfers WHERE rule=? "
                        "ORDER BY updated_at DESC LIMIT 1", (rule,)).fetchone()
    return {"waiting": waiting, "unsent": unsent, "backlog": waiting + unsent, "sent": sent,
            "last": dict(last) if last else None}
