"""Web accounts: users, server-side sessions and the one-time setup code (owner of `users`, `sessions`).

There is no default password. `burnstation init` writes a one-time setup code to
`<data>/setup-code` (0600); while no user exists the web UI asks for it to create the first admin,
and the code is void once used. Passwords are hashed with scrypt (n=2^17, r=8, p=1); only tests may
lower the cost, through BURNSTATION_TEST_SCRYPT_N. Session ids are random and stored only as
SHA-256 hashes, so a copy of state.db does not hand out live sessions.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appliance import db

ROLES = ("admin", "technician", "viewer")
RANK = {"viewer": 0, "technician": 1, "admin": 2}
NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,32}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
SCRYPT_N = 2**17
SCRYPT_R, SCRYPT_P = 8, 1
SCRYPT_MAXMEM = 2**28  # n=2^17, r=8 needs 128 MiB: above OpenSSL's default cap
TEST_COST_ENV = "BURNSTATION_TEST_SCRYPT_N"
SETUP_FILE = "setup-code"
_SETUP_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: read off an LCD
# at most two hashes at once: each takes ~128 MiB and most of a second
_HASHING = threading.BoundedSemaphore(2)

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name       TEXT PRIMARY KEY,
    role       TEXT NOT NULL,
    password   TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    id_hash    TEXT PRIMARY KEY,
    username   TEXT NOT NULL DEFAULT '',  -- '' for a visitor not logged in yet (holds the login form's CSRF token)
    csrf       TEXT NOT NULL,
    address    TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    last_seen  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_seen ON sessions(last_seen);
"""
MIGRATIONS: tuple = ()  # (name, function(conn)) for tables an older version made


class AccountError(ValueError):
    """A user request was refused; the message says why."""


# --------------------------------------------------------------------------- passwords


def _cost() -> int:
    text = os.environ.get(TEST_COST_ENV, "")
    if text.isdigit() and int(text) >= 2 and int(text) & (int(text) - 1) == 0:
        return int(text)
    return SCRYPT_N


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    n = _cost()
    with _HASHING:
        digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=SCRYPT_R, p=SCRYPT_P,
                                maxmem=SCRYPT_MAXMEM, dklen=32)
    return f"scrypt${n}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def check_password(stored: str, password: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        with _HASHING:
            got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                                 maxmem=SCRYPT_MAXMEM, dklen=len(digest) // 2)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got.hex(), digest)


# a hash to check against when the user does not exist, so both cases take the same time
_DUMMY: dict[int, str] = {}


def _dummy_hash() -> str:
    n = _cost()
    if n not in _DUMMY:
        _DUMMY[n] = hash_password(secrets.token_urlsafe(12))
    return _DUMMY[n]


def validate_name(name: str) -> str:
    name = str(name).strip()
    if not NAME_RE.match(name):
        raise AccountError(f"user name: 1 to 32 characters of A-Z a-z 0-9 . _ -; got {name!r}")
    return name


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"password: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise AccountError(f"password: at most {MAX_PASSWORD} characters")
    if any(ord(c) < 32 for c in password):
        raise AccountError("password: must not contain control characters")
    return password


def validate_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role: one of {', '.join(ROLES)}; got {role!r}")
    return role


# --------------------------------------------------------------------------- users


def user_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COUNT(*) FROM users").fetchone()[0]


def list_users(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute("SELECT name, role, created_at, updated_at FROM users ORDER BY name")]


