"""DICOM attribute matching rules (PS3.4 C.2.2.2), shared by C-FIND over the index and the worklist.

One place for what a matching key means, so that both services read a key the same way:
- wildcard matching with `*` and `?` (`wildcard`, `has_wildcard`);
- list of UID matching and multi-value keys (`uid_list`, `split_values`);
- range matching `a-b`, `-b`, `a-` (`split_range`, `in_bounds`, `date_bounds`, `time_bounds`);
- date, time and date-time normalisation, so that `10`, `1000` and `10:00:00.0` compare as the
  same time (`norm_date`, `norm_time`, `entity_time`, `norm_datetime`);
- `QueryError`: an identifier that cannot be matched (both services answer it with a failure status).
C-FIND turns these into SQL (`appliance/dicom/query.py`), the worklist into predicates over
records (`appliance/worklist/matching.py`).
"""

from __future__ import annotations

import functools
import re

SINGLE_VALUED_VRS = {"LT", "ST", "UT", "UR"}  # a backslash is text, not a value separator
LOWEST_TIME = "000000.000000"
HIGHEST_TIME = "235959.999999"


class QueryError(ValueError):
    """The identifier is not a valid query (a malformed range, date or time, an unknown level)."""


# --------------------------------------------------------------------------- wildcards and lists


def has_wildcard(text: str) -> bool:
    return "*" in text or "?" in text


@functools.lru_cache(maxsize=512)
def wildcard(pattern: str, fold: bool = False) -> re.Pattern[str]:
    """The regex of a wildcard key (`*` any run, `?` one character); use it with `fullmatch`.
    `fold`: case-insensitive (Unicode-aware), as C-FIND matches person names."""
    parts = [".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern]
    return re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if fold else 0))


def split_values(text: str, vr: str) -> list[str]:
    """The values of a multi-valued key or entity value (any of them may match, C.2.2.2.8)."""
    if vr in SINGLE_VALUED_VRS:
        return [text]
    return [v.strip() for v in text.split("\\")] if "\\" in text else [text.strip()]


def uid_list(text: str) -> list[str]:
    """The UIDs of a list of UID matching key (backslash-separated), blanks dropped."""
    return [u.strip() for u in text.split("\\") if u.strip()]


# --------------------------------------------------------------------------- ranges


def split_range(text: str) -> tuple[str, str]:
    """`a-b`, `-b`, `a-` → (low, high), either may be empty."""
    if text.count("-") != 1:
        raise QueryError(f"not a range: {text!r}")
    low, high = text.split("-")
    return low.strip(), high.strip()


def in_bounds(value: str, low: str, high: str) -> bool:
    """A normalised value within normalised bounds (an empty bound is open; an empty value never matches)."""
    return bool(value) and (not low or value >= low) and (not high or value <= high)


# --------------------------------------------------------------------------- dates and times


def norm_date(text: str) -> str:
    """YYYYMMDD (the old `YYYY.MM.DD` accepted); "" stays ""."""
    value = text.strip().replace(".", "")
    if value and not (len(value) == 8 and value.isdigit()):
        raise QueryError(f"not a date: {text!r}")
    return value


def norm_time(text: str, upper: bool = False, strict: bool = True) -> str:
    """HHMMSS.FFFFFF with the missing parts the lowest (or, `upper`, the highest) value they can be.

    `strict`: a malformed time is a QueryError and "" stays "". Not strict (C-FIND's SQL, which
    must never raise inside the database): best effort on anything, "" becomes the full bound.
    """
    value = text.strip().replace(":", "")
    main, dot, frac = value.partition(".")
    if strict:
        if not value:
            return ""
        if not main.isdigit() or len(main) not in (2, 4, 6) or (frac and not frac.isdigit()):
            raise QueryError(f"not a time: {text!r}")
    short = len(main) < 6
    main = (main + ("235959" if upper else "000000")[len(main):])[:6]
    if upper and short:
        frac = "999999"  # 10 means up to 10:59:59.999999
    else:
        frac = (frac + ("999999" if upper else "000000"))[:6]
    return f"{main}.{frac}"


def entity_time(text: str) -> str:
    """An entity's time normalised, "" when it is empty or malformed (then it matches no range)."""
    try:
        return norm_time(text) if text.strip() else ""
    except QueryError:
        return ""


def norm_datetime(text: str, upper: bool = False) -> str:
    """YYYYMMDDHHMMSS.FFFFFF of a DT value (a UTC offset is ignored: local time on both sides)."""
    value = text.strip()
    if not value:
        return ""
    value = re.sub(r"[+-]\d{4}$", "", value)
    date, clock = value[:8], value[8:]
    norm_date(date)
    if not clock:
        return date + (HIGHEST_TIME if upper else LOWEST_TIME)
    return date + norm_time(clock, upper)


def date_bounds(text: str) -> tuple[str, str]:
    """The (low, high) dates of a DA key: a range, or one date as both."""
    if "-" in text:
        low, high = split_range(text)
        return norm_date(low), norm_date(high)
    value = norm_date(text)
    return value, value


def time_bounds(text: str) -> tuple[str, str]:
    """The (low, high) times of a TM key: a range, or one time (`10` is all of 10:xx:xx)."""
    if "-" in text:
        low, high = split_range(text)
        return norm_time(low), norm_time(high, upper=True)
    return norm_time(text), norm_time(text, upper=True)
