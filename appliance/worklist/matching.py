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
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from appliance.worklist import record as rec
from appliance.worklist.record import Record

WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
SINGLE_VALUED_VRS = {"LT", "ST", "UT", "UR"}
DATE_TIME_PAIRS = {0x00400002: 0x00400003, 0x00400004: 0x00400005}  # SPS start, SPS end


class QueryError(ValueError):
    """The identifier cannot be matched (a malformed range, for instance)."""


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


def _values(text: str, vr: str) -> list[str]:
    if vr in SINGLE_VALUED_VRS:
        return [text]
    return [v.strip() for v in text.split("\\")] if "\\" in text else [text.strip()]


def _entity_values(record: Record, tag: int, vr: str) -> list[str] | None:
    item = record.get(tag)
    if item is None:
        return None
    value = item[1]
    if isinstance(value, list):
        return [str(v) for v in value]
    return _values(value, vr)


def _wildcard(pattern: str) -> re.Pattern[str]:
    out = []
    for ch in pattern:
        out.append(".*" if ch == "*" else "." if ch == "?" else re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


def _norm_date(text: str) -> str:
    value = text.strip().replace(".", "")
    if value and not (len(value) == 8 and value.isdigit()):
        raise QueryError(f"not a date: {text!r}")
    return value


def _norm_time(text: str, upper: bool = False) -> str:
    value = text.strip().replace(":", "")
    if not value:
        return value
    main, _, frac = value.partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6) or (frac and not frac.isdigit()):
        raise QueryError(f"not a time: {text!r}")
    if upper:
        main = main + "595959"[len(main) - 2:] if len(main) < 6 else main
        frac = (frac + "999999")[:6] if len(value.partition(".")[0]) == 6 else "999999"
    else:
        main = main.ljust(6, "0")
        frac = frac.ljust(6, "0")
    return f"{main}.{frac}"


def _entity_time(text: str) -> str:
    try:
        return _norm_time(text) if text.strip() else ""
    except QueryError:
        return ""


def _range(text: str) -> tuple[str, str]:
    if text.count("-") != 1:
        raise QueryError(f"not a range: {text!r}")
    low, high = text.split("-")
    return low.strip(), high.strip()


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
    values = _values(query_text, vr)
    if len(values) == 1 and not (vr in WILDCARD_VRS and ("*" in values[0] or "?" in values[0])):
        return _exact_predicate(tag, values[0])
    for q in values:
        if vr in WILDCARD_VRS and ("*" in q or "?" in q):
            if q.strip("*") == "":
                return lambda record: True  # "*" alone is universal matching
            matchers.append(_wildcard(q).fullmatch)  # type: ignore[arg-type]
        else:
            matchers.append(q.__eq__)

    def check(record: Record) -> bool:
        values = _entity_values(record, tag, vr)
        return values is not None and any(m(v) for v in values for m in matchers)

    return check


def _uid_predicate(tag: int, query_text: str) -> Predicate:
    wanted = {v.strip() for v in query_text.split("\\") if v.strip()}

    def check(record: Record) -> bool:
        values = _entity_values(record, tag, "UI")
        return values is not None and any(v in wanted for v in values)

    return check


def _date_bounds(text: str) -> tuple[str, str]:
    if "-" in text:
        low, high = _range(text)
        return _norm_date(low), _norm_date(high)
    value = _norm_date(text)
    return value, value


def _time_bounds(text: str) -> tuple[str, str]:
    if "-" in text:
        low, high = _range(text)
        return _norm_time(low), _norm_time(high, upper=True)
    return _norm_time(text), _norm_time(text, upper=True)


def _in_bounds(value: str, low: str, high: str) -> bool:
    return bool(value) and (not low or value >= low) and (not high or value <= high)


def _date_predicate(tag: int, query_text: str) -> Predicate:
    options = [_date_bounds(q) for q in _values(query_text, "DA")]
    if len(options) == 1 and options[0][0] == options[0][1]:
        return _exact_predicate(tag, options[0][0])

    def check(record: Record) -> bool:
        values = _entity_values(record, tag, "DA")
        return values is not None and any(_in_bounds(v.replace(".", ""), lo, hi) for v in values for lo, hi in options)

    return check


def _time_predicate(tag: int, query_text: str) -> Predicate:
    options = [_time_bounds(q) for q in _values(query_text, "TM")]

    def check(record: Record) -> bool:
        values = _entity_values(record, tag, "TM")
        return values is not None and any(_in_bounds(_entity_time(v), lo, hi) for v in values for lo, hi in options)

    return check


def _datetime_norm(text: str, upper: bool = False) -> str:
    value = text.strip()
    if not value:
        return ""
    value = re.sub(r"[+-]\d{4}$", "", value)  # offsets are ignored (local time on both sides)
    date, clock = value[:8], value[8:]
    _norm_date(date)
    if not clock:
        return date + ("235959.999999" if upper else "000000.000000")
    return date + _norm_time(clock, upper)


def _dt_predicate(tag: int, query_text: str) -> Predicate:
    options = []
    for q in _values(query_text, "DT"):
        low, high = _range(q) if "-" in q else (q, q)
        options.append((_datetime_norm(low), _datetime_norm(high, True)))

    def check(record: Record) -> bool:
        values = _entity_values(record, tag, "DT")
        if values is None:
            return False
        for v in values:
            try:
                norm = _datetime_norm(v)
            except QueryError:
                continue
            if any(_in_bounds(norm, lo, hi) for lo, hi in options):
                return True
        return False

    return check


def _combined_predicate(date_tag: int, time_tag: int, date_text: str, time_text: str) -> Predicate:
    """Date and time keys matched together: from time1 on date1 to time2 on date2 (C.2.2.2.5.1)."""
    dlo, dhi = _date_bounds(date_text)
    tlo, thi = _time_bounds(time_text)
    low = (dlo + tlo) if dlo else ""
    high = (dhi + (thi or "235959.999999")) if dhi else ""
    if dlo and not tlo:
        low = dlo + "000000.000000"

    def check(record: Record) -> bool:
        dates = _entity_values(record, date_tag, "DA")
        if not dates:
            return False
        times = _entity_values(record, time_tag, "TM") or [""]
        value = dates[0].replace(".", "") + (_entity_time(times[0]) or "000000.000000")
        return _in_bounds(value, low, high)

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