def get_user(conn: sqlite3.Connection, name: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT name, role, created_at, updated_at FROM users WHERE name=?", (name,)).fetchone()
    return dict(row) if row else None


def add_user(conn: sqlite3.Connection, name: str, role: str, password: str) -> None:
    name, role = validate_name(name), validate_role(role)
    hashed = hash_password(validate_password(password))
    now = time.time()
    try:
        conn.execute("INSERT INTO users (name, role, password, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                     (name, role, hashed, now, now))
    except sqlite3.IntegrityError:
        raise AccountError(f"user {name!r} exists already") from None


def set_password(conn: sqlite3.Connection, name: str, password: str) -> None:
    hashed = hash_password(validate_password(password))
    with db.transaction(conn):
        if not conn.execute("UPDATE users SET password=?, updated_at=? WHERE name=?",
                            (hashed, time.time(), name)).rowcount:
            raise AccountError(f"no user {name!r}")
        conn.execute("DELETE FROM sessions WHERE username=?", (name,))  # log out everywhere


def set_role(conn: sqlite3.Connection, name: str, role: str) -> None:
    role = validate_role(role)
    with db.transaction(conn):
        user = get_user(conn, name)
        if user is None:
            raise AccountError(f"no user {name!r}")
        if user["role"] == "admin" and role != "admin" and _admins(conn) <= 1:
            raise AccountError("the last admin cannot lose the admin role")
        conn.execute("UPDATE users SET role=?, updated_at=? WHERE name=?", (role, time.time(), name))


def _admins(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COUNT(*) FROM users WHERE role='admin'").fetchone()[0]


def delete_user(conn: sqlite3.Connection, name: str) -> None:
    with db.transaction(conn):
        user = get_user(conn, name)
        if user is None:
            raise AccountError(f"no user {name!r}")
        if user["role"] == "admin" and _admins(conn) <= 1:
            raise AccountError("the last admin cannot be deleted")
        conn.execute("DELETE FROM users WHERE name=?", (name,))
        conn.execute("DELETE FROM sessions WHERE username=?", (name,))


def authenticate(conn: sqlite3.Connection, name: str, password: str) -> dict[str, Any] | None:
    """The user when the password is right, else None (same work whether the user exists or not)."""
    row = conn.execute("SELECT * FROM users WHERE name=?", (name,)).fetchone()
    if row is None:
        check_password(_dummy_hash(), password)
        return None
    if not check_password(row["password"], password):
        return None
    return {"name": row["name"], "role": row["role"]}


# --------------------------------------------------------------------------- configuration backup

HASH_RE = re.compile(r"^scrypt\$(\d{1,8})\$(\d{1,3})\$(\d{1,3})\$([0-9a-f]{16,128})\$([0-9a-f]{32,128})$")


def validate_hash(stored: Any) -> str:
    """A password hash as hash_password writes it (scrypt, sane cost, hex salt and digest), else AccountError."""
    match = HASH_RE.match(stored) if isinstance(stored, str) else None
    if match is None:
        raise AccountError("password hash: not a scrypt hash as this station writes them "
                           "(scrypt$N$r$p$salt$digest, in hex)")
    n, r, p = (int(match.group(i)) for i in (1, 2, 3))
    if n < 2 or n & (n - 1) or n > 2**20 or not 1 <= r <= 32 or not 1 <= p <= 16:
        raise AccountError(f"password hash: cost out of range (N={n} must be a power of two up to 2^20, "
                           f"r={r} from 1 to 32, p={p} from 1 to 16)")
    if len(match.group(4)) % 2 or len(match.group(5)) % 2:
        raise AccountError("password hash: salt and digest must be whole bytes of hex")
    return stored


def export_users(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Users with their password hashes (never a password; sessions are not exported)."""
    return [dict(r) for r in conn.execute("SELECT name, role, password AS password_hash FROM users ORDER BY name")]


def check_user_rows(rows: Any) -> list[dict[str, str]]:
    """Validate exported users whole (name, role, hash; no name twice); AccountError names the entry."""
    if not isinstance(rows, list) or not rows:
        raise AccountError("expected a non-empty list of users (leave the section out to keep this station's users)")
    out, seen = [], set()
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise AccountError(f"entry {i} is not a user")
        unknown = sorted(set(row) - {"name", "role", "password_hash"})
        if unknown:
            raise AccountError(f"entry {i}: unknown field(s) {', '.join(unknown)} (plain passwords are never imported)")
        try:
            name = validate_name(row.get("name", ""))
            role = validate_role(row.get("role", ""))
            hashed = validate_hash(row.get("password_hash"))
        except AccountError as exc:
            raise AccountError(f"entry {i} ({row.get('name')!r}): {exc}") from None
        if name in seen:
            raise AccountError(f"{name} appears twice")
        seen.add(name)
        out.append({"name": name, "role": role, "password_hash": hashed})
    return out


def replace_users(conn: sqlite3.Connection, rows: list[dict[str, str]]) -> None:
    """Replace every user with `rows` (checked by check_user_rows) in one transaction; all sessions end."""
    now = time.time()
    with db.transaction(conn):
        conn.execute("DELETE FROM sessions")
        conn.execute("DELETE FROM users")
        conn.executemany("INSERT INTO users (name, role, password, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                         [(r["name"], r["role"], r["password_hash"], now, now) for r in rows])


# --------------------------------------------------------------------------- sessions


def _hash_id(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def new_session(conn: sqlite3.Connection, username: str, address: str, idle_seconds: float,
                now: Callable[[], float] = time.time) -> tuple[str, str]:
    """A fresh session (id, csrf token); expired sessions are dropped on the way. `now`: the clock
    (tests drive one instead of waiting out an idle timeout)."""
    at = now()
    conn.execute("DELETE FROM sessions WHERE last_seen < ?", (at - idle_seconds,))
    session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    conn.execute("INSERT INTO sessions (id_hash, username, csrf, address, created_at, last_seen) "
                 "VALUES (?, ?, ?, ?, ?, ?)", (_hash_id(session_id), username, csrf, address[:64], at, at))
    return session_id, csrf


def get_session(conn: sqlite3.Connection, session_id: str, idle_seconds: float,
                now: Callable[[], float] = time.time) -> dict[str, Any] | None:
    """The live session for a cookie value (touching it), with the user's current role; None if idle
    too long by the clock `now`."""
    if not session_id or len(session_id) > 128:
        return None
    key = _hash_id(session_id)
    row = conn.execute("SELECT s.*, u.role FROM sessions s LEFT JOIN users u ON u.name=s.username "
                       "WHERE s.id_hash=?", (key,)).fetchone()
    at = now()
    if row is None:
        return None
    if row["last_seen"] < at - idle_seconds or (row["username"] and row["role"] is None):
        conn.execute("DELETE FROM sessions WHERE id_hash=?", (key,))
        return None
    if at - row["last_seen"] > 5:
        conn.execute("UPDATE sessions SET last_seen=? WHERE id_hash=?", (at, key))
    return dict(row)


def end_session(conn: sqlite3.Connection, session_id: str) -> None:
    conn.execute("DELETE FROM sessions WHERE id_hash=?", (_hash_id(session_id),))


# --------------------------------------------------------------------------- the setup code


def setup_code_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / SETUP_FILE


def current_setup_code(data_dir: str | os.PathLike[str]) -> str | None:
    """`ensure_setup_code` on its own connection (for `init` and the web service's start)."""
    from appliance import db

    conn = db.connect(data_dir)
    try:
        return ensure_setup_code(data_dir, conn)
    finally:
        conn.close()


def ensure_setup_code(data_dir: str | os.PathLike[str], conn: sqlite3.Connection) -> str | None:
    """The setup code while no user exists (made once, then the same until used); None once a user exists."""
    if user_count(conn):
        return None
    path = setup_code_path(data_dir)
    code = read_setup_code(data_dir)
    if code:
        return code
    raw = "".join(secrets.choice(_SETUP_ALPHABET) for _ in range(12))
    code = "-".join(raw[i:i + 4] for i in range(0, 12, 4))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(code + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return code


def read_setup_code(data_dir: str | os.PathLike[str]) -> str | None:
    try:
        return setup_code_path(data_dir).read_text().strip() or None
    except FileNotFoundError:
        return None


def _norm_code(code: str) -> str:
    return "".join(c for c in str(code).upper() if c.isalnum())


def use_setup_code(data_dir: str | os.PathLike[str], conn: sqlite3.Connection, code: str, name: str,
                   password: str) -> None:
    """Make the first admin with the setup code; the code is void afterwards."""
    expected = read_setup_code(data_dir)
    if user_count(conn) or not expected:
        raise AccountError("setup is done already: log in instead")
    if not hmac.compare_digest(_norm_code(code).encode(), _norm_code(expected).encode()):
        raise AccountError("wrong setup code (see the front panel, `burnstation init`, or <data>/setup-code)")
    add_user(conn, name, "admin", password)
    setup_code_path(data_dir).unlink(missing_ok=True)
