"""Untrusted strings (patient names from scanners) made safe for pages, labels, README and file names.

Every value that reaches a disc goes through here: `display_text` for one-line human text (no control
characters, nothing that breaks XML), `ascii_label` for volume labels (ISO 9660 d-characters only).
File names on the disc never derive from these strings at all; they are counters.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

# characters XML 1.0 forbids (tab, LF and CR are allowed but we fold them: values are one line)
_XML_BAD = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")
# invisible format characters: bidi overrides/isolates (a name "Evil\u202eTXT.EXE" would read
# "EvilEXE.TXT"), zero-width space, word joiners, BOM, soft hyphen. ZWNJ/ZWJ stay (scripts need them).
_INVISIBLE = re.compile("[\u00ad\u061c\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_SPACES = re.compile(r"\s+")
_ISO_D = re.compile(r"[^A-Z0-9_]+")


def display_text(value: Any, limit: int = 200) -> str:
    """One line of printable text: control characters become spaces, runs of spaces collapse."""
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(v) for v in value)
    text = _INVISIBLE.sub("", _XML_BAD.sub(" ", str(value)))
    text = _SPACES.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _group(family: str, given: str, middle: str, prefix: str, suffix: str, comma: bool) -> str:
    first = " ".join(p for p in (prefix, given, middle) if p)
    if comma and family and first:
        out = f"{family}, {first}"
    else:
        out = " ".join(p for p in (family, first) if p)
    return " ".join(p for p in (out, suffix) if p)


def person_name(value: Any) -> str:
    """A DICOM PN as people read it: "Family, Given Middle" (+ " / 山田 太郎" ideographic group).

    `value` is a pydicom PersonName (already decoded from its Specific Character Set) or a string.
    """
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":  # a "\\" in the name
        return display_text("; ".join(filter(None, (person_name(v) for v in value))))
    # imported here, not at the top: the web process imports this module at start, without pydicom
    from pydicom.valuerep import PersonName

    if not isinstance(value, PersonName):
        value = PersonName(str(value))
    groups = []
    raw = str(value)
    for index, group in enumerate(raw.split("=")[:3]):
        parts = (group.split("^") + [""] * 5)[:5]
        family, given, middle, prefix, suffix = (display_text(p) for p in parts)
        # ideographic and phonetic groups read "Family Given", no comma
        text = _group(family, given, middle, prefix, suffix, comma=index == 0)
        if text:
            groups.append(text)
    return display_text(" / ".join(groups)) or display_text(raw.replace("^", " "))


def ascii_fold(text: str) -> str:
    """Latin letters without accents (Müller → Muller); everything else dropped or kept as is."""
    text = text.replace("ß", "ss").replace("Æ", "AE").replace("æ", "ae").replace("Ø", "O").replace("ø", "o")
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def ascii_label(*parts: str, limit: int = 32, default: str = "DICOM") -> str:
    """ISO 9660 d-characters (A–Z, 0–9, _), at most `limit`, joined by "_"; `default` when empty."""
    cleaned = []
    for part in parts:
        word = _ISO_D.sub("_", ascii_fold(part or "").upper()).strip("_")
        if word:
            cleaned.append(word)
    label = "_".join(cleaned)
    label = re.sub("_+", "_", label)[:limit].strip("_")
    return label or default


def dicom_date(value: Any) -> str:
    """YYYYMMDD → YYYY-MM-DD (anything else: shown as it is, made safe)."""
    text = display_text(value, 40)
    if re.fullmatch(r"\d{8}", text):
        return f"{text[:4]}-{text[4:6]}-{text[6:]}"
    return text
