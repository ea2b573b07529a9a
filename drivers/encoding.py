"""The code page of the robots' job files, and text made to fit it on purpose.

TD Bridge reads its job files as ANSI text in the engine host's code page (cp1252 on a Western
Windows host, cp932 on a Japanese one); PTBurn's are ASCII (its Unicode build's encoding is not
documented). Neither mentions UTF-8, and a byte-order mark would become part of the first key
(shared/reference/robots.md). So a robot's `encoding` key names a code page, defaults per vendor,
and every job file is encoded strictly: text the code page cannot hold is never replaced by `?`
silently but made to fit here first:
- letters with diacritics keep them where the code page has them (MÜLLER in cp1252) and lose
  them (NFKD, combining marks dropped) where it does not (MULLER in ascii);
- text in another script (山田) cannot be spelled in the code page at all: a patient name becomes
  the Patient ID; in other fields the characters that do not fit are left out. The full text stays
  on the label image the station renders.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Mapping

DEFAULTS = {"epson": "cp1252", "primera": "ascii"}
# the engines never mention these; the UTF-16/32 families are not ASCII-compatible either
# (PTBurn's Unicode build probably reads UTF-16LE: unconfirmed, so not offered)
REFUSED = ("utf_8", "utf_8_sig", "utf_16", "utf_16_le", "utf_16_be", "utf_32", "utf_32_le", "utf_32_be",
           "utf_7")
NAME_FIELDS = ("patient_name",)  # label fields that fall back to the patient id
ID_FIELD = "patient_id"


def default_for(kind: str) -> str:
    return DEFAULTS.get(kind, "ascii")


def check_codepage(name: str) -> str:
    """The canonical codec name of a job-file code page; ValueError with the reason otherwise."""
    text = str(name or "").strip()
    try:
        info = codecs.lookup(text)
    except LookupError:
        raise ValueError(f"encoding {text!r}: not a code page Python knows (e.g. cp1252, cp932, ascii)") from None
    if not getattr(info, "_is_text_encoding", True):
        raise ValueError(f"encoding {text!r}: not a text code page (e.g. cp1252, cp932, ascii)")
    canonical = info.name.replace("-", "_")
    if canonical in REFUSED:
        raise ValueError(f"encoding {text!r}: the robots' engines read ANSI/ASCII job files, never UTF; "
                         "name the engine host's code page (e.g. cp1252, cp932, ascii)")
    if "KEY=value\r\n".encode(info.name) != b"KEY=value\r\n":
        raise ValueError(f"encoding {text!r}: not ASCII-compatible, the job files' keys would be unreadable")
    return info.name


def job_file_encoding(robot: Mapping[str, object], kind: str) -> str:
    """The robot's configured code page (checked), else the vendor's default."""
    return check_codepage(str(robot.get("encoding") or "") or default_for(kind))


def fits(text: str, encoding: str) -> bool:
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def _strip_marks(char: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))


def transliterate(text: str, encoding: str) -> tuple[str, bool]:
    """(text fitted to the code page, whether every character found a place).

    A character the code page holds stays; else its NFKD form without combining marks (Ü -> U,
    ﬁ -> fi) if that fits; else it is left out and the second value is False.
    """
    out: list[str] = []
    whole = True
    for char in str(text):
        if fits(char, encoding):
            out.append(char)
            continue
        plain = _strip_marks(char)
        if plain and fits(plain, encoding):
            out.append(plain)
        else:
            whole = False
    return re.sub(r"\s{2,}", " ", "".join(out)).strip(), whole


def fit_text(text: object, encoding: str, fallback: str = "") -> str:
    """One value for a job file: transliterated; when some of it cannot be spelled in the code page
    at all, `fallback` (when given) instead, else what could be kept."""
    fitted, whole = transliterate("" if text is None else str(text), encoding)
    if whole or not fallback:
        return fitted
    return transliterate(fallback, encoding)[0]


def fit_fields(fields: Mapping[str, object], encoding: str) -> dict[str, str]:
    """Label merge fields fitted to the code page: a patient name in another script becomes the
    Patient ID (the label image keeps the full name)."""
    patient_id = str(fields.get(ID_FIELD) or "")
    return {str(key): fit_text(value, encoding, patient_id if str(key).lower() in NAME_FIELDS else "")
            for key, value in fields.items()}


def encode_strict(text: str, encoding: str, what: str = "job file") -> bytes:
    """The bytes of a job file; ValueError naming the character when the code page lacks one (a
    path, say, that cannot be transliterated without pointing elsewhere)."""
    try:
        return text.encode(encoding)
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start:exc.end]
        raise ValueError(f"{what}: {bad!r} cannot be written in the robot's code page {encoding} "
                         f"(at {exc.object[max(exc.start - 20, 0):exc.end + 20]!r}); "
                         "set the robot's encoding to the engine host's code page or rename the path") from None
