"""Study tokens (the `tokens` and `token_uses` tables of state.db; this module is their only owner).

A token is 64 characters from A-Z a-z 0-9 made with `secrets` (about 381 bits). Only its SHA-256
is stored: a copy of state.db (a backup, a support bundle) opens no study. A token is looked up by
its hash and the hash compared again in constant time. Each token names one study and works from
its creation until `http.token_days` after the study date, or after its creation when that is
later (a re-burn of an old study, or a study without a date, still gets the whole period). Unlike a
signed stateless link, each token can be revoked alone; each use (time, address, what) is recorded.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import re
import secrets
import socket
import sqlite3
import string
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance import index

ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits
LENGTH = 64
TOKEN_RE = re.compile(r"[A-Za-z0-9]{64}")
Clock = Callable[[], float]

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash  TEXT NOT NULL UNIQUE,  -- hex SHA-256 of the token; the token itself is never stored
    study_uid   TEXT NOT NULL,
    created_at  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    revoked_at  REAL,
    origin      TEXT NOT NULL DEFAULT ''  -- 'cli', 'web', 'disc <job>'
);
CREATE INDEX IF NOT EXISTS tokens_study ON tokens(study_uid);
CREATE TABLE IF NOT EXISTS token_uses (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    token_id  INTEGER NOT NULL,
    used_at   REAL NOT NULL,
    address   TEXT NOT NULL DEFAULT '',
    what      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS token_uses_token ON token_uses(token_id);
"""

MIGRATIONS: tuple = ()  # (name, function(conn)) for tables an older version made


class TokenError(Exception):
    """A token cannot be made or changed; the message says why."""


@dataclass(frozen=True)
class Token:
    id: int
    study_uid: str
    created_at: float
    expires_at: float
    revoked_at: float | None
    origin: str

    def state(self, now: float) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "valid" if now < self.expires_at else "expired"


@dataclass(frozen=True)
class Check:
    """What a presented token is worth: `state` is 'valid', 'expired' or 'invalid' (unknown,
    malformed and revoked are one answer: the holder learns nothing about which)."""

    state: str
    token: Token | None = None

    @property
    def expired_on(self) -> str:
        return dt.datetime.fromtimestamp(self.token.expires_at).strftime("%Y-%m-%d") if self.token else ""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


def new_token() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))


def _row(row: sqlite3.Row) -> Token:
    return Token(row["id"], row["study_uid"], row["created_at"], row["expires_at"], row["revoked_at"], row["origin"])


def study_date(conn: sqlite3.Connection, study_uid: str) -> dt.date | None:
    """The study's date from the index (None: not in the index, or no valid date)."""
    row = index.get_study(conn, study_uid)
    if row is None:
        return None
    try:
        return dt.datetime.strptime(str(row["study_date"]).strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def expiry(created_at: float, date: dt.date | None, days: int) -> float:
    """The end of validity: `days` after the study date (local midnight), or after creation when later."""
    after_creation = created_at + days * 86400
    if date is None:
        return after_creation
    after_study = dt.datetime.combine(date + dt.timedelta(days=days), dt.time()).timestamp()
    return max(after_study, after_creation)


def create(conn: sqlite3.Connection, study_uid: str, days: int, *, origin: str = "cli",
           clock: Clock = time.time) -> tuple[str, Token]:
    """A new token for a study that is in the index; returns (the token, its row). The token is
    shown once: only its hash is kept."""
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 3650:
        raise TokenError(f"days: must be a whole number from 1 to 3650, not {days!r}")
    if not index.study_sop_uids(conn, study_uid):
        raise TokenError(f"no stored study with Study Instance UID {study_uid!r}")
    now = clock()
    token = new_token()
    expires = expiry(now, study_date(conn, study_uid), days)
    cur = conn.execute("INSERT INTO tokens (token_hash, study_uid, created_at, expires_at, origin) VALUES (?,?,?,?,?)",
                       (hash_token(token), study_uid, now, expires, origin))
    return token, get(conn, int(cur.lastrowid or 0))  # type: ignore[return-value]


def get(conn: sqlite3.Connection, token_id: int) -> Token | None:
    row = conn.execute("SELECT * FROM tokens WHERE id=?", (token_id,)).fetchone()
    return _row(row) if row else None


_DUMMY = hash_token("\0")


def check(conn: sqlite3.Connection, presented: str, *, clock: Clock = time.time) -> Check:
    """Look a presented token up by its hash (malformed ones too, so every answer costs the same)."""
    wellformed = bool(TOKEN_RE.fullmatch(presented or ""))
    digest = hash_token(presented if wellformed else "\0" + (presented or "")[:200])
    row = conn.execute("SELECT * FROM tokens WHERE token_hash=?", (digest,)).fetchone()
    stored = row["token_hash"] if row else _DUMMY
    if not (hmac.compare_digest(stored, digest) and row is not None and wellformed):
        return Check("invalid")
    token = _row(row)
    state = token.state(clock())
    return Check("invalid") if state == "revoked" else Check(state, token)


def revoke(conn: sqlite3.Connection, token_id: int, *, clock: Clock = time.time) -> Token:
    token = get(conn, token_id)
    if token is None:
        raise TokenError(f"no token with id {token_id}")
    if token.revoked_at is None:
        conn.execute("UPDATE tokens SET revoked_at=? WHERE id=? AND revoked_at IS NULL", (clock(), token_id))
    return get(conn, token_id)  # type: ignore[return-value]


def valid_until_for_study(conn: sqlite3.Connection, study_uid: str, now: float) -> float | None:
    """The latest expiry of the study's valid (unrevoked, unexpired) tokens; None when it has none
    (retention keeps a study while a patient link to it works)."""
    row = conn.execute("SELECT MAX(expires_at) FROM tokens WHERE study_uid=? AND revoked_at IS NULL AND expires_at > ?",
                       (study_uid, now)).fetchone()
    return float(row[0]) if row and row[0] is not None else None


def record_use(conn: sqlite3.Connection, token_id: int, address: str, what: str, *, clock: Clock = time.time) -> None:
    conn.execute("INSERT INTO token_uses (token_id, used_at, address, what) VALUES (?,?,?,?)",
                 (token_id, clock(), address[:64], what[:200]))


def uses(conn: sqlite3.Connection, token_id: int) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(
        "SELECT used_at, address, what FROM token_uses WHERE token_id=? ORDER BY id", (token_id,))]


