"""A worklist item as plain data: {tag: (VR, value)}; sequences hold lists of such dicts.

Matching thousands of items per query is much faster on plain strings than on pydicom
datasets, and the same form serialises to JSON for state.db. Text values are Python str
(already decoded with the item's character set); multi-values stay joined with a backslash.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom.dataelem import DataElement
    from pydicom.dataset import Dataset

# pydicom is imported where a dataset is made or read, not here: the hl7 process stores records and
# never needs it (importing it costs about 0.35 s of CPU at every start).

Record = dict[int, tuple[str, Any]]

BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}
NUMBER_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
CHARSET = 0x00080005


def _text(value: Any) -> str:
    from pydicom.multival import MultiValue
    from pydicom.valuerep import PersonName

    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(_text(v) for v in value)
    if isinstance(value, PersonName):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("latin_1")
    return str(value)


def from_dataset(ds: Dataset) -> Record:
    """Dataset → record (file meta, group lengths and binary values left out)."""
    from pydicom.multival import MultiValue

    out: Record = {}
    for elem in ds:
        tag = int(elem.tag)
        if (tag >> 16) == 0x0002 or (tag & 0xFFFF) == 0:
            continue
        vr = elem.VR
        if vr == "SQ":
            out[tag] = (vr, [from_dataset(item) for item in elem.value or []])
        elif vr in BINARY_VRS:
            continue
        elif vr in NUMBER_VRS:
            value = elem.value
            if value is None or value == "":
                out[tag] = (vr, [])
            else:
                out[tag] = (vr, list(value) if isinstance(value, MultiValue | list) else [value])
        else:
            out[tag] = (vr, _text(elem.value).strip(" \x00") if vr not in ("LT", "ST", "UT") else
                        _text(elem.value).rstrip(" \x00"))
    return out


def element(tag: int, vr: str, value: Any) -> DataElement:
    """A pydicom element for a record value."""
    # IGNORE: values come from a record that was read or built once, so no re-validation
    from pydicom.config import IGNORE as _IGNORE
    from pydicom.dataelem import DataElement

    if vr == "SQ":
        return DataElement(tag, vr, [to_dataset(item) for item in value], validation_mode=_IGNORE)
    if vr in NUMBER_VRS:
        if not value:
            return DataElement(tag, vr, None, validation_mode=_IGNORE)
        return DataElement(tag, vr, value if len(value) > 1 else value[0], validation_mode=_IGNORE)
    if value == "":
        return DataElement(tag, vr, None, validation_mode=_IGNORE)
    return DataElement(tag, vr, value, validation_mode=_IGNORE)


def to_dataset(record: Record) -> Dataset:
    from pydicom.dataset import Dataset

    ds = Dataset()
    for tag in sorted(record):
        vr, value = record[tag]
        ds.add(element(tag, vr, value))
    return ds


def to_json(record: Record) -> str:
    def enc(rec: Record) -> dict[str, Any]:
        return {f"{tag:08X}": [vr, [enc(i) for i in value] if vr == "SQ" else value]
                for tag, (vr, value) in rec.items()}

    return json.dumps(enc(record), ensure_ascii=False, separators=(",", ":"))


def from_json(text: str) -> Record:
    def dec(doc: dict[str, Any]) -> Record:
        return {int(key, 16): (vr, [dec(i) for i in value] if vr == "SQ" else value)
                for key, (vr, value) in doc.items()}

    return dec(json.loads(text))


def get(record: Record, tag: int, default: str = "") -> str:
    item = record.get(tag)
    if item is None or item[0] == "SQ":
        return default
    return item[1] if isinstance(item[1], str) else "\\".join(str(v) for v in item[1])
