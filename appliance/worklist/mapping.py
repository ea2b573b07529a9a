"""HL7 v2 order (ORM^O01, OMI^O23) → worklist item, per the table in reference/dicom-hl7.md.

Each ORC starts one order; the OBR, TQ1 and ZDS segments after it belong to it; PID and PV1
are shared. The result is an `OrderUpdate` per order: what ORC-1 asks for, the keys that
identify the order (placer, filler, accession) and, for new and changed orders, the item's
attributes as a record (see `record`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import hl7

from appliance.hl7.message import Decoded, HL7Error
from appliance.worklist.record import CHARSET, Record

# worklist status (Scheduled Procedure Step Status, PS3.3 C.4.10) for ORC-5 order status values
ORDER_STATUS = {"SC": "SCHEDULED", "IP": "STARTED", "CM": "COMPLETED", "CA": "CANCELED", "DC": "DISCONTINUED",
                "HD": "SCHEDULED", "A": "STARTED"}
CONTROLS = {"NW": "new", "XO": "change", "CA": "cancel", "OC": "cancel", "DC": "discontinue", "OD": "discontinue",
            "SC": "status"}
PRIORITY = {"S": "STAT", "A": "HIGH", "P": "HIGH", "C": "HIGH", "R": "ROUTINE", "T": "MEDIUM"}
SPS_SEQUENCE = 0x00400100
SPS_STATUS = 0x00400020
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass
class OrderUpdate:
    """One order of a message: what to do and to which item."""

    control: str  # ORC-1 as sent
    action: str  # new | change | cancel | discontinue | status
    placer: str
    filler: str
    accession: str
    status: str | None  # SPS status from ORC-5, if any
    record: Record = field(default_factory=dict)
    study_uid_given: bool = False

    def describe(self) -> str:
        key = self.placer or self.filler or self.accession
        return f"{self.control} {key}"


class _Fields:
    """Component access on hl7 segments, unescaped, with the message's own separators."""

    def __init__(self, message: hl7.Message) -> None:
        self.message = message
        seps = message.separators
        self.rep = seps[2] if len(seps) > 2 else "~"
        self.comp = seps[3] if len(seps) > 3 else "^"
        self.sub = seps[4] if len(seps) > 4 else "&"

    def raw(self, segment: hl7.Segment | None, index: int) -> str:
        if segment is None:
            return ""
        try:
            return str(segment[index])
        except IndexError:
            return ""

    def get(self, segment: hl7.Segment | None, index: int, comp: int = 1, sub: int = 1, rep: int = 0) -> str:
        value = self.raw(segment, index)
        reps = value.split(self.rep)
        value = reps[rep] if rep < len(reps) else ""
        parts = value.split(self.comp)
        value = parts[comp - 1] if comp - 1 < len(parts) else ""
        subs = value.split(self.sub)
        value = subs[sub - 1] if sub - 1 < len(subs) else ""
        return self.unescape(value).strip()

    def unescape(self, value: str) -> str:
        if self.message.esc in value:
            try:
                value = self.message.unescape(value)
            except Exception:  # a broken escape sequence stays as sent
                pass
        return value

    def components(self, segment: hl7.Segment | None, index: int, rep: int = 0) -> list[str]:
        value = self.raw(segment, index).split(self.rep)
        value_rep = value[rep] if rep < len(value) else ""
        return [self.unescape(p.split(self.sub)[0]).strip() for p in value_rep.split(self.comp)]

    def subcomponents(self, segment: hl7.Segment | None, index: int, comp: int = 1) -> list[str]:
        value = self.raw(segment, index).split(self.rep)[0]
        parts = value.split(self.comp)
        chosen = parts[comp - 1] if comp - 1 < len(parts) else ""
        return [self.unescape(p).strip() for p in chosen.split(self.sub)]


def _pn(family: str, given: str = "", middle: str = "", prefix: str = "", suffix: str = "") -> str:
    """DICOM PN from name parts (component order family^given^middle^prefix^suffix)."""
    clean = [p.replace("^", " ").replace("=", " ").replace("\\", " ") for p in (family, given, middle, prefix, suffix)]
    return "^".join(clean).rstrip("^")