def list_tokens(conn: sqlite3.Connection, *, clock: Clock = time.time) -> list[dict[str, Any]]:
    """Every token with its state, patient and study (for `tokens list` and the technician page)."""
    now = clock()
    rows = conn.execute(
        "SELECT t.*, (SELECT COUNT(*) FROM token_uses u WHERE u.token_id=t.id) AS use_count, "
        "(SELECT MAX(used_at) FROM token_uses u WHERE u.token_id=t.id) AS last_used "
        "FROM tokens t ORDER BY t.id").fetchall()
    studies: dict[str, dict[str, Any]] = {}
    out = []
    for row in rows:
        token = _row(row)
        if token.study_uid not in studies:
            studies[token.study_uid] = index.get_study(conn, token.study_uid) or {}
        study = studies[token.study_uid]
        r = {"use_count": row["use_count"], "last_used": row["last_used"], "study_date": study.get("study_date"),
             "description": study.get("description"), "patient_name": study.get("patient_name"),
             "patient_id": study.get("id_value")}
        out.append({"id": token.id, "study_uid": token.study_uid, "state": token.state(now),
                    "created_at": token.created_at, "expires_at": token.expires_at, "revoked_at": token.revoked_at,
                    "origin": token.origin, "patient_name": r["patient_name"] or "", "patient_id": r["patient_id"] or "",
                    "study_date": r["study_date"] or "", "study_description": r["description"] or "",
                    "uses": r["use_count"], "last_used": r["last_used"]})
    return out


# --------------------------------------------------------------------------- the link


def first_ipv4() -> str:
    """The box's first non-loopback IPv4 address (`ip`, else the UDP-connect trick, else loopback)."""
    try:
        out = subprocess.run(["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, timeout=5).stdout
        for link in json.loads(out or "[]"):
            for addr in link.get("addr_info", []):
                ip = ipaddress.ip_address(addr.get("local", "127.0.0.1"))
                if not ip.is_loopback and not ip.is_link_local:
                    return str(ip)
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # no packet is sent: only picks the outgoing interface
            ip = s.getsockname()[0]
            if not ipaddress.ip_address(ip).is_loopback:
                return ip
    except OSError:
        pass
    return "127.0.0.1"


def link(values: dict[str, Any], token: str) -> str:
    """`http(s)://<http.server_name or first IPv4>:<http.port>/token?<token>` from the settings."""
    host = str(values.get("http.server_name") or "") or first_ipv4()
    scheme = "https" if values.get("http.ssl") else "http"
    return f"{scheme}://{host}:{int(values.get('http.port') or 80)}/token?{token}"
