"""Study tokens: validity window (injected clock), revocation, only the hash stored, the CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re

import pytest
from portal_support import stored_study
from support import burnstation

from appliance import db
from appliance.portal import tokens


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def ts(day: str) -> float:
    return dt.datetime.strptime(day, "%Y-%m-%d").timestamp()


def test_window_from_study_date_or_creation(tmp_path):
    old = stored_study(tmp_path, "old", study_date="20240115")
    undated = stored_study(tmp_path, "undated", study_date="")
    conn = db.connect(tmp_path)
    clock = Clock(ts("2024-01-20") + 3600)
    token, row = tokens.create(conn, old, 30, clock=clock)
    assert re.fullmatch(r"[A-Za-z0-9]{64}", token)
    # 30 days after the study date (2024-02-14) is later than 30 days after creation? no: creation wins
    assert row.expires_at == clock.t + 30 * 86400
    clock.t = row.expires_at - 1
    assert tokens.check(conn, token, clock=clock).state == "valid"
    clock.t = row.expires_at
    expired = tokens.check(conn, token, clock=clock)
    assert expired.state == "expired" and expired.expired_on == "2024-02-19"
    # created before the study date: the study date + days wins
    clock.t = ts("2023-12-01")
    _, early = tokens.create(conn, old, 60, clock=clock)
    assert early.expires_at == ts("2024-03-15")
    # a study without a date: from creation
    clock.t = ts("2030-05-01")
    tok2, row2 = tokens.create(conn, undated, 10, clock=clock)
    assert row2.expires_at == clock.t + 10 * 86400
    assert tokens.check(conn, tok2, clock=clock).state == "valid"


def test_only_the_hash_is_stored_and_bad_tokens_are_one_answer(tmp_path):
    study = stored_study(tmp_path, "a")
    conn = db.connect(tmp_path)
    token, row = tokens.create(conn, study, 60)
    raw = (tmp_path / "state.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("state.db-*"))
    assert token.encode() not in raw
    stored = conn.execute("SELECT token_hash FROM tokens WHERE id=?", (row.id,)).fetchone()[0]
    assert stored == hashlib.sha256(token.encode()).hexdigest()
    for bad in ("", "x" * 64, token[:-1], token + "A", token[:-1] + "!", stored, token.lower() if
                token != token.lower() else token.upper()):
        assert tokens.check(conn, bad) == tokens.Check("invalid")
    assert tokens.check(conn, token).state == "valid"
    tokens.revoke(conn, row.id)
    assert tokens.check(conn, token) == tokens.Check("invalid")
    with pytest.raises(tokens.TokenError, match="no token"):
        tokens.revoke(conn, 999)
    with pytest.raises(tokens.TokenError, match="no stored study"):
        tokens.create(conn, "1.2.3.4", 10)
    with pytest.raises(tokens.TokenError, match="days"):
        tokens.create(conn, study, 0)


def test_uses_are_recorded(tmp_path):
    study = stored_study(tmp_path, "a")
    conn = db.connect(tmp_path)
    _, row = tokens.create(conn, study, 5)
    tokens.record_use(conn, row.id, "192.0.2.7", "zip dicom", clock=Clock(1000.0))
    assert tokens.uses(conn, row.id) == [{"used_at": 1000.0, "address": "192.0.2.7", "what": "zip dicom"}]
    assert tokens.list_tokens(conn)[0]["uses"] == 1


def test_link_uses_server_name_or_an_address():
    assert tokens.link({"http.server_name": "pacs.example.org", "http.port": 8443, "http.ssl": True}, "T" * 64) \
        == "https://pacs.example.org:8443/token?" + "T" * 64
    link = tokens.link({"http.server_name": "", "http.port": 8080, "http.ssl": False}, "a" * 64)
    host = re.fullmatch(r"http://([0-9.]+):8080/token\?a{64}", link)
    assert host and not host.group(1).startswith("127.") or tokens.first_ipv4() == "127.0.0.1"


def test_cli_create_list_revoke(tmp_path):
    data = tmp_path / "data"
    burnstation(data, "init")
    burnstation(data, "config", "set", "http.server_name=burn.example", "http.port=8081")
    study = stored_study(data, "s", study_date="20240115")
    out = burnstation(data, "tokens", "create", "--study", study, "--days", "7").stdout.strip()
    m = re.fullmatch(r"http://burn\.example:8081/token\?([A-Za-z0-9]{64})", out)
    assert m, out
    listed = json.loads(burnstation(data, "tokens", "list", "--json").stdout)
    assert [(t["study_uid"], t["state"], t["patient_name"]) for t in listed] == [(study, "valid", "DOE^JOHN")]
    assert m.group(1) not in burnstation(data, "tokens", "list").stdout
    burnstation(data, "tokens", "revoke", str(listed[0]["id"]))
    assert json.loads(burnstation(data, "tokens", "list", "--json").stdout)[0]["state"] == "revoked"
    bad = burnstation(data, "tokens", "create", "--study", "9.9.9", check=False)
    assert bad.returncode == 2 and "no stored study" in bad.stderr
    bad = burnstation(data, "tokens", "revoke", "77", check=False)
    assert bad.returncode == 2 and "no token with id 77" in bad.stderr

