"""C-FIND matching over the study index (PS3.4 C.2.2.2): single value, wildcard, range, UID list.

A query identifier becomes conditions on the index columns, which `appliance.index` (the owner of
patients/studies/series/instances) runs as one statement. Matching happens in SQL (wildcards through
a registered function); return keys come from the index columns or, for anything the index does not
keep, from the first file of the matched entity. The matching
rules (wildcards, ranges, lists, time normalisation, `QueryError`) are the worklist's too:
`appliance/dicom/matching.py`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from appliance import index
from appliance.dicom.matching import (
    QueryError,
    has_wildcard,
    norm_time,
    split_range,
    split_values,
    uid_list,
    wildcard,
)

LEVELS = index.QUERY_LEVELS
COLUMNS = index.QUERY_COLUMNS  # keyword → (level, index column)
COMPUTED = index.QUERY_COMPUTED  # keyword → (minimum level, computed by the index)

# return keys that never come from the file
_SKIP = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability"}


def _sql_wild(value: str | None, pattern: str, fold: int) -> int:
    if value is None:
        return 0
    return 1 if wildcard(pattern, bool(fold)).fullmatch(value) else 0


def _sql_multi_wild(value: str | None, pattern: str, fold: int) -> int:
    """Wildcard match against any value of a backslash-separated multi-value."""
    if value is None:
        return 0
    rx = wildcard(pattern, bool(fold))
    return 1 if any(rx.fullmatch(v) for v in value.split("\\")) else 0


def _sql_time(value: str | None) -> str | None:
    if not value:
        return None
    return norm_time(value, strict=False)  # never raises inside SQLite


def install_functions(conn: sqlite3.Connection) -> None:
    """Register the matching helpers on a connection (once per connection)."""
    conn.create_function("dwild", 3, _sql_wild, deterministic=True)
    conn.create_function("dmwild", 3, _sql_multi_wild, deterministic=True)
    conn.create_function("dtime", 1, _sql_time, deterministic=True)


@dataclass
class Match:
    """One C-FIND/C-MOVE match: its SQL row (columns named by keyword) and the level."""

    level: str
    row: sqlite3.Row


def _value_text(elem: Any) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _condition(keyword: str, column: str, vr: str, text: str, args: list[Any]) -> str | None:
    """SQL for one matching key; None for universal matching."""
    text = text.strip()
    if text == "" or text == "*":
        return None
    fold = 1 if vr == "PN" else 0
    if vr == "UI" and "\\" in text:
        uids = uid_list(text)
        args.extend(uids)
        return f"{column} IN ({', '.join('?' * len(uids))})"
    if vr in ("DA", "DT") and "-" in text:
        lo, hi = split_range(text)
        clauses = [f"{column}<>''"]
        if lo:
            clauses.append(f"{column}>=?")
            args.append(lo)
        if hi:
            clauses.append(f"{column}<=?")
            args.append(hi + ("\uffff" if vr == "DT" else ""))
        return " AND ".join(clauses)
    if vr == "TM" and "-" in text:
        lo, hi = split_range(text)
        clauses = [f"{column}<>''"]
        if lo:
            clauses.append(f"dtime({column})>=?")
            args.append(norm_time(lo, strict=False))
        if hi:
            clauses.append(f"dtime({column})<=?")
            args.append(norm_time(hi, upper=True, strict=False))
        return " AND ".join(clauses)
    if "\\" in text and vr not in ("PN",) and keyword != "ModalitiesInStudy":
        values = [v for v in split_values(text, vr) if v]
        ors = []
        for v in values:
            if has_wildcard(v):
                ors.append(f"dwild({column}, ?, {fold})")
            else:
                ors.append(f"{column}=?")
            args.append(v)
        return "(" + " OR ".join(ors) + ")"
    if has_wildcard(text):
        args.append(text)
        return f"dwild({column}, ?, {fold})"
    if vr == "PN":  # case-insensitive like the wildcard path (Unicode-aware: "müller" finds "MÜLLER")
        args.append(text)
        return f"dwild({column}, ?, 1)"
    if vr == "TM":
        args.append(norm_time(text, strict=False))
        return f"dtime({column})=?"
    args.append(text)
    return f"{column}=?"


def build_query(identifier: Dataset, model: str = "STUDY") -> tuple[str, list[str], list[Any], list[str]]:
    """Turn an identifier into (level, conditions on the index columns with their `?` args, args,
    requested keywords): `index.query_matches` runs them."""
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in LEVELS:
        raise QueryError(f"Query/Retrieve Level {level!r} is not one of {', '.join(LEVELS)}")
    if model == "PATIENT" and level != "PATIENT" and not str(identifier.get("PatientID", "")).strip():
        # Patient Root: a lower level needs the unique key of the patient (PS3.4 C.4.1.2.1); be lenient
        # and allow universal matching, as most archives do.
        pass
    depth = LEVELS.index(level)
    where: list[str] = []
    args: list[Any] = []
    requested: list[str] = []
    for elem in identifier:
        keyword = elem.keyword or keyword_for_tag(elem.tag)
        if not keyword or elem.tag.group in (0x0000, 0x0002) or keyword in _SKIP:
            continue
        requested.append(keyword)
        if elem.VR == "SQ":
            continue
        text = _value_text(elem)
        if keyword in COLUMNS:
            lvl, column = COLUMNS[keyword]
            if LEVELS.index(lvl) > depth:
                continue  # keys below the query level are not matched (PS3.4 C.2.2.1.3)
            cond = _condition(keyword, column, elem.VR, text, args)
            if cond:
                where.append(cond)
        elif keyword == "ModalitiesInStudy" and depth >= 1 and text.strip():
            mods = [m for m in split_values(text, "CS") if m]
            ors = []
            for m in mods:
                if has_wildcard(m):
                    ors.append("dwild(x.modality, ?, 0)")
                else:
                    ors.append("x.modality=?")
                args.append(m.strip())
            where.append(index.query_series_condition(" OR ".join(ors)))
    return level, where, args, requested


def find(conn: sqlite3.Connection, identifier: Dataset, model: str = "STUDY") -> Iterator[Match]:
    level, where, args, requested = build_query(identifier, model)
    for row in index.query_matches(conn, level, where, args, requested):
        yield Match(level, row)


def _set_value(ds: Dataset, keyword: str, text: str) -> None:
    vr = dictionary_VR(keyword)
    if text == "":
        setattr(ds, keyword, None if vr not in ("SQ",) else [])
        return
    if vr in ("IS", "US", "UL", "SS", "SL") or vr in ("DS", "FL", "FD"):
        values = [v for v in text.split("\\") if v.strip()]
        setattr(ds, keyword, values if len(values) > 1 else values[0])
        return
    setattr(ds, keyword, text.split("\\") if "\\" in text and vr not in ("PN", "LT", "ST", "UT") else text)


def response(identifier: Dataset, match: Match, retrieve_aet: str = "") -> Dataset:
    """The C-FIND response identifier for one match: exactly the requested keys."""
    row = match.row
    keys = row.keys()
    ds = Dataset()
    charset = row["_charset"] or ""
    if charset:
        ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    ds.QueryRetrieveLevel = match.level
    file_ds: Dataset | None = None
    for elem in identifier:
        keyword = elem.keyword
        if not keyword or elem.tag.group in (0x0000, 0x0002) or keyword in ("QueryRetrieveLevel",
                                                                          "SpecificCharacterSet"):
            continue
        if keyword == "RetrieveAETitle":
            ds.RetrieveAETitle = retrieve_aet
            continue
        if keyword == "InstanceAvailability":
            ds.InstanceAvailability = "ONLINE"
            continue
        if keyword in keys:
            value = row[keyword]
            text = "" if value is None else str(value)
            if keyword == "ModalitiesInStudy":
                text = text.replace(",", "\\")
            if keyword == "SOPClassesInStudy":
                text = text.replace(",", "\\")
            _set_value(ds, keyword, text)
            continue
        known = COLUMNS.get(keyword) or COMPUTED.get(keyword)
        if known is not None and LEVELS.index(known[0]) > LEVELS.index(match.level):
            # a key of a lower level (Modality in a STUDY query): no one value stands for the
            # entity, so it comes back empty rather than copied from some instance
            ds.add_new(elem.tag, elem.VR, None if elem.VR != "SQ" else [])
            continue
        if file_ds is None:
            file_ds = _read_header(row["_path"])
        if file_ds is not None and elem.tag in file_ds:
            ds[elem.tag] = file_ds[elem.tag]
        else:
            ds.add_new(elem.tag, elem.VR, None if elem.VR != "SQ" else [])
    return ds


def _read_header(path: str | None) -> Dataset | None:
    if not path:
        return None
    try:
        return dcmread(path, stop_before_pixels=True)
    except Exception:
        return None


def instance_rows(conn: sqlite3.Connection, identifier: Dataset, model: str = "STUDY") -> list[sqlite3.Row]:
    """All instances under the matches of a retrieve identifier (C-MOVE / C-GET)."""
    level, where, args, requested = build_query(identifier, model)
    key_kw = {"PATIENT": "_pkey", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
              "IMAGE": "SOPInstanceUID"}[level]
    keys = [row[key_kw] for row in index.query_matches(conn, level, where, args, requested)]
    return index.query_instances(conn, level, keys)