def _xpn(f: _Fields, segment: hl7.Segment | None, index: int) -> str:
    """XPN (PID-5): family^given^middle^suffix^prefix^degree."""
    c = f.components(segment, index) + [""] * 6
    return _pn(c[0], c[1], c[2], c[4], c[3])


def _xcn(f: _Fields, segment: hl7.Segment | None, index: int) -> str:
    """XCN (PV1-8, OBR-16): id^family^given^middle^suffix^prefix, or NDL (OBR-34) with the name in sub-components."""
    comps = f.components(segment, index) + [""] * 7
    if not any(comps[1:]):
        subs = f.subcomponents(segment, index) + [""] * 7
        if any(subs[1:]):
            return _pn(subs[1], subs[2], subs[3], subs[5], subs[4])
        return _pn(comps[0])
    return _pn(comps[1], comps[2], comps[3], comps[5], comps[4])


def _date(value: str) -> str:
    digits = re.match(r"\d*", value.strip()).group(0)  # type: ignore[union-attr]
    return digits[:8] if len(digits) >= 8 else ""


def _time(value: str) -> str:
    text = value.strip()
    match = re.match(r"(\d{8})(\d{2,6})?(\.\d{1,6})?", text)
    if not match or not match.group(2):
        return ""
    digits = match.group(2)
    if len(digits) % 2:
        digits = digits[:-1]
    return digits + (match.group(3) or "") if len(digits) == 6 else digits


def _code_sequence(code: str, text: str, scheme: str) -> list[Record]:
    if not code:
        return []
    return [{0x00080100: ("SH", code[:16]), 0x00080102: ("SH", (scheme or "L")[:16]),
             0x00080104: ("LO", (text or code)[:64])}]


def _put(record: Record, tag: int, vr: str, value: str, limit: int) -> None:
    if value:
        record[tag] = (vr, value[:limit])


def orders(decoded: Decoded, now: float | None = None) -> list[OrderUpdate]:
    """Every order of a decoded ORM^O01 / OMI^O23 message; HL7Error(AE) when one cannot be taken."""
    message = decoded.message
    f = _Fields(message)
    now = now or time.time()
    pid = pv1 = None
    groups: list[dict[str, hl7.Segment]] = []
    for segment in message:
        name = str(segment[0]).strip()
        if name == "PID":
            pid = segment
        elif name == "PV1":
            pv1 = segment
        elif name == "ORC":
            groups.append({"ORC": segment})
        elif name in ("OBR", "TQ1", "ZDS") and groups and name not in groups[-1]:
            groups[-1][name] = segment
        elif name == "OBR" and not groups:
            groups.append({"OBR": segment})
    if not groups:
        raise HL7Error("AE", "no ORC segment: the message carries no order", decoded.control_id)
    updates = []
    for group in groups:
        updates.append(_order(f, decoded, pid, pv1, group, now))
    return updates


