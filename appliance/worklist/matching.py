"""Modality Worklist matching (PS3.4 Annex K, with the matching rules of C.2.2.2).

A query identifier is compiled once into a tree of predicates over records (see `record`):
- an empty key matches anything (universal matching) and is only returned;
- single value matching, exact (trailing spaces are not significant);
- wildcard matching with `*` and `?` for the text VRs that allow it;
- range matching `a-b`, `-b`, `a-` for DA, TM and DT; Scheduled Procedure Step Start Date and
  Time given together are matched as one combined date-time range (C.2.2.2.5.1);
- list of UID matching (a backslash-separated list) for UI;
- multiple values: an entity value with several values matches when any of them does, and a
  query key with several values matches when any of them does (C.2.2.2.8);
- sequence matching: a sequence item with keys matches when at least one item of the entity's
  sequence matches all of them; an empty sequence or item is universal.
The response holds exactly the requested keys (with the entity's values, or empty), sequences
restricted to their matching items; an empty requested sequence returns the items whole.
The matching rules themselves (wildcards, ranges, lists, date/time normalisation, `QueryError`)
are C-FIND's too: `appliance/dicom/matching.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from appliance.dicom.matching import (
    HIGHEST_TIME,
    LOWEST_TIME,
    QueryError,
    date_bounds,
    entity_time,
    has_wildcard,
    in_bounds,
    norm_datetime,
    split_range,
    split_values,
    time_bounds,
    uid_list,
    wildcard,
)
from appliance.worklist import record as rec
from appliance.worklist.record import Record

WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
DATE_TIME_PAIRS = {0x00400002: 0x00400003, 0x00400004: 0x00400005}  # SPS start, SPS end

Predicate = Callable[[Record], bool]


@dataclass
class Query:
    """A compiled identifier: predicates and the keys to return (with nested queries for sequences)."""

    predicates: list[Predicate] = field(default_factory=list)
    keys: list[tuple[int, str]] = field(default_factory=list)
    sequences: dict[int, Query | None] = field(default_factory=dict)  # None: universal, return items whole

    def matches(self, record: Record) -> bool:
        for predicate in self.predicates:
            if not predicate(record):
                return False
        return True


# --------------------------------------------------------------------------- values


def _entity_values(record: Record, tag: int, vr: str) -> list[str] | None:
    item = record.get(tag)
    if item is None:
        return None
    value = item[1]
    if isinstance(value, list):
        return [str(v) for v in value]
    return split_values(value, vr)


# --------------------------------------------------------------------------- predicates


def _exact_predicate(tag: int, wanted: str) -> Predicate:
    """Single value matching without wildcards: the hot path of scanner queries (AE title, modality)."""

    def check(record: Record) -> bool:
        item = record.get(tag)
        if item is None:
            return False
        value = item[1]
        if value == wanted:
            return True
        if isinstance(value, str):
            return "\\" in value and any(v.strip() == wanted for v in value.split("\\"))
        return any(str(v) == wanted for v in value)

    return check


def _text_predicate(tag: int, vr: str, query_text: str) -> Predicate:
    matchers: list[Callable[[str], bool]] = []
    values = split_values(query_text, vr)
    if len(values) == 1 and not (vr in WILDCARD_VRS and has_wildcard(values[0])):
        return _exact_predicate(tag, values[0])
    for q in values:
        if vr in WILDCARD_VRS and has_wildcard(q):
            if q.strip("*") == "":
                return lambda record: True  # "*" alone is universal matching
            matchers.append(wildcard(q).fullmatch)  # type: ignore[arg-type]
        else:
            matchers.append(q.__eq__)

    def check(record: Record) -> bool:
        values = _entity_values(record, tag, vr)
        return values is not None and any(m(v) for v in values for m in matchers)

    return check


def _uid_predicate(tag: int, query_text: str) -> Predicate:
    wanted = set(uid_list(query_text))

    def check(record: Record) -> bool:
        values = _entity_values(record, tag, "UI")
        return values is not None and any(v in wanted for v in values)

    return check


def _date_predicate(tag: int, query_text: str) -> Predicate:
    options = [date_bounds(q) for q in split_values(query_text, "DA")]
    if len(options) == 1 and options[0][0] == options[0][1]:
        return _exact_predicate(tag, options[0][0])

    def check(record: Record) -> bool:
        values = _entity_values(record, tag, "DA")
        return values is not None and any(in_bounds(v.replace(".", ""), lo, hi) for v in values for lo, hi in options)

    return check


def _time_predicate(tag: int, query_text: str) -> Predicate:
    options = [time_bounds(q) for q in split_values(query_text, "TM")]

    def check(record: Record) -> bool:
        values = _entity_values(record, tag, "TM")
        return values is not None and any(in_bounds(entity_time(v), lo, hi) for v in values for lo, hi in options)

    return check


def _dt_predicate(tag: int, query_text: str) -> Predicate:
    options = []
    for q in split_values(query_text, "DT"):
        low, high = split_range(q) if "-" in q else (q, q)
        options.append((norm_datetime(low), norm_datetime(high, True)))

    def check(record: Record) -> bool:
        values = _entity_values(record, tag, "DT")
        if values is None:
            return False
        for v in values:
            try:
                norm = norm_datetime(v)
            except QueryError:
                continue
            if any(in_bounds(norm, lo, hi) for lo, hi in options):
                return True
        return False

    return check


def _combined_predicate(date_tag: int, time_tag: int, date_text: str, time_text: str) -> Predicate:
    """Date and time keys matched together: from time1 on date1 to time2 on date2 (C.2.2.2.5.1)."""
    dlo, dhi = date_bounds(date_text)
    tlo, thi = time_bounds(time_text)
    low = (dlo + tlo) if dlo else ""
    high = (dhi + (thi or HIGHEST_TIME)) if dhi else ""
    if dlo and not tlo:
        low = dlo + LOWEST_TIME

    def check(record: Record) -> bool:
        dates = _entity_values(record, date_tag, "DA")
        if not dates:
            return False
        times = _entity_values(record, time_tag, "TM") or [""]
        value = dates[0].replace(".", "") + (entity_time(times[0]) or LOWEST_TIME)
        return in_bounds(value, low, high)

    return check


def _sequence_predicate(tag: int, sub: Query) -> Predicate:
    predicates = sub.predicates

    def check(record: Record) -> bool:
        item = record.get(tag)
        if item is None or item[0] != "SQ":
            return False
        for entry in item[1]:
            for predicate in predicates:
                if not predicate(entry):
                    break
            else:
                return True
        return False

    return check


def compile_record(identifier: Record) -> Query:
    query = Query()
    skip: set[int] = set()
    for date_tag, time_tag in DATE_TIME_PAIRS.items():
        d, t = identifier.get(date_tag), identifier.get(time_tag)
        if d and t and d[1] and t[1] and isinstance(d[1], str) and isinstance(t[1], str):
            query.predicates.append(_combined_predicate(date_tag, time_tag, d[1], t[1]))
            skip |= {date_tag, time_tag}
    for tag in sorted(identifier):
        vr, value = identifier[tag]
        if tag == rec.CHARSET:
            continue
        query.keys.append((tag, vr))
        if vr == "SQ":
            items = value or []
            if not items or not items[0]:
                query.sequences[tag] = None
                continue
            sub = compile_record(items[0])
            query.sequences[tag] = sub
            if sub.predicates:
                query.predicates.append(_sequence_predicate(tag, sub))
            continue
        if tag in skip:
            continue
        if isinstance(value, list):  # binary numbers
            if value:
                wanted = [str(v) for v in value]
                query.predicates.append(
                    lambda r, tag=tag, vr=vr, wanted=wanted: any(
                        v in wanted for v in (_entity_values(r, tag, vr) or [])))
            continue
        if value == "":
            continue
        if vr == "UI":
            query.predicates.append(_uid_predicate(tag, value))
        elif vr == "DA":
            query.predicates.append(_date_predicate(tag, value))
        elif vr == "TM":
            query.predicates.append(_time_predicate(tag, value))
        elif vr == "DT":
            query.predicates.append(_dt_predicate(tag, value))
        else:
            query.predicates.append(_text_predicate(tag, vr, value))
    return query


def compile_query(identifier: Dataset) -> Query:
    """Compile a C-FIND identifier (pydicom decodes it with its own character set)."""
    try:
        raw = rec.from_dataset(identifier)
    except Exception as exc:
        raise QueryError(f"unreadable identifier: {exc}") from None
    # keep query values as sent (wildcards, ranges): from_dataset only strips padding
    return compile_record(raw)


# --------------------------------------------------------------------------- response


def respond(query: Query, record: Record) -> Record:
    """The response record: each requested key with the entity's value (or empty)."""
    out: Record = {}
    charset = record.get(rec.CHARSET)
    if charset is not None:
        out[rec.CHARSET] = charset
    for tag, vr in query.keys:
        value = record.get(tag)
        if vr == "SQ":
            if value is None or value[0] != "SQ":
                out[tag] = ("SQ", [])
                continue
            sub = query.sequences.get(tag)
            if sub is None:
                out[tag] = ("SQ", [dict(item) for item in value[1]])
            else:
                out[tag] = ("SQ", [respond_item(sub, item) for item in value[1] if sub.matches(item)])
            continue
        if value is None or value[0] == "SQ":
            out[tag] = (vr, [] if vr in rec.NUMBER_VRS else "")
        else:
            out[tag] = value
    return out


def respond_item(query: Query, record: Record) -> Record:
    out = respond(query, record)
    out.pop(rec.CHARSET, None) if rec.CHARSET not in dict(query.keys) else None
    return out


def search(query: Query, records: list[Any]) -> list[Any]:
    """The records (or (record, payload) pairs) that match."""
    return [r for r in records if query.matches(r)]
