"""Job-file values from untrusted data: one harmless value, or a clear refusal (ids, paths)."""

from __future__ import annotations

import re

ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")

# characters that could end a line, separate a DATA source from its destination, or start a key;
# Python's str.splitlines also breaks on \v \f \x1c-\x1e \x85 \u2028 \u2029: a parser on the other
# side may too, so those go as well
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029=]")
_SPACES = re.compile(r"\s{2,}")


def clean_value(value: object, max_len: int) -> str:
    """One safe job-file value: control characters, line breaks, tabs and `=` become spaces; cut to max_len."""
    text = "" if value is None else str(value)
    text = _UNSAFE.sub(" ", text)
    text = _SPACES.sub(" ", text).strip()
    return text[:max_len].rstrip()


def clean_key(name: object, max_len: int = 64) -> str:
    """A merge-field name: letters, digits and `_` only (anything else becomes `_`)."""
    text = re.sub(r"[^A-Za-z0-9_]", "_", "" if name is None else str(name)).strip("_")
    return text[:max_len] or "FIELD"


def checked_id(value: str, max_len: int, what: str = "job id") -> str:
    """An id we write verbatim (job ids): refused, not mangled, when it is not [A-Za-z0-9_-]."""
    if not isinstance(value, str) or not ID_RE.match(value) or len(value) > max_len:
        raise ValueError(f"{what} {value!r}: must be 1-{max_len} of A-Z a-z 0-9 - _")
    return value


def checked_path(value: str, what: str) -> str:
    """A path we write verbatim: refused when it holds a character that could break the job file."""
    if _UNSAFE.search(value):
        raise ValueError(f"{what}: the path {value!r} holds a line break, tab, control character or '='; "
                         "it cannot be written into a job file")
    return value


def yes_no(flag: object) -> str:
    return "YES" if flag else "NO"