def _order(f: _Fields, decoded: Decoded, pid: hl7.Segment | None, pv1: hl7.Segment | None,
           group: dict[str, hl7.Segment], now: float) -> OrderUpdate:
    orc, obr, tq1, zds = group.get("ORC"), group.get("OBR"), group.get("TQ1"), group.get("ZDS")
    cid = decoded.control_id
    control = f.get(orc, 1).upper() if orc is not None else "NW"
    if control not in CONTROLS:
        raise HL7Error("AE", f"unsupported order control ORC-1={control!r} (NW, XO, CA, OC, DC, OD, SC)", cid)
    action = CONTROLS[control]
    placer = f.get(orc, 2) or f.get(obr, 2)
    filler = f.get(orc, 3) or f.get(obr, 3)
    accession = f.get(obr, 18)
    if not (placer or filler or accession):
        raise HL7Error("AE", "the order has no placer (ORC-2), filler (ORC-3) or accession number (OBR-18)", cid)
    order_status = f.get(orc, 5).upper()
    status = None
    if order_status:
        if order_status not in ORDER_STATUS:
            raise HL7Error("AE", f"unsupported order status ORC-5={order_status!r} (SC, IP, CM, CA, DC)", cid)
        status = ORDER_STATUS[order_status]
    if action == "status" and status is None:
        raise HL7Error("AE", "ORC-1=SC needs the new status in ORC-5 (IP, CM, CA or DC)", cid)
    update = OrderUpdate(control, action, placer[:64], filler[:64], accession[:16], status)
    if action not in ("new", "change"):
        return update
    if pid is None:
        raise HL7Error("AE", "no PID segment: a new or changed order needs the patient", cid)
    patient_id = f.get(pid, 3)
    if not patient_id:
        raise HL7Error("AE", "PID-3 (patient ID) is empty", cid)
    study_uid = f.get(zds, 1)
    if study_uid and (not _UID_RE.match(study_uid) or len(study_uid) > 64):
        raise HL7Error("AE", f"ZDS-1 {study_uid!r} is not a valid DICOM UID", cid)
    rec: Record = {}
    if decoded.charset and decoded.charset != "ISO_IR 6":
        rec[CHARSET] = ("CS", decoded.charset)
    _put(rec, 0x00080050, "SH", accession, 16)
    _put(rec, 0x00080090, "PN", _xcn(f, pv1, 8), 320)
    _put(rec, 0x00100010, "PN", _xpn(f, pid, 5), 320)
    _put(rec, 0x00100020, "LO", patient_id, 64)
    _put(rec, 0x00100021, "LO", f.get(pid, 3, 4, 1), 64)
    _put(rec, 0x00100030, "DA", _date(f.get(pid, 7)), 8)
    sex = f.get(pid, 8).upper()[:1]
    _put(rec, 0x00100040, "CS", {"M": "M", "F": "F", "U": ""}.get(sex, "O" if sex else ""), 16)
    if study_uid:
        rec[0x0020000D] = ("UI", study_uid)
        update.study_uid_given = True
    _put(rec, 0x00321032, "PN", _xcn(f, obr, 16), 320)
    rp_code = f.components(obr, 44) + [""] * 3
    obr4 = f.components(obr, 4) + [""] * 3
    rp_text = rp_code[1] or rp_code[0] or obr4[1] or obr4[0]
    _put(rec, 0x00321060, "LO", rp_text, 64)
    if rp_code[0]:
        rec[0x00321064] = ("SQ", _code_sequence(rp_code[0], rp_code[1], rp_code[2]))
    reason = f.components(obr, 31) + [""] * 2
    _put(rec, 0x00401002, "LO", reason[1] or reason[0], 64)
    rp_id = f.get(obr, 19) or accession or placer or filler
    _put(rec, 0x00401001, "SH", rp_id, 16)
    tq_start = f.get(orc, 7, 4) or f.get(tq1, 7)
    priority = f.get(orc, 7, 6) or f.get(tq1, 9)
    if priority.upper()[:1] in PRIORITY:
        rec[0x00401003] = ("SH", PRIORITY[priority.upper()[:1]])
    _put(rec, 0x00402016, "LO", placer, 64)
    _put(rec, 0x00402017, "LO", filler, 64)
    sps: Record = {}
    _put(sps, 0x00080060, "CS", f.get(obr, 24).upper(), 16)
    _put(sps, 0x00400001, "AE", f.get(orc, 18), 16)
    start_date, start_time = _date(tq_start), _time(tq_start)
    if not start_date:  # no scheduled time: scheduled for when the order arrived
        start_date = time.strftime("%Y%m%d", time.localtime(now))
        start_time = time.strftime("%H%M%S", time.localtime(now))
    _put(sps, 0x00400002, "DA", start_date, 8)
    _put(sps, 0x00400003, "TM", start_time, 16)
    _put(sps, 0x00400006, "PN", _xcn(f, obr, 34), 320)
    _put(sps, 0x00400007, "LO", obr4[1] or obr4[0], 64)
    if obr4[0]:
        sps[0x00400008] = ("SQ", _code_sequence(obr4[0], obr4[1], obr4[2]))
    _put(sps, 0x00400009, "SH", f.get(obr, 20) or rp_id, 16)
    sps[SPS_STATUS] = ("CS", status if status and status != "CANCELED" else "SCHEDULED")
    rec[SPS_SEQUENCE] = ("SQ", [sps])
    update.record = rec
    return update


def set_status(record: Record, status: str) -> None:
    """Write the SPS status into every Scheduled Procedure Step item of a record."""
    sq = record.get(SPS_SEQUENCE)
    if sq is None:
        record[SPS_SEQUENCE] = ("SQ", [{SPS_STATUS: ("CS", status)}])
        return
    for item in sq[1]:
        item[SPS_STATUS] = ("CS", status)
